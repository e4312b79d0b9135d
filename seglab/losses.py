"""Segmentation losses: pixel-wise cross-entropy over a model's main and auxiliary outputs.

:class:`SegmentationLoss` is the one loss the trainer uses for every semantic model. It reads the
model contract (design.md section 3): a logits tensor, or in train mode a dict ``{"out": logits,
"aux": [logits, ...]}`` from models with deep supervision (FCN's aux head, PSPNet, BiSeNet's
boosters), whose auxiliary terms are weighted by ``aux_weights`` as in those papers (e.g. 0.4).
Logits at a lower resolution than the labels are upsampled bilinearly to the label size, so the
loss is always measured at the labels' resolution and ignore pixels (255) are never interpolated.

The mean is over labelled pixels (weighted by ``class_weights`` as ``F.cross_entropy`` does); a
batch whose pixels are all ignored gives a loss of exactly 0 that still has a gradient, where
``F.cross_entropy(reduction="mean")`` gives NaN and would stop the run.

:func:`median_frequency_weights` gives the class weights of SegNet (Badrinarayanan et al., TPAMI
2017, arXiv:1511.00561), after Eigen & Fergus (ICCV 2015): ``weight_c = median(freq) / freq_c``;
:func:`enet_weights` those of ENet (Paszke et al., arXiv:1606.02147): ``weight_c = 1 / ln(c + p_c)``.
:class:`OhemCrossEntropy` is the online-hard-example-mining cross-entropy BiSeNet's reference code
trains with (a probability threshold and a minimum kept count).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SegmentationLoss(nn.Module):
    """Cross-entropy with ``ignore_index`` and class weights, over ``out`` and weighted ``aux`` outputs.

    ``forward`` returns ``(total, parts)``: the loss tensor to back-propagate, and python floats
    ``{"loss": total, "loss_out": ..., "loss_aux0": ..., ...}`` for logging.
    """

    def __init__(
        self,
        aux_weights: Sequence[float] = (),
        class_weights: Tensor | Sequence[float] | None = None,
        ignore_index: int = 255,
        bootstrap_top_k: float | int | None = None,
        ohem: tuple[float, float | int] | None = None,
    ) -> None:
        super().__init__()
        if bootstrap_top_k is not None and ohem is not None:
            raise ValueError("bootstrap_top_k and ohem select hard pixels two ways; give one of them")
        self.aux_weights = tuple(float(w) for w in aux_weights)
        self.ignore_index = int(ignore_index)
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        if weights is not None and (weights.ndim != 1 or bool((weights < 0).any())):
            raise ValueError(f"class_weights must be one non-negative weight per class, got {weights.tolist()}")
        self.register_buffer("class_weights", weights)
        # FRRN's bootstrapped CE over the K hardest pixels per image instead of the mean over all of them
        self.bootstrap = (
            None if bootstrap_top_k is None else BootstrappedCrossEntropy(bootstrap_top_k, ignore_index, weights)
        )
        # BiSeNet's OHEM: ``ohem = (thresh, min_kept)``, applied to the main and every auxiliary output
        self.ohem = None if ohem is None else OhemCrossEntropy(*ohem, ignore_index=ignore_index, class_weights=weights)

    def cross_entropy(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean cross-entropy of ``logits [B, K, h, w]`` against ``target [B, H, W]`` (resized to it);
        bootstrapped (top-K) when the loss was built with ``bootstrap_top_k``, over the hard pixels with ``ohem``."""
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        if self.bootstrap is not None:
            return self.bootstrap(logits, target)
        if self.ohem is not None:
            return self.ohem(logits, target)
        logits = logits.float()
        weight = self.class_weights
        if weight is not None and weight.numel() != logits.shape[1]:
            raise ValueError(f"class_weights has {weight.numel()} entries but the model predicts "
                             f"{logits.shape[1]} classes")
        total = F.cross_entropy(logits, target, weight=weight, ignore_index=self.ignore_index, reduction="sum")
        valid = target != self.ignore_index
        if weight is None:
            denom = valid.sum().to(total.dtype)
        else:
            denom = (weight[torch.where(valid, target, 0)] * valid).sum()
        # all ignored: total is an empty sum (0, with a gradient) and so is the result
        return total / denom.clamp_min(torch.finfo(total.dtype).tiny)

    def forward(self, outputs: Tensor | dict[str, Any], target: Tensor) -> tuple[Tensor, dict[str, float]]:
        if isinstance(outputs, dict):
            if "out" not in outputs:
                raise ValueError(f"model outputs have no 'out' (keys: {sorted(outputs)})")
            out, aux = outputs["out"], list(outputs.get("aux") or [])
        else:
            out, aux = outputs, []
        if aux and len(aux) != len(self.aux_weights):
            raise ValueError(
                f"the model returns {len(aux)} auxiliary output(s) but {len(self.aux_weights)} aux weight(s) are "
                f"set; set train.aux_weights to {len(aux)} number(s), e.g. {[0.4] * len(aux)}"
            )
        if target.ndim != 3:
            raise ValueError(f"target must be [B, H, W] class indices, got shape {tuple(target.shape)}")
        target = target.long()
        num_classes = out.shape[1]
        bad = (target != self.ignore_index) & ((target < 0) | (target >= num_classes))
        if bool(bad.any()):
            raise ValueError(f"target has labels outside [0, {num_classes}) that are not ignore_index "
                             f"{self.ignore_index}: {sorted(set(target[bad].unique().tolist()))[:10]}")
        loss_out = self.cross_entropy(out, target)
        total = loss_out
        names, values = ["loss_out"], [loss_out]
        for i, (logits, weight) in enumerate(zip(aux, self.aux_weights, strict=False)):
            loss_aux = self.cross_entropy(logits, target)
            total = total + weight * loss_aux
            names.append(f"loss_aux{i}")
            values.append(loss_aux)
        floats = torch.stack([total.detach(), *(v.detach() for v in values)]).tolist()
        return total, dict(zip(["loss", *names], floats, strict=True))


