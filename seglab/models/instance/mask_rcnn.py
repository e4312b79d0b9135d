"""Mask R-CNN on ResNet-50/101-FPN and MobileNetV3-Large-FPN, built from torchvision's detection parts.

Paper: He, Gkioxari, Dollar, Girshick, "Mask R-CNN", ICCV 2017, arXiv 1703.06870. The models are torchvision's
:class:`~torchvision.models.detection.MaskRCNN` (extension by composition: the backbone with FPN, RPN, box head
and the mask branch are torchvision's modules, nothing is forked), so torchvision's checkpoints load unchanged
(see :mod:`seglab.convert.torchvision`).

Contract (torchvision's detection contract): images are a list of ``Tensor[3, H, W]`` RGB scaled to 0-1, of any
sizes; the model normalises them with ImageNet mean/std and resizes them itself (``GeneralizedRCNNTransform``,
``min_size``/``max_size``), so callers must *not* normalise. Train: ``model(images, targets)`` with targets
``dict(boxes=Float[N, 4] xyxy, labels=Int64[N], masks=UInt8[N, H, W])`` returns a dict of losses. Eval:
``model(images)`` returns per image ``dict(boxes, labels, scores, masks=Float[N, 1, H, W])``, the mask
probabilities pasted into the image at its input size (threshold at 0.5 for binary masks).

Faithful to the paper (and torchvision): FPN features P2-P6, RoIAlign (bilinear, no quantisation, sampling
ratio 2), box head 7x7 -> 2 FC 1024, mask head 14x14 -> four 3x3 convs of 256 + ReLU -> 2x2 deconv stride 2 ->
28x28 per-class sigmoid masks, trained with binary cross-entropy on the ground-truth class only.

Deviations / choices: the backbone's BatchNorm is ``FrozenBatchNorm2d`` by default (statistics and affine are
buffers, as torchvision builds its COCO Mask R-CNN and the paper fine-tunes with frozen BN), so the state-dict keys
are those of torchvision's published ``maskrcnn_resnet50_fpn`` checkpoint. From random initialisation frozen BN
is the identity and the un-normalised features vanish (MobileNetV3) or blow up (ResNet): to train without a
pretrained backbone pass ``frozen_bn=False`` (plain trainable BatchNorm2d, which is what torchvision builds when
no weights are given). ``trainable_backbone_layers`` freezes the earlier stages as torchvision does with a
pretrained backbone (default 3: layer2-layer4 train).

Parameters at 91 classes (``sum(p.numel())``, frozen ones included): ``mask_rcnn_resnet50_fpn`` 44,401,393
(torchvision's ``MaskRCNN_ResNet50_FPN_Weights.COCO_V1`` num_params; ``maskrcnn_resnet50_fpn(weights=None)`` has
53,120 more because with no pretrained weights torchvision uses trainable BN, whose affine are parameters: the
count of ``frozen_bn=False``),
``mask_rcnn_resnet101_fpn`` 63,341,297 (ResNet-101's extra conv weights: +18,939,904),
``mask_rcnn_mobilenet_v3_fpn`` 22,032,461 (torchvision's ``fasterrcnn_mobilenet_v3_large_fpn`` 19,386,354 plus
the mask branch's 2,646,107, the same branch as on ResNet-50).

``mask_rcnn_mobilenet_v3_fpn`` is a light CPU model (not in the paper): torchvision's
``fasterrcnn_mobilenet_v3_large_fpn`` (FPN on the last two MobileNetV3-Large stages, strides 16 and 32, plus
max-pool; anchors (32..512) x (0.5, 1, 2) on each of the three levels; ``rpn_score_thresh`` 0.05) with the
standard mask branch (RoIAlign 14x14 on the FPN levels "0" and "1", four 256-channel convs), and smaller default
images (``min_size`` 320, ``max_size`` 640) for CPU speed.
"""

from __future__ import annotations

from typing import Any

from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

from seglab.models.backbones.fpn import build_fpn_backbone
from seglab.registry import register_model

__all__ = [
    "build_mask_rcnn",
    "mask_rcnn_mobilenet_v3_fpn",
    "mask_rcnn_resnet50_fpn",
    "mask_rcnn_resnet101_fpn",
]


