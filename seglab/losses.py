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
2017, arXiv:1511.00561), after Eigen & Fergus (ICCV 2015): ``weight_c = median(freq) / freq_c``.
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
    ) -> None:
        super().__init__()
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

    def cross_entropy(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean cross-entropy of ``logits [B, K, h, w]`` against ``target [B, H, W]`` (resized to it);
        bootstrapped (top-K) when the loss was built with ``bootstrap_top_k``."""
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        if self.bootstrap is not None:
            return self.bootstrap(logits, target)
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
        if target.ndim != 3:
            raise ValueError(f"target must be [B, H, W] class indices, got shape {tuple(target.shape)}")
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        target = target.long()
        pixel_loss = F.cross_entropy(
            logits.float(), target, weight=self.class_weights, ignore_index=self.ignore_index, reduction="none"
        )
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


__all__ = ["BootstrappedCrossEntropy", "SegmentationLoss", "class_pixel_counts", "median_frequency_weights"]
