"""Backbones: thin wrappers over torchvision models, and the loading of their pretrained weights.

A backbone is always built as the torchvision module first (``weights=None``), so a published torchvision
checkpoint loads into it unchanged; the segmentation model then takes its stages apart. One module per kind, used
by every family that needs it (model files import their backbone from here, never from another family):

- :mod:`~seglab.models.backbones.resnet`: torchvision's ResNet at output stride 32/16/8 (DeepLab dilation,
  Multi-grid), and SCHP's deep-stem ResNet with CSAIL's weights;
- :mod:`~seglab.models.backbones.vgg`: VGG16 (stages, fc6/fc7 as convs, DeepLab-LargeFOV's dilated features) and
  VGG16-BN;
- :mod:`~seglab.models.backbones.mobilenetv3`: dilated MobileNetV3-Large/Small features;
- :mod:`~seglab.models.backbones.swin`: Swin-T/S/B stage features;
- :mod:`~seglab.models.backbones.convnext`: ConvNeXt-T/S/B stage features with per-stage output norms;
- :mod:`~seglab.models.backbones.fpn`: torchvision's FPN backbones of the R-CNNs.

``pretrained_backbone`` (the option of every factory with a backbone) is resolved by
:func:`load_backbone_weights`:

- ``False`` / ``None``: random initialisation;
- ``True``: torchvision's published weights (the enum's ``DEFAULT``), downloaded into the torch hub cache;
- a string naming a member of the weights enum (``"IMAGENET1K_V1"`` or ``"VGG16_Weights.IMAGENET1K_V1"``):
  those weights;
- any other string: a local file (``.safetensors``, or ``.pth``/``.pt`` read with ``weights_only=True``)
  holding the torchvision state dict, loaded strictly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import WeightsEnum

from seglab.checkpoint import load_into, load_state_dict
from seglab.errors import CheckpointError

__all__ = ["load_backbone_weights", "local_weights_file", "resolve_torchvision_weights"]


def resolve_torchvision_weights(spec: bool | str | None, weights_enum: type[WeightsEnum]) -> WeightsEnum | None:
    """The enum member that ``spec`` names (``True`` -> ``DEFAULT``), or None if it names a file or nothing."""
    if spec is None or spec is False:
        return None
    if spec is True:
        return weights_enum.DEFAULT
    if not isinstance(spec, str):
        raise TypeError(f"pretrained_backbone must be a bool or a str, got {type(spec).__name__}")
    if Path(spec).expanduser().exists():
        return None
    name = spec.split(".", 1)[1] if spec.startswith(weights_enum.__name__ + ".") else spec
    try:
        return weights_enum[name]
    except KeyError:
        return None


def load_backbone_weights(
    module: nn.Module, spec: bool | str | None, *, torchvision_weights: type[WeightsEnum]
) -> None:
    """Load the weights that ``spec`` asks for into the torchvision-format ``module`` (in place).

    ``torchvision_weights`` is the torchvision weights enum of the module (e.g. ``VGG16_Weights``). Raises
    :class:`~seglab.errors.CheckpointError` when the download fails (saying the URL and how to give the file
    instead) or when a file does not match the module (listing missing, unexpected and mismatched keys).
    """
    if spec is None or spec is False:
        return
    arch = torchvision_weights.__name__.removesuffix("_Weights").lower()
    member = resolve_torchvision_weights(spec, torchvision_weights)
    if member is not None:
        try:
            state_dict = member.get_state_dict(progress=False)
        except (OSError, RuntimeError, ValueError) as exc:
            filename = member.url.rsplit("/", 1)[-1]
            raise CheckpointError(
                f"could not get the torchvision {arch} weights {member} from {member.url} ({exc}). Without "
                f"network access, download that file on another machine and pass its path: "
                f'pretrained_backbone="/path/{filename}" (or put it in '
                f"{Path(torch.hub.get_dir()) / 'checkpoints'})"
            ) from exc
        load_into(module, state_dict, f"{member.url} (torchvision {arch} state dict)")
        return
    path = Path(spec).expanduser()
    if not path.exists():
        names = ", ".join(m.name for m in torchvision_weights)
        raise CheckpointError(
            f"{spec}: pretrained_backbone is neither an existing weights file nor a {torchvision_weights.__name__} "
            f"name ({names}, DEFAULT)"
        )
    state_dict = load_state_dict(path)
    load_into(module, state_dict, f"{path} (expected a torchvision {arch} state dict)")


def local_weights_file(spec: bool | str | None, filename: str, source: str, what: str) -> Path | None:
    """The local file ``spec`` names for weights seglab does not download (not torchvision's): ``None`` for
    ``False``/``None``; ``True`` raises a CheckpointError saying that the ``what`` ImageNet weights are ``filename``
    from ``source`` and how to pass them; a missing file is a CheckpointError naming both."""
    if spec is None or spec is False:
        return None
    if spec is True:
        raise CheckpointError(
            f"the {what} ImageNet weights are {source}, not a torchvision model, and seglab does not download them. "
            f'Download that file on a machine with network access and pass its path: pretrained_backbone="/path/'
            f'{filename}"'
        )
    if not isinstance(spec, str):
        raise TypeError(f"pretrained_backbone must be a bool or a str, got {type(spec).__name__}")
    path = Path(spec).expanduser()
    if not path.exists():
        raise CheckpointError(f"{spec}: pretrained_backbone file not found (expected {filename}, from {source})")
    return path