def build_mask_rcnn(
    backbone: str,
    *,
    num_classes: int,
    pretrained_backbone: bool | str,
    trainable_layers: int,
    frozen_bn: bool,
    model_class: type[MaskRCNN] = MaskRCNN,
    **kwargs: Any,
) -> MaskRCNN:
    """``model_class`` (torchvision's ``MaskRCNN`` or a subclass taking its arguments) on the FPN ``backbone`` of
    :func:`~seglab.models.backbones.fpn.build_fpn_backbone`, the mask branch pooling the FPN levels the box
    branch pools (RoIAlign 14x14, sampling ratio 2) unless ``kwargs`` gives ``mask_roi_pool``."""
    body, featmap_names = build_fpn_backbone(
        backbone, pretrained_backbone=pretrained_backbone, trainable_layers=trainable_layers, frozen_bn=frozen_bn
    )
    mask_roi_pool = MultiScaleRoIAlign(featmap_names=featmap_names, output_size=14, sampling_ratio=2)
    kwargs.setdefault("mask_roi_pool", mask_roi_pool)
    return model_class(body, num_classes=num_classes, **kwargs)


_PAPER = {
    "task": "instance",
    "paper": "Mask R-CNN",
    "year": 2017,
    "input_size": (800, 1333),
    "url": "https://arxiv.org/abs/1703.06870",
    "paper_kwargs": {"num_classes": 91},
}


@register_model(**_PAPER, paper_params=44_401_393)
def mask_rcnn_resnet50_fpn(
    *, num_classes: int = 91, pretrained_backbone: bool | str = False, trainable_backbone_layers: int = 3,
    frozen_bn: bool = True, **kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN, ResNet-50-FPN: torchvision's ``maskrcnn_resnet50_fpn`` (same modules and state-dict keys).

    ``kwargs`` go to :class:`~torchvision.models.detection.MaskRCNN` (``min_size``, ``max_size``,
    ``box_score_thresh``, ``box_detections_per_img``, ...). 44,401,393 parameters at 91 classes (44,454,513 with
    ``frozen_bn=False``, torchvision's ``maskrcnn_resnet50_fpn(weights=None)``).
    """
    return build_mask_rcnn(
        "resnet50", num_classes=num_classes, pretrained_backbone=pretrained_backbone,
        trainable_layers=trainable_backbone_layers, frozen_bn=frozen_bn, **kwargs,
    )


@register_model(**_PAPER)
def mask_rcnn_resnet101_fpn(
    *, num_classes: int = 91, pretrained_backbone: bool | str = False, trainable_backbone_layers: int = 3,
    frozen_bn: bool = True, **kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN, ResNet-101-FPN (the paper's main backbone); 63,341,297 parameters at 91 classes."""
    return build_mask_rcnn(
        "resnet101", num_classes=num_classes, pretrained_backbone=pretrained_backbone,
        trainable_layers=trainable_backbone_layers, frozen_bn=frozen_bn, **kwargs,
    )


@register_model(**_PAPER)
def mask_rcnn_mobilenet_v3_fpn(
    *, num_classes: int = 91, pretrained_backbone: bool | str = False, trainable_backbone_layers: int = 3,
    frozen_bn: bool = True, **kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN on torchvision's MobileNetV3-Large FPN (a light CPU model); 22,032,461 parameters at 91 classes.

    Defaults to ``min_size=320, max_size=640`` and ``rpn_score_thresh=0.05`` (override through ``kwargs``).
    """
    anchor_sizes = ((32, 64, 128, 256, 512),) * 3
    kwargs.setdefault("rpn_anchor_generator", AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * len(anchor_sizes)))
    kwargs.setdefault("rpn_score_thresh", 0.05)
    kwargs.setdefault("min_size", 320)
    kwargs.setdefault("max_size", 640)
    return build_mask_rcnn(
        "mobilenet_v3_large", num_classes=num_classes, pretrained_backbone=pretrained_backbone,
        trainable_layers=trainable_backbone_layers, frozen_bn=frozen_bn, **kwargs,
    )
