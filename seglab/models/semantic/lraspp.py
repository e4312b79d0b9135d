"""LR-ASPP (Lite Reduced ASPP) on MobileNetV3-Large and -Small.

Paper: Howard et al., "Searching for MobileNetV3", ICCV 2019, arXiv 1905.02244 (section 6.3, Figure 10).
``lraspp_mobilenet_v3_large`` is torchvision's model, so its published weights load unchanged (see
:mod:`seglab.convert.torchvision`); ``lraspp_mobilenet_v3_small`` is the same wiring on torchvision's
MobileNetV3-Small (torchvision has no such model, nor published weights for it).

Faithful to the paper and torchvision: the backbone's last stage is dilated (output stride 16); the head
(torchvision's ``LRASPPHead``) takes the stride-16 features through a 1x1 conv + BN + ReLU to 128 channels,
gated by a squeeze-excitation-like branch (global average pool, 1x1 conv, sigmoid), upsamples them to the
stride-8 features, and sums a 1x1 classifier on each; the sum is upsampled bilinearly to the input.

Deviations: torchvision's, not the paper's: the global pooling is a global average (the paper uses a large
strided average pool) and the last stage keeps its full width (the paper halves it for segmentation,
``reduced_tail``). The model has no aux head; it returns the logits Tensor in train and eval mode.

Parameters at 21 classes: lraspp_mobilenet_v3_large 3,221,538 (torchvision's ``num_params``);
lraspp_mobilenet_v3_small 1,077,954 (no reference count).
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.segmentation.lraspp import LRASPPHead

from seglab.models.backbones.mobilenetv3 import mobilenet_v3_features
from seglab.models.layers import resize_logits
from seglab.registry import register_model

__all__ = ["LRASPP", "LRASPPHead", "lraspp_mobilenet_v3_large", "lraspp_mobilenet_v3_small"]


class LRASPP(nn.Module):
    """MobileNetV3 features ("low": stride 8, "high": stride 16) -> ``LRASPPHead`` -> upsampled logits."""

    def __init__(
        self, backbone: nn.Module, low_channels: int, high_channels: int, num_classes: int, inter_channels: int = 128
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = LRASPPHead(low_channels, high_channels, num_classes, inter_channels)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.classifier(self.backbone(x))
        return resize_logits(logits, x.shape[-2:])


def _lraspp(variant: str, num_classes: int, pretrained_backbone: bool | str) -> LRASPP:
    backbone, channels = mobilenet_v3_features(variant, {-4: "low", -1: "high"}, pretrained=pretrained_backbone)
    return LRASPP(backbone, channels["low"], channels["high"], num_classes)


_PAPER = {
    "task": "semantic",
    "paper": "Searching for MobileNetV3",
    "year": 2019,
    "input_size": (520, 520),
    "url": "https://arxiv.org/abs/1905.02244",
    "paper_kwargs": {"num_classes": 21},
}


@register_model(**_PAPER, paper_params=3_221_538)
def lraspp_mobilenet_v3_large(*, num_classes: int = 21, pretrained_backbone: bool | str = False) -> LRASPP:
    """LR-ASPP on the dilated MobileNetV3-Large (torchvision's ``lraspp_mobilenet_v3_large``)."""
    return _lraspp("large", num_classes, pretrained_backbone)


@register_model(**_PAPER)
def lraspp_mobilenet_v3_small(*, num_classes: int = 21, pretrained_backbone: bool | str = False) -> LRASPP:
    """LR-ASPP on the dilated MobileNetV3-Small (the same wiring; not a torchvision model)."""
    return _lraspp("small", num_classes, pretrained_backbone)
