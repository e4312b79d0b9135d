"""Swin Transformer backbones (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted
Windows", ICCV 2021, arXiv 2103.14030) for dense prediction: torchvision's ``swin_t`` / ``swin_s`` / ``swin_b``
``features``, returning the 4 stage outputs (strides 4, 8, 16, 32) in NCHW, each through its own LayerNorm (the
Swin segmentation repository's ``out_indices`` norms). torchvision's final ``norm`` and classifier ``head`` are
dropped; its state dict loads into the network before that (``pretrained``). Used by
:mod:`seglab.models.semantic.upernet`.

What differs from torchvision's Swin, and why: the network is torchvision's module for module (same parameters,
buffers and state-dict keys, so torchvision's ImageNet weights load), but it computes what the segmentation
implementations compute at every input size, where torchvision's classifier does not:

- The input is zero-padded (right, bottom) to a multiple of the patch size (4) before the patch embedding, as
  mmseg's ``PatchEmbed`` (``padding="corner"``) and transformers' ``SwinPatchEmbeddings.maybe_pad`` do;
  torchvision's strided conv would drop the remainder. Patch merging pads odd sides (torchvision already does, as
  both), and window attention pads to multiples of the window, masks nothing for the padding (zeros after the
  block's first LayerNorm, as in all three) and crops back.
- The shifted blocks (odd blocks, shift 3 for window 7) always shift. torchvision's ``shifted_window_attention``
  sets the shift of an axis to 0 when that axis, padded to a multiple of the window, is at most the window
  (a 1..7-token side: at 224x224 stage 4, at 192 stages 3-4, ...). mmseg's ``ShiftWindowMSA`` never does: the
  shift is fixed at construction and the cyclic-shift mask is built on the padded map at every size.
  transformers' ``SwinLayer.set_shift_and_window_size`` has a third rule (when ``min(H, W) <= window`` the
  shift becomes 0 and the window shrinks to ``min(H, W)``), but only ``SwinModel``'s classification path
  applies it: ``SwinBackbone`` (what ``UperNetForSemanticSegmentation`` uses) passes ``always_partition=True``,
  which skips it, so UperNet in transformers shifts exactly as mmseg does. seglab follows mmseg / transformers'
  backbone, so converted mmseg and Hugging Face UperNet checkpoints give their logits at any size. The blocks'
  attention is :class:`ShiftedWindowAttention`, a subclass of torchvision's with only ``forward`` replaced.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import Swin_B_Weights, Swin_S_Weights, Swin_T_Weights, SwinTransformer, WeightsEnum
from torchvision.models import swin_transformer as tv_swin

from seglab.models.backbones import load_backbone_weights
from seglab.models.layers import pad_to_multiple

__all__ = ["SWINS", "ShiftedWindowAttention", "SwinFeatures", "shifted_window_attention", "swin_features"]

# torchvision's swin_t / swin_s / swin_b: (embed_dim, depths, num_heads, weights); patch 4, window 7 for all.
SWINS: dict[str, tuple[int, list[int], list[int], type[WeightsEnum]]] = {
    "t": (96, [2, 2, 6, 2], [3, 6, 12, 24], Swin_T_Weights),
    "s": (96, [2, 2, 18, 2], [3, 6, 12, 24], Swin_S_Weights),
    "b": (128, [2, 2, 18, 2], [4, 8, 16, 32], Swin_B_Weights),
}
PATCH_SIZE = 4
WINDOW_SIZE = 7


def _shift_mask(pad_h: int, pad_w: int, window: int, shift: int, like: Tensor) -> Tensor:
    """``[windows, window**2, window**2]`` additive mask of shifted-window attention: 0 between tokens of the same
    cyclic-shift region, -100 between regions (the regions of each axis: ``[0, n - window)``, ``[n - window,
    n - shift)``, ``[n - shift, n)`` of the padded, rolled map). Built with tensor ops from the sizes so an ONNX
    trace keeps them dynamic."""

    def regions(n: int) -> Tensor:
        idx = torch.arange(n, device=like.device)
        return (idx >= n - window).long() + (idx >= n - shift).long()

    ids = regions(pad_h)[:, None] * 3 + regions(pad_w)[None, :]
    ids = ids.view(pad_h // window, window, pad_w // window, window).permute(0, 2, 1, 3).reshape(-1, window * window)
    return (ids[:, None, :] != ids[:, :, None]).to(like.dtype) * -100.0


def shifted_window_attention(
    x: Tensor,
    attn: tv_swin.ShiftedWindowAttention,
    window: int,
    shift: int,
) -> Tensor:
    """Window multi-head self-attention with relative position bias over ``x`` ``[B, H, W, C]`` (NHWC), using
    ``attn``'s weights: pad to multiples of ``window``, roll by ``-shift`` (masked across the wrap-around), attend
    within each window, undo the roll and crop. ``shift`` applies at every size (see the module docstring)."""
    b, h, w, c = x.shape
    x = F.pad(x, (0, 0, 0, -w % window, 0, -h % window))
    pad_h, pad_w = x.shape[1], x.shape[2]
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    rows, cols, tokens, heads = pad_h // window, pad_w // window, window * window, attn.num_heads
    windows = x.view(b, rows, window, cols, window, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, tokens, c)
    qkv = F.linear(windows, attn.qkv.weight, attn.qkv.bias).reshape(-1, tokens, 3, heads, c // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    scores = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1) + attn.get_relative_position_bias()
    if shift:
        mask = _shift_mask(pad_h, pad_w, window, shift, scores)
        scores = scores.view(b, rows * cols, heads, tokens, tokens) + mask[None, :, None]
        scores = scores.view(-1, heads, tokens, tokens)
    weights = F.dropout(scores.softmax(dim=-1), p=attn.attention_dropout, training=attn.training)
    out = (weights @ v).transpose(1, 2).reshape(-1, tokens, c)
    out = F.dropout(F.linear(out, attn.proj.weight, attn.proj.bias), p=attn.dropout, training=attn.training)
    out = out.view(b, rows, cols, window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(b, pad_h, pad_w, c)
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
    return out[:, :h, :w, :].contiguous()


class ShiftedWindowAttention(tv_swin.ShiftedWindowAttention):
    """torchvision's window attention (same parameters, buffers and keys) that shifts at every feature size, as
    mmseg's ``ShiftWindowMSA`` and transformers' ``SwinBackbone`` do (:func:`shifted_window_attention`)."""

    def forward(self, x: Tensor) -> Tensor:
        return shifted_window_attention(x, self, self.window_size[0], self.shift_size[0])


class SwinFeatures(nn.Module):
    """The 4 stage outputs of a torchvision Swin ``features``, each layer-normed and permuted to NCHW.

    ``features`` is torchvision's Sequential (patch embedding, stage 1, merging, stage 2, ..., stage 4), kept
    whole so torchvision's keys hold; the input is padded to a multiple of the patch size first, and the outputs
    are taken after the blocks at ``stage_ends`` (1, 3, 5, 7).
    """

    def __init__(self, features: nn.Sequential, channels: list[int], patch_size: int = PATCH_SIZE) -> None:
        super().__init__()
        self.features = features
        self.stage_ends = (1, 3, 5, 7)
        self.out_norms = nn.ModuleList(nn.LayerNorm(c) for c in channels)
        self.out_channels = list(channels)
        self.patch_size = patch_size

    def forward(self, x: Tensor) -> list[Tensor]:
        x = pad_to_multiple(x, self.patch_size)
        outs = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.stage_ends:
                norm = self.out_norms[len(outs)]
                outs.append(norm(x).permute(0, 3, 1, 2).contiguous())
        return outs


def swin_features(variant: str, *, pretrained: bool | str = False, drop_path_rate: float = 0.3) -> SwinFeatures:
    """torchvision's Swin-``variant`` ("t", "s" or "b") as :class:`SwinFeatures`, its blocks' attention
    :class:`ShiftedWindowAttention`; ``drop_path_rate`` is the stochastic depth, increasing linearly over the
    blocks (torchvision's ``stochastic_depth_prob``)."""
    if variant not in SWINS:
        raise ValueError(f"Swin variant must be one of {', '.join(SWINS)}, got {variant!r}")
    embed, depths, num_heads, weights = SWINS[variant]
    swin = SwinTransformer(
        patch_size=[PATCH_SIZE, PATCH_SIZE], embed_dim=embed, depths=depths, num_heads=num_heads,
        window_size=[WINDOW_SIZE, WINDOW_SIZE], stochastic_depth_prob=drop_path_rate,
        block=partial(tv_swin.SwinTransformerBlock, attn_layer=ShiftedWindowAttention),
    )
    load_backbone_weights(swin, pretrained, torchvision_weights=weights)
    return SwinFeatures(swin.features, [embed * 2**i for i in range(4)])
