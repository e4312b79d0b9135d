"""DeepLabv3 on a dilated ResNet-50/101 or MobileNetV3-Large, as torchvision defines it.

Paper: Chen, Papandreou, Schroff, Adam, "Rethinking Atrous Convolution for Semantic Image Segmentation",
arXiv 1706.05587, 2017. Built as torchvision's ``deeplabv3_*`` so its published weights load unchanged (see
:mod:`seglab.convert.torchvision`).

Faithful to the paper and torchvision: ASPP with a 1x1 branch, three 3x3 atrous branches and image-level
pooling (global average pool, 1x1 conv, bilinear upsampling), each 256 channels with BN, concatenated and
projected by a 1x1 conv (then dropout 0.5); a 3x3 conv, BN, ReLU and a 1x1 classifier follow (torchvision's
``DeepLabHead``). The ResNet backbones run at output stride 8 (layer3 dilated 2, layer4 dilated 4) with atrous
rates 12/24/36, as the paper's evaluation setting and torchvision; ``output_stride=16`` (the paper's training
setting) dilates only layer4 (rate 2) and halves the rates to 6/12/18. ``multi_grid=(1, 2, 4)`` gives layer4's
three blocks the paper's Multi-grid rates (unit rate times the grid). MobileNetV3-Large is torchvision's dilated
one (output stride 16) with its default rates 12/24/36.

Deviations: torchvision's, not the paper's: no Multi-grid by default; the aux FCN head (on layer3, or on the
stride-8 MobileNetV3 stage) that torchvision's published weights carry (``aux_loss=True`` by default). The
output contract is seglab's (eval: the logits Tensor; train: ``{"out", "aux": [...]}`` with the aux head).

Parameters at 21 classes with the aux head: deeplabv3_resnet50 42,004,074, deeplabv3_resnet101 60,996,202,
deeplabv3_mobilenet_v3_large 11,029,328 (torchvision's ``num_params``).

``deeplabv3_vgg16`` is a documented design choice, not the paper's: no official DeepLabv3-VGG16 exists, so the
same ASPP head (rates 12/24/36, no aux head) sits on DeepLab v1/v2's VGG16 (pool4/pool5 3x3 stride 1 pad 1,
conv5 dilated 2: output stride 8). 19,442,261 parameters at 21 classes (VGG16 conv 14,714,688 + head).

``deeplabv3_resnet50_v1c`` / ``deeplabv3_resnet101_v1c`` are mmsegmentation's ``deeplabv3_r50-d8`` /
``deeplabv3_r101-d8`` (configs/_base_/models/deeplabv3_r50-d8.py), so that its checkpoints load (see
:mod:`seglab.convert.mmseg.resnet`). Faithful to mmseg: ResNetV1c at output stride 8 (as ``fcn_resnet50_v1c``);
its ``ASPPHead`` (:class:`MMSegASPPHead`): image pooling (global average, 1x1 ConvModule to 512, broadcast back
to the feature size), a 1x1 and three 3x3 ConvModules at rates 12, 24, 36 (``aspp_modules``, mmseg's
``dilations=(1, 12, 24, 36)``), all 512 channels, concatenated in that order (pooling first), a 3x3 ConvModule
``bottleneck`` 2560 -> 512, Dropout2d 0.1 and a 1x1 ``conv_seg``; the aux FCNHead 1024 -> 256 on layer3. It
differs from torchvision's head (256 channels, a 1x1 projection with dropout 0.5, then a 3x3 conv): mmseg's
is the paper's ASPP without the 1x1 projection, with the 3x3 fusion conv. Deviations: seglab's output contract;
the 769x769 Cityscapes configs' align_corners=True is not reproduced.

Parameters at 19 classes with the aux head: deeplabv3_resnet50_v1c 68,113,030; deeplabv3_resnet101_v1c
87,105,158 (without it 65,748,339 and 84,740,467; the ASPPHead alone 42,221,075). mmseg's model zoo gives no
count; these are the closed-form count of its layer list and equal mmsegmentation 1.2.2's model built from
``deeplabv3_r{50,101}-d8_4xb2-40k_cityscapes-512x1024.py``, whose converted weights give these models the same
logits to 3e-8 (the global average pool summed in another order; random weights, CPU).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead

from seglab.models.backbones.mobilenetv3 import mobilenet_v3_features
from seglab.models.backbones.resnet import resnet_features, resnet_v1c_features
from seglab.models.backbones.vgg import dilated_vgg16_features
from seglab.models.layers import AdaptiveAvgPool2d, ConvBNAct
from seglab.models.semantic.fcn_resnet import MMSegFCNHead, SimpleSegmentationModel, mmseg_aux_head
from seglab.registry import register_model

__all__ = [
    "ASPP",
    "DeepLabHead",
    "MMSegASPPHead",
    "deeplabv3_resnet50_v1c",
    "deeplabv3_resnet101_v1c",
    "deeplabv3_mobilenet_v3_large",
    "deeplabv3_resnet",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv3_vgg16",
]

# Atrous rates of the three 3x3 ASPP branches at each output stride (the paper doubles them at stride 8).
ATROUS_RATES = {8: (12, 24, 36), 16: (6, 12, 18)}


def deeplabv3_resnet(
    depth: int,
    *,
    num_classes: int = 21,
    aux_loss: bool = True,
    output_stride: int = 8,
    multi_grid: tuple[int, ...] | None = None,
    pretrained_backbone: bool | str = False,
) -> SimpleSegmentationModel:
    """DeepLabv3 on a dilated ResNet-``depth`` (50 or 101): torchvision's ``deeplabv3_resnet*`` at the defaults.

    ``output_stride`` 8 (atrous rates 12/24/36) or 16 (6/12/18); ``multi_grid`` e.g. ``(1, 2, 4)`` sets layer4's
    rates to the unit rate times the grid; ``aux_loss`` adds the FCN aux head on layer3.
    """
    if output_stride not in ATROUS_RATES:
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    return_layers = {"layer4": "out", "layer3": "aux"} if aux_loss else {"layer4": "out"}
    backbone = resnet_features(
        depth, return_layers, pretrained=pretrained_backbone, output_stride=output_stride, multi_grid=multi_grid
    )
    classifier = DeepLabHead(2048, num_classes, atrous_rates=ATROUS_RATES[output_stride])
    aux_classifier = FCNHead(1024, num_classes) if aux_loss else None
    return SimpleSegmentationModel(backbone, classifier, aux_classifier)


_PAPER = {
    "task": "semantic",
    "paper": "Rethinking Atrous Convolution for Semantic Image Segmentation",
    "year": 2017,
    "input_size": (520, 520),
    "url": "https://arxiv.org/abs/1706.05587",
    "paper_kwargs": {"num_classes": 21},
}


@register_model(**_PAPER, paper_params=42_004_074)
def deeplabv3_resnet50(**kwargs: Any) -> SimpleSegmentationModel:
    """DeepLabv3 on a dilated ResNet-50 (torchvision's ``deeplabv3_resnet50`` at the defaults); ``kwargs`` are
    :func:`deeplabv3_resnet`'s (``num_classes``, ``aux_loss``, ``output_stride``, ``multi_grid``,
    ``pretrained_backbone``)."""
    return deeplabv3_resnet(50, **kwargs)


@register_model(**_PAPER, paper_params=60_996_202)
def deeplabv3_resnet101(**kwargs: Any) -> SimpleSegmentationModel:
    """DeepLabv3 on a dilated ResNet-101 (torchvision's ``deeplabv3_resnet101`` at the defaults); ``kwargs`` as
    :func:`deeplabv3_resnet50`."""
    return deeplabv3_resnet(101, **kwargs)


@register_model(**_PAPER, paper_params=11_029_328)
def deeplabv3_mobilenet_v3_large(
    *, num_classes: int = 21, aux_loss: bool = True, pretrained_backbone: bool | str = False
) -> SimpleSegmentationModel:
    """DeepLabv3 on the dilated MobileNetV3-Large (stride 16): ASPP on C5, the aux FCN head on C2 (stride 8)."""
    return_stages = {-1: "out", -4: "aux"} if aux_loss else {-1: "out"}
    backbone, channels = mobilenet_v3_features("large", return_stages, pretrained=pretrained_backbone)
    classifier = DeepLabHead(channels["out"], num_classes)
    aux_classifier = FCNHead(channels["aux"], num_classes) if aux_loss else None
    return SimpleSegmentationModel(backbone, classifier, aux_classifier)


@register_model(**{**_PAPER, "input_size": (513, 513)})
def deeplabv3_vgg16(*, num_classes: int = 21, pretrained_backbone: bool | str = False) -> SimpleSegmentationModel:
    """DeepLabv3's ASPP head on a dilated VGG16 (output stride 8): a seglab design choice, not the paper's net.

    The paper uses ResNet; no official DeepLabv3-VGG16 exists. The backbone is DeepLab v1/v2's VGG16 (pool4/pool5
    stride 1, conv5 dilated 2; :func:`~seglab.models.backbones.vgg.dilated_vgg16_features`), the head
    torchvision's ``DeepLabHead(512)`` with the output-stride-8 rates 12/24/36, no aux head. 19,442,261
    parameters at 21 classes (VGG16 conv layers 14,714,688 + head 4,727,573).
    """
    backbone = dilated_vgg16_features(pretrained=pretrained_backbone)
    return SimpleSegmentationModel(backbone, DeepLabHead(512, num_classes, atrous_rates=ATROUS_RATES[8]))


class MMSegASPPHead(nn.Module):
    """mmsegmentation's ``ASPPHead``: ``image_pool`` (global average pool, 1x1 ConvBNAct) broadcast to the feature
    size, ``aspp_modules`` (a 1x1 ConvBNAct for rate 1, 3x3 atrous ConvBNAct for the others), concatenated with
    the pooled branch first, a 3x3 ConvBNAct ``bottleneck``, Dropout2d and a 1x1 ``conv_seg``. mmseg's names."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        channels: int = 512,
        dilations: tuple[int, ...] = (1, 12, 24, 36),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.image_pool = nn.Sequential(AdaptiveAvgPool2d(1), ConvBNAct(in_channels, channels, 1))
        self.aspp_modules = nn.ModuleList(
            ConvBNAct(in_channels, channels, 1 if rate == 1 else 3, dilation=rate) for rate in dilations
        )
        self.bottleneck = ConvBNAct((len(dilations) + 1) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        # mmseg resizes the 1x1 pooled map bilinearly, which from one pixel is this broadcast
        pooled = self.image_pool(x).expand(-1, -1, *x.shape[-2:])
        out = torch.cat([pooled, *(branch(x) for branch in self.aspp_modules)], dim=1)
        return self.conv_seg(self.dropout(self.bottleneck(out)))


def _deeplabv3_resnet_v1c(
    depth: int, num_classes: int, aux_loss: bool, pretrained_backbone: bool | str
) -> SimpleSegmentationModel:
    return_layers = {"layer4": "out", "layer3": "aux"} if aux_loss else {"layer4": "out"}
    backbone = resnet_v1c_features(depth, return_layers, pretrained=pretrained_backbone, output_stride=8)
    aux_classifier: MMSegFCNHead | None = mmseg_aux_head(num_classes) if aux_loss else None
    return SimpleSegmentationModel(backbone, MMSegASPPHead(2048, num_classes), aux_classifier)


_MMSEG = {**_PAPER, "input_size": (512, 1024), "paper_kwargs": {"num_classes": 19}}


@register_model(**_MMSEG, paper_params=68_113_030)
def deeplabv3_resnet50_v1c(
    *, num_classes: int = 19, aux_loss: bool = True, pretrained_backbone: bool | str = False
) -> SimpleSegmentationModel:
    """mmsegmentation's DeepLabv3 on ResNetV1c-50-D8 (``deeplabv3_r50-d8``): ASPPHead 512, aux FCNHead on layer3.
    ``pretrained_backbone``: open-mmlab's ``resnet50_v1c-2cccc1ad.pth`` (a local path)."""
    return _deeplabv3_resnet_v1c(50, num_classes, aux_loss, pretrained_backbone)


@register_model(**_MMSEG, paper_params=87_105_158)
def deeplabv3_resnet101_v1c(
    *, num_classes: int = 19, aux_loss: bool = True, pretrained_backbone: bool | str = False
) -> SimpleSegmentationModel:
    """mmsegmentation's DeepLabv3 on ResNetV1c-101-D8 (``deeplabv3_r101-d8``); as :func:`deeplabv3_resnet50_v1c`."""
    return _deeplabv3_resnet_v1c(101, num_classes, aux_loss, pretrained_backbone)
