"""Boundary IoU for semantic segmentation.

Cheng, Girshick, Dollár, Berg, Kirillov, "Boundary IoU: Improving Object-Centric Image Segmentation
Evaluation", CVPR 2021 (arXiv 2103.16562). The boundary region of a binary mask G is ``G_d ∩ G``: the pixels
of G within distance d of its contour, i.e. G minus its erosion by d pixels, with
``d = max(1, round(dilation_ratio * image diagonal))`` and ``dilation_ratio = 0.02``. The reference
(bowenc0221/boundary-iou-api, ``boundary_iou/utils/boundary_utils.py``, ``mask_to_boundary``) pads the mask
with one zero pixel and applies ``cv2.erode`` with a 3 x 3 kernel ``d`` times, so the image border counts as
outside the mask (a mask cut by the border has a boundary there) and the erosion keeps the pixels whose
(2d+1) x (2d+1) square (chessboard distance d) lies inside the mask and the image. ``round`` is Python's
(halves to even), as there.

For semantic segmentation every class c gives two binary masks per image, ``pred == c`` and ``gt == c``;
their boundary regions' intersection and union are summed over the dataset per class, and
``BIoU_c = intersection_c / union_c``. Pixels whose ground truth is the ignore index (255) or outside
``[0, C)`` are not counted; they still shape the masks (an object bordering an ignored band has a boundary
there, as ``gt == c`` ends there).

All classes at once: a pixel of class c is on the boundary of the c mask exactly when its window holds a
pixel of another value or reaches past the image. Its own value lies between the window's minimum and
maximum, so that is ``window max != window min`` with the image padded by a value no label takes: two
separable min/max filters per label map, whatever the number of classes. On the CPU scipy's filters
(running min/max) are used; on a GPU torch's max pooling, so the maps stay there (for 1024 x 2048 maps, d = 46,
scipy takes about 0.09 s a map on one core, torch's CPU pooling about 1 s; measured, numbers as they were).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

DILATION_RATIO = 0.02
_OUTSIDE = -1  # the padding value: no label takes it


def boundary_width(height: int, width: int, dilation_ratio: float = DILATION_RATIO) -> int:
    """The boundary width d of an ``height x width`` image: ``max(1, round(dilation_ratio * diagonal))``."""
    diagonal = math.sqrt(height**2 + width**2)
    return max(1, int(round(dilation_ratio * diagonal)))


def label_boundaries(labels: Any, width: int) -> Any:
    """For each pixel of a label map ``[H, W]`` (or a batch ``[B, H, W]``; numpy array or torch tensor), whether
    it lies on the boundary region of its own class's mask: within chessboard distance ``width`` of a pixel of
    another value or of the image border. Returns a bool array / tensor of the same shape and kind (a tensor
    stays on its device; CPU tensors go through scipy)."""
    if width < 1:
        raise ValueError(f"label_boundaries: width must be >= 1, got {width}")
    if isinstance(labels, torch.Tensor):
        if labels.ndim not in (2, 3):
            raise ValueError(f"label_boundaries: expected [H, W] or [B, H, W], got {tuple(labels.shape)}")
        if labels.device.type == "cpu":
            return torch.from_numpy(_boundaries_numpy(labels.numpy(), width))
        return _boundaries_torch(labels, width)
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"label_boundaries: expected [H, W] or [B, H, W], got {labels.shape}")
    return _boundaries_numpy(labels, width)


def _boundaries_numpy(labels: np.ndarray, width: int) -> np.ndarray:
    from scipy import ndimage

    values = labels.astype(np.int32)
    size = (2 * width + 1,) * 2 if values.ndim == 2 else (1, 2 * width + 1, 2 * width + 1)
    high = ndimage.maximum_filter(values, size=size, mode="constant", cval=_OUTSIDE)
    low = ndimage.minimum_filter(values, size=size, mode="constant", cval=_OUTSIDE)
    return high != low


def _boundaries_torch(labels: torch.Tensor, width: int) -> torch.Tensor:
    shape = labels.shape
    x = labels.reshape(-1, 1, *shape[-2:]).to(torch.float32)  # label values <= 255 are exact in float32
    x = F.pad(x, (width, width, width, width), value=float(_OUTSIDE))
    k = 2 * width + 1

    def window_max(t: torch.Tensor) -> torch.Tensor:  # a square max is a row max, then a column max
        return F.max_pool2d(F.max_pool2d(t, (1, k), stride=1), (k, 1), stride=1)

    return (window_max(x) != -window_max(-x)).reshape(shape)


def mask_boundary(mask: Any, dilation_ratio: float = DILATION_RATIO) -> np.ndarray:
    """The boundary region of one binary mask ``[H, W]`` (the paper's ``G_d ∩ G``) as a bool array."""
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"mask_boundary: expected a binary mask [H, W], got shape {mask.shape}")
    if not mask.size:
        return mask
    return label_boundaries(mask.astype(np.uint8), boundary_width(*mask.shape, dilation_ratio)) & mask


def boundary_counts(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255,
    dilation_ratio: float = DILATION_RATIO,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, the pixels in both boundary regions (prediction's and ground truth's) and in either, over the
    label maps ``pred`` and ``target`` (``[H, W]`` or a batch ``[B, H, W]`` of one size); pixels whose
    target is ``ignore_index`` or outside ``[0, num_classes)`` are not counted. Returns
    ``(intersection, union)``, int64 CPU tensors of ``num_classes``."""
    if pred.shape != target.shape or pred.ndim not in (2, 3):
        raise ValueError(f"boundary_counts: expected pred and target of one shape [H, W] or [B, H, W], got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    c = int(num_classes)
    if 0 in pred.shape:
        return torch.zeros(c, dtype=torch.int64), torch.zeros(c, dtype=torch.int64)
    width = boundary_width(pred.shape[-2], pred.shape[-1], dilation_ratio)
    gt = target.to(torch.int64)
    pr = pred.to(gt.device, torch.int64)
    valid = (gt != ignore_index) & (gt >= 0) & (gt < c)
    pred_edge = label_boundaries(pr, width).to(gt.device) & valid
    gt_edge = label_boundaries(gt, width).to(gt.device) & valid
    pred_classes = pr[pred_edge]
    if pred_classes.numel() and (int(pred_classes.min()) < 0 or int(pred_classes.max()) >= c):
        raise ValueError(f"boundary_counts: predictions must lie in [0, {c}) where the ground truth is counted")
    both = pred_edge & gt_edge & (pr == gt)
    intersection = torch.bincount(gt[both], minlength=c)
    union = torch.bincount(pred_classes, minlength=c) + torch.bincount(gt[gt_edge], minlength=c) - intersection
    return intersection.cpu(), union.cpu()


__all__ = ["DILATION_RATIO", "boundary_counts", "boundary_width", "label_boundaries", "mask_boundary"]
