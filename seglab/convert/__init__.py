"""Converters of published checkpoints of other libraries into seglab weights files."""

from seglab.convert.bisenet import BISENET_MODELS, convert_bisenet, load_bisenet
from seglab.convert.hf import HF_MODELS, HF_SEGFORMERS, convert_hf, load_hf
from seglab.convert.mmseg import convert_mmseg, load_mmseg
from seglab.convert.smp import SMP_MODELS, convert_smp, load_smp_unet
from seglab.convert.torchvision import TORCHVISION_MODELS, convert_torchvision, load_torchvision

__all__ = [
    "BISENET_MODELS", "HF_MODELS", "HF_SEGFORMERS", "SMP_MODELS", "TORCHVISION_MODELS", "convert_bisenet",
    "convert_hf", "convert_smp",
    "convert_torchvision", "load_bisenet", "load_hf", "load_smp_unet", "load_torchvision",
    "convert_mmseg", "load_mmseg",
]