def pixel_cross_entropy(
    logits: Tensor, target: Tensor, ignore_index: int, weight: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Per-pixel cross-entropy ``[B, H, W]`` (0 at ignored pixels) of ``logits`` against ``target`` ``[B, H, W]``,
    logits smaller than the target upsampled bilinearly; returns it and the target as int64."""
    if target.ndim != 3:
        raise ValueError(f"target must be [B, H, W] class indices, got shape {tuple(target.shape)}")
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    target = target.long()
    loss = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index, reduction="none")
    return loss, target


class BootstrappedCrossEntropy(nn.Module):
    """Bootstrapped cross-entropy of FRRN (Pohlen et al., CVPR 2017, arXiv:1611.08323).

    Per image, the per-pixel cross-entropy (weighted by ``class_weights`` if given) is averaged over only the
    K hardest (largest-loss) labelled pixels; the result is the mean over the images that have labelled
    pixels. ``top_k`` is a pixel count (an ``int``, e.g. FRRN's 512 * 64) or a fraction of each image's
    labelled pixels (a ``float`` in (0, 1], rounded up). An image with fewer than K labelled pixels uses all
    of them. Pixels labelled ``ignore_index`` never count; a batch with none labelled gives exactly 0 (with a
    gradient). Logits smaller than the target are upsampled bilinearly, as in :class:`SegmentationLoss`.
    """

    def __init__(
        self,
        top_k: float | int,
        ignore_index: int = 255,
        class_weights: Tensor | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(top_k, bool) or not isinstance(top_k, (int, float)):
            raise ValueError(f"top_k must be a pixel count or a fraction, got {top_k!r}")
        if isinstance(top_k, int) and top_k < 1:
            raise ValueError(f"top_k as a pixel count must be >= 1, got {top_k}")
        if isinstance(top_k, float) and not 0.0 < top_k <= 1.0:
            raise ValueError(f"top_k as a fraction must be in (0, 1], got {top_k}")
        self.top_k = top_k
        self.ignore_index = int(ignore_index)
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        if weights is not None and (weights.ndim != 1 or bool((weights < 0).any())):
            raise ValueError(f"class_weights must be one non-negative weight per class, got {weights.tolist()}")
        self.register_buffer("class_weights", weights)

    def _k(self, valid: int) -> int:
        if isinstance(self.top_k, float):
            return min(valid, math.ceil(self.top_k * valid))
        return min(valid, self.top_k)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        pixel_loss, target = pixel_cross_entropy(logits, target, self.ignore_index, self.class_weights)
        valid = target != self.ignore_index
        total = pixel_loss.sum() * 0.0  # keeps a gradient when no image has labelled pixels
        images = 0
        for loss_i, valid_i in zip(pixel_loss.flatten(1), valid.flatten(1), strict=True):
            losses = loss_i[valid_i]
            if losses.numel() == 0:
                continue
            total = total + losses.topk(self._k(losses.numel())).values.mean()
            images += 1
        return total / max(images, 1)


class OhemCrossEntropy(nn.Module):
    """Online hard example mining cross-entropy, as BiSeNet's reference code trains (CoinCheung/BiSeNet,
    ``lib/ohem_ce_loss.py``: ``OhemCELoss(thresh=0.7)``, at least 1/16 of the labelled pixels kept).

    Over the whole batch, the per-pixel cross-entropy of the labelled pixels is averaged over the hard ones:
    those whose loss exceeds ``-ln(thresh)``, i.e. whose predicted probability of the true class is below
    ``thresh``. When fewer than ``min_kept`` pixels are that hard, the ``min_kept`` largest losses are averaged
    instead. With ``class_weights`` the pixels are chosen the same way and their losses averaged with their
    class's weight (as ``F.cross_entropy`` weights a mean); the reference has no class weights.

    ``min_kept`` is a pixel count (an ``int``) or a fraction of the batch's labelled pixels (a ``float`` in
    (0, 1), rounded down: 0.0625 is the reference's ``n_labelled // 16``); 0 keeps only the hard pixels. Pixels
    labelled ``ignore_index`` never count; no hard pixel and nothing to keep gives exactly 0 with a gradient
    (the reference gives NaN, the mean of nothing).
    Logits smaller than the target are upsampled bilinearly, as in :class:`SegmentationLoss`.
    """

    def __init__(
        self,
        thresh: float,
        min_kept: float | int = 0,
        ignore_index: int = 255,
        class_weights: Tensor | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(thresh, bool) or not isinstance(thresh, (int, float)) or not 0.0 < thresh < 1.0:
            raise ValueError(f"thresh must be a probability in (0, 1), got {thresh!r}")
        if isinstance(min_kept, bool) or not isinstance(min_kept, (int, float)) or min_kept < 0:
            raise ValueError(f"min_kept must be a pixel count or a fraction, got {min_kept!r}")
        if isinstance(min_kept, float) and min_kept >= 1.0:
            raise ValueError(f"min_kept as a fraction must be in [0, 1), got {min_kept}; give a count as an int")
        self.thresh = float(thresh)
        self.loss_thresh = -math.log(self.thresh)
        self.min_kept = min_kept
        self.ignore_index = int(ignore_index)
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights)

    def _min_kept(self, valid: int) -> int:
        if isinstance(self.min_kept, float):
            return math.floor(self.min_kept * valid)
        return min(valid, int(self.min_kept))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        pixel_loss, target = pixel_cross_entropy(logits, target, self.ignore_index)
        valid = target != self.ignore_index
        losses = pixel_loss[valid]
        kept = self._min_kept(losses.numel())
        hard = losses > self.loss_thresh
        if int(hard.sum()) < kept:  # the kept largest losses instead
            hard = torch.zeros_like(hard)
            hard[losses.topk(kept).indices] = True
        if not bool(hard.any()):
            return pixel_loss.sum() * 0.0
        if self.class_weights is None:
            return losses[hard].mean()
        weights = self.class_weights[target[valid]]  # hard pixels chosen by probability, then weighted
        return (losses[hard] * weights[hard]).sum() / weights[hard].sum().clamp_min(torch.finfo(losses.dtype).tiny)


def enet_weights(counts: Sequence[int] | Tensor, c: float = 1.02) -> Tensor:
    """ENet's class weights (Paszke et al., arXiv:1606.02147, as davidtvs/PyTorch-ENet's ``enet_weighing``):
    ``weight_c = 1 / ln(c + p_c)`` with ``p_c = counts[c] / counts.sum()``, the class's share of the pixels.

    With ``c = 1.02`` the weights lie between ``1 / ln(2.02) = 1.42`` (a class covering every pixel) and
    ``1 / ln(1.02) = 50.5`` (an absent class).
    """
    counts_t = torch.as_tensor(counts, dtype=torch.float64)
    if counts_t.ndim != 1 or bool((counts_t < 0).any()) or float(counts_t.sum()) <= 0:
        raise ValueError(f"counts must be non-negative per-class pixel counts, not all 0, got {counts_t.tolist()}")
    if c <= 1.0:
        raise ValueError(f"c must exceed 1 (ln(c) > 0 keeps every weight finite), got {c}")
    return (1.0 / torch.log(c + counts_t / counts_t.sum())).float()


def median_frequency_weights(
    counts: Sequence[int] | Tensor, image_pixels: Sequence[int] | Tensor | None = None
) -> Tensor:
    """SegNet's median frequency balancing: ``weight_c = median(freq) / freq_c``.

    ``counts[c]`` is the number of pixels of class c. SegNet's frequency is
    ``freq_c = counts[c] / image_pixels[c]``, where ``image_pixels[c]`` is the number of (labelled)
    pixels in the images where c is present, as :func:`class_pixel_counts` returns. Without
    ``image_pixels`` the plain frequency ``counts[c] / counts.sum()`` is used (the common variant
    when only class totals are known). The median is taken over the classes present (the mean of
    the two middle values for an even number); absent classes get weight 0.
    """
    counts_t = torch.as_tensor(counts, dtype=torch.float64)
    if counts_t.ndim != 1 or bool((counts_t < 0).any()):
        raise ValueError(f"counts must be non-negative per-class pixel counts, got {counts_t.tolist()}")
    if image_pixels is None:
        pixels = torch.full_like(counts_t, float(counts_t.sum()))
    else:
        pixels = torch.as_tensor(image_pixels, dtype=torch.float64)
        if pixels.shape != counts_t.shape:
            raise ValueError(f"image_pixels has shape {tuple(pixels.shape)}; counts has {tuple(counts_t.shape)}")
    present = counts_t > 0
    if not bool(present.any()):
        raise ValueError("median_frequency_weights: every class count is 0")
    freq = torch.zeros_like(counts_t)
    freq[present] = counts_t[present] / pixels[present]
    median = float(freq[present].quantile(0.5))
    weights = torch.zeros_like(counts_t)
    weights[present] = median / freq[present]
    return weights.float()


def class_pixel_counts(
    dataset: Iterable[Any], num_classes: int, ignore_index: int = 255
) -> tuple[Tensor, Tensor]:
    """Per class: its pixel count, and the labelled pixels of the images that contain it.

    ``dataset`` yields ``(image, mask)`` pairs (or masks alone); the two int64 tensors feed
    :func:`median_frequency_weights`. Labels outside ``[0, num_classes)`` count as ignored.
    """
    counts = torch.zeros(num_classes, dtype=torch.int64)
    image_pixels = torch.zeros(num_classes, dtype=torch.int64)
    for item in dataset:
        mask = torch.as_tensor(item[1] if isinstance(item, (tuple, list)) else item).reshape(-1).long()
        mask = mask[(mask != ignore_index) & (mask >= 0) & (mask < num_classes)]
        per_class = torch.bincount(mask, minlength=num_classes)
        counts += per_class
        image_pixels += (per_class > 0).long() * mask.numel()
    return counts, image_pixels



# -- CE2P / SCHP losses (human parsing) -----------------------------------------------------------------
# Li, Xu, Wei, Yang, "Self-Correction for Human Parsing", TPAMI 2020 (arXiv:1910.09777), after the released
# code (GoGoDuck912/Self-Correction-Human-Parsing: utils/criterion.py, lovasz_softmax.py, kl_loss.py,
# consistency_loss.py, datasets/target_generation.py). Deviations from that code are stated where they occur.


def _lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss at errors sorted in decreasing order (Alg. 1)."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
    return jaccard


def lovasz_softmax(
    probs: Tensor, labels: Tensor, ignore_index: int = 255, classes: str | Sequence[int] = "present"
) -> Tensor:
    """Lovasz-softmax loss of Berman, Rannen Triki, Blaschko, "The Lovasz-Softmax loss: a tractable surrogate
    for the optimization of the intersection-over-union measure in neural networks", CVPR 2018 (arXiv:1705.08790).

    ``probs [B, C, H, W]`` are class probabilities, ``labels [B, H, W]``. Per class c, the pixel errors
    ``|1[y = c] - p_c|`` of the labelled pixels of the whole batch are sorted in decreasing order and dotted with
    the gradient of the Jaccard loss' Lovasz extension; the result is the mean over ``classes``: "present" (the
    classes in ``labels``, SCHP's setting), "all", or a list of class indices. No labelled pixel gives 0.
    """
    if probs.ndim != 4 or labels.shape != (probs.shape[0], *probs.shape[2:]):
        raise ValueError(f"lovasz_softmax: probs must be [B, C, H, W] and labels [B, H, W], got "
                         f"{tuple(probs.shape)} and {tuple(labels.shape)}")
    num_classes = probs.shape[1]
    flat = probs.permute(0, 2, 3, 1).reshape(-1, num_classes)
    labels = labels.reshape(-1)
    valid = labels != ignore_index
    flat, labels = flat[valid], labels[valid]
    if classes == "present":
        wanted = [int(c) for c in labels.unique().tolist() if 0 <= c < num_classes]
    elif classes == "all":
        wanted = list(range(num_classes))
    elif isinstance(classes, str):
        raise ValueError(f"lovasz_softmax: classes must be 'present', 'all' or a list of indices, got {classes!r}")
    else:
        wanted = [int(c) for c in classes]
    losses = []
    for c in wanted:
        fg = (labels == c).to(flat.dtype)
        errors = (fg - flat[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, _lovasz_grad(fg[order])))
    if not losses:
        return probs.sum() * 0.0
    return torch.stack(losses).mean()


class LovaszSoftmaxLoss(nn.Module):
    """:func:`lovasz_softmax` of ``softmax(logits)``; logits smaller than the labels are upsampled bilinearly."""

    def __init__(self, ignore_index: int = 255, classes: str | Sequence[int] = "present") -> None:
        super().__init__()
        self.ignore_index, self.classes = int(ignore_index), classes

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=True)
        return lovasz_softmax(logits.float().softmax(1), labels.long(), self.ignore_index, self.classes)


def edge_targets(labels: Tensor, ignore_index: int = 255, width: int = 3) -> Tensor:
    """SCHP's edge ground truth (``generate_edge_tensor``): 1 on part boundaries, 0 elsewhere, int64 like ``labels``.

    A pixel is marked when it differs from its neighbour below (the lower pixel is marked), to its right (the left
    pixel), down-right (the upper-left pixel) or down-left (the upper-right pixel), neither of the two being
    ``ignore_index``; the marks are then dilated by a ``width`` x ``width`` square (SCHP: 3). As in the reference,
    the result has no ignore value: ignored pixels are 0, or 1 where a dilated boundary reaches them.
    """
    if width < 1 or width % 2 == 0:
        raise ValueError(f"edge_targets: width must be a positive odd number, got {width}")
    squeeze = labels.ndim == 2
    lab = labels.unsqueeze(0) if squeeze else labels
    if lab.ndim != 3:
        raise ValueError(f"edge_targets: labels must be [H, W] or [B, H, W], got {tuple(labels.shape)}")
    valid = lab != ignore_index
    edge = torch.zeros(lab.shape, dtype=torch.bool, device=lab.device)

    def differ(a: tuple[slice, slice], b: tuple[slice, slice]) -> Tensor:
        return (lab[(slice(None), *a)] != lab[(slice(None), *b)]) & valid[(slice(None), *a)] & valid[(slice(None), *b)]

    all_, head, tail = slice(None), slice(None, -1), slice(1, None)
    edge[:, 1:, :] |= differ((tail, all_), (head, all_))
    edge[:, :, :-1] |= differ((all_, head), (all_, tail))
    edge[:, :-1, :-1] |= differ((head, head), (tail, tail))
    edge[:, :-1, 1:] |= differ((head, tail), (tail, head))
    if width > 1:
        edge = F.max_pool2d(edge[:, None].float(), width, stride=1, padding=width // 2)[:, 0] > 0
    edge = edge.long()
    return edge[0] if squeeze else edge


def _upsample_to(logits: Tensor, size: Sequence[int]) -> Tensor:
    """Logits resized as SCHP's criterion does (bilinear, align_corners=True), in float32."""
    logits = logits.float()
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)
    return logits


