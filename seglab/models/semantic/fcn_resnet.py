"""FCN on a dilated ResNet-50/101, as torchvision defines it.

Paper: Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015,
arXiv 1411.4038. The model here is not the paper's VGG16 net (that is :mod:`seglab.models.semantic.fcn`) but
torchvision's ``fcn_resnet50`` / ``fcn_resnet101``, so that torchvision's published COCO-with-VOC-labels
weights load unchanged (see :mod:`seglab.convert.torchvision`).

Faithful to torchvision: ResNet with ``replace_stride_with_dilation=[False, True, True]`` (output stride 8);
``classifier`` an ``FCNHead`` on layer4 (3x3 conv to 512 channels, BN, ReLU, dropout 0.1, 1x1 conv to the
classes); with ``aux_loss`` an ``aux_classifier`` FCNHead on layer3 (1024 -> 256); both upsampled bilinearly to
the input. State-dict keys are torchvision's (``backbone.*``, ``classifier.*``, ``aux_classifier.*``).

Deviations: seglab's output contract instead of torchvision's dict: in eval mode the logits Tensor; in train
mode ``{"out": logits, "aux": [aux_logits]}`` when ``aux_loss``, else the Tensor. The aux head is skipped in
eval mode. ``aux_loss`` defaults to True (torchvision's published weights have it).

Parameters at 21 classes with the aux head (``sum(p.numel())``): fcn_resnet50 35,322,218,
fcn_resnet101 54,314,346, equal to torchvision's ``num_params``.

``fcn_resnet50_v1c`` / ``fcn_resnet101_v1c`` are mmsegmentation's ``fcn_r50-d8`` / ``fcn_r101-d8``
(configs/_base_/models/fcn_r50-d8.py), so that its Cityscapes, ADE20K and VOC checkpoints load (see
:mod:`seglab.convert.mmseg.resnet`). Faithful to mmseg: the backbone is its ResNetV1c (deep stem 32-32-64;
strides 1, 2, 1, 1 and rates 1, 1, 2, 4 with ``contract_dilation``: output stride 8;
:func:`~seglab.models.backbones.resnet.resnet_v1c`); the decode head is its ``FCNHead``
(:class:`MMSegFCNHead`: two 3x3 ConvModules 2048 -> 512 -> 512, the input concatenated back and fused by a third
3x3 ConvModule, ``conv_cat``; Dropout2d 0.1; a 1x1 ``conv_seg``); the auxiliary head on layer3 is an FCNHead
1024 -> 256 with one conv and no concatenation. A ConvModule is conv (no bias) + BN + ReLU: mmseg trains with
SyncBN, which is a plain BatchNorm2d at inference and in the state dict. Logits are upsampled bilinearly
(align_corners=False) to the input size, as mmseg's EncoderDecoder. Deviations: seglab's output contract (the
aux head runs in train mode only; mmseg uses it only for its loss, weighted 0.4, which is the trainer's
business); mmseg's 769x769 Cityscapes configs set align_corners=True, which these models do not.

Parameters (``sum(p.numel())``) at 19 classes (Cityscapes) with the aux head, as mmseg's checkpoints carry it:
fcn_resnet50_v1c 49,497,734; fcn_resnet101_v1c 68,489,862 (without it 47,133,043 and 66,125,171). mmseg's model
zoo publishes no count; these are the closed-form count of its layer list (ResNetV1c-50 without fc 23,527,264,
FCNHead 23,605,779, aux head 2,364,691) and equal the ``EncoderDecoder`` that mmsegmentation 1.2.2 builds from
``fcn_r{50,101}-d8_4xb2-40k_cityscapes-512x1024.py``, whose state dict, converted, gives these models identical
logits (checked on random weights, CPU).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.segmentation.fcn import FCNHead

from seglab.models.backbones.resnet import resnet_features, resnet_v1c_features
from seglab.models.layers import ConvBNAct, resize_logits, seg_output
from seglab.registry import register_model

__all__ = [
    "MMSegFCNHead", "SimpleSegmentationModel", "fcn_resnet50", "fcn_resnet50_v1c", "fcn_resnet101", "fcn_resnet101_v1c",
]


class SimpleSegmentationModel(nn.Module):
    """Backbone -> ``classifier`` (and ``aux_classifier`` while training), upsampled to the input size.

    ``backbone`` returns a dict with ``"out"`` (and ``"aux"`` when there is an aux head), as torchvision's
    ``_SimpleSegmentationModel`` expects; the attribute names are torchvision's, so its state dicts load.
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module, aux_classifier: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor | list[Tensor]]:
        size = x.shape[-2:]
        features = self.backbone(x)
        out = resize_logits(self.classifier(features["out"]), size)
        aux = None
        if self.training and self.aux_classifier is not None:
            aux = [resize_logits(self.aux_classifier(features["aux"]), size)]
        return seg_output(out, aux, training=self.training)


