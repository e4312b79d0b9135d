"""Converters of published checkpoints of other libraries into seglab weights files."""

from seglab.convert.torchvision import TORCHVISION_MODELS, convert_torchvision, load_torchvision

__all__ = ["TORCHVISION_MODELS", "convert_torchvision", "load_torchvision"]
