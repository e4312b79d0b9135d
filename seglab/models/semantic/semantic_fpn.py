"""Semantic FPN: the semantic segmentation branch of Panoptic FPN on a ResNet-50/101 feature pyramid.

Paper: Kirillov, Girshick, He, Dollár, "Panoptic Feature Pyramid Networks", CVPR 2019, arXiv 1901.02446.
The backbone is torchvision's ResNet (``weights=None``, so torchvision's ImageNet state dict loads unchanged),
its layer1..layer4 outputs (C2..C5, strides 4..32) taken by ``IntermediateLayerGetter``; the pyramid is
torchvision's ``FeaturePyramidNetwork`` (Lin et al., CVPR 2017: lateral 1x1 convs to 256 channels, nearest 2x
top-down path added element-wise, 3x3 output convs), giving P2..P5.

Faithful to the paper's semantic branch: each level is brought to 1/4 scale by repeated stages of 3x3 conv to
128 channels, GroupNorm (32 groups), ReLU and 2x bilinear upsampling (P5: 3 stages, P4: 2, P3: 1; P2: a single
conv stage without upsampling); the four 128-channel maps are **summed** element-wise, a 1x1 conv
(``predictor``) maps them to the classes, and the logits are upsampled 4x bilinearly.

Deviations: no P6 and no extra panoptic "other" class (semantic use only); no dropout. Inputs whose sides are
not multiples of 32 are zero-padded on the right and bottom inside ``forward`` (so every level is exactly twice
the next) and the logits are cropped back to the input size.

Parameters at 19 classes (``sum(p.numel())``): semantic_fpn_resnet50 28,478,675 (ResNet-50 without its fc
23,508,032; FPN 3,344,384; semantic branch 1,626,259), semantic_fpn_resnet101 47,470,803.

``semantic_fpn_resnet50_v1c`` / ``semantic_fpn_resnet101_v1c`` are mmsegmentation's ``fpn_r50`` / ``fpn_r101``
(configs/_base_/models/fpn_r50.py, configs/sem_fpn), so that its checkpoints load (see
:mod:`seglab.convert.mmseg.resnet`). Faithful to mmseg: its ResNetV1c (deep stem 32-32-64, strides 1, 2, 2, 2, no
dilation); its FPN neck (1x1 lateral and 3x3 output convs with bias and no norm, nearest top-down upsampling to
the next level's size: torchvision's ``FeaturePyramidNetwork`` computes the same); its ``FPNHead``: the scale
heads above with **BatchNorm** instead of GroupNorm, each level's output resized bilinearly to P2's size before
the sum (mmseg's ``resize``, a no-op where the sizes already agree), Dropout2d 0.1 before the 1x1 classifier. No
padding: mmseg's network takes any size, and so do these. No aux head (mmseg's configs have none). Deviations:
seglab's output contract only.

Parameters at 19 classes: semantic_fpn_resnet50_v1c 28,497,907 (ResNetV1c-50 without fc 23,527,264: its stem has
19,232 more than the 7x7 one), semantic_fpn_resnet101_v1c 47,490,035: the closed-form count of mmseg's layer list,
and equal to mmsegmentation 1.2.2's model built from ``fpn_r{50,101}_4xb2-80k_cityscapes-512x1024.py``, whose
converted weights give these models identical logits (random weights, CPU).
"""

from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork

from seglab.models.backbones.resnet import resnet_features, resnet_v1c_features
from seglab.models.layers import ConvBNAct, Norm, pad_to_multiple, resize_logits
from seglab.registry import register_model

__all__ = [
    "SemanticFPN", "SemanticFPNHead", "semantic_fpn_resnet50", "semantic_fpn_resnet50_v1c", "semantic_fpn_resnet101",
    "semantic_fpn_resnet101_v1c",
]

# Pyramid levels and their strides: P2 (1/4) ... P5 (1/32).
LEVEL_STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32}


_GROUP_NORM: Norm = partial(nn.GroupNorm, 32)


def scale_stage(in_channels: int, out_channels: int, *, upsample: bool, norm: Norm = _GROUP_NORM) -> nn.Sequential:
    """3x3 conv (no bias) + norm (GroupNorm(32) by default) + ReLU, then 2x bilinear upsampling when ``upsample``."""
    layers: list[nn.Module] = [*ConvBNAct(in_channels, out_channels, 3, norm=norm)]
    if upsample:
        layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
    return nn.Sequential(*layers)