def _weighted_mean_ce(logits: Tensor, target: Tensor, weight: Tensor, ignore_index: int) -> Tensor:
    """``F.cross_entropy(weight=..., reduction="mean")`` that gives 0 (with a gradient) where its denominator is 0."""
    total = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction="sum")
    valid = target != ignore_index
    denom = (weight[torch.where(valid, target, 0)] * valid).sum()
    return total / denom.clamp_min(torch.finfo(total.dtype).tiny)


def edge_loss(edge_logits: Tensor, edge_target: Tensor, ignore_index: int = 255) -> Tensor:
    """SCHP's edge loss: cross-entropy of ``edge_logits [B, 2, h, w]`` (upsampled to the target) with class weights
    ``(pos / (pos + neg), neg / (pos + neg))`` counted over the batch's edge target, so edges (few) weigh much more.

    The mean is weighted as ``F.cross_entropy`` weights it; a batch with no edge pixel gives 0 where the reference
    gives NaN (its negatives' weight is then 0).
    """
    target = edge_target.long()
    logits = _upsample_to(edge_logits, target.shape[-2:])
    pos = (target == 1).sum().float()
    neg = (target == 0).sum().float()
    total = (pos + neg).clamp_min(1.0)
    weight = torch.stack([pos / total, neg / total]).to(logits.device)
    return _weighted_mean_ce(logits, target, weight, ignore_index)


