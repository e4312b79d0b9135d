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
"""

from __future__ import annotations

from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, mobilenet_v3_large
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead

from seglab.models.backbones import load_backbone_weights
from seglab.models.backbones.vgg import VGG16_STAGE_ENDS, vgg16
from seglab.models.semantic.fcn_resnet import SimpleSegmentationModel, dilated_resnet
from seglab.registry import register_model

__all__ = [
    "ASPP",
    "DeepLabHead",
    "deeplabv3_mobilenet_v3_large",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv3_vgg16",
    "dilated_vgg16_features",
]

# Atrous rates of the three 3x3 ASPP branches at each output stride (the paper doubles them at stride 8).
ATROUS_RATES = {8: (12, 24, 36), 16: (6, 12, 18)}


def mobilenet_v3_stages(features: nn.Sequential) -> list[int]:
    """Indices of the blocks that end each stage of a torchvision MobileNetV3 ``features`` (C0 ... C5)."""
    return [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]


def _deeplabv3_resnet(
    depth: int,
    *,
    num_classes: int,
    aux_loss: bool,
    output_stride: int,
    multi_grid: tuple[int, ...] | None,
    pretrained_backbone: bool | str,
) -> SimpleSegmentationModel:
    backbone = dilated_resnet(
        depth, output_stride=output_stride, aux=aux_loss, pretrained_backbone=pretrained_backbone,
        multi_grid=multi_grid,
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
def deeplabv3_resnet50(
    *,
    num_classes: int = 21,
    aux_loss: bool = True,
    output_stride: int = 8,
    multi_grid: tuple[int, ...] | None = None,
    pretrained_backbone: bool | str = False,
) -> SimpleSegmentationModel:
    """DeepLabv3 on a dilated ResNet-50 (torchvision's ``deeplabv3_resnet50`` at the defaults)."""
    return _deeplabv3_resnet(
        50, num_classes=num_classes, aux_loss=aux_loss, output_stride=output_stride, multi_grid=multi_grid,
        pretrained_backbone=pretrained_backbone,
    )


@register_model(**_PAPER, paper_params=60_996_202)
def deeplabv3_resnet101(
    *,
    num_classes: int = 21,
    aux_loss: bool = True,
    output_stride: int = 8,
    multi_grid: tuple[int, ...] | None = None,
    pretrained_backbone: bool | str = False,
) -> SimpleSegmentationModel:
    """DeepLabv3 on a dilated ResNet-101 (torchvision's ``deeplabv3_resnet101`` at the defaults)."""
    return _deeplabv3_resnet(
        101, num_classes=num_classes, aux_loss=aux_loss, output_stride=output_stride, multi_grid=multi_grid,
        pretrained_backbone=pretrained_backbone,
    )


@register_model(**_PAPER, paper_params=11_029_328)
def deeplabv3_mobilenet_v3_large(
    *, num_classes: int = 21, aux_loss: bool = True, pretrained_backbone: bool | str = False
) -> SimpleSegmentationModel:
    """DeepLabv3 on the dilated MobileNetV3-Large (stride 16): ASPP on C5, the aux FCN head on C2 (stride 8)."""
    mobilenet = mobilenet_v3_large(weights=None, dilated=True)
    load_backbone_weights(mobilenet, pretrained_backbone, torchvision_weights=MobileNet_V3_Large_Weights)
    features = mobilenet.features
    stages = mobilenet_v3_stages(features)
    out_pos, aux_pos = stages[-1], stages[-4]
    return_layers = {str(out_pos): "out"}
    if aux_loss:
        return_layers[str(aux_pos)] = "aux"
    backbone = IntermediateLayerGetter(features, return_layers=return_layers)
    classifier = DeepLabHead(features[out_pos].out_channels, num_classes)
    aux_classifier = FCNHead(features[aux_pos].out_channels, num_classes) if aux_loss else None
    return SimpleSegmentationModel(backbone, classifier, aux_classifier)


def dilated_vgg16_features(*, pretrained_backbone: bool | str = False) -> IntermediateLayerGetter:
    """torchvision's VGG16 ``features`` at output stride 8, as DeepLab-LargeFOV (v1/v2) sets them.

    pool4 and pool5 become 3x3 max-pools with stride 1 and padding 1, and conv5_1..conv5_3 are dilated 2
    (padding 2), so pool5 ("out", 512 channels) is at 1/8 of the input. The weights are torchvision's
    (``pretrained_backbone`` loads a torchvision VGG16 state dict; its classifier is dropped).
    """
    features = vgg16(pretrained=pretrained_backbone).features
    for index in (VGG16_STAGE_ENDS["pool4"] - 1, VGG16_STAGE_ENDS["pool5"] - 1):
        features[index] = nn.MaxPool2d(3, stride=1, padding=1)
    for layer in features[VGG16_STAGE_ENDS["pool4"] : VGG16_STAGE_ENDS["pool5"]]:
        if isinstance(layer, nn.Conv2d):
            layer.dilation, layer.padding = (2, 2), (2, 2)
    return IntermediateLayerGetter(features, return_layers={str(VGG16_STAGE_ENDS["pool5"] - 1): "out"})


@register_model(**{**_PAPER, "input_size": (513, 513)})
def deeplabv3_vgg16(*, num_classes: int = 21, pretrained_backbone: bool | str = False) -> SimpleSegmentationModel:
    """DeepLabv3's ASPP head on a dilated VGG16 (output stride 8): a seglab design choice, not the paper's net.

    The paper uses ResNet; no official DeepLabv3-VGG16 exists. The backbone here is DeepLab v1/v2's VGG16
    (pool4/pool5 stride 1, conv5 dilated 2; :func:`dilated_vgg16_features`), the head torchvision's
    ``DeepLabHead(512)`` with the output-stride-8 rates 12/24/36, no aux head. 19,442,261 parameters at 21
    classes (VGG16 conv layers 14,714,688 + head 4,727,573).
    """
    backbone = dilated_vgg16_features(pretrained_backbone=pretrained_backbone)
    return SimpleSegmentationModel(backbone, DeepLabHead(512, num_classes, atrous_rates=ATROUS_RATES[8]))