class SemanticFPNHead(nn.Module):
    """Panoptic FPN's semantic branch: each level to 1/4 scale (128 ch), summed, 1x1 conv to the classes.

    Returns the logits at P2's scale, 1/4 of the input (the model upsamples them 4x). ``norm``: the scale stages'
    norm (GroupNorm(32), the paper's; mmseg: BN); ``dropout``: Dropout2d before the classifier (mmseg: 0.1);
    ``resize_levels``: resize each level's output bilinearly to P2's size before the sum, as mmsegmentation's
    ``FPNHead`` does, so input sides need not be multiples of 32 (without it the model pads its input). Always
    applied when set (a no-op where the sizes agree), so a traced/exported graph keeps it for every input size.
    """

    def __init__(
        self, in_channels: int, num_classes: int, *, channels: int = 128, norm: Norm = _GROUP_NORM,
        dropout: float = 0.0, resize_levels: bool = False,
    ) -> None:
        super().__init__()
        self.scale_heads = nn.ModuleDict()
        for level, stride in LEVEL_STRIDES.items():
            num_upsamples = (stride // 4).bit_length() - 1  # P2: 0, P3: 1, P4: 2, P5: 3
            stages = [
                scale_stage(in_channels if i == 0 else channels, channels, upsample=num_upsamples > 0, norm=norm)
                for i in range(max(num_upsamples, 1))
            ]
            self.scale_heads[level] = nn.Sequential(*stages)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.predictor = nn.Conv2d(channels, num_classes, 1)
        self.resize_levels = resize_levels

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        fused = None
        for level, head in self.scale_heads.items():
            out = head(features[level])
            if fused is None:
                fused = out
                continue
            if self.resize_levels:
                out = F.interpolate(out, size=fused.shape[-2:], mode="bilinear", align_corners=False)
            fused = fused + out
        return self.predictor(self.dropout(fused))


class SemanticFPN(nn.Module):
    """ResNet (C2..C5) -> FPN (P2..P5, 256 ch) -> :class:`SemanticFPNHead` -> 4x bilinear to the input size.

    The input is zero-padded to a multiple of ``size_divisor`` (1: not padded) and the logits cropped back.
    """

    def __init__(
        self, backbone: nn.Module, fpn: FeaturePyramidNetwork, head: SemanticFPNHead, *, size_divisor: int = 32
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.fpn = fpn
        self.head = head
        self.size_divisor = size_divisor

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        if self.size_divisor > 1:
            x = pad_to_multiple(x, self.size_divisor)
        pyramid = self.fpn(self.backbone(x))  # keys c2..c5 -> the same keys, P2..P5
        features = {f"p{i}": pyramid[f"c{i}"] for i in range(2, 6)}
        logits = resize_logits(self.head(features), x.shape[-2:])  # x padded: 4x the P2 size
        return logits[..., :height, :width]


def _semantic_fpn_resnet(depth: int, num_classes: int, pretrained_backbone: bool | str) -> SemanticFPN:
    return_layers = {"layer1": "c2", "layer2": "c3", "layer3": "c4", "layer4": "c5"}
    backbone = resnet_features(depth, return_layers, pretrained=pretrained_backbone)
    fpn = FeaturePyramidNetwork([256, 512, 1024, 2048], 256)
    return SemanticFPN(backbone, fpn, SemanticFPNHead(256, num_classes))


_PAPER = {
    "task": "semantic",
    "paper": "Panoptic Feature Pyramid Networks",
    "year": 2019,
    "input_size": (512, 1024),
    "url": "https://arxiv.org/abs/1901.02446",
    "paper_kwargs": {"num_classes": 19},
}


@register_model(**_PAPER)
def semantic_fpn_resnet50(*, num_classes: int = 19, pretrained_backbone: bool | str = False) -> SemanticFPN:
    """Panoptic FPN's semantic branch on torchvision's ResNet-50 and FPN (28,478,675 parameters at 19 classes)."""
    return _semantic_fpn_resnet(50, num_classes, pretrained_backbone)


@register_model(**_PAPER)
def semantic_fpn_resnet101(*, num_classes: int = 19, pretrained_backbone: bool | str = False) -> SemanticFPN:
    """Panoptic FPN's semantic branch on torchvision's ResNet-101 and FPN (47,470,803 parameters at 19 classes)."""
    return _semantic_fpn_resnet(101, num_classes, pretrained_backbone)


def _semantic_fpn_resnet_v1c(depth: int, num_classes: int, pretrained_backbone: bool | str) -> SemanticFPN:
    return_layers = {"layer1": "c2", "layer2": "c3", "layer3": "c4", "layer4": "c5"}
    backbone = resnet_v1c_features(depth, return_layers, pretrained=pretrained_backbone, output_stride=32)
    fpn = FeaturePyramidNetwork([256, 512, 1024, 2048], 256)
    head = SemanticFPNHead(256, num_classes, norm=nn.BatchNorm2d, dropout=0.1, resize_levels=True)
    return SemanticFPN(backbone, fpn, head, size_divisor=1)


@register_model(**_PAPER, paper_params=28_497_907)
def semantic_fpn_resnet50_v1c(*, num_classes: int = 19, pretrained_backbone: bool | str = False) -> SemanticFPN:
    """mmsegmentation's Semantic FPN on ResNetV1c-50 (``fpn_r50``): FPN neck, FPNHead with BN and dropout 0.1.
    ``pretrained_backbone``: open-mmlab's ``resnet50_v1c-2cccc1ad.pth`` (a local path)."""
    return _semantic_fpn_resnet_v1c(50, num_classes, pretrained_backbone)


@register_model(**_PAPER, paper_params=47_490_035)
def semantic_fpn_resnet101_v1c(*, num_classes: int = 19, pretrained_backbone: bool | str = False) -> SemanticFPN:
    """mmsegmentation's Semantic FPN on ResNetV1c-101 (``fpn_r101``); as :func:`semantic_fpn_resnet50_v1c`."""
    return _semantic_fpn_resnet_v1c(101, num_classes, pretrained_backbone)