def consistency_loss(
    parsing_logits: Tensor, edge_logits: Tensor, labels: Tensor, ignore_index: int = 255, positives: str = "both"
) -> Tensor:
    """SCHP's parsing-edge consistency: smooth-L1 between the edge derived from the parsing argmax (by
    :func:`edge_targets`) and the edge branch's prediction, over labelled positive pixels only.

    The positives are, as in the reference, the pixels where both the parsing-derived edge and the edge branch's
    argmax are edges (``positives="both"``; ``"either"`` takes the union, as the reference's ConsistencyLoss_Soft).
    Deviation: the reference compares the two argmaxes, which are both 1 on that set, so its term is always 0 and
    has no gradient; here the edge branch enters by its edge probability ``softmax(edge_logits)[:, 1]`` (the
    parsing-derived edge is a fixed target), so the term pulls the edge branch towards the parsing boundaries.
    No positive pixel gives 0 (the reference gives NaN).
    """
    if positives not in ("both", "either"):
        raise ValueError(f"consistency_loss: positives must be 'both' or 'either', got {positives!r}")
    labels = labels.long()
    size = labels.shape[-2:]
    parsing_logits, edge_logits = _upsample_to(parsing_logits, size), _upsample_to(edge_logits, size)
    valid = labels != ignore_index
    with torch.no_grad():
        parsed = torch.where(valid, parsing_logits.argmax(1), ignore_index)
        parsed_edge = edge_targets(parsed, ignore_index) == 1
        predicted_edge = edge_logits.argmax(1) == 1
    chosen = parsed_edge & predicted_edge if positives == "both" else parsed_edge | predicted_edge
    chosen = chosen & valid
    edge_prob = edge_logits.softmax(1)[:, 1]
    if not bool(chosen.any()):
        return edge_prob.sum() * 0.0
    return F.smooth_l1_loss(edge_prob[chosen], parsed_edge[chosen].to(edge_prob.dtype))


