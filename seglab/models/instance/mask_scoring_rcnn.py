"""Mask Scoring R-CNN: Mask R-CNN plus a MaskIoU head that scores each mask by its predicted IoU.

Paper: Huang, Huang, Gong, Huang, Wang, "Mask Scoring R-CNN", CVPR 2019, arXiv 1903.00241 (reference code:
zjhuang22/maskscoring_rcnn on maskrcnn-benchmark).

Built by composition on torchvision's Mask R-CNN: :class:`MaskScoringRCNN` is a torchvision ``MaskRCNN`` whose
``roi_heads`` is a :class:`MaskScoringRoIHeads` (torchvision's ``RoIHeads`` plus a ``maskiou_head``), so every
submodule keeps its torchvision name and a torchvision ``maskrcnn_resnet50_fpn`` checkpoint loads with only the
``roi_heads.maskiou_head.*`` keys missing.

Faithful to the paper and its reference code:

- MaskIoU head input: the mask branch's RoI feature (the 256x14x14 ``mask_roi_pool`` output, before the mask
  convs, as in the reference) concatenated with the 2x2 max-pooled (28 -> 14) sigmoid mask of the target class:
  257 channels; four 3x3 convs of 256 + ReLU, the 4th with stride 2 (14 -> 7); FC 12544 -> 1024 -> 1024 + ReLU;
  FC 1024 -> num_classes (class-wise MaskIoU). The layer names are the reference's (``maskiou_fcn1``...).
- Target (:func:`maskiou_targets`): IoU of the predicted mask (target class, binarised) with the GT mask
  projected on the RoI, the union using the GT instance's full area (area inside the box / the fraction of the
  instance's pixels that lie inside the box, :func:`mask_ratios`).
- Loss ``loss_maskiou`` (:func:`maskiou_loss`, maskrcnn-benchmark's ``l2_loss`` as the MaskIoU head calls it):
  on the target class's MaskIoU of the positive RoIs, ``0.5 * (p - t)^2`` summed over the RoIs whose target IoU
  is above 0 and divided by their count (0 when there is none); RoIs with target 0 get no gradient. Weight 1.
- Inference: ``mask_scores`` = box score x predicted MaskIoU of the predicted class; ``scores`` stays the box
  score.

The predicted mask is binarised at logit > 0 (probability > 0.5), as in the reference.

Deviations: the mask ratio counts the instance's pixels from its mask (pixel centres inside the box), where the
reference measures polygon areas. The backbone is ``mask_rcnn_resnet50_fpn``'s: FrozenBatchNorm2d by default (as
maskrcnn-benchmark), trainable BatchNorm with ``frozen_bn=False``.

Parameters at 91 classes: MaskIoU head 16,351,579 (16,341,329 at 81); the model 60,752,972 = torchvision's
maskrcnn_resnet50_fpn 44,401,393 + the head; 60,806,092 with ``frozen_bn=False`` (+53,120 BN affine parameters).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.roi_heads import (
    RoIHeads,
    maskrcnn_inference,
    maskrcnn_loss,
    project_masks_on_boxes,
)

from seglab.models.instance.mask_rcnn import build_mask_rcnn
from seglab.models.roi_heads import BoxBranchRoIHeads, Detections, Sampled
from seglab.registry import register_model

__all__ = [
    "MaskIoUHead",
    "MaskScoringRCNN",
    "MaskScoringRoIHeads",
    "mask_ratios",
    "mask_scoring_rcnn_resnet50_fpn",
    "maskiou_loss",
    "maskiou_targets",
]


class MaskIoUHead(nn.Module):
    """RoI feature (C x 14 x 14) + max-pooled target-class mask (1 x 28 x 28) -> class-wise MaskIoU [N, K]."""

    def __init__(
        self, num_classes: int, in_channels: int = 256, conv_channels: int = 256, fc_channels: int = 1024,
        roi_size: int = 14,
    ) -> None:
        super().__init__()
        self.maskiou_fcn1 = nn.Conv2d(in_channels + 1, conv_channels, 3, padding=1)
        self.maskiou_fcn2 = nn.Conv2d(conv_channels, conv_channels, 3, padding=1)
        self.maskiou_fcn3 = nn.Conv2d(conv_channels, conv_channels, 3, padding=1)
        self.maskiou_fcn4 = nn.Conv2d(conv_channels, conv_channels, 3, stride=2, padding=1)
        out_size = (roi_size + 1) // 2
        self.maskiou_fc1 = nn.Linear(conv_channels * out_size * out_size, fc_channels)
        self.maskiou_fc2 = nn.Linear(fc_channels, fc_channels)
        self.maskiou = nn.Linear(fc_channels, num_classes)
        # The reference's initialisation: MSRA fill for the convs, Kaiming-uniform(a=1) for the FCs, N(0, 0.01)
        # for the predictor.
        for conv in (self.maskiou_fcn1, self.maskiou_fcn2, self.maskiou_fcn3, self.maskiou_fcn4):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        for fc in (self.maskiou_fc1, self.maskiou_fc2):
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.maskiou.weight, std=0.01)
        nn.init.zeros_(self.maskiou.bias)

    def forward(self, roi_features: Tensor, mask_probs: Tensor) -> Tensor:
        """``roi_features`` [N, C, 14, 14], ``mask_probs`` [N, 1, 28, 28] (sigmoid of the target class)."""
        x = torch.cat([roi_features, F.max_pool2d(mask_probs, kernel_size=2, stride=2)], dim=1)
        for conv in (self.maskiou_fcn1, self.maskiou_fcn2, self.maskiou_fcn3, self.maskiou_fcn4):
            x = F.relu(conv(x))
        x = F.relu(self.maskiou_fc1(x.flatten(1)))
        x = F.relu(self.maskiou_fc2(x))
        return self.maskiou(x)


def mask_ratios(gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor) -> Tensor:
    """Fraction of each matched GT instance's pixels that lie inside its RoI, in image pixels: Float[N].

    ``gt_masks`` [G, H, W] (nonzero = instance), ``boxes`` [N, 4] x1y1x2y2 in the same pixels, ``matched_idxs``
    [N] indices into ``gt_masks``. A pixel (y, x) is inside when its centre (x + 0.5, y + 0.5) is in the box.
    An empty instance gives 0.
    """
    height, width = gt_masks.shape[-2:]
    # Integral image, one per instance: integral[g, y, x] = pixels of instance g in rows < y, columns < x.
    integral = F.pad((gt_masks > 0).to(torch.float64).cumsum(1).cumsum(2), (1, 0, 1, 0))
    boxes = boxes.to(torch.float64)
    x0 = torch.ceil(boxes[:, 0] - 0.5).clamp(0, width).long()
    y0 = torch.ceil(boxes[:, 1] - 0.5).clamp(0, height).long()
    x1 = (torch.floor(boxes[:, 2] - 0.5) + 1).clamp(0, width).long().maximum(x0)
    y1 = (torch.floor(boxes[:, 3] - 0.5) + 1).clamp(0, height).long().maximum(y0)
    g = matched_idxs.long()
    inside = integral[g, y1, x1] - integral[g, y0, x1] - integral[g, y1, x0] + integral[g, y0, x0]
    total = integral[g, height, width]
    return (inside / total.clamp(min=1)).to(torch.float32)


def maskiou_targets(mask_logits_of_target_class: Tensor, mask_targets: Tensor, mask_ratios: Tensor) -> Tensor:
    """MaskIoU regression targets: Float[N].

    ``mask_logits_of_target_class`` [N, M, M] (binarised at logit > 0), ``mask_targets`` [N, M, M] (the GT mask
    projected on the RoI, binarised at >= 0.5), ``mask_ratios`` [N] (:func:`mask_ratios`). The GT's full area in
    RoI units is its area inside the RoI / ratio, so the IoU is I / (pred_area + full_gt_area - I).
    """
    pred = (mask_logits_of_target_class > 0).to(torch.float32)
    target = (mask_targets >= 0.5).to(torch.float32)
    intersection = (pred * target).sum(dim=(1, 2))
    full_gt_area = target.sum(dim=(1, 2)) / mask_ratios.to(torch.float32).clamp(min=1e-10)
    union = (pred.sum(dim=(1, 2)) + full_gt_area - intersection).clamp(min=1.0)
    return intersection / union


def maskiou_loss(predicted: Tensor, targets: Tensor) -> Tensor:
    """The reference's MaskIoU loss: ``0.5 * sum((p - t)^2) / n`` over the ``n`` RoIs whose target IoU ``t`` is
    above 0, and 0 (still connected to ``predicted``'s graph) when there is none. ``predicted`` and ``targets``
    are Float[N] (the target class's predicted MaskIoU and :func:`maskiou_targets`)."""
    kept = targets > 0
    count = int(kept.sum())
    if count == 0:
        return predicted.sum() * 0.0
    return 0.5 * (predicted[kept] - targets[kept]).pow(2).sum() / count


class MaskScoringRoIHeads(BoxBranchRoIHeads):
    """torchvision's ``RoIHeads`` (boxes + masks) with a MaskIoU head; keypoints are not supported. Box and mask
    branches as torchvision's; training adds ``loss_maskiou``, eval ``mask_scores``."""

    def __init__(self, *args: Any, maskiou_head: MaskIoUHead, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.has_mask():
            raise ValueError("MaskScoringRoIHeads needs mask_roi_pool, mask_head and mask_predictor")
        self.maskiou_head = maskiou_head

    @classmethod
    def from_roi_heads(cls, heads: RoIHeads, maskiou_head: MaskIoUHead) -> MaskScoringRoIHeads:
        """The same box and mask modules and settings as ``heads``, plus ``maskiou_head``."""
        return super().from_roi_heads(
            heads, mask_roi_pool=heads.mask_roi_pool, mask_head=heads.mask_head, mask_predictor=heads.mask_predictor,
            maskiou_head=maskiou_head,
        )

    def _mask_branch(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The RoI features of ``boxes``, their mask logits and the RoI index ``arange(R)``."""
        roi_features = self.mask_roi_pool(features, boxes, image_shapes)
        mask_logits = self.mask_predictor(self.mask_head(roi_features))
        return roi_features, mask_logits, torch.arange(mask_logits.shape[0], device=mask_logits.device)

    def branch_losses(
        self, features: dict[str, Tensor], image_shapes: list[tuple[int, int]], sampled: Sampled,
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """torchvision's ``loss_mask`` on the positive proposals, and ``loss_maskiou``."""
        positives = [torch.where(image_labels > 0)[0] for image_labels in sampled.labels]
        mask_proposals = [p[pos] for p, pos in zip(sampled.proposals, positives, strict=True)]
        pos_matched_idxs = [m[pos] for m, pos in zip(sampled.matched_idxs, positives, strict=True)]
        roi_features, mask_logits, index = self._mask_branch(features, mask_proposals, image_shapes)
        gt_masks = [t["masks"] for t in targets]
        gt_labels = [t["labels"] for t in targets]
        loss_mask = maskrcnn_loss(mask_logits, mask_proposals, gt_masks, gt_labels, pos_matched_idxs)
        target_labels = torch.cat([lab[idx] for lab, idx in zip(gt_labels, pos_matched_idxs, strict=True)])
        target_logits = mask_logits[index, target_labels]
        maskiou = self.maskiou_head(roi_features, target_logits[:, None].sigmoid())[index, target_labels]
        if maskiou.numel() == 0:
            loss_maskiou = maskiou.sum() * 0
        else:
            with torch.no_grad():
                size = mask_logits.shape[-1]
                groups = list(zip(gt_masks, mask_proposals, pos_matched_idxs, strict=True))
                projected = torch.cat([project_masks_on_boxes(m, p, i, size) for m, p, i in groups])
                ratios = torch.cat([mask_ratios(m, p, i) for m, p, i in groups])
                iou_targets = maskiou_targets(target_logits, projected, ratios)
            loss_maskiou = maskiou_loss(maskiou, iou_targets)
        return {"loss_mask": loss_mask, "loss_maskiou": loss_maskiou}

    def branch_outputs(
        self, features: dict[str, Tensor], image_shapes: list[tuple[int, int]], detections: Detections
    ) -> list[dict[str, Tensor]]:
        """Per image the ``masks`` (torchvision's) and ``mask_scores`` = box score x predicted MaskIoU."""
        boxes, scores, labels = detections
        roi_features, mask_logits, index = self._mask_branch(features, boxes, image_shapes)
        flat_labels = torch.cat(labels)
        maskiou = self.maskiou_head(roi_features, mask_logits[index, flat_labels][:, None].sigmoid())
        maskiou = maskiou[index, flat_labels].split([len(b) for b in boxes])
        masks = maskrcnn_inference(mask_logits, labels)
        return [{"masks": m, "mask_scores": s * iou} for s, m, iou in zip(scores, masks, maskiou, strict=True)]


class MaskScoringRCNN(MaskRCNN):
    """torchvision's ``MaskRCNN`` whose ``roi_heads`` also predicts each mask's IoU (``roi_heads.maskiou_head``).

    Takes MaskRCNN's arguments; ``maskiou_head`` defaults to :class:`MaskIoUHead` for ``num_classes``. Eval
    outputs add ``mask_scores`` (Float[N]) to torchvision's ``boxes, labels, scores, masks``.
    """

    def __init__(
        self, backbone: nn.Module, num_classes: int, *, maskiou_head: MaskIoUHead | None = None, **kwargs: Any
    ) -> None:
        super().__init__(backbone, num_classes=num_classes, **kwargs)
        if maskiou_head is None:
            maskiou_head = MaskIoUHead(num_classes, in_channels=backbone.out_channels)
        self.roi_heads = MaskScoringRoIHeads.from_roi_heads(self.roi_heads, maskiou_head)


@register_model(
    task="instance",
    paper="Mask Scoring R-CNN",
    year=2019,
    input_size=(800, 1333),
    url="https://arxiv.org/abs/1903.00241",
    paper_kwargs={"num_classes": 91},
    paper_params=60_752_972,
)
def mask_scoring_rcnn_resnet50_fpn(
    *,
    num_classes: int = 91,
    pretrained_backbone: bool | str = False,
    trainable_backbone_layers: int = 3,
    frozen_bn: bool = True,
    **kwargs: Any,
) -> MaskScoringRCNN:
    """Mask Scoring R-CNN on ResNet-50-FPN; ``kwargs`` go to torchvision's ``MaskRCNN`` (``min_size``, ...).

    Built as ``mask_rcnn_resnet50_fpn`` (:func:`~seglab.models.instance.mask_rcnn.build_mask_rcnn`;
    FrozenBatchNorm2d unless ``frozen_bn=False``). Images are 0-1 RGB, normalised inside
    (``GeneralizedRCNNTransform``).
    """
    return build_mask_rcnn(
        "resnet50", num_classes=num_classes, pretrained_backbone=pretrained_backbone,
        trainable_layers=trainable_backbone_layers, frozen_bn=frozen_bn, model_class=MaskScoringRCNN, **kwargs,
    )
