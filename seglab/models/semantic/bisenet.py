"""BiSeNet v1 (ResNet-18) and BiSeNet v2, laid out as CoinCheung/BiSeNet.

Papers: Yu et al., "BiSeNet: Bilateral Segmentation Network for Real-time Semantic Segmentation", ECCV 2018,
arXiv 1808.00897; Yu et al., "BiSeNet V2: Bilateral Network with Guided Aggregation for Real-time Semantic
Segmentation", IJCV 2021, arXiv 2004.02147. The layouts (and so the parameter counts) are those of
CoinCheung/BiSeNet (``bisenetv1.py``, ``bisenetv2.py``), the reference implementation of the counts.

BiSeNet v1: a spatial path (7x7 and two 3x3 stride-2 convs at 64 channels, 1x1 to 128: stride 8) beside a
context path on torchvision's ResNet-18 (``layer3``: stride 16, ``layer4``: stride 32). Each context feature
passes an Attention Refinement Module (3x3 conv to 128, channel attention from its global average); the
stride-32 one is summed with the global-average context (1x1 conv of the pooled ``layer4``), upsampled and
refined by a 3x3 conv, summed with the stride-16 one, upsampled and refined again (stride 8). The Feature
Fusion Module concatenates both paths, 1x1 conv to 256, and adds a channel-attention-weighted copy. The output
head is 3x3 conv 256 + 1x1 classifier, upsampled 8x. In training, two auxiliary heads (3x3 conv 64 + 1x1)
read the context path's stride-8 and stride-16 outputs. Deviation: the paper's small model is Xception39;
this is CoinCheung's ResNet-18 variant (the paper also reports a ResNet-18 model), built on torchvision's
ResNet-18 so its ImageNet weights load unchanged (``pretrained_backbone``).

BiSeNet v2: a detail branch (64-64 at stride 2, 64-64-64 at 4, 128-128-128 at 8), a semantic branch (stem
block to 16 channels at stride 4; gather-and-expansion layers, expansion 6, to 32 at stride 8, 64 at 16,
128 at 32; context embedding block), the bilateral guided aggregation layer, and a seg head (3x3 conv to 1024
channels, dropout 0.1, 1x1 classifier, upsampled 8x). In training, four booster heads read the stem and the
ends of GE stages 3, 4 and 5 (before the context embedding). As CoinCheung, and unlike the paper's figures:
ReLUs after some depthwise convs and after the aggregation conv, and a ConvBNReLU (not a plain conv) as the
last conv of the context embedding block; booster heads upsample 2x before a second 3x3 conv.

Both models pad the input to a multiple of 32 (zeros, right and bottom) and crop the logits back, so any
``H, W`` works. Eval mode returns the logits Tensor ``[B, K, H, W]``; train mode returns
``{"out": logits, "aux": [aux logits, ...]}``, all at the input size. The aux/booster heads (``aux_heads``)
are built in every mode, so they are counted by ``sum(p.numel())``.

Parameters at 19 classes (``sum(p.numel())``), equal to CoinCheung's:
bisenetv1_resnet18 13,425,721 with the two aux heads, 13,275,539 without (eval);
bisenetv2 5,231,487 with the four boosters, 3,358,627 without (eval).

mmsegmentation's BiSeNets (``mmseg/models/backbones/bisenetv1.py``, ``bisenetv2.py`` with ``FCNHead`` decode and
auxiliary heads, configs ``bisenetv1_r18-d32`` and ``bisenetv2``), which its released checkpoints need, are the
same networks but for a few layers; ``bisenetv1_resnet18_mmseg`` and ``bisenetv2_mmseg`` build them, with the
smallest change each (compared layer by layer; the converter is :mod:`seglab.convert.mmseg`):

- v1: the Feature Fusion Module's channel attention is 1x1 conv + BN + **ReLU** + sigmoid (mmseg's ``ConvModule``
  with its default activation; CoinCheung has no ReLU, so mmseg's attention weights are never below 0.5). All else
  matches: a plain ResNet-18 context path (mmseg's ``ResNet``, depth 18, ``style='pytorch'``: torchvision's stem,
  not the deep V1c stem, even in the ``in1k-pre`` configs), the same spatial path, ARMs, global context, and the
  FCN heads (3x3 conv 256 + 1x1; aux: 3x3 conv 64 + 1x1 on the stride-8 and stride-16 context outputs).
  Parameters 13,425,721 at 19 classes, as mmseg's and CoinCheung's (a ReLU has none).
- v2: the guided aggregation upsamples its stride-32 inputs **bilinearly** (CoinCheung: nearest), and its two
  depthwise-separable branches' 1x1 convs have a **bias** (mmseg's ``DepthwiseSeparableConvModule`` with no norm
  after the pointwise conv); the four boosters are mmseg's ``FCNHead(num_convs=2)``: two 3x3 ConvBNReLU at 16,
  64, 256, 1024 channels (stem, GE stages 3, 4, 5), dropout 0.1 and a 1x1 classifier, with no 2x upsampling
  (:class:`FCNBooster`). Parameters at 19 classes: 14,804,255 with the boosters, equal to mmseg's
  ``bisenetv2_fcn`` model; 3,358,883 without (CoinCheung's 3,358,627 plus the 256 biases).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from seglab.models.backbones.resnet import resnet_features
from seglab.models.layers import ConvBNAct, pad_to_multiple, resize_logits, seg_output
from seglab.registry import register_model

__all__ = [
    "AttentionRefinementModule",
    "BiSeNetV1",
    "BiSeNetV2",
    "BilateralGuidedAggregation",
    "ContextEmbedding",
    "FCNBooster",
    "FeatureFusionModule",
    "GatherExpansion",
    "StemBlock",
    "bisenetv1_resnet18",
    "bisenetv1_resnet18_mmseg",
    "bisenetv2",
    "bisenetv2_mmseg",
]


def _upsample(x: Tensor, size: torch.Size | tuple[int, int], mode: str = "bilinear") -> Tensor:
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def _channel_attention(feat: Tensor, conv: nn.Module, bn: nn.Module, relu: bool = False) -> Tensor:
    logits = bn(conv(feat.mean(dim=(2, 3), keepdim=True)))
    return torch.sigmoid(F.relu(logits) if relu else logits)


class _Outputs:
    """Shared tail of both models: upsample to the padded size, crop to the input, return as :func:`seg_output`
    (``aux`` is empty in eval mode)."""

    training: bool

    def _finish(self, logits: Tensor, aux: list[Tensor], padded: torch.Size, size: torch.Size) -> Tensor | dict:
        h, w = size

        def full(t: Tensor) -> Tensor:
            if t.shape[-2:] != padded:
                t = resize_logits(t, padded)
            return t[..., :h, :w]

        return seg_output(full(logits), [full(a) for a in aux], training=self.training)


# ---------------------------------------------------------------- BiSeNet v1


class AttentionRefinementModule(nn.Module):
    """3x3 conv, then channel attention from the global average (1x1 conv + BN + sigmoid) multiplies it."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels, out_channels, 3)
        self.conv_atten = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.conv(x)
        return feat * _channel_attention(feat, self.conv_atten, self.bn_atten)


