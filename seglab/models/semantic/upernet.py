"""UperNet on a Swin Transformer (Swin-T / S / B) or a ConvNeXt (ConvNeXt-T / S / B), as mmseg configures them.

Papers: Xiao, Liu, Zhou, Jiang, Sun, "Unified Perceptual Parsing for Scene Understanding", ECCV 2018, arXiv
1807.10221; Liu, Lin, Cao, Hu, Wei, Zhang, Lin, Guo, "Swin Transformer: Hierarchical Vision Transformer using
Shifted Windows", ICCV 2021, arXiv 2103.14030; Liu, Mao, Wu, Feichtenhofer, Darrell, Xie, "A ConvNet for the
2020s", CVPR 2022, arXiv 2201.03545. Setting: mmseg's ``configs/_base_/models/upernet_swin.py`` as used by
SwinTransformer/Swin-Transformer-Semantic-Segmentation, and mmseg's ``configs/convnext`` UperNet configs (ADE20K,
150 classes, 512x512 crops); the networks of transformers' ``UperNetForSemanticSegmentation`` (the
openmmlab/upernet-swin-* and upernet-convnext-* checkpoints, which :mod:`seglab.convert.hf` converts).

Faithful: the Swin backbone (:mod:`seglab.models.backbones.swin`) is torchvision's ``swin_t`` / ``swin_s`` /
``swin_b`` (patch 4, window 7; embed 96/96/128, depths 2-2-6-2 / 2-2-18-2 / 2-2-18-2), its ``features`` split
after each of the 4 stages (strides 4, 8, 16, 32), each stage output passed through its own LayerNorm (the
segmentation repo's ``out_indices`` norms) and permuted from NHWC to NCHW; torchvision's final ``norm`` and
classifier ``head`` are dropped. It pads inside as mmseg's and transformers' Swin do (input to a multiple of the
patch, odd sides before patch merging, each block's map to a multiple of the window, then cropped) and shifts the
windows at every size as they do (torchvision's classifier does not: see that module). Stochastic depth 0.3 (the
configs' ``drop_path_rate``), increasing linearly over the blocks. The ConvNeXt backbone
(:mod:`seglab.models.backbones.convnext`) is torchvision's ``convnext_tiny`` / ``_small`` / ``_base`` features
with a LayerNorm (eps 1e-6) on each stage output, drop path 0.4 / 0.3 / 0.4 and layer scale initialised to 1.0
(mmseg's configs). The UperHead (:class:`UperHead`): a PPM (pool scales 1, 2, 3, 6; 1x1 conv 512 + BN + ReLU each,
upsampled and concatenated with the last stage, then a 3x3 conv 512) on stage 4; 1x1 lateral convs (512) on stages
1-3; a top-down pathway adding the upsampled coarser level; 3x3 FPN convs (512) on levels 1-3; the 4 levels
upsampled to stride 4 and concatenated (4 x 512 channels), a 3x3 conv 512 bottleneck, dropout 0.1 and a 1x1
classifier. All convs of the head are conv + BN + ReLU without conv bias (mmseg's ``ConvModule``). The auxiliary FCN
head (:class:`AuxFCNHead`) on stage 3: one 3x3 conv 256 + BN + ReLU, dropout 0.1, 1x1 classifier (mmseg's
``FCNHead`` with ``num_convs=1, channels=256, concat_input=False``); its loss weight in the paper's setting is 0.4
(the training configuration's business, not the model's). The logits are upsampled bilinearly
(``align_corners=False``) to the input size. With equal weights, seglab's logits equal transformers' at every
input size (tests/test_convert_hf.py: 512x512, 224x224, 192x192, 512x224, 500x500, 200x296).

Deviations: the output contract is seglab's (eval: logits ``[B, K, H, W]`` at the input size; train: ``{"out":
logits, "aux": [aux_logits]}`` when ``aux_loss``). The backbones are torchvision's modules: its state dicts load
(``pretrained_backbone``), not mmseg's (different key names; same tensors). The PPM's adaptive pooling is
:class:`seglab.models.layers.AdaptiveAvgPool2d` (torch's bins, computed as products with averaging matrices; equal
to ``nn.AdaptiveAvgPool2d`` to float rounding), so the model exports to ONNX with a dynamic input size. An input
side below 32 pixels, which ConvNeXt's four strided convs cannot take (mmseg and transformers fail there), is
zero-padded to 32 and the logits cropped back (in eager mode; an ONNX export takes sides of at least 32).

Parameters at 150 classes with the aux head (``sum(p.numel())``): upernet_swin_t 59,941,862, upernet_swin_s
81,259,766, upernet_swin_b 121,279,716, equal to the reference counts: torchvision's Swin without its final norm
and head, plus the 4 output norms, has exactly the parameters of mmseg's Swin (the relative-position-bias tables
are ``(2*7-1)^2 x heads`` in both; only their key layout differs). upernet_convnext_t 60,242,636, upernet_convnext_s
81,877,196, upernet_convnext_b 122,102,956: equal to transformers' ``UperNetForSemanticSegmentation`` built from the
openmmlab/upernet-convnext-{tiny,small,base} configurations (counted in tests/test_convert_hf.py), and the 60M /
82M / 122M the ConvNeXt paper's ADE20K table gives for UperNet ConvNeXt-T / S / B (mmseg's configs/convnext README
lists no parameter counts). transformers' Swin UperNet has 1,536 / 1,536 / 2,048 more: the unused final LayerNorm
of its ``SwinModel``, which ``SwinBackbone`` never applies (the converter drops it).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab.models.backbones.convnext import convnext_features
from seglab.models.backbones.swin import swin_features
from seglab.models.layers import AdaptiveAvgPool2d, ConvBNAct, resize_logits, seg_output
from seglab.registry import register_model

__all__ = [
    "AuxFCNHead",
    "PyramidPoolingModule",
    "UperHead",
    "UperNet",
    "upernet_convnext",
    "upernet_convnext_b",
    "upernet_convnext_s",
    "upernet_convnext_t",
    "upernet_swin",
    "upernet_swin_b",
    "upernet_swin_s",
    "upernet_swin_t",
]


def _resize(x: Tensor, size: tuple[int, int] | Tensor) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class PyramidPoolingModule(nn.ModuleList):
    """PSPNet's pyramid pooling: per scale, adaptive average pooling to ``s x s`` and a 1x1 conv + BN + ReLU.

    Returns the branches' outputs upsampled to the input size (the caller concatenates them with the input).
    """

    def __init__(self, in_channels: int, channels: int, pool_scales: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__(
            nn.Sequential(AdaptiveAvgPool2d(s), ConvBNAct(in_channels, channels, 1))
            for s in pool_scales
        )
        self.pool_scales = tuple(pool_scales)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [_resize(branch(x), x.shape[-2:]) for branch in self]


class UperHead(nn.Module):
    """UperNet's decoder: PPM on the last level, an FPN over all levels, the levels fused by concatenation."""

    def __init__(
        self,
        in_channels: list[int],
        num_classes: int,
        *,
        channels: int = 512,
        pool_scales: tuple[int, ...] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.ppm = PyramidPoolingModule(in_channels[-1], channels, pool_scales)
        self.ppm_bottleneck = ConvBNAct(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvBNAct(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNAct(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvBNAct(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[Tensor]) -> Tensor:
        top = features[-1]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features[:-1], strict=True)]
        laterals.append(self.ppm_bottleneck(torch.cat([top, *self.ppm(top)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: add the upsampled coarser level
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1], strict=True)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([outs[0]] + [_resize(o, size) for o in outs[1:]], dim=1))
        return self.classifier(self.dropout(fused))


class AuxFCNHead(nn.Sequential):
    """mmseg's ``FCNHead(num_convs=1, channels=256)``: 3x3 conv + BN + ReLU, dropout 0.1, 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int, *, channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__(
            ConvBNAct(in_channels, channels, 3), nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1)
        )


class UperNet(nn.Module):
    """Backbone (4 levels) -> :class:`UperHead` (and the aux head on level 3 while training), at input size.

    The backbone takes the image as it is (Swin pads inside, ConvNeXt floors, as mmseg and transformers do); the
    logits are upsampled bilinearly to the input size. Only a side below ``min_size`` (32 for ConvNeXt, whose four
    strided convs need 32 pixels) is zero-padded (right, bottom) to it, the logits then cropped back.

    ``channels_last_inference = False`` tells the fast inference path (seglab.engine.fast) to keep NCHW: the head's
    3x3 conv over 2048 concatenated channels at 1/4 scale runs slower channels-last in fp32 (upernet_swin_t,
    512x512, 2 threads: 2935 ms channels-last vs 2657 ms NCHW, equal to eager; bf16 1453 vs 1436 ms).
    """

    channels_last_inference = False

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: UperHead,
        aux_head: nn.Module | None = None,
        *,
        min_size: int = 1,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.aux_head = aux_head
        self.min_size = min_size

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor | list[Tensor]]:
        h, w = x.shape[-2:]
        if not torch.jit.is_tracing() and (h < self.min_size or w < self.min_size):  # exported: sides >= min_size
            x = F.pad(x, (0, max(self.min_size - w, 0), 0, max(self.min_size - h, 0)))
        padded = x.shape[-2:]
        features = self.backbone(x)
        out = resize_logits(self.decode_head(features), padded)[..., :h, :w]
        aux = None
        if self.training and self.aux_head is not None:
            aux = [resize_logits(self.aux_head(features[2]), padded)[..., :h, :w]]
        return seg_output(out, aux, training=self.training)


def upernet_swin(
    variant: str,
    *,
    num_classes: int = 150,
    aux_loss: bool = True,
    pretrained_backbone: bool | str = False,
    drop_path_rate: float = 0.3,
) -> UperNet:
    """UperNet on torchvision's Swin ``variant`` ("t", "s" or "b"), with the aux FCN head on stage 3 when
    ``aux_loss`` (its loss weight is 0.4 in the paper's setting); ``drop_path_rate`` is the stochastic depth."""
    backbone = swin_features(variant, pretrained=pretrained_backbone, drop_path_rate=drop_path_rate)
    channels = backbone.out_channels
    decode_head = UperHead(channels, num_classes)
    aux_head = AuxFCNHead(channels[2], num_classes) if aux_loss else None
    return UperNet(backbone, decode_head, aux_head)


_PAPER = {
    "task": "semantic",
    "paper": "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows",
    "year": 2021,
    "input_size": (512, 512),
    "url": "https://arxiv.org/abs/2103.14030",
    "paper_kwargs": {"num_classes": 150},
}


@register_model(**_PAPER, paper_params=59_941_862)
def upernet_swin_t(**kwargs: Any) -> UperNet:
    """UperNet on Swin-T (embed 96, depths 2-2-6-2); ``kwargs`` are :func:`upernet_swin`'s (``num_classes``,
    ``aux_loss``, ``pretrained_backbone``, ``drop_path_rate``)."""
    return upernet_swin("t", **kwargs)


@register_model(**_PAPER, paper_params=81_259_766)
def upernet_swin_s(**kwargs: Any) -> UperNet:
    """UperNet on Swin-S (embed 96, depths 2-2-18-2); ``kwargs`` as :func:`upernet_swin_t`."""
    return upernet_swin("s", **kwargs)


@register_model(**_PAPER, paper_params=121_279_716)
def upernet_swin_b(**kwargs: Any) -> UperNet:
    """UperNet on Swin-B (embed 128, depths 2-2-18-2); ``kwargs`` as :func:`upernet_swin_t`."""
    return upernet_swin("b", **kwargs)


def upernet_convnext(
    variant: str,
    *,
    num_classes: int = 150,
    aux_loss: bool = True,
    pretrained_backbone: bool | str = False,
    drop_path_rate: float | None = None,
    layer_scale: float = 1.0,
) -> UperNet:
    """UperNet on torchvision's ConvNeXt ``variant`` ("t", "s" or "b"), with the aux FCN head on stage 3 when
    ``aux_loss``; ``drop_path_rate`` defaults to mmseg's config (0.4 / 0.3 / 0.4), ``layer_scale`` is the layer
    scale's initial value (mmseg's 1.0)."""
    backbone = convnext_features(
        variant, pretrained=pretrained_backbone, drop_path_rate=drop_path_rate, layer_scale=layer_scale
    )
    channels = backbone.out_channels
    decode_head = UperHead(channels, num_classes)
    aux_head = AuxFCNHead(channels[2], num_classes) if aux_loss else None
    return UperNet(backbone, decode_head, aux_head, min_size=32)


_CONVNEXT_PAPER = {
    **_PAPER,
    "paper": "A ConvNet for the 2020s",
    "year": 2022,
    "url": "https://arxiv.org/abs/2201.03545",
}


@register_model(**_CONVNEXT_PAPER, paper_params=60_242_636)
def upernet_convnext_t(**kwargs: Any) -> UperNet:
    """UperNet on ConvNeXt-T (widths 96-192-384-768, depths 3-3-9-3, drop path 0.4); ``kwargs`` are
    :func:`upernet_convnext`'s (``num_classes``, ``aux_loss``, ``pretrained_backbone``, ``drop_path_rate``,
    ``layer_scale``)."""
    return upernet_convnext("t", **kwargs)


@register_model(**_CONVNEXT_PAPER, paper_params=81_877_196)
def upernet_convnext_s(**kwargs: Any) -> UperNet:
    """UperNet on ConvNeXt-S (widths 96-192-384-768, depths 3-3-27-3, drop path 0.3); ``kwargs`` as
    :func:`upernet_convnext_t`."""
    return upernet_convnext("s", **kwargs)


@register_model(**_CONVNEXT_PAPER, paper_params=122_102_956)
def upernet_convnext_b(**kwargs: Any) -> UperNet:
    """UperNet on ConvNeXt-B (widths 128-256-512-1024, depths 3-3-27-3, drop path 0.4); ``kwargs`` as
    :func:`upernet_convnext_t`."""
    return upernet_convnext("b", **kwargs)
