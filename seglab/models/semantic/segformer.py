"""SegFormer B0-B5: a Mix Transformer (MiT) encoder and an all-MLP decoder.

Paper: Xie, Wang, Yu, Anandkumar, Alvarez, Luo, "SegFormer: Simple and Efficient Design for Semantic Segmentation
with Transformers", NeurIPS 2021, arXiv 2105.15203. Setting: the authors' NVlabs/SegFormer configs (mmseg 0.x),
as mmsegmentation 1.x and transformers' ``SegformerForSemanticSegmentation`` (the nvidia/segformer-b*-finetuned-*
checkpoints, which :mod:`seglab.convert.hf` converts) implement them; ADE20K, 150 classes.

Faithful: four stages of overlapping patch embeddings (conv 7x7 stride 4, then 3x3 stride 2, padding k // 2, and a
LayerNorm), each followed by transformer blocks and a LayerNorm on the stage output. A block is pre-norm
efficient self-attention (queries from every token; keys and values from the map reduced by a ``sr x sr`` conv of
stride ``sr``, sequence reduction ratios 8 / 4 / 2 / 1, then a LayerNorm; 1 / 2 / 5 / 8 heads) and a pre-norm
Mix-FFN (linear to 4x the width, a 3x3 depthwise conv with bias on the token map, GELU, linear back), each added
through stochastic depth rising linearly over all blocks to 0.1. Widths 32-64-160-256 (B0) or 64-128-320-512
(B1-B5); depths 2-2-2-2 (B0, B1), 3-4-6-3 (B2), 3-4-18-3 (B3), 3-8-27-3 (B4), 3-6-40-3 (B5). The decoder projects
each stage with a linear layer to 256 (B0, B1) or 768 (B2-B5) channels, upsamples them bilinearly
(``align_corners=False``) to stride 4, concatenates them from the deepest stage down, fuses them with a 1x1 conv
without bias + BN + ReLU, drops out 0.1 and classifies with a 1x1 conv. LayerNorms use eps 1e-5 (transformers';
mmseg's MiT uses 1e-6, a difference far below the logits' rounding in fp32 training). Attention and hidden dropout
are 0, as in every published config.

Deviations: the output contract is seglab's: logits at the input size (the decoder's stride-4 logits upsampled
bilinearly, ``align_corners=False``, as transformers' ``post_process_semantic_segmentation`` and mmseg's
``resize`` do). Attention runs through ``F.scaled_dot_product_attention`` (equal to the explicit softmax to float
rounding). The module names are seglab's; :mod:`seglab.convert.hf` maps transformers' names onto them. An input
side below 32 pixels, which stage 1's 8x8 key/value reduction cannot take (transformers and mmseg fail there), is
zero-padded to 32 and the logits cropped back (in eager mode; an ONNX export takes sides of at least 32).

Parameters at 150 classes (``sum(p.numel())``, equal to transformers' for the same configuration; the paper's
Table 1 rounds them to 3.8, 13.7, 27.5, 47.3, 64.1 and 84.7 million): see :data:`PARAMS`.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from seglab.checkpoint import load_into, read_state_dict
from seglab.models.backbones import local_weights_file
from seglab.models.layers import ConvBNAct, resize_logits
from seglab.registry import register_model

__all__ = ["MixTransformer", "SegFormer", "SegFormerHead", "load_mit_weights", "segformer"]

# variant -> (stage widths, depths, decoder width)
VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...], int]] = {
    "b0": ((32, 64, 160, 256), (2, 2, 2, 2), 256),
    "b1": ((64, 128, 320, 512), (2, 2, 2, 2), 256),
    "b2": ((64, 128, 320, 512), (3, 4, 6, 3), 768),
    "b3": ((64, 128, 320, 512), (3, 4, 18, 3), 768),
    "b4": ((64, 128, 320, 512), (3, 8, 27, 3), 768),
    "b5": ((64, 128, 320, 512), (3, 6, 40, 3), 768),
}
HEADS = (1, 2, 5, 8)
SR_RATIOS = (8, 4, 2, 1)
PATCH_SIZES = (7, 3, 3, 3)
STRIDES = (4, 2, 2, 2)
MLP_RATIO = 4
# the smallest input side the encoder takes: stage 1's 8x8 reduction conv needs a map of 8 (29 pixels); smaller
# inputs are zero-padded to this and the logits cropped back
MIN_SIZE = 32
# parameters at 150 classes, equal to transformers' SegformerForSemanticSegmentation built from the same config
PARAMS = {
    "b0": 3_752_694, "b1": 13_715_798, "b2": 27_461_974, "b3": 47_337_814, "b4": 64_108_374, "b5": 84_708_694,
}  # fmt: skip


class OverlapPatchEmbed(nn.Module):
    """Conv ``patch x patch`` with stride ``stride`` and padding ``patch // 2``, then a LayerNorm over channels;
    returns the tokens ``[B, H*W, C]`` and the map size."""

    def __init__(self, in_channels: int, channels: int, patch: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, channels, patch, stride=stride, padding=patch // 2)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


def _to_map(tokens: Tensor, h: int, w: int) -> Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys and values come from the token map reduced by a ``sr x sr`` conv of
    stride ``sr`` and a LayerNorm (no reduction at ``sr`` 1)."""

    def __init__(self, channels: int, heads: int, sr: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.sr = nn.Conv2d(channels, channels, sr, stride=sr) if sr > 1 else None
        self.sr_norm = nn.LayerNorm(channels) if sr > 1 else None
        self.proj = nn.Linear(channels, channels)

    def _split(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        kv = x
        if self.sr is not None and self.sr_norm is not None:
            kv = self.sr_norm(self.sr(_to_map(x, h, w)).flatten(2).transpose(1, 2))
        out = F.scaled_dot_product_attention(self._split(self.q(x)), self._split(self.k(kv)), self._split(self.v(kv)))
        return self.proj(out.transpose(1, 2).flatten(2))


class MixFFN(nn.Module):
    """Linear to ``hidden`` channels, a 3x3 depthwise conv (with bias) on the token map, GELU, linear back."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = self.dwconv(_to_map(self.fc1(x), h, w)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(x))


class MixBlock(nn.Module):
    """Pre-norm efficient self-attention and Mix-FFN, each added through stochastic depth."""

    def __init__(self, channels: int, heads: int, sr: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.attn = EfficientSelfAttention(channels, heads, sr)
        self.norm2 = nn.LayerNorm(channels)
        self.ffn = MixFFN(channels, channels * MLP_RATIO)
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.ffn(self.norm2(x), h, w))


class MixTransformer(nn.Module):
    """The MiT encoder: four stages of overlapping patch embedding, ``depths[i]`` :class:`MixBlock` and a
    LayerNorm; returns the four stage maps (strides 4, 8, 16, 32) as ``[B, C_i, H_i, W_i]``."""

    def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...], drop_path_rate: float = 0.1) -> None:
        super().__init__()
        self.out_channels = list(widths)
        rates = [drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]
        self.patch_embeds = nn.ModuleList()
        self.blocks = nn.ModuleList()
        self.norms = nn.ModuleList()
        in_channels, first = 3, 0
        for width, depth, heads, sr, patch, stride in zip(
            widths, depths, HEADS, SR_RATIOS, PATCH_SIZES, STRIDES, strict=True
        ):
            self.patch_embeds.append(OverlapPatchEmbed(in_channels, width, patch, stride))
            self.blocks.append(nn.ModuleList(MixBlock(width, heads, sr, rates[first + j]) for j in range(depth)))
            self.norms.append(nn.LayerNorm(width))
            in_channels, first = width, first + depth

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for embed, blocks, norm in zip(self.patch_embeds, self.blocks, self.norms, strict=True):
            tokens, h, w = embed(x)
            for block in blocks:
                tokens = block(tokens, h, w)
            x = _to_map(norm(tokens), h, w)
            features.append(x)
        return features


class SegFormerHead(nn.Module):
    """The all-MLP decoder: per-stage linear projection to ``width``, bilinear upsampling to stride 4,
    concatenation (deepest stage first), 1x1 conv + BN + ReLU fusion, dropout 0.1, 1x1 classifier."""

    def __init__(self, in_channels: list[int], width: int, num_classes: int) -> None:
        super().__init__()
        self.linear_c = nn.ModuleList(nn.Linear(c, width) for c in in_channels)
        self.fuse = ConvBNAct(width * len(in_channels), width, 1)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: list[Tensor]) -> Tensor:
        size = features[0].shape[-2:]
        maps = []
        for feature, linear in zip(features, self.linear_c, strict=True):
            h, w = feature.shape[-2:]
            projected = _to_map(linear(feature.flatten(2).transpose(1, 2)), h, w)
            maps.append(F.interpolate(projected, size=size, mode="bilinear", align_corners=False))
        return self.classifier(self.dropout(self.fuse(torch.cat(maps[::-1], dim=1))))


class SegFormer(nn.Module):
    """MiT encoder + all-MLP decoder; logits upsampled to the input size."""

    def __init__(self, backbone: MixTransformer, decode_head: SegFormerHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if not torch.jit.is_tracing() and (h < MIN_SIZE or w < MIN_SIZE):  # exported: sides >= MIN_SIZE
            x = F.pad(x, (0, max(MIN_SIZE - w, 0), 0, max(MIN_SIZE - h, 0)))
        return resize_logits(self.decode_head(self.backbone(x)), x.shape[-2:])[..., :h, :w]


# NVlabs/SegFormer's ImageNet-1K encoder files (mit_b0.pth ... mit_b5.pth; the README links them) -> seglab names
_MIT_RULES = [
    (r"^patch_embed(\d)\.", lambda m: f"patch_embeds.{int(m[1]) - 1}."),
    (r"^block(\d)\.", lambda m: f"blocks.{int(m[1]) - 1}."),
    (r"^norm(\d)\.", lambda m: f"norms.{int(m[1]) - 1}."),
    (r"\.attn\.norm\.", ".attn.sr_norm."),
    (r"\.mlp\.dwconv\.dwconv\.", ".ffn.dwconv."),
    (r"\.mlp\.fc(1|2)\.", r".ffn.fc\1."),
]
_MIT_KV = re.compile(r"^(.*)\.attn\.kv\.(weight|bias)$")


def load_mit_weights(backbone: MixTransformer, spec: bool | str | None, variant: str) -> None:
    """Load the authors' ImageNet-1K MiT encoder (NVlabs/SegFormer's ``mit_{variant}.pth``, a local path) into
    ``backbone``: their names mapped (``patch_embed{i}``, ``block{i}``, ``norm{i}`` -> stage ``i - 1``; the keys'
    and values' joint ``attn.kv`` split into ``attn.k`` and ``attn.v``), the classifier ``head.*`` dropped, read
    weights-only. ``True`` raises a CheckpointError saying where the file is published: seglab does not download
    it."""
    filename = f"mit_{variant}.pth"
    path = local_weights_file(spec, filename, f"NVlabs/SegFormer's {filename} (linked from its README)",
                              f"MiT-{variant.upper()} (SegFormer's encoder)")
    if path is None:
        return
    state, source = read_state_dict(path, "MiT")
    converted: dict[str, Tensor] = {}
    for key, tensor in state.items():
        if key.startswith("head."):
            continue
        for pattern, replacement in _MIT_RULES:
            key = re.sub(pattern, replacement, key)
        match = _MIT_KV.match(key)
        if match:
            k, v = tensor.chunk(2, dim=0)
            converted[f"{match[1]}.attn.k.{match[2]}"], converted[f"{match[1]}.attn.v.{match[2]}"] = k, v
        else:
            converted[key] = tensor
    load_into(backbone, converted, f"{source} (expected NVlabs' mit_{variant}.pth, the MiT-{variant.upper()} encoder)")


def segformer(
    variant: str, *, num_classes: int = 150, pretrained_backbone: bool | str = False, drop_path_rate: float = 0.1
) -> SegFormer:
    """SegFormer-``variant`` ("b0" ... "b5") with ``num_classes`` outputs; ``pretrained_backbone`` the path of the
    authors' ImageNet-1K encoder file (:func:`load_mit_weights`); ``drop_path_rate`` the encoder's stochastic depth
    at its last block (0.1 in every published config)."""
    if variant not in VARIANTS:
        raise ValueError(f"SegFormer variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    widths, depths, decoder_width = VARIANTS[variant]
    backbone = MixTransformer(widths, depths, drop_path_rate)
    load_mit_weights(backbone, pretrained_backbone, variant)
    return SegFormer(backbone, SegFormerHead(list(widths), decoder_width, num_classes))


_PAPER: dict[str, Any] = {
    "task": "semantic",
    "paper": "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers",
    "year": 2021,
    "input_size": (512, 512),
    "url": "https://arxiv.org/abs/2105.15203",
    "paper_kwargs": {"num_classes": 150},
}


@register_model(**_PAPER, paper_params=PARAMS["b0"])
def segformer_b0(**kwargs: Any) -> SegFormer:
    """SegFormer-B0 (MiT-B0: widths 32-64-160-256, depths 2-2-2-2; decoder 256); ``kwargs`` are
    :func:`segformer`'s (``num_classes``, ``pretrained_backbone``, ``drop_path_rate``)."""
    return segformer("b0", **kwargs)


@register_model(**_PAPER, paper_params=PARAMS["b1"])
def segformer_b1(**kwargs: Any) -> SegFormer:
    """SegFormer-B1 (MiT-B1: widths 64-128-320-512, depths 2-2-2-2; decoder 256); ``kwargs`` as
    :func:`segformer_b0`."""
    return segformer("b1", **kwargs)


@register_model(**_PAPER, paper_params=PARAMS["b2"])
def segformer_b2(**kwargs: Any) -> SegFormer:
    """SegFormer-B2 (MiT-B2: depths 3-4-6-3; decoder 768); ``kwargs`` as :func:`segformer_b0`."""
    return segformer("b2", **kwargs)


@register_model(**_PAPER, paper_params=PARAMS["b3"])
def segformer_b3(**kwargs: Any) -> SegFormer:
    """SegFormer-B3 (MiT-B3: depths 3-4-18-3; decoder 768); ``kwargs`` as :func:`segformer_b0`."""
    return segformer("b3", **kwargs)


@register_model(**_PAPER, paper_params=PARAMS["b4"])
def segformer_b4(**kwargs: Any) -> SegFormer:
    """SegFormer-B4 (MiT-B4: depths 3-8-27-3; decoder 768); ``kwargs`` as :func:`segformer_b0`."""
    return segformer("b4", **kwargs)


@register_model(**_PAPER, paper_params=PARAMS["b5"])
def segformer_b5(**kwargs: Any) -> SegFormer:
    """SegFormer-B5 (MiT-B5: depths 3-6-40-3; decoder 768); ``kwargs`` as :func:`segformer_b0`."""
    return segformer("b5", **kwargs)