class FeatureFusionModule(nn.Module):
    """Concatenate spatial and context features, 1x1 conv, and add the channel-attention-weighted copy.

    ``atten_relu``: a ReLU between the attention's BN and its sigmoid (mmseg's layout; CoinCheung has none).
    """

    def __init__(self, in_channels: int, out_channels: int, *, atten_relu: bool = False) -> None:
        super().__init__()
        self.fuse = ConvBNAct(in_channels, out_channels, 1)
        self.conv_atten = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_channels)
        self.atten_relu = atten_relu

    def forward(self, spatial: Tensor, context: Tensor) -> Tensor:
        feat = self.fuse(torch.cat([spatial, context], dim=1))
        return feat + feat * _channel_attention(feat, self.conv_atten, self.bn_atten, self.atten_relu)


class ContextPath(nn.Module):
    """ResNet-18 stride-16/32 features -> ARMs + global context -> stride-8 and stride-16 outputs (128 ch)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNAct(128, 128, 3)
        self.conv_head16 = ConvBNAct(128, 128, 3)
        self.conv_avg = ConvBNAct(512, 128, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.backbone(x)
        feat16, feat32 = feats["c4"], feats["c5"]
        global_context = self.conv_avg(feat32.mean(dim=(2, 3), keepdim=True))
        up32 = _upsample(self.arm32(feat32) + global_context, feat16.shape[-2:], "nearest")
        up32 = self.conv_head32(up32)
        stride8 = (feat16.shape[-2] * 2, feat16.shape[-1] * 2)
        up16 = self.conv_head16(_upsample(self.arm16(feat16) + up32, stride8, "nearest"))
        return up16, up32


class OutputHead(nn.Sequential):
    """3x3 ConvBNReLU to ``mid_channels`` + 1x1 classifier (the caller upsamples)."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int) -> None:
        super().__init__(ConvBNAct(in_channels, mid_channels, 3), nn.Conv2d(mid_channels, num_classes, 1))


