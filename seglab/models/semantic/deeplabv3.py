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
"""

from __future__ import annotations

from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, mobilenet_v3_large
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead

from seglab.models.backbones import load_backbone_weights
from seglab.models.semantic.fcn_resnet import SimpleSegmentationModel, dilated_resnet
from seglab.registry import register_model

__all__ = ["ASPP", "DeepLabHead", "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "deeplabv3_resnet101"]

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
