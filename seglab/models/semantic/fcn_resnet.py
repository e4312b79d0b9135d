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
from torchvision.models import ResNet, ResNet50_Weights, ResNet101_Weights, resnet50, resnet101
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.fcn import FCNHead

from seglab.models.backbones import load_backbone_weights
from seglab.models.layers import resize_logits
from seglab.registry import register_model

__all__ = ["SimpleSegmentationModel", "dilated_resnet", "fcn_resnet50", "fcn_resnet101"]

_RESNETS = {50: (resnet50, ResNet50_Weights), 101: (resnet101, ResNet101_Weights)}


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
        if not self.training or self.aux_classifier is None:
            return out
        aux = resize_logits(self.aux_classifier(features["aux"]), size)
        return {"out": out, "aux": [aux]}


def dilated_resnet(
    depth: int,
    *,
    output_stride: int = 8,
    aux: bool,
    pretrained_backbone: bool | str = False,
    multi_grid: tuple[int, ...] | None = None,
) -> IntermediateLayerGetter:
    """torchvision's ResNet-``depth`` with dilated layer3/layer4, returning layer4 as "out" (layer3 as "aux").

    ``output_stride`` 8 dilates layer3 (rate 2) and layer4 (rate 4); 16 dilates only layer4 (rate 2).
    ``multi_grid`` (DeepLabv3's Multi-grid, e.g. ``(1, 2, 4)``) sets layer4's block rates to the unit rate times
    the grid; without it the rates are torchvision's.
    """
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    build, weights = _RESNETS[depth]
    resnet: ResNet = build(weights=None, replace_stride_with_dilation=[False, output_stride == 8, True])
    load_backbone_weights(resnet, pretrained_backbone, torchvision_weights=weights)
    if multi_grid is not None:
        blocks = list(resnet.layer4)
        if len(multi_grid) != len(blocks):
            raise ValueError(f"multi_grid needs {len(blocks)} rates (one per layer4 block), got {multi_grid}")
        unit_rate = 4 if output_stride == 8 else 2
        for block, grid in zip(blocks, multi_grid, strict=True):
            block.conv2.dilation = (unit_rate * grid,) * 2
            block.conv2.padding = (unit_rate * grid,) * 2
    return_layers = {"layer4": "out"}
    if aux:
        return_layers["layer3"] = "aux"
    return IntermediateLayerGetter(resnet, return_layers=return_layers)


def _fcn_resnet(depth: int, num_classes: int, aux_loss: bool, pretrained_backbone: bool | str) -> nn.Module:
    backbone = dilated_resnet(depth, aux=aux_loss, pretrained_backbone=pretrained_backbone)
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