class BiSeNetV1(_Outputs, nn.Module):
    """Spatial path + context path -> Feature Fusion Module -> output head; two aux heads in training.

    ``ffm`` replaces the default (CoinCheung's) Feature Fusion Module of 256 channels.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *, ffm: FeatureFusionModule | None = None) -> None:
        super().__init__()
        self.spatial_path = nn.Sequential(
            ConvBNAct(3, 64, 7, stride=2),
            ConvBNAct(64, 64, 3, stride=2),
            ConvBNAct(64, 64, 3, stride=2),
            ConvBNAct(64, 128, 1),
        )
        self.context_path = ContextPath(backbone)
        self.ffm = FeatureFusionModule(256, 256) if ffm is None else ffm
        self.head = OutputHead(256, 256, num_classes)
        self.aux_heads = nn.ModuleList([OutputHead(128, 64, num_classes), OutputHead(128, 64, num_classes)])

    def forward(self, x: Tensor) -> Tensor | dict:
        size = x.shape[-2:]
        x = pad_to_multiple(x, 32)
        context8, context16 = self.context_path(x)
        logits = self.head(self.ffm(self.spatial_path(x), context8))
        aux = [self.aux_heads[0](context8), self.aux_heads[1](context16)] if self.training else []
        return self._finish(logits, aux, x.shape[-2:], size)


# ---------------------------------------------------------------- BiSeNet v2


class StemBlock(nn.Module):
    """3x3/2 conv to 16; a 1x1-then-3x3/2 branch beside a 3x3/2 max pool; concatenated, 3x3 conv to 16."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = ConvBNAct(3, 16, 3, stride=2)
        self.left = nn.Sequential(ConvBNAct(16, 8, 1), ConvBNAct(8, 16, 3, stride=2))
        self.right = nn.MaxPool2d(3, stride=2, padding=1)
        self.fuse = ConvBNAct(32, 16, 3)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.conv(x)
        return self.fuse(torch.cat([self.left(feat), self.right(feat)], dim=1))


class GatherExpansion(nn.Module):
    """Gather-and-expansion layer: 3x3 conv, depthwise expansion (x6), 1x1 projection, residual, ReLU.

    With ``stride=2`` the expansion is a depthwise 3x3/2 followed by a depthwise 3x3, and the shortcut is a
    depthwise 3x3/2 + 1x1 projection.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, expansion: int = 6) -> None:
        super().__init__()
        mid = in_channels * expansion
        self.conv1 = ConvBNAct(in_channels, in_channels, 3)
        if stride == 1:
            self.dwconv = ConvBNAct(in_channels, mid, 3, groups=in_channels)
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.dwconv = nn.Sequential(
                ConvBNAct(in_channels, mid, 3, stride=2, groups=in_channels, act=None),
                ConvBNAct(mid, mid, 3, groups=mid),
            )
            self.shortcut = nn.Sequential(
                ConvBNAct(in_channels, in_channels, 3, stride=2, groups=in_channels, act=None),
                ConvBNAct(in_channels, out_channels, 1, act=None),
            )
        self.conv2 = ConvBNAct(mid, out_channels, 1, act=None)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv2(self.dwconv(self.conv1(x))) + self.shortcut(x))


class ContextEmbedding(nn.Module):
    """Global average + BN, 1x1 ConvBNReLU, added to the input, then a 3x3 ConvBNReLU."""

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.conv_gap = ConvBNAct(channels, channels, 1)
        self.conv_last = ConvBNAct(channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_last(x + self.conv_gap(self.bn(x.mean(dim=(2, 3), keepdim=True))))


class SemanticBranch(nn.Module):
    """Stem (stride 4, 16 ch) -> GE stages 3 (32 ch, /8), 4 (64, /16), 5 (128, /32) -> context embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = StemBlock()
        self.stage3 = nn.Sequential(GatherExpansion(16, 32, stride=2), GatherExpansion(32, 32))
        self.stage4 = nn.Sequential(GatherExpansion(32, 64, stride=2), GatherExpansion(64, 64))
        self.stage5 = nn.Sequential(GatherExpansion(64, 128, stride=2), *(GatherExpansion(128, 128) for _ in range(3)))
        self.context_embedding = ContextEmbedding(128)

    def forward(self, x: Tensor) -> list[Tensor]:
        stem = self.stem(x)
        s3 = self.stage3(stem)
        s4 = self.stage4(s3)
        s5 = self.stage5(s4)
        return [stem, s3, s4, s5, self.context_embedding(s5)]


