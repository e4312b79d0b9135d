"""The CE2P network of SCHP (``AugmentCE2P``): deep-stem ResNet, PSP context, decoder, edge branch and fusion.

Paper: Li, Xu, Wei, Yang, "Self-Correction for Human Parsing", TPAMI 2020 (arXiv 1910.09777); the network is
CE2P (Ruan et al., "Devil in the Details: Towards Accurate Single and Multiple Human Parsing", AAAI 2019) as
written in SCHP's ``networks/AugmentCE2P.py``. The self-correction training lives in
:mod:`seglab.methods.self_correction`.

Faithful to SCHP:

- backbone (:class:`~seglab.models.backbones.resnet.DeepStemResNet`): ResNet with the deep stem (3x3/2 conv 64, 3x3
  64, 3x3 128, each BN + ReLU, 3x3/2 max-pool; layer1 takes 128 channels); layer4 has stride 1 and dilation 2 in
  *every* block (SCHP's multi-grid is (1, 1, 1)), so the context features are at 1/16 and layer1 at 1/4. The blocks
  are torchvision's ``Bottleneck`` / ``BasicBlock`` (stride on the 3x3 conv, as in SCHP);
- context: PSP (adaptive average pools 1, 2, 3, 6 -> 1x1 conv 512 + BN-act each, upsampled, concatenated with
  the input, 3x3 conv 512 + BN-act);
- decoder: context 1x1 -> 256, upsampled to layer1, concatenated with layer1 1x1 -> 48, two 1x1 256, 1x1 -> C;
- edge: layer1/2/3 each 1x1 -> 256 (+ BN-act), a shared 3x3 -> 2 per level, the three upsampled and fused by
  a 1x1 over 6 channels; the three 256-channel edge features are concatenated (768);
- fusion: concat(decoder feature 256, edge features 768) -> 1x1 256 + BN-act -> Dropout2d(0.1) -> 1x1 -> C;
- every "BN-act" of the head is SCHP's ``InPlaceABNSync`` with its default activation, leaky ReLU of slope 0.01
  (:class:`BatchNormAct2d` here); the backbone BNs have no activation of their own and are followed by ReLU;
- all bilinear resizing uses ``align_corners=True``, as SCHP does inside the network and in its evaluation.

Module names mirror SCHP's (``context_encoding``, ``decoder``, ``edge``), so a released checkpoint maps almost
key for key (:mod:`seglab.convert.schp`); the backbone sits under ``backbone.`` and SCHP's ``fushion`` is
spelt ``fusion``.

Deviations: plain ``BatchNorm2d`` instead of InPlaceABNSync (InPlaceABN scales by ``|weight| + eps``; the
converter folds that into the weight). ``schp_resnet50`` and ``schp_resnet18`` are not in SCHP (its training
script builds only ResNet-101): the same network on a shallower deep-stem ResNet, layer widths as the blocks
give them (ResNet-18: 64/128/256/512, edge inputs 64/128/256) and the head widths unchanged.
``pretrained_backbone`` loads CSAIL's deep-stem ImageNet files (``resnet101-imagenet.pth``, the file SCHP
starts from), which seglab never downloads.

Outputs: eval ``forward(x) -> logits [B, C, H, W]`` = the fusion output resized to the input; train
``{"out": fusion logits at 1/4, "aux": [decoder parsing logits at 1/4], "edge": edge logits [B, 2, h/4, w/4]}``.

Parameters (``sum(p.numel())``): schp_resnet101 66,723,928 at 20 classes (LIP), 66,722,900 at 18 (ATR),
66,717,246 at 7 (Pascal-Person-Part), equal to SCHP's network; schp_resnet50 47,731,800 and schp_resnet18
24,848,088 at 20 classes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from seglab.models.backbones.resnet import DeepStemResNet, deep_stem_resnet
from seglab.models.layers import AdaptiveAvgPool2d, ConvBNAct, seg_output  # AdaptiveAvgPool2d: ONNX at any size
from seglab.registry import register_model

__all__ = [
    "CE2P",
    "BatchNormAct2d",
    "DecoderModule",
    "EdgeModule",
    "PSPModule",
    "schp_resnet18",
    "schp_resnet50",
    "schp_resnet101",
]

LEAKY_SLOPE = 0.01  # InPlaceABNSync's default activation: leaky_relu, slope 0.01


class BatchNormAct2d(nn.BatchNorm2d):
    """``BatchNorm2d`` then leaky ReLU (slope 0.01): SCHP's ``InPlaceABNSync`` with its default activation.

    A subclass rather than ``Sequential(bn, act)`` so the state-dict keys stay those of SCHP's single module.
    """

    def __init__(self, num_features: int, negative_slope: float = LEAKY_SLOPE) -> None:
        super().__init__(num_features)
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(super().forward(x), self.negative_slope)


def _conv_abn(in_channels: int, out_channels: int, kernel_size: int = 1) -> ConvBNAct:
    """Conv (no bias) + :class:`BatchNormAct2d`: SCHP's conv followed by ``InPlaceABNSync``. Its leaky ReLU is part
    of the norm layer, not a module after it (ConvBNAct's ``norm`` is BatchNormAct2d, ``act`` None), so the modules
    and keys map one to one onto SCHP's."""
    return ConvBNAct(in_channels, out_channels, kernel_size, norm=BatchNormAct2d, act=None)


def _resize(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class PSPModule(nn.Module):
    """Pyramid pooling (PSPNet): pooled 1x1 branches at ``bins``, concatenated with the input, 3x3 bottleneck."""

    def __init__(self, in_channels: int, out_channels: int = 512, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(AdaptiveAvgPool2d(b), *_conv_abn(in_channels, out_channels)) for b in bins
        )
        self.bottleneck = _conv_abn(in_channels + len(bins) * out_channels, out_channels, kernel_size=3)

    def forward(self, x: Tensor) -> Tensor:
        priors = [_resize(stage(x), x.shape[-2:]) for stage in self.stages]
        return self.bottleneck(torch.cat([*priors, x], dim=1))


class DecoderModule(nn.Module):
    """Context (1x1 -> 256, upsampled) concatenated with layer1 (1x1 -> 48), two 1x1 256, 1x1 classifier."""

    def __init__(self, num_classes: int, context_channels: int = 512, low_channels: int = 256, width: int = 256,
                 low_width: int = 48) -> None:
        super().__init__()
        self.conv1 = _conv_abn(context_channels, width)
        self.conv2 = _conv_abn(low_channels, low_width)
        self.conv3 = nn.Sequential(*_conv_abn(width + low_width, width), *_conv_abn(width, width))
        self.conv4 = nn.Conv2d(width, num_classes, 1)

    def forward(self, context: Tensor, low: Tensor) -> tuple[Tensor, Tensor]:
        """(parsing logits, the 256-channel decoder feature), both at ``low``'s resolution."""
        x = torch.cat([_resize(self.conv1(context), low.shape[-2:]), self.conv2(low)], dim=1)
        feature = self.conv3(x)
        return self.conv4(feature), feature


class EdgeModule(nn.Module):
    """Edge branch on layer1/2/3: 1x1 -> 256 each, a shared 3x3 -> 2 per level, a 1x1 fusing the 6 channels."""

    def __init__(self, in_channels: tuple[int, int, int] = (256, 512, 1024), mid_channels: int = 256,
                 out_channels: int = 2) -> None:
        super().__init__()
        self.conv1 = _conv_abn(in_channels[0], mid_channels)
        self.conv2 = _conv_abn(in_channels[1], mid_channels)
        self.conv3 = _conv_abn(in_channels[2], mid_channels)
        self.conv4 = nn.Conv2d(mid_channels, out_channels, 3, padding=1)  # shared by the three levels
        self.conv5 = nn.Conv2d(3 * out_channels, out_channels, 1)

    def forward(self, c2: Tensor, c3: Tensor, c4: Tensor) -> tuple[Tensor, Tensor]:
        """(edge logits, the three 256-channel edge features concatenated), at ``c2``'s resolution."""
        size = c2.shape[-2:]
        features = [conv(c) for conv, c in ((self.conv1, c2), (self.conv2, c3), (self.conv3, c4))]
        edges = [_resize(self.conv4(f), size) for f in features]  # the 3x3 runs at each level's own resolution
        features = [_resize(f, size) for f in features]
        return self.conv5(torch.cat(edges, dim=1)), torch.cat(features, dim=1)


class CE2P(nn.Module):
    """SCHP's CE2P: deep-stem ResNet -> PSP -> decoder with layer1, edge branch on layers 1-3, fusion."""

    def __init__(self, backbone: DeepStemResNet, num_classes: int = 20, head_width: int = 256) -> None:
        """``head_width`` is SCHP's 256 (PSP 512, decoder and edge features 256, layer1 reduced to 48); a smaller
        value scales every head width by ``head_width / 256`` (a light CPU head, not in the paper)."""
        super().__init__()
        if head_width < 16 or head_width % 16:
            raise ValueError(f"head_width must be a multiple of 16 (SCHP: 256), got {head_width}")
        c2, c3, c4, c5 = backbone.out_channels
        w = head_width
        self.num_classes = num_classes
        self.backbone = backbone
        self.context_encoding = PSPModule(c5, 2 * w)
        self.edge = EdgeModule((c2, c3, c4), mid_channels=w)
        self.decoder = DecoderModule(num_classes, 2 * w, c2, width=w, low_width=w * 48 // 256)
        self.fusion = nn.Sequential(
            *_conv_abn(w + 3 * w, w), nn.Dropout2d(0.1), nn.Conv2d(w, num_classes, 1)
        )

    #: forward takes ``output_size``: SCHP's test-time procedure (seglab.engine.affine) has the 1/4-resolution
    #: logits of a scaled input resized straight to the network's input size, as SCHP's evaluate.py does
    takes_output_size = True

    def forward(self, x: Tensor, output_size: tuple[int, int] | None = None
                ) -> Tensor | dict[str, Tensor | list[Tensor]]:
        """Eval mode: the fusion logits resized (bilinear, ``align_corners=True``) to ``output_size`` (default:
        the input's size). Train mode: the seg_output dict at 1/4 resolution (``output_size`` unused)."""
        c2, c3, c4, c5 = self.backbone(x)
        parsing, parsing_feature = self.decoder(self.context_encoding(c5), c2)
        edge, edge_feature = self.edge(c2, c3, c4)
        fusion = self.fusion(torch.cat([parsing_feature, edge_feature], dim=1))
        out = fusion if self.training else _resize(fusion, output_size or x.shape[-2:])
        return seg_output(out, [parsing], training=self.training, edge=edge)


def _ce2p(depth: int, num_classes: int, pretrained_backbone: bool | str, head_width: int = 256) -> CE2P:
    return CE2P(deep_stem_resnet(depth, pretrained=pretrained_backbone), num_classes, head_width)


_PAPER = {
    "task": "parsing",
    "paper": "Self-Correction for Human Parsing (SCHP, CE2P network)",
    "year": 2020,
    "input_size": (473, 473),
    "url": "https://arxiv.org/abs/1910.09777",
    "paper_kwargs": {"num_classes": 20},
}


@register_model(**_PAPER, paper_params=66_723_928)
def schp_resnet101(*, num_classes: int = 20, pretrained_backbone: bool | str = False) -> CE2P:
    """SCHP's network: CE2P on the deep-stem ResNet-101 (the released LIP/ATR/Pascal checkpoints convert to it)."""
    return _ce2p(101, num_classes, pretrained_backbone)


@register_model(**_PAPER)
def schp_resnet50(*, num_classes: int = 20, pretrained_backbone: bool | str = False) -> CE2P:
    """CE2P on the deep-stem ResNet-50 (not in SCHP)."""
    return _ce2p(50, num_classes, pretrained_backbone)


@register_model(**_PAPER)
def schp_resnet18(*, num_classes: int = 20, pretrained_backbone: bool | str = False, head_width: int = 256) -> CE2P:
    """CE2P on the deep-stem ResNet-18 (BasicBlock): the light CPU variant (not in SCHP); ``head_width`` below
    SCHP's 256 shrinks the head too (the parsing demo uses 64)."""
    return _ce2p(18, num_classes, pretrained_backbone, head_width)
