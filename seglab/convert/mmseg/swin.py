"""mmsegmentation's UperNet on Swin (``swin-{tiny,small,base}-patch4-window7..._upernet...``) -> seglab's
``upernet_swin_t`` / ``_s`` / ``_b`` (:mod:`seglab.models.semantic.upernet`, torchvision's Swin keys).

Key map (mmseg -> seglab; mmcv's ``ConvModule`` ``.conv``/``.bn`` are seglab's ``ConvBNAct`` ``.0``/``.1``):

- ``backbone.patch_embed.projection|norm`` -> ``backbone.features.0.0|2``;
  ``backbone.stages.S.blocks.M.norm1|norm2`` -> ``backbone.features.(2S+1).M.norm1|norm2``;
  ``...attn.w_msa.qkv|proj|relative_position_bias_table|relative_position_index`` -> ``...attn.<same>`` (the
  buffer ``relative_position_index`` is checked equal to torchvision's and the model's own kept);
  ``...ffn.layers.0.0|ffn.layers.1`` -> ``...mlp.0|mlp.3``; ``backbone.stages.S.downsample.norm|reduction`` ->
  ``backbone.features.(2S+2).norm|reduction``; ``backbone.normI`` -> ``backbone.out_norms.I``.
- ``decode_head.psp_modules.I.1`` -> ``decode_head.ppm.I.1``; ``bottleneck`` -> ``ppm_bottleneck``;
  ``lateral_convs.I``, ``fpn_convs.I``, ``fpn_bottleneck`` -> the same names; ``conv_seg`` -> ``classifier``;
  ``auxiliary_head.convs.0|conv_seg`` -> ``aux_head.0|2``.

Patch merging: mmseg's ``PatchMerging`` gathers each 2x2 neighbourhood with ``nn.Unfold``, so the ``4C`` features
its LayerNorm and reduction read are channel-major (``c * 4 + 2 * dy + dx``); torchvision's (the original Swin's)
concatenates the four shifted maps ``x0, x1, x2, x3`` = offsets ``(0,0), (1,0), (0,1), (1,1)`` (``j * C + c``).
mmseg's ``tools/model_converters/swin2mmseg.py`` reorders the original's weights into unfold order; the converter
applies the inverse (:func:`unfold_to_swin_order`), so the converted merge computes exactly mmseg's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seglab.convert.mmseg.keys import ModulePairs, conv_module, rename_state
from seglab.errors import CheckpointError
from seglab.models import create_model
from seglab.models.backbones.swin import SWINS

__all__ = ["SWIN_MODELS", "map_upernet_swin", "swin_to_unfold_order", "unfold_to_swin_order", "upernet_swin_pairs"]

# mmseg's Swin variant names -> seglab's model
SWIN_MODELS = {
    "t": "upernet_swin_t", "tiny": "upernet_swin_t",
    "s": "upernet_swin_s", "small": "upernet_swin_s",
    "b": "upernet_swin_b", "base": "upernet_swin_b",
}
# unfold offset order (dy, dx) = (0,0), (0,1), (1,0), (1,1) vs Swin's x0..x3 = (0,0), (1,0), (0,1), (1,1): a swap of
# the middle two, its own inverse
_SWAP = [0, 2, 1, 3]
WINDOW = 7  # seglab's Swins (torchvision's swin_t/s/b) have 7x7 windows


def unfold_to_swin_order(t: Tensor) -> Tensor:
    """``t``'s last dimension (``4C`` patch-merging features) from mmseg's unfold order (``c * 4 + k``) to the
    original Swin's / torchvision's (``j * C + c``)."""
    *lead, n = t.shape
    return t.reshape(*lead, n // 4, 4)[..., _SWAP].transpose(-1, -2).reshape(*lead, n)


def swin_to_unfold_order(t: Tensor) -> Tensor:
    """Inverse of :func:`unfold_to_swin_order` (what mmseg's ``swin2mmseg`` does to the original's weights)."""
    *lead, n = t.shape
    return t.reshape(*lead, 4, n // 4)[..., _SWAP, :].transpose(-1, -2).reshape(*lead, n)


def upernet_swin_pairs(depths: list[int]) -> ModulePairs:
    """``(mmseg module, seglab module)`` pairs of UperNet on a Swin with ``depths`` blocks per stage."""
    pairs = [("backbone.patch_embed.projection", "backbone.features.0.0"),
             ("backbone.patch_embed.norm", "backbone.features.0.2")]
    for stage, depth in enumerate(depths):
        for block in range(depth):
            theirs, ours = f"backbone.stages.{stage}.blocks.{block}", f"backbone.features.{2 * stage + 1}.{block}"
            pairs += [(f"{theirs}.norm1", f"{ours}.norm1"), (f"{theirs}.attn.w_msa", f"{ours}.attn"),
                      (f"{theirs}.norm2", f"{ours}.norm2"), (f"{theirs}.ffn.layers.0.0", f"{ours}.mlp.0"),
                      (f"{theirs}.ffn.layers.1", f"{ours}.mlp.3")]
        if stage < len(depths) - 1:
            pairs.append((f"backbone.stages.{stage}.downsample", f"backbone.features.{2 * stage + 2}"))
        pairs.append((f"backbone.norm{stage}", f"backbone.out_norms.{stage}"))
    for i in range(4):
        pairs += conv_module(f"decode_head.psp_modules.{i}.1", f"decode_head.ppm.{i}.1")
    pairs += conv_module("decode_head.bottleneck", "decode_head.ppm_bottleneck")
    for i in range(len(depths) - 1):
        pairs += conv_module(f"decode_head.lateral_convs.{i}", f"decode_head.lateral_convs.{i}")
        pairs += conv_module(f"decode_head.fpn_convs.{i}", f"decode_head.fpn_convs.{i}")
    pairs += conv_module("decode_head.fpn_bottleneck", "decode_head.fpn_bottleneck")
    pairs += [("decode_head.conv_seg", "decode_head.classifier")]
    pairs += conv_module("auxiliary_head.convs.0", "aux_head.0") + [("auxiliary_head.conv_seg", "aux_head.2")]
    return pairs


def _variant(model_name: str) -> str:
    variant = model_name.removeprefix("upernet_swin_")
    if model_name not in SWIN_MODELS.values() or variant not in SWINS:
        raise CheckpointError(f"model {model_name!r}: the mmseg Swin converter builds one of "
                              f"{', '.join(sorted(set(SWIN_MODELS.values())))}")
    return variant


def map_upernet_swin(state: dict[str, Tensor], model_name: str, source: str) -> dict[str, Tensor]:
    """mmseg's UperNet-Swin state dict ``state`` -> seglab ``model_name``'s keys and tensor layout (patch merging
    reordered, see the module docstring); a file without ``auxiliary_head`` converts without it. Raises
    :class:`~seglab.errors.CheckpointError` listing mmseg-named missing, unexpected and mis-shaped keys."""
    variant = _variant(model_name)
    embed, depths, _, _ = SWINS[variant]
    key = "backbone.patch_embed.projection.weight"
    if key in state and state[key].shape[0] != embed:
        raise CheckpointError(f"{source}: {key} has {state[key].shape[0]} channels, not {embed} as {model_name}: "
                              f"the file is for another Swin variant than the config name says")
    num_classes = int(state["decode_head.conv_seg.weight"].shape[0])
    has_aux = any(k.startswith("auxiliary_head.") for k in state)
    with torch.device("meta"):
        model = create_model(model_name, num_classes=num_classes, aux_loss=has_aux)
    state = dict(state)
    index = _relative_position_index(WINDOW)
    for name in [k for k in state if k.endswith(".relative_position_index")]:  # mmseg's is [49, 49], torchvision's flat
        if state[name].numel() != index.numel() or not torch.equal(state[name].reshape(-1).long(), index):
            raise CheckpointError(f"{source}: {name}: not the relative position index of a {WINDOW}x{WINDOW} window "
                                  f"(seglab's Swin has window {WINDOW} only)")
        state[name] = index.clone()
    renamed = rename_state(state, model, dict(upernet_swin_pairs(depths)), source,
                           f"UperNet-Swin-{variant.upper()} (window {WINDOW})")
    for merge in (2, 4, 6):  # torchvision's PatchMerging: features.2, .4, .6
        for name in (f"backbone.features.{merge}.norm.weight", f"backbone.features.{merge}.norm.bias",
                     f"backbone.features.{merge}.reduction.weight"):
            renamed[name] = unfold_to_swin_order(renamed[name])
    return renamed


def _relative_position_index(window: int) -> Tensor:
    """torchvision's (the original Swin's) relative position index of a ``window x window`` window, flattened: the
    row of ``relative_position_bias_table`` for each pair of tokens. mmseg's (computed otherwise, ``[w*w, w*w]``)
    is the same table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return (relative[..., 0] * (2 * window - 1) + relative[..., 1]).flatten()