class BilateralGuidedAggregation(nn.Module):
    """Detail (stride 8) and semantic (stride 32) features gate each other with sigmoids; summed, 3x3 conv.

    ``upsample``: how the stride-32 gates reach stride 8 (CoinCheung: ``"nearest"``; mmseg: ``"bilinear"``);
    ``pointwise_bias``: a bias on the 1x1 convs of the two depthwise-separable branches (mmseg's).
    """

    def __init__(self, channels: int = 128, *, upsample: str = "nearest", pointwise_bias: bool = False) -> None:
        super().__init__()
        c = channels
        self.detail_keep = nn.Sequential(
            ConvBNAct(c, c, 3, groups=c, act=None), nn.Conv2d(c, c, 1, bias=pointwise_bias)
        )
        self.detail_down = nn.Sequential(ConvBNAct(c, c, 3, stride=2, act=None), nn.AvgPool2d(3, 2, padding=1))
        self.semantic_up = ConvBNAct(c, c, 3, act=None)
        self.semantic_keep = nn.Sequential(
            ConvBNAct(c, c, 3, groups=c, act=None), nn.Conv2d(c, c, 1, bias=pointwise_bias)
        )
        self.conv = ConvBNAct(c, c, 3)
        self.upsample = upsample

    def forward(self, detail: Tensor, semantic: Tensor) -> Tensor:
        size = detail.shape[-2:]
        semantic_up = _upsample(self.semantic_up(semantic), size, self.upsample)
        left = self.detail_keep(detail) * torch.sigmoid(semantic_up)
        right = self.detail_down(detail) * torch.sigmoid(self.semantic_keep(semantic))
        return self.conv(left + _upsample(right, size, self.upsample))


class SegHead(nn.Module):
    """3x3 ConvBNReLU, dropout 0.1, 1x1 classifier; a booster adds a 2x upsample + 3x3 conv to ``up**2`` ch."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int, *, booster_up: int = 0) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels, mid_channels, 3)
        self.drop = nn.Dropout(0.1)
        self.booster_conv = ConvBNAct(mid_channels, booster_up**2, 3) if booster_up else None
        self.classifier = nn.Conv2d(booster_up**2 if booster_up else mid_channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.drop(self.conv(x))
        if self.booster_conv is not None:
            size = (feat.shape[-2] * 2, feat.shape[-1] * 2)
            feat = self.booster_conv(_upsample(feat, size, "nearest"))
        return self.classifier(feat)


class FCNBooster(nn.Sequential):
    """mmseg's BiSeNet v2 booster, ``FCNHead(num_convs=2)``: two 3x3 ConvBNReLU, dropout 0.1, 1x1 classifier."""

    def __init__(self, in_channels: int, channels: int, num_classes: int) -> None:
        super().__init__(
            ConvBNAct(in_channels, channels, 3),
            ConvBNAct(channels, channels, 3),
            nn.Dropout2d(0.1),
            nn.Conv2d(channels, num_classes, 1),
        )


