"""Feature pyramid backbones for the detectors (Lin et al., "Feature Pyramid Networks for Object Detection",
CVPR 2017, arXiv 1612.03144): torchvision's ``BackboneWithFPN`` on ResNet-50/101 or MobileNetV3-Large, as its
``maskrcnn_resnet50_fpn`` and ``fasterrcnn_mobilenet_v3_large_fpn`` build them, so their checkpoints load unchanged.

Used by every R-CNN on an FPN: :mod:`seglab.models.instance.mask_rcnn`,
:mod:`seglab.models.instance.mask_scoring_rcnn` and :mod:`seglab.models.parsing.parsing_rcnn`.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models import (
    MobileNet_V3_Large_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
    WeightsEnum,
    mobilenet_v3_large,
    resnet50,
    resnet101,
)
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _mobilenet_extractor, _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

from seglab.errors import ConfigError
from seglab.models.backbones import load_backbone_weights

__all__ = ["FPN_BACKBONES", "build_fpn_backbone"]

# backbone name -> (torchvision builder, its weights enum, most trainable stages, FPN levels the RoI heads pool)
FPN_BACKBONES: dict[str, tuple[Any, type[WeightsEnum], int, list[str]]] = {
    "resnet50": (resnet50, ResNet50_Weights, 5, ["0", "1", "2", "3"]),
    "resnet101": (resnet101, ResNet101_Weights, 5, ["0", "1", "2", "3"]),
    "mobilenet_v3_large": (mobilenet_v3_large, MobileNet_V3_Large_Weights, 6, ["0", "1"]),
}


def _classification_network(backbone: str, pretrained_backbone: bool | str, frozen_bn: bool) -> nn.Module:
    """torchvision's classification network (FrozenBatchNorm2d or BatchNorm2d), its ImageNet weights loaded if asked."""
    build, weights, _, _ = FPN_BACKBONES[backbone]
    if not frozen_bn:
        network = build(weights=None, norm_layer=nn.BatchNorm2d)  # as torchvision's detection builders (eps 1e-5)
        load_backbone_weights(network, pretrained_backbone, torchvision_weights=weights)
        return network
    network = build(weights=None, norm_layer=FrozenBatchNorm2d)
    if pretrained_backbone is None or pretrained_backbone is False:
        return network
    # Published files are saved from plain BatchNorm (with num_batches_tracked): load them strictly into the
    # plain-BN network, then copy into the frozen one (FrozenBatchNorm2d drops num_batches_tracked on load).
    plain = build(weights=None)
    load_backbone_weights(plain, pretrained_backbone, torchvision_weights=weights)
    network.load_state_dict(plain.state_dict())
    return network


def build_fpn_backbone(
    backbone: str, *, pretrained_backbone: bool | str, trainable_layers: int, frozen_bn: bool = True
) -> tuple[BackboneWithFPN, list[str]]:
    """A torchvision FPN backbone (256 channels) and the names of the FPN levels the RoI heads pool.

    ``backbone`` is "resnet50", "resnet101" (FPN on layer1-4, as ``maskrcnn_resnet50_fpn``) or
    "mobilenet_v3_large" (FPN on the last two stages, as ``fasterrcnn_mobilenet_v3_large_fpn``).
    ``trainable_layers`` counts the stages that train, from the last (ResNet 0-5, MobileNetV3 0-6).
    ``frozen_bn`` picks FrozenBatchNorm2d (fine-tuning a pretrained backbone) or trainable BatchNorm2d.
    """
    if backbone not in FPN_BACKBONES:
        raise ConfigError(f"backbone: unknown FPN backbone {backbone!r}; expected one of {', '.join(FPN_BACKBONES)}")
    _, _, max_trainable, featmap_names = FPN_BACKBONES[backbone]
    if not isinstance(trainable_layers, int) or not 0 <= trainable_layers <= max_trainable:
        raise ConfigError(
            f"trainable_backbone_layers: expected an integer in [0, {max_trainable}] for {backbone}, "
            f"got {trainable_layers!r}"
        )
    network = _classification_network(backbone, pretrained_backbone, frozen_bn)
    if backbone.startswith("resnet"):
        body = _resnet_fpn_extractor(network, trainable_layers)
    else:
        body = _mobilenet_extractor(network, True, trainable_layers)
    return body, list(featmap_names)
