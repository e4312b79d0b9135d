"""MobileNetV3 backbones (Howard et al., "Searching for MobileNetV3", ICCV 2019, arXiv 1905.02244) for dense
prediction: torchvision's ``mobilenet_v3_large`` / ``mobilenet_v3_small`` ``features``, its last stage dilated
(output stride 16) as torchvision's segmentation models build it, so their published weights load unchanged.

Used by :mod:`seglab.models.semantic.deeplabv3` (ASPP on C5, aux head on C2) and
:mod:`seglab.models.semantic.lraspp` (C2 and C5). The detectors' MobileNetV3-FPN is
:mod:`seglab.models.backbones.fpn`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import nn
from torchvision.models import (
    MobileNet_V3_Large_Weights,
    MobileNet_V3_Small_Weights,
    MobileNetV3,
    WeightsEnum,
    mobilenet_v3_large,
    mobilenet_v3_small,
)
from torchvision.models._utils import IntermediateLayerGetter

from seglab.models.backbones import load_backbone_weights

__all__ = ["MOBILENET_V3", "mobilenet_v3_features", "mobilenet_v3_stages"]

# variant -> (torchvision builder, its weights enum)
MOBILENET_V3: dict[str, tuple[Callable[..., MobileNetV3], type[WeightsEnum]]] = {
    "large": (mobilenet_v3_large, MobileNet_V3_Large_Weights),
    "small": (mobilenet_v3_small, MobileNet_V3_Small_Weights),
}


def mobilenet_v3_stages(features: nn.Sequential) -> list[int]:
    """Indices of the blocks that end each stage of a torchvision MobileNetV3 ``features`` (C0 ... C5)."""
    return [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]


def mobilenet_v3_features(
    variant: str, return_stages: Mapping[int, str], *, pretrained: bool | str = False
) -> tuple[IntermediateLayerGetter, dict[str, int]]:
    """The dilated MobileNetV3-``variant`` ("large" or "small") ``features`` returning the named stages, and the
    channels of each returned feature.

    ``return_stages`` maps a stage (an index into C0 ... C5, negative from the last: -1 is C5 at stride 16, -4
    C2 at stride 8) to its output key. The modules keep torchvision's ``features`` indices as names.
    """
    build, weights = MOBILENET_V3[variant]
    mobilenet = build(weights=None, dilated=True)
    load_backbone_weights(mobilenet, pretrained, torchvision_weights=weights)
    features = mobilenet.features
    stages = mobilenet_v3_stages(features)
    positions = {stages[stage]: key for stage, key in return_stages.items()}
    backbone = IntermediateLayerGetter(features, return_layers={str(pos): key for pos, key in positions.items()})
    return backbone, {key: features[pos].out_channels for pos, key in positions.items()}