class BiSeNetV2(_Outputs, nn.Module):
    """Detail branch + semantic branch -> guided aggregation -> seg head; four boosters in training.

    ``aggregation`` and ``aux_heads`` replace the default (CoinCheung's) guided aggregation and boosters.
    """

    def __init__(
        self,
        num_classes: int,
        head_channels: int = 1024,
        *,
        aggregation: BilateralGuidedAggregation | None = None,
        aux_heads: nn.ModuleList | None = None,
    ) -> None:
        super().__init__()
        self.detail_branch = nn.Sequential(
            ConvBNAct(3, 64, 3, stride=2),
            ConvBNAct(64, 64, 3),
            ConvBNAct(64, 64, 3, stride=2),
            ConvBNAct(64, 64, 3),
            ConvBNAct(64, 64, 3),
            ConvBNAct(64, 128, 3, stride=2),
            ConvBNAct(128, 128, 3),
            ConvBNAct(128, 128, 3),
        )
        self.semantic_branch = SemanticBranch()
        self.aggregation = BilateralGuidedAggregation(128) if aggregation is None else aggregation
        self.head = SegHead(128, head_channels, num_classes)
        self.aux_heads = aux_heads if aux_heads is not None else nn.ModuleList(
            [
                SegHead(16, 128, num_classes, booster_up=4),
                SegHead(32, 128, num_classes, booster_up=8),
                SegHead(64, 128, num_classes, booster_up=16),
                SegHead(128, 128, num_classes, booster_up=32),
            ]
        )

    def forward(self, x: Tensor) -> Tensor | dict:
        size = x.shape[-2:]
        x = pad_to_multiple(x, 32)
        *stages, semantic = self.semantic_branch(x)
        logits = self.head(self.aggregation(self.detail_branch(x), semantic))
        aux = [head(feat) for head, feat in zip(self.aux_heads, stages, strict=True)] if self.training else []
        return self._finish(logits, aux, x.shape[-2:], size)


# ---------------------------------------------------------------- factories


_COMMON = {"task": "semantic", "input_size": (1024, 2048), "paper_kwargs": {"num_classes": 19}}


@register_model(
    **_COMMON,
    paper="BiSeNet: Bilateral Segmentation Network for Real-time Semantic Segmentation",
    year=2018,
    url="https://arxiv.org/abs/1808.00897",
    paper_params=13_425_721,
)
def bisenetv1_resnet18(*, num_classes: int = 19, pretrained_backbone: bool | str = False) -> BiSeNetV1:
    """BiSeNet v1 with a ResNet-18 context path (CoinCheung's layout; 13,275,539 params without aux at 19)."""
    backbone = resnet_features(18, {"layer3": "c4", "layer4": "c5"}, pretrained=pretrained_backbone)
    return BiSeNetV1(backbone, num_classes)


@register_model(
    **_COMMON,
    paper="BiSeNet V2: Bilateral Network with Guided Aggregation for Real-time Semantic Segmentation",
    year=2021,
    url="https://arxiv.org/abs/2004.02147",
    paper_params=5_231_487,
)
def bisenetv2(*, num_classes: int = 19) -> BiSeNetV2:
    """BiSeNet v2 (CoinCheung's layout, head width 1024; 3,358,627 params without boosters at 19)."""
    return BiSeNetV2(num_classes)


@register_model(
    **_COMMON,
    paper="BiSeNet: Bilateral Segmentation Network for Real-time Semantic Segmentation",
    year=2018,
    url="https://arxiv.org/abs/1808.00897",
    paper_params=13_425_721,
)
def bisenetv1_resnet18_mmseg(*, num_classes: int = 19, pretrained_backbone: bool | str = False) -> BiSeNetV1:
    """BiSeNet v1 (ResNet-18) in mmsegmentation's layout: a ReLU before the FFM attention's sigmoid (see the module
    docstring); what mmseg's ``bisenetv1_r18-d32`` checkpoints load into. 13,425,721 params at 19 classes, as
    mmseg's."""
    backbone = resnet_features(18, {"layer3": "c4", "layer4": "c5"}, pretrained=pretrained_backbone)
    return BiSeNetV1(backbone, num_classes, ffm=FeatureFusionModule(256, 256, atten_relu=True))


@register_model(
    **_COMMON,
    paper="BiSeNet V2: Bilateral Network with Guided Aggregation for Real-time Semantic Segmentation",
    year=2021,
    url="https://arxiv.org/abs/2004.02147",
    paper_params=14_804_255,
)
def bisenetv2_mmseg(*, num_classes: int = 19) -> BiSeNetV2:
    """BiSeNet v2 in mmsegmentation's layout: bilinear upsampling and pointwise biases in the guided aggregation,
    FCN boosters (see the module docstring); what mmseg's ``bisenetv2_fcn`` checkpoints load into. 14,804,255
    params at 19 classes, as mmseg's (3,358,883 without the boosters)."""
    boosters = nn.ModuleList(
        FCNBooster(c_in, c, num_classes) for c_in, c in ((16, 16), (32, 64), (64, 256), (128, 1024))
    )
    aggregation = BilateralGuidedAggregation(128, upsample="bilinear", pointwise_bias=True)
    return BiSeNetV2(num_classes, aggregation=aggregation, aux_heads=boosters)
