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
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.segmentation.fcn import FCNHead

from seglab.models.backbones.resnet import resnet_features
from seglab.models.layers import resize_logits, seg_output
from seglab.registry import register_model

__all__ = ["SimpleSegmentationModel", "fcn_resnet50", "fcn_resnet101"]


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
