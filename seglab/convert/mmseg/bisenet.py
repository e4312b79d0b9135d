"""mmsegmentation's BiSeNet v1 (``bisenetv1_r18-d32...``) and v2 (``bisenetv2_fcn...``) -> seglab's
``bisenetv1_resnet18_mmseg`` and ``bisenetv2_mmseg`` (:mod:`seglab.models.semantic.bisenet`, which says how they
differ from CoinCheung's layout that ``bisenetv1_resnet18`` / ``bisenetv2`` keep).

Key map (mmseg -> seglab; mmcv's ``ConvModule`` ``.conv``/``.bn`` are seglab's ``ConvBNAct`` ``.0``/``.1``):

- v1: ``backbone.context_path.backbone.*`` -> ``context_path.backbone.*`` (mmseg's ResNet-18 has torchvision's
  names); ``backbone.context_path.arm16|arm32.conv_layer`` -> ``context_path.arm16|arm32.conv``, their
  ``atten_conv_layer.1.conv|bn`` -> ``conv_atten|bn_atten``; ``conv_head32|conv_head16`` -> the same names;
  ``gap_conv.1`` -> ``conv_avg``; ``backbone.spatial_path.layer1..4`` -> ``spatial_path.0..3``;
  ``backbone.ffm.conv1`` -> ``ffm.fuse``, ``backbone.ffm.conv_atten.0.conv|bn`` -> ``ffm.conv_atten|bn_atten``;
  ``decode_head.convs.0|conv_seg`` -> ``head.0|1``; ``auxiliary_head.I.convs.0|conv_seg`` -> ``aux_heads.I.0|1``.
- v2: ``backbone.detail.detail_branch.S.J`` -> ``detail_branch.0..7``; ``backbone.semantic.stage1.conv_first|
  convs.0|convs.1|fuse_last`` -> ``semantic_branch.stem.conv|left.0|left.1|fuse``; GE stages
  ``backbone.semantic.stage2|stage3|stage4`` -> ``semantic_branch.stage3|stage4|stage5`` (``conv1``, ``conv2.0`` ->
  ``conv2``, ``dwconv.0[.1]`` -> ``dwconv[.0|.1]``, ``shortcut.0.depthwise_conv|pointwise_conv`` ->
  ``shortcut.0|1``); ``backbone.semantic.stage4_CEBlock.gap.1|conv_gap|conv_last`` ->
  ``semantic_branch.context_embedding.bn|conv_gap|conv_last``; ``backbone.bga.detail_dwconv|semantic_dwconv.0``
  (``depthwise_conv``, ``pointwise_conv.conv``) -> ``aggregation.detail_keep|semantic_keep`` (``0``, ``1``),
  ``backbone.bga.detail_down.0|semantic_conv.0|conv`` -> ``aggregation.detail_down.0|semantic_up|conv``;
  ``decode_head.convs.0|conv_seg`` -> ``head.conv|classifier``; ``auxiliary_head.I.convs.0|convs.1|conv_seg`` ->
  ``aux_heads.I.0|1|3``.

Both take mmseg's input as seglab's (RGB, ImageNet mean/std: mmseg's ``SegDataPreProcessor`` with ``bgr_to_rgb``),
so no tensor changes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seglab.convert.mmseg.keys import ModulePairs, conv_module, rename_state
from seglab.errors import CheckpointError
from seglab.models import create_model

__all__ = ["BISENET_MODELS", "bisenetv1_pairs", "bisenetv2_pairs", "map_bisenet"]

BISENET_MODELS = {"bisenetv1": "bisenetv1_resnet18_mmseg", "bisenetv2": "bisenetv2_mmseg"}
AUX_SEED = 0  # boosters a file lacks are initialised from this seed, so a conversion is reproducible


def bisenetv1_pairs() -> ModulePairs:
    """``(mmseg module, seglab module)`` pairs of BiSeNet v1 (ResNet-18)."""
    cp = "backbone.context_path"
    pairs = [(f"{cp}.backbone", "context_path.backbone")]
    for arm in ("arm16", "arm32"):
        pairs += conv_module(f"{cp}.{arm}.conv_layer", f"context_path.{arm}.conv")
        pairs += [(f"{cp}.{arm}.atten_conv_layer.1.conv", f"context_path.{arm}.conv_atten"),
                  (f"{cp}.{arm}.atten_conv_layer.1.bn", f"context_path.{arm}.bn_atten")]
    for name in ("conv_head32", "conv_head16"):
        pairs += conv_module(f"{cp}.{name}", f"context_path.{name}")
    pairs += conv_module(f"{cp}.gap_conv.1", "context_path.conv_avg")
    for i in range(4):
        pairs += conv_module(f"backbone.spatial_path.layer{i + 1}", f"spatial_path.{i}")
    pairs += conv_module("backbone.ffm.conv1", "ffm.fuse")
    pairs += [("backbone.ffm.conv_atten.0.conv", "ffm.conv_atten"), ("backbone.ffm.conv_atten.0.bn", "ffm.bn_atten")]
    pairs += conv_module("decode_head.convs.0", "head.0") + [("decode_head.conv_seg", "head.1")]
    for i in range(2):
        pairs += conv_module(f"auxiliary_head.{i}.convs.0", f"aux_heads.{i}.0")
        pairs += [(f"auxiliary_head.{i}.conv_seg", f"aux_heads.{i}.1")]
    return pairs


def _depthwise_separable(theirs: str, ours: str, *, pointwise_norm: bool) -> ModulePairs:
    """mmcv's ``DepthwiseSeparableConvModule`` -> a seglab Sequential of ``ConvBNAct`` (depthwise) and the 1x1
    conv, a ``ConvBNAct`` when ``pointwise_norm`` else a bare ``Conv2d``."""
    pairs = conv_module(f"{theirs}.depthwise_conv", f"{ours}.0")
    if pointwise_norm:
        return pairs + conv_module(f"{theirs}.pointwise_conv", f"{ours}.1")
    return pairs + [(f"{theirs}.pointwise_conv.conv", f"{ours}.1")]


def bisenetv2_pairs() -> ModulePairs:
    """``(mmseg module, seglab module)`` pairs of BiSeNet v2 with mmseg's FCN boosters."""
    pairs: ModulePairs = []
    detail = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    for i, (stage, layer) in enumerate(detail):
        pairs += conv_module(f"backbone.detail.detail_branch.{stage}.{layer}", f"detail_branch.{i}")
    stem = "backbone.semantic.stage1"
    for theirs, ours in (("conv_first", "conv"), ("convs.0", "left.0"), ("convs.1", "left.1"), ("fuse_last", "fuse")):
        pairs += conv_module(f"{stem}.{theirs}", f"semantic_branch.stem.{ours}")
    for theirs, ours, layers in (("stage2", "stage3", 2), ("stage3", "stage4", 2), ("stage4", "stage5", 4)):
        for j in range(layers):
            t, o = f"backbone.semantic.{theirs}.{j}", f"semantic_branch.{ours}.{j}"
            pairs += conv_module(f"{t}.conv1", f"{o}.conv1") + conv_module(f"{t}.conv2.0", f"{o}.conv2")
            if j == 0:  # stride 2: two depthwise ConvModules, a depthwise-separable shortcut
                pairs += conv_module(f"{t}.dwconv.0", f"{o}.dwconv.0") + conv_module(f"{t}.dwconv.1", f"{o}.dwconv.1")
                pairs += _depthwise_separable(f"{t}.shortcut.0", f"{o}.shortcut", pointwise_norm=True)
            else:
                pairs += conv_module(f"{t}.dwconv.0", f"{o}.dwconv")
    ce, ours = "backbone.semantic.stage4_CEBlock", "semantic_branch.context_embedding"
    pairs += [(f"{ce}.gap.1", f"{ours}.bn")]
    pairs += conv_module(f"{ce}.conv_gap", f"{ours}.conv_gap") + conv_module(f"{ce}.conv_last", f"{ours}.conv_last")
    bga = "backbone.bga"
    pairs += _depthwise_separable(f"{bga}.detail_dwconv.0", "aggregation.detail_keep", pointwise_norm=False)
    pairs += _depthwise_separable(f"{bga}.semantic_dwconv.0", "aggregation.semantic_keep", pointwise_norm=False)
    pairs += conv_module(f"{bga}.detail_down.0", "aggregation.detail_down.0")
    pairs += conv_module(f"{bga}.semantic_conv.0", "aggregation.semantic_up")
    pairs += conv_module(f"{bga}.conv", "aggregation.conv")
    pairs += conv_module("decode_head.convs.0", "head.conv") + [("decode_head.conv_seg", "head.classifier")]
    for i in range(4):
        pairs += conv_module(f"auxiliary_head.{i}.convs.0", f"aux_heads.{i}.0")
        pairs += conv_module(f"auxiliary_head.{i}.convs.1", f"aux_heads.{i}.1")
        pairs += [(f"auxiliary_head.{i}.conv_seg", f"aux_heads.{i}.3")]
    return pairs


