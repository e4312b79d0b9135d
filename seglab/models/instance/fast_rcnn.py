"""Fast R-CNN on VGG16.

Paper: Girshick, "Fast R-CNN", ICCV 2015, arXiv 1504.08083. Reference implementation: rbgirshick/fast-rcnn
(Caffe). Built from torchvision.models.detection parts: :class:`GeneralizedRCNNTransform`,
:class:`RoIHeads` (sampling, loss, post-processing), :class:`FastRCNNPredictor` and, optionally,
:class:`RegionProposalNetwork`.

Faithful to the paper:

- VGG16 up to conv5_3 (pool5 removed, stride 16); **RoIPool 7x7 at spatial scale 1/16** (max per bin,
  ``torchvision.ops.roi_pool``); fc6 4096 and fc7 4096, each with ReLU and dropout 0.5 as in VGG16's
  classifier and initialised from it when a backbone file is given; sibling heads ``cls_score``
  (``num_classes`` including background, softmax) and class-specific ``bbox_pred`` (4 x ``num_classes``).
- Loss: log loss + smooth-L1 on the ground-truth class's box (torchvision's ``fastrcnn_loss``).
- RoI sampling: 64 RoIs per image, 25% foreground (IoU >= 0.5); background RoIs have a maximum IoU with the
  ground truth in **[0.1, 0.5)** (``bg_iou_low``; torchvision's sampler alone would use [0, 0.5)). Proposals
  below 0.1 are ignored, except in an image without objects, where every proposal is background (otherwise
  such an image would give no RoI at all). Ground-truth boxes join the proposals in training.
- conv1_1 to conv2_2 are frozen (``requires_grad=False``); shorter side 600, longer side at most 1000.
- Test: per-class NMS at IoU 0.3 (the reference's ``TEST.NMS``), score threshold 0.05, 100 detections.
- :func:`compress_fc`: the paper's truncated SVD of fc6/fc7 (ranks 1024 and 256 in ``compress_net.py``):
  each Linear becomes a Linear ``Sigma_t V_t^T`` without bias followed by a Linear ``U_t`` with the bias.

Proposals are the paper's input: boxes per image in original image coordinates (e.g. selective search),
scaled here with the ratio the transform applied to the image. ``rpn=True`` adds torchvision's
RegionProposalNetwork on the conv5_3 map (3 sizes x 3 ratios, as in Faster R-CNN) so proposals may be
omitted; proposals that are given take precedence and the RPN is then not run.

Deviations: ImageNet mean/std normalisation in RGB (torchvision's VGG16 weights) instead of Caffe's BGR
mean; box regression targets are scaled by torchvision's fixed weights (10, 10, 5, 5) rather than by the
per-class statistics of the training set; one scale at test time (no image pyramid).

Parameters at 21 classes (``sum(p.numel())``, no RPN): 134,690,729 = convs 14,714,688 + fc6 102,764,544 +
fc7 16,781,312 + cls_score 86,037 + bbox_pred 344,148. ``rpn=True`` adds 2,382,893.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import box_iou, clip_boxes_to_image, roi_pool

from seglab.models.backbones.vgg import VGG16_STAGE_ENDS, vgg16
from seglab.registry import register_model

__all__ = [
    "FastRCNN",
    "FastRCNNRoIHeads",
    "RoIPool",
    "TwoFCHead",
    "compress_fc",
    "fast_rcnn_vgg16",
    "truncated_svd",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RoIPool(nn.Module):
    """RoI max pooling of one feature map, with ``MultiScaleRoIAlign``'s call signature (for RoIHeads).

    Each RoI is quantised to the feature grid at ``spatial_scale`` and split into ``output_size`` bins, each
    max-pooled (the paper's Section 2.1).
    """

    def __init__(self, featmap_name: str = "0", output_size: int = 7, spatial_scale: float = 1 / 16) -> None:
        super().__init__()
        self.featmap_name = featmap_name
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        return roi_pool(features[self.featmap_name], proposals, self.output_size, self.spatial_scale)


class TwoFCHead(nn.Module):
    """fc6 -> ReLU -> dropout -> fc7 -> ReLU -> dropout on flattened RoI features (VGG16's classifier)."""

    def __init__(self, fc6: nn.Linear, fc7: nn.Linear, dropout: float = 0.5) -> None:
        super().__init__()
        self.fc6, self.relu6, self.drop6 = fc6, nn.ReLU(inplace=True), nn.Dropout(dropout)
        self.fc7, self.relu7, self.drop7 = fc7, nn.ReLU(inplace=True), nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop6(self.relu6(self.fc6(x.flatten(1))))
        return self.drop7(self.relu7(self.fc7(x)))


class FastRCNNRoIHeads(RoIHeads):
    """torchvision's RoIHeads with the paper's background range: max IoU in [``bg_iou_low``, ``bg_iou_thresh``).

    Proposals below ``bg_iou_low`` are ignored (label -1) unless the image has no ground-truth box.
    """

    def __init__(self, *args: Any, bg_iou_low: float = 0.1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bg_iou_low = bg_iou_low

    def assign_targets_to_proposals(
        self, proposals: list[Tensor], gt_boxes: list[Tensor], gt_labels: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        matched_idxs, labels = super().assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        if self.bg_iou_low > 0:
            for boxes, gt, image_labels in zip(proposals, gt_boxes, labels, strict=True):
                if gt.numel() == 0:
                    continue
                max_iou = box_iou(gt, boxes).max(dim=0).values
                image_labels[(image_labels == 0) & (max_iou < self.bg_iou_low)] = -1
        return matched_idxs, labels


class FastRCNN(GeneralizedRCNN):
    """Fast R-CNN: a single-map backbone, RoIPool, a box head and the two sibling outputs.

    ``forward(images, targets=None, proposals=None)``: train -> dict of losses; eval ->
    ``list[dict(boxes, labels, scores)]`` in original image coordinates. ``proposals`` are per image, ``[K, 4]``
    ``(x1, y1, x2, y2)`` in original image coordinates; without them the RPN (``rpn``) proposes.

    Args:
        backbone: image -> one feature map of stride ``1 / spatial_scale`` (conv5_3 for VGG16).
        box_head: flattened pooled RoI features -> ``representation_size`` features (fc6/fc7).
        num_classes: classes including background.
        representation_size: output width of ``box_head``.
        rpn: optional RegionProposalNetwork on the backbone's map (key ``"0"``).
        bg_iou_low: lower bound of the background IoU range (0 gives torchvision's [0, 0.5)).
    """

    def __init__(
        self,
        backbone: nn.Module,
        box_head: nn.Module,
        *,
        num_classes: int,
        representation_size: int,
        rpn: RegionProposalNetwork | None = None,
        roi_output_size: int = 7,
        spatial_scale: float = 1 / 16,
        min_size: int | Sequence[int] = 600,
        max_size: int = 1000,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        box_batch_size_per_image: int = 64,
        box_positive_fraction: float = 0.25,
        box_fg_iou_thresh: float = 0.5,
        box_bg_iou_thresh: float = 0.5,
        bg_iou_low: float = 0.1,
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.3,
        box_detections_per_img: int = 100,
    ) -> None:
        roi_heads = FastRCNNRoIHeads(
            RoIPool("0", roi_output_size, spatial_scale),
            box_head,
            FastRCNNPredictor(representation_size, num_classes),
            box_fg_iou_thresh,
            box_bg_iou_thresh,
            box_batch_size_per_image,
            box_positive_fraction,
            None,  # bbox_reg_weights: torchvision's (10, 10, 5, 5)
            box_score_thresh,
            box_nms_thresh,
            box_detections_per_img,
            bg_iou_low=bg_iou_low,
        )
        min_size = (min_size,) if isinstance(min_size, int) else tuple(min_size)
        transform = GeneralizedRCNNTransform(min_size, max_size, list(image_mean), list(image_std))
        super().__init__(backbone, rpn, roi_heads, transform)

    def forward(  # type: ignore[override]
        self,
        images: list[Tensor],
        targets: list[dict[str, Tensor]] | None = None,
        proposals: list[Tensor] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training and targets is None:
            raise ValueError("Fast R-CNN in training mode needs targets: a list of dict(boxes, labels) per image")
        if proposals is None and self.rpn is None:
            raise ValueError(
                "Fast R-CNN without an RPN needs proposals: pass proposals=[Tensor[K, 4] (x1, y1, x2, y2) in "
                "original image coordinates] per image (e.g. selective search boxes), or build the model with "
                "rpn=True"
            )
        if proposals is not None and len(proposals) != len(images):
            raise ValueError(f"got {len(proposals)} proposal tensors for {len(images)} images; expected one per image")
        if proposals is not None:
            for i, boxes in enumerate(proposals):
                if boxes.dim() != 2 or boxes.shape[-1] != 4 or not boxes.is_floating_point():
                    raise ValueError(
                        f"proposals[{i}] must be a float Tensor[K, 4], got {boxes.dtype} of shape {tuple(boxes.shape)}"
                    )
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, targets = self.transform(images, targets)
        if targets is not None:
            for i, target in enumerate(targets):
                boxes = target["boxes"]
                if boxes.dim() != 2 or boxes.shape[-1] != 4:
                    raise ValueError(f"targets[{i}]['boxes'] must be Tensor[N, 4], got shape {tuple(boxes.shape)}")
                degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
                if degenerate.any():
                    bad = boxes[degenerate][0].tolist()
                    raise ValueError(f"targets[{i}]['boxes'] must have positive width and height, got {bad}")

        features = OrderedDict([("0", self.backbone(image_list.tensors))])
        losses: dict[str, Tensor] = {}
        if proposals is None:
            proposals, losses = self.rpn(image_list, features, targets)
        else:
            proposals = [
                clip_boxes_to_image(resize_boxes(boxes.to(features["0"]), original, resized), resized)
                for boxes, original, resized in zip(proposals, original_sizes, image_list.image_sizes, strict=True)
            ]
        detections, detector_losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)
        if self.training:
            return {**losses, **detector_losses}
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)


def truncated_svd(linear: nn.Linear, rank: int) -> nn.Sequential:
    """``linear`` as two Linears of rank ``rank``: ``Sigma_t V_t^T`` (no bias), then ``U_t`` with the bias.

    The best rank-``rank`` approximation of the weight in Frobenius norm (the paper's Section 3.1); at full
    rank (``min(in, out)``) the product equals the weight up to rounding.
    """
    weight = linear.weight.detach()
    if not 0 < rank <= min(weight.shape):
        raise ValueError(f"rank must be in 1..{min(weight.shape)} for a {tuple(weight.shape)} weight, got {rank}")
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    first = nn.Linear(linear.in_features, rank, bias=False)
    second = nn.Linear(rank, linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        first.weight.copy_(s[:rank, None] * vh[:rank])
        second.weight.copy_(u[:, :rank])
        if linear.bias is not None:
            second.bias.copy_(linear.bias)
    return nn.Sequential(first, second).to(weight.device, weight.dtype)


def compress_fc(model: FastRCNN, fc6_rank: int = 1024, fc7_rank: int = 256) -> FastRCNN:
    """Replace fc6 and fc7 of ``model``'s box head by their truncated SVDs (in place) for faster testing."""
    head = model.roi_heads.box_head
    head.fc6 = truncated_svd(head.fc6, fc6_rank)
    head.fc7 = truncated_svd(head.fc7, fc7_rank)
    return model


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


@register_model(
    task="instance",
    paper="Fast R-CNN",
    year=2015,
    input_size=(600, 1000),
    url="https://arxiv.org/abs/1504.08083",
    paper_kwargs={"num_classes": 21},
    paper_params=134_690_729,
)
def fast_rcnn_vgg16(
    *,
    num_classes: int = 21,
    pretrained_backbone: bool | str = False,
    rpn: bool = False,
    rpn_proposals: tuple[int, int] = (2000, 300),
    **kwargs: Any,
) -> FastRCNN:
    """Fast R-CNN with VGG16 (conv5_3, RoIPool 7x7, fc6/fc7 4096); ``kwargs`` go to :class:`FastRCNN`.

    ``pretrained_backbone`` loads torchvision's VGG16 ImageNet state dict (a local file path, or a weights
    name that torchvision downloads) into the convs and fc6/fc7. ``rpn=True`` adds an RPN on conv5_3 with
    anchors of sizes 128, 256, 512 and ratios 0.5, 1, 2, keeping ``rpn_proposals`` = (training, testing)
    proposals per image after NMS (Faster R-CNN's 2000 and 300).
    """
    vgg = vgg16(pretrained=pretrained_backbone)
    conv5_3 = vgg.features[: VGG16_STAGE_ENDS["pool5"] - 1]  # pool5 removed: stride 16
    _freeze(conv5_3[: VGG16_STAGE_ENDS["pool2"]])  # conv1_1 .. conv2_2
    box_head = TwoFCHead(vgg.classifier[0], vgg.classifier[3], dropout=vgg.classifier[2].p)
    proposer = None
    if rpn:
        anchors = AnchorGenerator(sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
        proposer = RegionProposalNetwork(
            anchors,
            RPNHead(512, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7,
            bg_iou_thresh=0.3,
            batch_size_per_image=256,
            positive_fraction=0.5,
            pre_nms_top_n={"training": 2000, "testing": 1000},
            post_nms_top_n={"training": rpn_proposals[0], "testing": rpn_proposals[1]},
            nms_thresh=0.7,
        )
    width = box_head.fc7.out_features
    return FastRCNN(conv5_3, box_head, num_classes=num_classes, representation_size=width, rpn=proposer, **kwargs)
