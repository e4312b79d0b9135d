"""mmsegmentation's ResNet families (FCN, DeepLabv3 and Semantic FPN on ResNetV1c) -> seglab's state-dict keys.

seglab's ``fcn_resnet{50,101}_v1c``, ``deeplabv3_resnet{50,101}_v1c`` and ``semantic_fpn_resnet{50,101}_v1c`` are
the networks of mmsegmentation's ``fcn_r50-d8``, ``deeplabv3_r50-d8`` and ``fpn_r50`` configs (and their r101
versions), built with mmseg's module names where seglab's blocks allow, so the map is a renaming:

- backbone (mmseg ``ResNetV1c``): the stem Sequential ``backbone.stem.0|1|3|4|6|7`` -> ``backbone.conv1|bn1|conv2|
  bn2|conv3|bn3``; ``backbone.layerN.M.conv1|bn1|conv2|bn2|conv3|bn3|downsample.0|1`` unchanged (both are
  torchvision's Bottleneck names).
- every mmcv ``ConvModule`` of the heads and neck: ``<m>.conv`` / ``<m>.bn`` -> seglab ``ConvBNAct`` ``<m>.0`` /
  ``<m>.1``.
- FCN: ``decode_head.convs.N``, ``decode_head.conv_cat``, ``decode_head.conv_seg`` -> ``classifier.<same>``;
  ``auxiliary_head.convs.0``, ``auxiliary_head.conv_seg`` -> ``aux_classifier.<same>``.
- DeepLabv3: ``decode_head.image_pool.1``, ``decode_head.aspp_modules.N``, ``decode_head.bottleneck``,
  ``decode_head.conv_seg`` -> ``classifier.<same>``; the aux head as FCN's.
- Semantic FPN: ``neck.lateral_convs.N.conv`` -> ``fpn.inner_blocks.N.0`` and ``neck.fpn_convs.N.conv`` ->
  ``fpn.layer_blocks.N.0`` (torchvision's FeaturePyramidNetwork); ``decode_head.scale_heads.L.(2k)`` (a
  ConvModule; the odd indices are mmseg's parameter-free Upsample) -> ``head.scale_heads.p{L+2}.k``;
  ``decode_head.conv_seg`` -> ``head.predictor``.

BatchNorm ``num_batches_tracked`` counters are optional on input and filled with zeros where absent. The class
count is read from ``decode_head.conv_seg.weight``; FCN and DeepLabv3 files without ``auxiliary_head.*`` (none of
the released ones) map to the model built with ``aux_loss=False``. Reading files, config names and the CLI are
:mod:`seglab.convert.mmseg`'s; this module maps tensors already read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from seglab.checkpoint import foreign_key_problems, rename_prefix
from seglab.convert.mmseg.keys import conv_module
from seglab.errors import CheckpointError
from seglab.models import create_model
from seglab.models.backbones.resnet import V1C_STEM_KEYS

__all__ = ["RESNET_MODELS", "map_resnet_family", "mmseg_to_seglab_key", "resnet_model_kwargs", "seglab_to_mmseg_key"]

# mmseg config-name prefix -> seglab model (e.g. fcn_r50-d8_4xb2-40k_cityscapes-512x1024,
# fcn_r50-d8_512x1024_40k_cityscapes, deeplabv3_r101-d8_4xb4-80k_ade20k-512x512, fpn_r50_4xb2-80k_cityscapes-512x1024)
RESNET_MODELS: dict[str, str] = {
    "fcn_r50-d8": "fcn_resnet50_v1c",
    "fcn_r101-d8": "fcn_resnet101_v1c",
    "deeplabv3_r50-d8": "deeplabv3_resnet50_v1c",
    "deeplabv3_r101-d8": "deeplabv3_resnet101_v1c",
    "fpn_r50": "semantic_fpn_resnet50_v1c",
    "fpn_r101": "semantic_fpn_resnet101_v1c",
}
_CLASSIFIER_KEY = "decode_head.conv_seg.weight"
_COUNTER = ".num_batches_tracked"


def _family(model_name: str) -> str:
    if model_name not in RESNET_MODELS.values():
        raise CheckpointError(
            f"model {model_name!r}: the mmsegmentation ResNet map builds one of {', '.join(RESNET_MODELS.values())}"
        )
    return model_name.split("_resnet", 1)[0]  # fcn, deeplabv3, semantic_fpn



def _fcn_head(theirs: str, ours: str, num_convs: int, concat_input: bool) -> list[tuple[str, str]]:
    pairs = [(theirs, ours)]  # conv_seg
    for i in range(num_convs):
        pairs += conv_module(f"{theirs}.convs.{i}", f"{ours}.convs.{i}")
    if concat_input:
        pairs += conv_module(f"{theirs}.conv_cat", f"{ours}.conv_cat")
    return pairs


def _modules(family: str) -> list[tuple[str, str]]:
    """(mmseg module, seglab module) pairs; keys under neither are the same on both sides."""
    pairs = [(f"backbone.{theirs}", f"backbone.{ours}") for theirs, ours in V1C_STEM_KEYS.items()]
    if family in ("fcn", "deeplabv3"):
        pairs += _fcn_head("auxiliary_head", "aux_classifier", 1, False)
    if family == "fcn":
        pairs += _fcn_head("decode_head", "classifier", 2, True)
    elif family == "deeplabv3":
        pairs += [("decode_head", "classifier")]
        pairs += conv_module("decode_head.image_pool.1", "classifier.image_pool.1")
        pairs += conv_module("decode_head.bottleneck", "classifier.bottleneck")
        for i in range(4):
            pairs += conv_module(f"decode_head.aspp_modules.{i}", f"classifier.aspp_modules.{i}")
    else:
        pairs += [("decode_head", "head"), ("decode_head.conv_seg", "head.predictor")]
        for level in range(4):
            pairs += [(f"neck.lateral_convs.{level}.conv", f"fpn.inner_blocks.{level}.0"),
                      (f"neck.fpn_convs.{level}.conv", f"fpn.layer_blocks.{level}.0")]
            for k in range(max(level, 1)):  # ConvModule, Upsample, ConvModule, ...: the convs at even indices
                pairs += conv_module(f"decode_head.scale_heads.{level}.{2 * k}", f"head.scale_heads.p{level + 2}.{k}")
    return pairs


_TO_SEGLAB = {family: dict(_modules(family)) for family in ("fcn", "deeplabv3", "semantic_fpn")}
_TO_MMSEG = {family: {ours: theirs for theirs, ours in table.items()} for family, table in _TO_SEGLAB.items()}




def mmseg_to_seglab_key(key: str, model_name: str) -> str:
    """seglab's name of mmsegmentation's state-dict key ``key`` for seglab model ``model_name`` (one of
    :data:`RESNET_MODELS`' values); keys with no counterpart come back renamed only by their prefix, or as they are."""
    return rename_prefix(key, _TO_SEGLAB[_family(model_name)])


def seglab_to_mmseg_key(key: str, model_name: str) -> str:
    """mmsegmentation's name of seglab's ``model_name`` key ``key`` (inverse of :func:`mmseg_to_seglab_key`)."""
    return rename_prefix(key, _TO_MMSEG[_family(model_name)])


def resnet_model_kwargs(state_dict: Mapping[str, Tensor], model_name: str, source: str) -> dict[str, Any]:
    """The factory arguments of ``model_name`` that ``state_dict`` (mmseg's keys) was trained with:
    ``num_classes`` from ``decode_head.conv_seg.weight``, and for FCN / DeepLabv3 ``aux_loss`` (whether the file
    has ``auxiliary_head.*``)."""
    family = _family(model_name)
    if _CLASSIFIER_KEY not in state_dict:
        raise CheckpointError(
            f"{source}: no {_CLASSIFIER_KEY!r}, so not an mmsegmentation decode head for seglab {model_name} "
            f"(keys start {', '.join(list(state_dict)[:5])} ...)"
        )
    kwargs: dict[str, Any] = {"num_classes": int(state_dict[_CLASSIFIER_KEY].shape[0])}
    if family != "semantic_fpn":
        kwargs["aux_loss"] = any(k.startswith("auxiliary_head.") for k in state_dict)
    return kwargs


def map_resnet_family(state_dict: Mapping[str, Tensor], model_name: str, source: str) -> dict[str, Tensor]:
    """``state_dict`` (mmsegmentation's keys, e.g. a released checkpoint's ``state_dict``) in seglab
    ``model_name``'s keys, ready for ``create_model(model_name, **resnet_model_kwargs(...)).load_state_dict``.

    Every tensor of the file must be used and every tensor of the model filled, with equal shapes (BatchNorm
    counters may be absent: zeros); otherwise :class:`~seglab.errors.CheckpointError` names ``source`` and the
    missing, unexpected and mis-shaped keys in mmseg's names.
    """
    kwargs = resnet_model_kwargs(state_dict, model_name, source)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = create_model(model_name, **kwargs)
    problems = foreign_key_problems(model, state_dict, lambda key: seglab_to_mmseg_key(key, model_name))
    if problems:
        prefix = next(p for p, name in RESNET_MODELS.items() if name == model_name)
        raise CheckpointError(
            f"{source}: not an mmsegmentation {prefix} checkpoint for seglab {model_name} "
            f"({', '.join(f'{k}={v}' for k, v in kwargs.items())}): {' | '.join(problems)}"
        )
    converted = {mmseg_to_seglab_key(key, model_name): value for key, value in state_dict.items()}
    for key, value in model.state_dict().items():
        if key.endswith(_COUNTER) and key not in converted:
            converted[key] = torch.zeros((), dtype=value.dtype)
    return converted
