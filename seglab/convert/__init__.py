"""Converters of published checkpoints of other libraries into seglab weights files."""

from seglab.convert.smp import SMP_MODELS, convert_smp, load_smp_unet
from seglab.convert.torchvision import TORCHVISION_MODELS, convert_torchvision, load_torchvision

__all__ = [
    "SMP_MODELS", "TORCHVISION_MODELS", "convert_smp", "convert_torchvision", "load_smp_unet", "load_torchvision",
]