def _one_hot(labels: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """``[B, C, H, W]`` one-hot of ``labels``; ignored pixels count as class 0, as in the reference."""
    index = torch.where(labels == ignore_index, 0, labels)
    return F.one_hot(index, num_classes).permute(0, 3, 1, 2).float()


def soft_target_kl(
    logits: Tensor, soft_logits: Tensor, hard: Tensor, cycle_n: int, labels: Tensor, ignore_index: int = 255,
    reduction: str = "batchmean",
) -> Tensor:
    """SCHP's label refinement term: KL(q || softmax(logits)) over the pixels where ``labels`` is not ignored, with
    the soft target ``q = softmax((1 - a) * soft_logits + a * one_hot(hard))``, ``a = 1 / (cycle_n + 1)``.

    As in the reference (criterion.py's ``moving_average`` then kl_loss.py, temperature 1) the aggregated model's
    logits and the one-hot ground truth are mixed before the softmax, not as probabilities. ``reduction``:
    "batchmean" is the KL summed over classes and averaged over pixels (the true KL; a one-hot ``q`` makes it the
    cross-entropy); "mean" also divides by the number of classes, as ``F.kl_div``'s default does in some copies
    of the reference.
    """
    if reduction not in ("batchmean", "mean"):
        raise ValueError(f"soft_target_kl: reduction must be 'batchmean' or 'mean', got {reduction!r}")
    alpha = 1.0 / (cycle_n + 1.0)
    size = labels.shape[-2:]
    logits, soft_logits = _upsample_to(logits, size), _upsample_to(soft_logits.detach(), size)
    mixed = (1.0 - alpha) * soft_logits + alpha * _one_hot(hard.long(), logits.shape[1], ignore_index)
    q = mixed.softmax(1)
    per_pixel = (q * (q.clamp_min(torch.finfo(q.dtype).tiny).log() - logits.log_softmax(1))).sum(1)
    valid = labels != ignore_index
    per_pixel = per_pixel[valid]
    if per_pixel.numel() == 0:
        return logits.sum() * 0.0
    loss = per_pixel.mean()
    return loss / logits.shape[1] if reduction == "mean" else loss


class CE2PLoss(nn.Module):
    """The CE2P / SCHP training loss over ``{"out": fusion logits, "aux": [decoder logits], "edge": edge logits}``.

    Every output is upsampled to the label size (bilinear, align_corners=True). Per parsing output (``out`` and each
    ``aux``): ``0.5 * lambda_s * Lovasz-softmax + 0.5 * lambda_s * CE``, the CE replaced by :func:`soft_target_kl`
    when the aggregated model's logits ``soft_parsing`` are given (cycle_n >= 1). Edge: ``lambda_e *``
    :func:`edge_loss` against :func:`edge_targets` of the labels, or the KL to ``soft_edge`` mixed the same way
    (no class weights then, as in the reference). Consistency: ``lambda_c *`` :func:`consistency_loss` of each
    parsing output with the edge output. ``forward`` returns ``(total, parts)`` with parts "loss", "loss_parsing",
    "loss_edge", "loss_consistency" (each already weighted, so they sum to "loss").

    Deviation: the reference's ``to_one_hot`` overwrites the ignored labels with 0 in place, so after the first
    output its later terms treat ignored pixels as background; here ignored pixels stay ignored in every term.
    """

    def __init__(
        self,
        num_classes: int,
        lambda_s: float = 1.0,
        lambda_e: float = 1.0,
        lambda_c: float = 0.1,
        ignore_index: int = 255,
        kl_reduction: str = "batchmean",
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.lambda_s, self.lambda_e, self.lambda_c = float(lambda_s), float(lambda_e), float(lambda_c)
        self.ignore_index = int(ignore_index)
        self.kl_reduction = kl_reduction

    def forward(
        self,
        outputs: dict[str, Any],
        target: Tensor | dict[str, Tensor],
        soft_parsing: Tensor | None = None,
        soft_edge: Tensor | None = None,
        cycle_n: int = 0,
    ) -> tuple[Tensor, dict[str, float]]:
        if not isinstance(outputs, dict) or "out" not in outputs or "edge" not in outputs:
            keys = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
            raise ValueError(f"CE2PLoss needs the CE2P train outputs {{'out', 'aux', 'edge'}}, got {keys}")
        if (soft_parsing is not None or soft_edge is not None) and cycle_n < 1:
            raise ValueError(f"CE2PLoss: soft targets are used from the first self-correction cycle on "
                             f"(cycle_n >= 1), got cycle_n={cycle_n}")
        labels = (target["mask"] if isinstance(target, dict) else target).long()
        if labels.ndim != 3:
            raise ValueError(f"target must be [B, H, W] class indices, got shape {tuple(labels.shape)}")
        bad = (labels != self.ignore_index) & ((labels < 0) | (labels >= self.num_classes))
        if bool(bad.any()):
            raise ValueError(f"target has labels outside [0, {self.num_classes}) that are not ignore_index "
                             f"{self.ignore_index}: {sorted(set(labels[bad].unique().tolist()))[:10]}")
        size = labels.shape[-2:]
        parsing = [_upsample_to(x, size) for x in [*(outputs.get("aux") or []), outputs["out"]]]
        edge = outputs["edge"]
        edge = _upsample_to(edge[-1] if isinstance(edge, (list, tuple)) else edge, size)
        edges = edge_targets(labels, self.ignore_index)

        loss_parsing = edge.new_zeros(())
        for logits in parsing:
            loss_parsing = loss_parsing + 0.5 * self.lambda_s * lovasz_softmax(
                logits.softmax(1), labels, self.ignore_index
            )
            if soft_parsing is None:
                ce = _weighted_mean_ce(logits, labels, logits.new_ones(logits.shape[1]), self.ignore_index)
            else:
                ce = soft_target_kl(logits, soft_parsing, labels, cycle_n, labels, self.ignore_index, self.kl_reduction)
            loss_parsing = loss_parsing + 0.5 * self.lambda_s * ce
        if soft_edge is None:
            loss_edge = self.lambda_e * edge_loss(edge, edges, self.ignore_index)
        else:
            loss_edge = self.lambda_e * soft_target_kl(
                edge, soft_edge, edges, cycle_n, labels, self.ignore_index, self.kl_reduction
            )
        loss_consistency = edge.new_zeros(())
        for logits in parsing:
            loss_consistency = loss_consistency + self.lambda_c * consistency_loss(
                logits, edge, labels, self.ignore_index
            )
        total = loss_parsing + loss_edge + loss_consistency
        floats = torch.stack([total, loss_parsing, loss_edge, loss_consistency]).detach().tolist()
        return total, dict(zip(["loss", "loss_parsing", "loss_edge", "loss_consistency"], floats, strict=True))


__all__ = [
    "BootstrappedCrossEntropy",
    "CE2PLoss",
    "LovaszSoftmaxLoss",
    "OhemCrossEntropy",
    "SegmentationLoss",
    "class_pixel_counts",
    "consistency_loss",
    "edge_loss",
    "edge_targets",
    "enet_weights",
    "lovasz_softmax",
    "median_frequency_weights",
    "soft_target_kl",
]