_PAIRS = {"bisenetv1_resnet18_mmseg": bisenetv1_pairs, "bisenetv2_mmseg": bisenetv2_pairs}


def map_bisenet(state: dict[str, Tensor], model_name: str, source: str) -> dict[str, Tensor]:
    """mmseg's BiSeNet v1 / v2 state dict ``state`` -> seglab ``model_name``'s keys. A file without
    ``auxiliary_head`` (saved without the training heads) converts, its aux heads then seglab's initialisation
    from seed :data:`AUX_SEED`. Raises :class:`~seglab.errors.CheckpointError` listing mmseg-named missing,
    unexpected and mis-shaped keys."""
    if model_name not in _PAIRS:
        raise CheckpointError(f"model {model_name!r}: the mmseg BiSeNet converter builds one of {', '.join(_PAIRS)}")
    num_classes = int(state["decode_head.conv_seg.weight"].shape[0])
    with torch.random.fork_rng(devices=[]):  # aux heads the file lacks keep this (reproducible) initialisation
        torch.manual_seed(AUX_SEED)
        model = create_model(model_name, num_classes=num_classes)
    what = "BiSeNet v1 (ResNet-18)" if model_name.startswith("bisenetv1") else "BiSeNet v2 (FCN heads)"
    renamed = rename_state(state, model, dict(_PAIRS[model_name]()), source, what, optional=("aux_heads.",))
    for name, value in model.state_dict().items():
        renamed.setdefault(name, value)  # only the aux heads can be absent here (rename_state checked the rest)
    return renamed