class MMSegFCNHead(nn.Module):
    """mmsegmentation's ``FCNHead``: ``num_convs`` 3x3 ConvBNAct to ``channels`` (``convs``), with
    ``concat_input`` the head's input concatenated to their output and fused by one more 3x3 ConvBNAct
    (``conv_cat``), then Dropout2d and a 1x1 conv to the classes (``conv_seg``). mmseg's names, so its state dict
    maps by renaming each ConvModule's ``conv``/``bn`` to ConvBNAct's ``0``/``1``. The aux head of mmseg's ResNet
    models is ``MMSegFCNHead(1024, K, channels=256, num_convs=1, concat_input=False)``."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        channels: int = 512,
        num_convs: int = 2,
        concat_input: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            *(ConvBNAct(in_channels if i == 0 else channels, channels, 3) for i in range(num_convs))
        )
        self.conv_cat = ConvBNAct(in_channels + channels, channels, 3) if concat_input else None
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.conv_seg(self.dropout(out))


def mmseg_aux_head(num_classes: int) -> MMSegFCNHead:
    """The auxiliary FCNHead of mmseg's ResNet FCN and DeepLabv3 models, on layer3 (1024 -> 256 -> classes)."""
    return MMSegFCNHead(1024, num_classes, channels=256, num_convs=1, concat_input=False)


def _fcn_resnet(depth: int, num_classes: int, aux_loss: bool, pretrained_backbone: bool | str) -> nn.Module:
    return_layers = {"layer4": "out", "layer3": "aux"} if aux_loss else {"layer4": "out"}
    backbone = resnet_features(depth, return_layers, pretrained=pretrained_backbone, output_stride=8)
    aux_classifier = FCNHead(1024, num_classes) if aux_loss else None
    return SimpleSegmentationModel(backbone, FCNHead(2048, num_classes), aux_classifier)


_PAPER = {
    "task": "semantic",
    "paper": "Fully Convolutional Networks for Semantic Segmentation",
    "year": 2015,
    "input_size": (520, 520),
    "url": "https://arxiv.org/abs/1411.4038",
    "paper_kwargs": {"num_classes": 21},
}


@register_model(**_PAPER, paper_params=35_322_218)
def fcn_resnet50(
    *, num_classes: int = 21, aux_loss: bool = True, pretrained_backbone: bool | str = False
) -> SimpleSegmentationModel:
    """FCN head on a dilated ResNet-50 (torchvision's ``fcn_resnet50``)."""
    return _fcn_resnet(50, num_classes, aux_loss, pretrained_backbone)


@register_model(**_PAPER, paper_params=54_314_346)
def fcn_resnet101(
    *, num_classes: int = 21, aux_loss: bool = True, pretrained_backbone: bool | str = False
) -> SimpleSegmentationModel:
    """FCN head on a dilated ResNet-101 (torchvision's ``fcn_resnet101``)."""
    return _fcn_resnet(101, num_classes, aux_loss, pretrained_backbone)


def _fcn_resnet_v1c(depth: int, num_classes: int, aux_loss: bool, pretrained_backbone: bool | str) -> nn.Module:
    return_layers = {"layer4": "out", "layer3": "aux"} if aux_loss else {"layer4": "out"}
    backbone = resnet_v1c_features(depth, return_layers, pretrained=pretrained_backbone, output_stride=8)
    aux_classifier = mmseg_aux_head(num_classes) if aux_loss else None
    return SimpleSegmentationModel(backbone, MMSegFCNHead(2048, num_classes), aux_classifier)


_MMSEG = {**_PAPER, "input_size": (512, 1024), "paper_kwargs": {"num_classes": 19}}


@register_model(**_MMSEG, paper_params=49_497_734)
def fcn_resnet50_v1c(
    *, num_classes: int = 19, aux_loss: bool = True, pretrained_backbone: bool | str = False
) -> SimpleSegmentationModel:
    """mmsegmentation's FCN on ResNetV1c-50-D8 (``fcn_r50-d8``): FCNHead with concat, aux FCNHead on layer3.
    ``pretrained_backbone``: open-mmlab's ``resnet50_v1c-2cccc1ad.pth`` (a local path)."""
    return _fcn_resnet_v1c(50, num_classes, aux_loss, pretrained_backbone)


@register_model(**_MMSEG, paper_params=68_489_862)
def fcn_resnet101_v1c(
    *, num_classes: int = 19, aux_loss: bool = True, pretrained_backbone: bool | str = False
) -> SimpleSegmentationModel:
    """mmsegmentation's FCN on ResNetV1c-101-D8 (``fcn_r101-d8``); as :func:`fcn_resnet50_v1c`."""
    return _fcn_resnet_v1c(101, num_classes, aux_loss, pretrained_backbone)
