"""Convert segmentation_models_pytorch (smp) ``Unet`` checkpoints with a ResNet encoder to seglab weights.

seglab's ``unet_resnet18/34/50`` (:mod:`seglab.models.semantic.unet_resnet`) is smp 0.6.0's
``Unet("resnetNN")`` with its default options (``decoder_channels=(256, 128, 64, 32, 16)``, BatchNorm, nearest
interpolation, no attention, no centre block, no ``aux_params``), so an smp state dict loads after renaming:

- ``encoder.*`` -> ``encoder.*`` (both are torchvision's ResNet names; smp drops ``fc``, seglab never has it);
- ``decoder.blocks.N.conv1.0|1.*``, ``conv2.0|1.*`` (conv, BN) -> ``decoder.N.conv1.0|1.*``, ``conv2.0|1.*``;
- ``segmentation_head.0.*`` (the 3x3 conv) -> ``classifier.*``.

Anything else (``decoder.center.*``, ``attention*``, ``classification_head.*``: options seglab does not build)
is reported, with missing keys and shape mismatches, in one :class:`~seglab.errors.CheckpointError` that names
smp's keys. Files are read only through :func:`seglab.checkpoint.load_state_dict` (safetensors, such as smp's
``save_pretrained`` ``model.safetensors``, or ``.pth`` with ``weights_only=True``; ``{"state_dict": ...}`` and
``{"model": ...}`` are unwrapped) and a ``module.`` prefix (DataParallel) is dropped. ``num_classes`` is read
from ``segmentation_head.0.weight``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from seglab.checkpoint import foreign_key_problems, load_into, read_state_dict, save_weights
from seglab.errors import CheckpointError
from seglab.models import create_model

__all__ = ["SMP_MODELS", "convert_smp", "load_smp_unet", "seglab_to_smp_key", "smp_to_seglab_key"]

SMP_MODELS = ("unet_resnet18", "unet_resnet34", "unet_resnet50")
_CLASSIFIER_KEY = "segmentation_head.0.weight"

_StateDict = dict[str, torch.Tensor]


def smp_to_seglab_key(key: str) -> str:
    """seglab's name of smp Unet's state-dict key ``key`` (keys seglab has no counterpart for come back as is)."""
    if key.startswith("decoder.blocks."):
        return "decoder." + key.removeprefix("decoder.blocks.")
    if key.startswith("segmentation_head.0."):
        return "classifier." + key.removeprefix("segmentation_head.0.")
    return key


def seglab_to_smp_key(key: str) -> str:
    """smp Unet's name of seglab's ``unet_resnet*`` state-dict key ``key`` (inverse of :func:`smp_to_seglab_key`)."""
    if key.startswith("decoder."):
        return "decoder.blocks." + key.removeprefix("decoder.")
    if key.startswith("classifier."):
        return "segmentation_head.0." + key.removeprefix("classifier.")
    return key


def _check_keys(model: nn.Module, smp: _StateDict, source: str, name: str) -> None:
    """One CheckpointError listing smp-named missing, unexpected and mismatched keys."""
    problems = foreign_key_problems(model, smp, seglab_to_smp_key)
    if problems:
        raise CheckpointError(
            f"{source}: not an smp Unet checkpoint for seglab {name} (smp.Unet with a {name.split('_')[-1]} encoder "
            f"and default decoder options expected; {' | '.join(problems)})"
        )


def _load(src: _StateDict | str | Path, model: str, num_classes: int | None) -> tuple[nn.Module, int]:
    if model not in SMP_MODELS:
        raise CheckpointError(f"model {model!r}: the smp converter builds one of {', '.join(SMP_MODELS)}")
    smp, source = read_state_dict(src, "smp")
    if _CLASSIFIER_KEY in smp:
        found = int(smp[_CLASSIFIER_KEY].shape[0])
        if num_classes is not None and num_classes != found:
            raise CheckpointError(
                f"{source}: {_CLASSIFIER_KEY} has {found} classes but num_classes={num_classes} was asked for"
            )
        num_classes = found
    elif num_classes is None:
        raise CheckpointError(
            f"{source}: no {_CLASSIFIER_KEY!r}, so not an smp Unet state dict (keys start "
            f"{', '.join(list(smp)[:5])} ...)"
        )
    net = create_model(model, num_classes=num_classes)
    _check_keys(net, smp, source, model)
    state_dict = {smp_to_seglab_key(k): v.detach().clone() for k, v in smp.items()}
    for key, value in net.state_dict().items():  # counters some BN variants do not save
        if key.endswith(".num_batches_tracked"):
            state_dict.setdefault(key, torch.zeros_like(value))
    load_into(net, state_dict, f"{source} (smp Unet -> {model})")
    return net, num_classes


def load_smp_unet(
    state_dict: _StateDict | str | Path, model: str = "unet_resnet34", num_classes: int | None = None
) -> nn.Module:
    """Build seglab's ``model`` (``unet_resnet18/34/50``) and load smp ``Unet``'s state dict (or file) into it.

    ``num_classes`` defaults to the classifier's; if given it must agree. Raises
    :class:`~seglab.errors.CheckpointError` listing smp-named missing, unexpected and mismatched keys.
    """
    return _load(state_dict, model, num_classes)[0]


def convert_smp(
    src: _StateDict | str | Path,
    dst: str | Path,
    *,
    model: str = "unet_resnet34",
    num_classes: int | None = None,
    label_set: str | None = None,
) -> Path:
    """Convert the smp ``Unet`` checkpoint ``src`` to the seglab weights file ``dst`` (``*.safetensors``).

    The metadata (model, num_classes, model_kwargs, source, and ``label_set`` if given) lets
    ``seglab predict --weights dst`` rebuild the model. Returns ``dst``.
    """
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"{dst}: the converted weights are written as safetensors; name it *.safetensors")
    net, num_classes = _load(src, model, num_classes)
    metadata = {
        "model": model,
        "num_classes": num_classes,
        "model_kwargs": {},
        "source": f"smp Unet checkpoint {Path(src).name if not isinstance(src, dict) else '(mapping)'}",
    }
    if label_set is not None:
        metadata["label_set"] = label_set
    return save_weights(dst, net.state_dict(), metadata)
