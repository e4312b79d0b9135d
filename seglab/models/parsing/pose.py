"""Pose targets for human parsing: JPPNet's joint heatmaps and SS-JPPNet's structure-sensitive loss.

**JPPNet** (Liang, Gong, Shen, Lin, "Look into Person: Joint Body Parsing & Pose Estimation Network and A New
Benchmark", TPAMI 2018, arXiv 1804.01984; code Engineering-Course/LIP_JPPNet). Its pose ground truth
(``datasets/lip/create_heatmaps.py``) is, per joint, ``multivariate_normal(mean=joint, cov=64).pdf * 400`` on the
image grid inside a window of offsets -25..24 around the joint, saved as an 8-bit PNG. ``scipy.misc.imsave``
rescales each map to 0-255 (its maximum, at the joint, becomes 255) and training divides by 255, so the target
is ``exp(-d^2 / (2 * 8^2))``: a Gaussian with sigma 8 input pixels and peak 1. The reader then resizes the
crop's maps by nearest neighbour to 1/8 of the crop. :func:`joint_heatmaps` computes that grid directly: cell
``(i, j)`` holds the image-grid value at pixel ``(floor(i * stride_y), floor(j * stride_x))``. Joint
coordinates are truncated to int as the script's ``int(point)``. Missing joints (``v < 0``, the dataset's
``(-1, -1, -1)``) give zero maps; visibility is otherwise unused, as in the reference. Not reproduced: the 8-bit
quantisation of the PNG and the script's quirks at the image border (its window skips the last row and column).
:class:`JPPNetLoss` is ``train_JPPNet-s2.py``'s objective: the softmax cross-entropy of every parsing output
(3 stages x (fused, each scale)) against the label nearest-resized to that output, plus, for every pose output,
the per-image L2 norm ``sqrt(sum((gt - pred)^2))`` averaged over the batch, the ground truth of the smaller
scales nearest-resized from the full-scale grid; weights p = s = 1.

**SS-JPPNet** (Gong, Liang, Zhang, Shen, Lin, "Look into Person: Self-supervised Structure-sensitive Learning
and A New Benchmark for Human Parsing", CVPR 2017; code Engineering-Course/LIP_SSL with its Caffe fork
caffe_ssl). Faithful to the layers ``PoseEvaluate``, ``PoseCreate``, ``HeatmapError`` and the modified
``SoftmaxWithLoss``:

- nine pseudo-joints (:data:`PSEUDO_JOINT_GROUPS`) are the centroids ``(int(mean x), int(mean y))`` of the pixels
  of each label group, on the label and on the argmax prediction at the logits' resolution (1/8); a group with
  no pixel gives ``(0, 0)``;
- ``PoseCreate`` draws ``10 * N(d; sigma) = 10 / (sigma * sqrt(2 pi)) * exp(-d^2 / (2 sigma^2))`` per joint, and
  a zero map for a joint at ``(0, 0)`` (missing). The released layer sets ``sigma = 6`` (its comment keeps the
  older ``1.0``); 6 is the default here, and ``sigma`` is an argument;
- the joint error per image is ``0.5 * ||H_pred - H_gt||^2 * 0.05``, not back-propagated;
- the softmax loss multiplies each pixel's cross-entropy by its image's joint error and divides the sum by the
  number of valid pixels of the whole batch: ``L = sum_b w_b * sum_p CE_bp / N_valid``.

Deviations: the Caffe backward pass of that softmax loss ignores the weight (its gradient is the plain CE
gradient, so the weight only changes the reported value); here the weight is a detached constant factor, so the
gradient is ``w_b`` times the CE gradient, as the paper's ``L = L_joint * L_parsing`` states. ``PoseEvaluate``
accumulates pixels across the images of a batch (its vectors are never cleared; the release trains with batch
1); here each image has its own centroids. Labels are brought to the logits' size by sampling (align-corners
nearest, integer arithmetic), which equals Caffe's ``Interp`` shrink on crops of ``8k + 1`` pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from seglab.errors import ConfigError

__all__ = [
    "PSEUDO_JOINT_GROUPS",
    "PSEUDO_JOINT_NAMES",
    "JPPNetLoss",
    "SSJPPNetLoss",
    "heatmap_peaks",
    "joint_heatmaps",
    "pseudo_joint_heatmaps",
    "pseudo_joints",
    "sample_labels",
    "structure_sensitive_loss",
    "structure_weights",
    "weighted_cross_entropy",
]

# SS-JPPNet's nine pseudo-joints: LIP labels grouped as caffe_ssl's clsToJointFirst. Glove (3), Dress (6),
# Socks (8) and Jumpsuits (10) are not used.
PSEUDO_JOINT_NAMES = (
    "head", "upper_body", "lower_body", "left_arm", "right_arm", "left_leg", "right_leg", "left_shoe", "right_shoe",
)  # fmt: skip
PSEUDO_JOINT_GROUPS: tuple[tuple[int, ...], ...] = (
    (1, 2, 4, 13),  # Hat, Hair, Sunglasses, Face
    (5, 7, 11),  # UpperClothes, Coat, Scarf
    (9, 12),  # Pants, Skirt
    (14,), (15,), (16,), (17,), (18,), (19,),
)  # fmt: skip


def _pair(value: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return float(value), float(value)
    sy, sx = value
    return float(sy), float(sx)


def joint_heatmaps(
    joints: Tensor,
    size: tuple[int, int],
    stride: float | Sequence[float] = 8.0,
    sigma: float = 8.0,
    *,
    window: int = 25,
) -> Tensor:
    """JPPNet's pose ground truth: Gaussian maps ``[B, J, h, w]`` with peak 1 on a grid of ``stride`` pixels.

    ``joints`` ``[B, J, 3]`` holds ``(x, y, v)`` in input pixels; rows with ``v < 0`` give zero maps. Cell
    ``(i, j)`` samples input pixel ``(floor(i * stride_y), floor(j * stride_x))``; the value there is
    ``exp(-((px - x)^2 + (py - y)^2) / (2 sigma^2))`` with ``(x, y)`` truncated to int, and 0 outside the
    reference's window of offsets ``-window .. window - 1``. ``stride`` is a number or ``(stride_y, stride_x)``.
    """
    if joints.dim() != 3 or joints.shape[-1] != 3:
        raise ValueError(f"joints must be [B, J, 3] (x, y, v), got {tuple(joints.shape)}")
    h, w = size
    sy, sx = _pair(stride)
    device = joints.device
    py = torch.floor(torch.arange(h, device=device, dtype=torch.float64) * sy)
    px = torch.floor(torch.arange(w, device=device, dtype=torch.float64) * sx)
    jx = torch.trunc(joints[..., 0].double())[..., None]  # [B, J, 1]
    jy = torch.trunc(joints[..., 1].double())[..., None]
    dx, dy = px - jx, py - jy  # [B, J, w], [B, J, h]
    gx = torch.exp(-(dx**2) / (2 * sigma**2)) * ((dx >= -window) & (dx < window))
    gy = torch.exp(-(dy**2) / (2 * sigma**2)) * ((dy >= -window) & (dy < window))
    maps = gy[..., :, None] * gx[..., None, :]
    maps = maps * (joints[..., 2] >= 0)[..., None, None]
    return maps.to(joints.dtype if joints.is_floating_point() else torch.float32)


def heatmap_peaks(heatmaps: Tensor, stride: float | Sequence[float] = 8.0, threshold: float = 0.0) -> Tensor:
    """Joints ``[B, J, 3]`` ``(x, y, v)`` in input pixels from the argmax cell of each map ``[B, J, h, w]``.

    The cell ``(i, j)`` maps to ``(j * stride_x, i * stride_y)``; a map whose maximum is not above ``threshold``
    gives ``(-1, -1, -1)`` (missing), otherwise ``v = 1``.
    """
    b, j, _, w = heatmaps.shape
    sy, sx = _pair(stride)
    peak, index = heatmaps.flatten(2).max(dim=2)
    x = (index % w).to(heatmaps.dtype) * sx
    y = torch.div(index, w, rounding_mode="floor").to(heatmaps.dtype) * sy
    found = peak > threshold
    out = torch.stack([x, y, torch.ones_like(x)], dim=-1)
    return torch.where(found[..., None], out, torch.full_like(out, -1.0)).reshape(b, j, 3)


def pseudo_joints(labels: Tensor) -> tuple[Tensor, Tensor]:
    """SS-JPPNet's nine pseudo-joints of label maps ``[B, h, w]``: ``(joints [B, 9, 2] int64 (x, y), present [B, 9])``.

    Each joint is the centroid of its group's pixels (:data:`PSEUDO_JOINT_GROUPS`), truncated to int as
    ``PoseEvaluate``'s ``int(ave_x)``; an absent group gives ``(0, 0)`` and ``present`` False. Other labels
    (including 255) are ignored.
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be [B, h, w], got {tuple(labels.shape)}")
    lookup = torch.full((256,), -1, dtype=torch.long, device=labels.device)
    for k, group in enumerate(PSEUDO_JOINT_GROUPS):
        lookup[list(group)] = k
    groups = lookup[labels.long().clamp(0, 255)]  # [B, h, w]
    masks = groups[:, None] == torch.arange(len(PSEUDO_JOINT_GROUPS), device=labels.device)[None, :, None, None]
    masks = masks.long()  # [B, 9, h, w]
    h, w = labels.shape[-2:]
    count = masks.sum(dim=(2, 3))
    sum_x = (masks * torch.arange(w, device=labels.device)).sum(dim=(2, 3))
    sum_y = (masks * torch.arange(h, device=labels.device)[:, None]).sum(dim=(2, 3))
    present = count > 0
    safe = count.clamp(min=1)
    joints = torch.stack([sum_x // safe, sum_y // safe], dim=-1) * present[..., None]
    return joints, present


def pseudo_joint_heatmaps(joints: Tensor, size: tuple[int, int], sigma: float = 6.0, scale: float = 10.0) -> Tensor:
    """``PoseCreate``'s maps ``[B, J, h, w]``: ``scale / (sigma sqrt(2 pi)) exp(-d^2 / (2 sigma^2))`` per joint.

    ``joints`` ``[B, J, 2]`` are ``(x, y)`` grid cells; a joint at ``(0, 0)`` (the missing value) gives a zero map.
    """
    h, w = size
    device = joints.device
    x = joints[..., 0].double()[..., None]
    y = joints[..., 1].double()[..., None]
    dx2 = (torch.arange(w, device=device, dtype=torch.float64) - x) ** 2  # [B, J, w]
    dy2 = (torch.arange(h, device=device, dtype=torch.float64) - y) ** 2  # [B, J, h]
    peak = scale / (sigma * math.sqrt(2 * math.pi))
    maps = torch.exp(-0.5 * (dy2[..., :, None] + dx2[..., None, :]) / sigma**2) * peak
    missing = (joints[..., 0] == 0) & (joints[..., 1] == 0)
    return (maps * (~missing)[..., None, None]).float()


def sample_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Label maps ``[B, H, W]`` sampled to ``size`` at rows ``i * (H - 1) // (h - 1)`` (align-corners nearest).

    On ``8k + 1`` pixel crops shrunk 8 times this is ``labels[:, ::8, ::8]``, Caffe's ``Interp`` on labels.
    """
    big_h, big_w = labels.shape[-2:]
    h, w = size
    if (h, w) == (big_h, big_w):
        return labels
    rows = torch.arange(h, device=labels.device) * (big_h - 1) // max(h - 1, 1)
    cols = torch.arange(w, device=labels.device) * (big_w - 1) // max(w - 1, 1)
    return labels[:, rows][:, :, cols]


def _at_grid(logits: Tensor, labels: Tensor, stride: int | None) -> tuple[Tensor, Tensor]:
    """Logits and labels at the joint grid: ``(H - 1) // stride + 1`` cells, or the logits' size if no stride."""
    if stride is None:
        size = tuple(logits.shape[-2:])
    else:
        size = ((labels.shape[-2] - 1) // stride + 1, (labels.shape[-1] - 1) // stride + 1)
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
    return logits, sample_labels(labels, size)


def structure_weights(
    logits: Tensor,
    labels: Tensor,
    *,
    stride: int | None = 8,
    sigma: float = 6.0,
    error_scale: float = 0.05,
) -> Tensor:
    """Per-image joint error ``0.5 * ||H_pred - H_gt||^2 * error_scale`` ``[B]`` (detached).

    Pseudo-joints of the label and of the argmax of ``logits``, both at the joint grid (see
    :func:`structure_sensitive_loss`), drawn by :func:`pseudo_joint_heatmaps`.
    """
    with torch.no_grad():
        logits, grid_labels = _at_grid(logits.detach(), labels, stride)
        size = tuple(grid_labels.shape[-2:])
        gt = pseudo_joint_heatmaps(pseudo_joints(grid_labels)[0], size, sigma)
        pred = pseudo_joint_heatmaps(pseudo_joints(logits.argmax(dim=1))[0], size, sigma)
        return 0.5 * ((pred - gt) ** 2).flatten(1).sum(dim=1) * error_scale


def weighted_cross_entropy(logits: Tensor, labels: Tensor, weights: Tensor, ignore_index: int = 255) -> Tensor:
    """``sum_b w_b * sum_p CE_bp / N_valid``: caffe_ssl's SoftmaxWithLoss with a third bottom.

    ``labels`` must already be at the logits' size; ``weights`` ``[B]`` are used as constants.
    """
    ce = F.cross_entropy(logits, labels.long(), ignore_index=ignore_index, reduction="none")  # [B, h, w]
    valid = (labels != ignore_index).sum().clamp(min=1)
    return (ce.flatten(1).sum(dim=1) * weights.detach().to(ce.dtype)).sum() / valid


def structure_sensitive_loss(
    parsing_logits: Tensor,
    labels: Tensor,
    *,
    stride: int | None = 8,
    sigma: float = 6.0,
    error_scale: float = 0.05,
    ignore_index: int = 255,
) -> tuple[Tensor, dict[str, float]]:
    """SS-JPPNet's loss: the softmax CE weighted per image by the (detached) pseudo-joint error.

    ``parsing_logits`` ``[B, C, h, w]``, ``labels`` ``[B, H, W]`` (255 ignored). Both are brought to the joint grid
    of ``(H - 1) // stride + 1`` cells (1/8; logits resized bilinearly with aligned corners, labels sampled by
    :func:`sample_labels`); with ``stride=None`` the grid is the logits' own size. Returns
    ``(total, {"loss", "ce", "joint_error"})`` where ``ce`` is the unweighted CE and ``joint_error`` the mean
    weight.
    """
    weights = structure_weights(parsing_logits, labels, stride=stride, sigma=sigma, error_scale=error_scale)
    logits, grid_labels = _at_grid(parsing_logits, labels, stride)
    total = weighted_cross_entropy(logits, grid_labels, weights, ignore_index)
    with torch.no_grad():
        ce = weighted_cross_entropy(logits, grid_labels, torch.ones_like(weights), ignore_index)
    return total, {"loss": total.item(), "ce": ce.item(), "joint_error": weights.mean().item()}


def _mask_of(target: Tensor | Mapping[str, Tensor], loss: str) -> Tensor:
    if isinstance(target, Tensor):
        return target
    if "mask" not in target:
        raise ConfigError(f"{loss}: the target dict has keys {sorted(target)}, expected a 'mask'")
    return target["mask"]


class JPPNetLoss(nn.Module):
    """JPPNet's objective: ``p_weight * sum(parsing CE) + s_weight * sum(pose L2)`` over every output.

    ``outputs`` is the train-mode dict of :func:`seglab.models.parsing.jppnet.jppnet` (``"parsing"`` and
    ``"pose"`` lists; the first pose map is the full-scale one); ``target`` the dict ``{"mask": [B, H, W],
    "joints": [B, J, 3]}`` of a dataset built with ``with_pose=True``. The pose ground truth is
    :func:`joint_heatmaps` on the first pose map's grid (stride ``H / h``), nearest-resized for smaller maps.
    """

    def __init__(self, p_weight: float = 1.0, s_weight: float = 1.0, sigma: float = 8.0, ignore_index: int = 255):
        super().__init__()
        self.p_weight, self.s_weight, self.sigma, self.ignore_index = p_weight, s_weight, sigma, ignore_index

    def forward(
        self, outputs: Mapping[str, list[Tensor]], target: Mapping[str, Tensor]
    ) -> tuple[Tensor, dict[str, float]]:
        if not isinstance(outputs, Mapping) or "parsing" not in outputs or "pose" not in outputs:
            raise ConfigError("JPPNetLoss: expected the train-mode outputs of jppnet (a dict with 'parsing', 'pose')")
        if isinstance(target, Tensor) or "joints" not in target:
            raise ConfigError(
                "JPPNetLoss: the target has no 'joints'; build the LIP dataset with with_pose=True "
                "(targets {'mask': [B,H,W], 'joints': [B,16,3]})"
            )
        mask = target["mask"]
        parsing = sum(self._ce(logits, mask) for logits in outputs["parsing"])
        poses = outputs["pose"]
        h, w = poses[0].shape[-2:]
        big_h, big_w = mask.shape[-2:]
        gt = joint_heatmaps(target["joints"].float(), (h, w), (big_h / h, big_w / w), self.sigma).to(poses[0].dtype)
        pose = sum(self._l2(pred, gt) for pred in poses)
        total = self.p_weight * parsing + self.s_weight * pose
        return total, {"loss": total.item(), "parsing": parsing.detach().item(), "pose": pose.detach().item()}

    def _ce(self, logits: Tensor, mask: Tensor) -> Tensor:
        # TF's resize_nearest_neighbor (align_corners=False): source index floor(i * H / h), as F.interpolate.
        labels = F.interpolate(mask[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()
        labels = torch.where(labels < logits.shape[1], labels, torch.full_like(labels, self.ignore_index))
        return F.cross_entropy(logits, labels, ignore_index=self.ignore_index)

    @staticmethod
    def _l2(pred: Tensor, gt: Tensor) -> Tensor:
        if gt.shape[-2:] != pred.shape[-2:]:
            gt = F.interpolate(gt, size=pred.shape[-2:], mode="nearest")
        return (pred - gt).pow(2).flatten(1).sum(dim=1).sqrt().mean()


class SSJPPNetLoss(nn.Module):
    """SS-JPPNet's objective: the structure-weighted CE on the merged logits and on each scale's logits.

    The weight of each image is computed once, from the merged logits (``outputs["out"]``), as in the release's
    ``train.prototxt`` where every ``SoftmaxWithLoss`` takes the same ``heatmap_error``; each output is compared
    with the label sampled to its own size. ``target`` is the label map ``[B, H, W]`` (or a dict with ``mask``).
    """

    def __init__(self, sigma: float = 6.0, error_scale: float = 0.05, ignore_index: int = 255):
        super().__init__()
        self.sigma, self.error_scale, self.ignore_index = sigma, error_scale, ignore_index

    def forward(
        self, outputs: Tensor | Mapping[str, Tensor | list[Tensor]], target: Tensor | Mapping[str, Tensor]
    ) -> tuple[Tensor, dict[str, float]]:
        labels = _mask_of(target, "SSJPPNetLoss")
        out = outputs if isinstance(outputs, Tensor) else outputs["out"]
        aux = [] if isinstance(outputs, Tensor) else list(outputs.get("aux", []))
        weights = structure_weights(out, labels, stride=None, sigma=self.sigma, error_scale=self.error_scale)
        main = weighted_cross_entropy(out, sample_labels(labels, tuple(out.shape[-2:])), weights, self.ignore_index)
        aux_total = torch.zeros((), device=out.device, dtype=main.dtype)
        for logits in aux:
            labels_at = sample_labels(labels, tuple(logits.shape[-2:]))
            aux_total = aux_total + weighted_cross_entropy(logits, labels_at, weights, self.ignore_index)
        total = main + aux_total
        parts = {"loss": total.item(), "parsing": main.item(), "aux": aux_total.item()}
        parts["joint_error"] = weights.mean().item()
        return total, parts
