"""Semantic segmentation metrics from a streaming confusion matrix, and the evaluation loop.

Why a hand-written confusion matrix rather than a metrics library: the matrix is the one quantity
that must be summed across data-parallel ranks (an integer ``C x C`` tensor all-reduces exactly,
per-image metrics do not), and every number seglab reports must match the papers' definitions
(FCN, Parsing R-CNN, SCHP; reference/models.md section 11) to the last digit. All metrics below
derive from that single matrix, in one place, so no script recomputes them differently.

Definitions (``hist[g, p]`` counts pixels with ground truth ``g`` predicted as ``p``; rows are
ground truth; pixels whose ground truth is ``ignore_index`` or outside ``[0, C)`` are dropped):

- ``aAcc`` (pixel accuracy) = trace / sum.
- ``Acc_c`` = hist[c, c] / hist[c, :].sum();  ``mAcc`` = mean over classes.
- ``IoU_c`` = hist[c, c] / (hist[c, :].sum() + hist[:, c].sum() - hist[c, c]);  ``mIoU`` = mean.
- ``fwIoU`` = sum over classes present in the ground truth of (gt pixels of c / all pixels) * IoU_c.

Absent classes: a class that appears in neither the ground truth nor the prediction (union 0) has
IoU NaN and is left out of the mean (``nanmean``), as in Parsing R-CNN and most toolkits; its
accuracy is NaN as well, and likewise for any class absent from the ground truth. A class that is
predicted but absent from the ground truth has IoU 0 and does count: predicting it is an error.
The reason for this choice: an absent class says nothing about the model, and counting it as 0
(SCHP's ``max(1, union)``) would make a perfect prediction on a split that lacks one class score
below 1. On full benchmark validation sets, where every class occurs, both conventions agree. If
nothing at all was counted, every metric is NaN.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from seglab.engine.inference import check_infer_args, infer_probs, model_device

log = logging.getLogger(__name__)


@dataclass
class SegMetrics:
    """Pixel accuracy, mean accuracy, mean IoU, frequency-weighted IoU, the per-class values and the
    ``C x C`` confusion matrix they came from (rows ground truth, columns prediction; int64 pixel
    counts), kept so a run's log can draw the confusion heat map (``seglab plot``)."""

    aAcc: float
    mAcc: float
    mIoU: float
    fwIoU: float
    iou: np.ndarray
    acc: np.ndarray
    confusion: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: floats, with None wherever a value is NaN (JSON has no NaN), and
        ``"confusion"`` as a list of rows of ints when the matrix is known."""
        out: dict[str, Any] = {
            "aAcc": _json_float(self.aAcc),
            "mAcc": _json_float(self.mAcc),
            "mIoU": _json_float(self.mIoU),
            "fwIoU": _json_float(self.fwIoU),
            "IoU": [_json_float(v) for v in self.iou.tolist()],
            "Acc": [_json_float(v) for v in self.acc.tolist()],
        }
        if self.confusion is not None:
            out["confusion"] = [[int(v) for v in row] for row in np.asarray(self.confusion).tolist()]
        return out


def _json_float(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN entries; NaN (without a warning) when there are none."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")


class ConfusionMatrix:
    """A ``num_classes x num_classes`` int64 histogram of (ground truth, prediction) pixel pairs.

    ``hist`` stays on the CPU; ``update`` counts on the inputs' device (``torch.bincount``) and adds
    the small result. For data-parallel evaluation each rank updates its own matrix and
    :meth:`all_reduce` sums them, after which every rank computes the same metrics.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"ConfusionMatrix: num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.hist = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.hist.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count the pixels of ``pred`` (class indices) against ``target`` (same shape, any shape)."""
        if pred.shape != target.shape:
            raise ValueError(f"ConfusionMatrix.update: pred {tuple(pred.shape)} and target "
                             f"{tuple(target.shape)} differ in shape")
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError("ConfusionMatrix.update: pred and target must be integer class indices "
                             "(take argmax of the scores first)")
        c = self.num_classes
        if target.device.type == "cpu" and pred.device.type == "cpu":
            # NumPy's bincount and boolean indexing are several times faster than torch's on the CPU
            # (benchmarks/evaluator.py); the counts are the same
            gt = target.reshape(-1).numpy().astype(np.int64)
            pr = pred.reshape(-1).numpy().astype(np.int64)
            keep = (gt != self.ignore_index) & (gt >= 0) & (gt < c)
            gt, pr = gt[keep], pr[keep]
            self._check_predictions(pr.min() if pr.size else 0, pr.max() if pr.size else 0)
            counts = np.bincount(c * gt + pr, minlength=c * c).reshape(c, c)
            self.hist += torch.from_numpy(counts)
            return
        gt = target.reshape(-1).to(torch.int64)
        pr = pred.reshape(-1).to(gt.device, torch.int64)
        keep = (gt != self.ignore_index) & (gt >= 0) & (gt < c)
        gt, pr = gt[keep], pr[keep]
        if pr.numel():
            self._check_predictions(*(int(v) for v in torch.aminmax(pr)))
        counts = torch.bincount(c * gt + pr, minlength=c * c).reshape(c, c)
        self.hist += counts.cpu()

    def _check_predictions(self, low: int, high: int) -> None:
        if low < 0 or high >= self.num_classes:
            raise ValueError(f"ConfusionMatrix.update: predictions must lie in [0, {self.num_classes}), got values "
                             f"from {low} to {high}")

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts into this matrix (in place); returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"ConfusionMatrix.merge: {other.num_classes} classes into {self.num_classes}")
        self.hist += other.hist.to(self.hist.device)
        return self

    def all_reduce(self, group: Any = None) -> ConfusionMatrix:
        """Sum the matrices of all ranks (no-op outside ``torch.distributed``); returns self."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
        buf = self.hist.to(device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
        self.hist.copy_(buf.cpu())
        return self

    def compute(self) -> SegMetrics:
        """The metrics of the counts so far (see the module docstring for the definitions)."""
        hist = self.hist.to(torch.float64).numpy()
        tp = np.diag(hist)
        gt = hist.sum(axis=1)
        pred = hist.sum(axis=0)
        union = gt + pred - tp
        total = hist.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            acc = np.where(gt > 0, tp / gt, np.nan)
        if total > 0:
            a_acc = float(tp.sum() / total)
            present = gt > 0
            fw_iou = float((gt[present] / total * iou[present]).sum())
        else:
            a_acc = fw_iou = float("nan")
        return SegMetrics(
            aAcc=a_acc, mAcc=_nanmean(acc), mIoU=_nanmean(iou), fwIoU=fw_iou, iou=iou, acc=acc,
            confusion=self.hist.numpy().copy(),
        )


def metrics_to_text(metrics: SegMetrics, class_names: Sequence[str]) -> str:
    """A per-class table (name, IoU %, Acc %) followed by the summary line; NaN shows as '-'."""

    def pct(value: float) -> str:
        return "-" if math.isnan(value) else f"{100.0 * value:.2f}"

    names = [class_names[i] if i < len(class_names) else f"class {i}" for i in range(len(metrics.iou))]
    width = max([len("class"), *(len(n) for n in names)])
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'Acc':>7}", "-" * (width + 18)]
    for name, iou, acc in zip(names, metrics.iou.tolist(), metrics.acc.tolist(), strict=True):
        lines.append(f"{name:<{width}}  {pct(iou):>7}  {pct(acc):>7}")
    lines.append("-" * (width + 18))
    lines.append(
        f"aAcc {pct(metrics.aAcc)}  mAcc {pct(metrics.mAcc)}  mIoU {pct(metrics.mIoU)}  fwIoU {pct(metrics.fwIoU)}"
    )
    return "\n".join(lines)


def _list_collate(items: list[Any]) -> list[Any]:
    return items


def _same_size_runs(images: list[torch.Tensor]) -> list[tuple[int, int]]:
    """[start, stop) ranges of consecutive images that share one spatial size."""
    runs, start = [], 0
    for i in range(1, len(images) + 1):
        if i == len(images) or images[i].shape[-2:] != images[start].shape[-2:]:
            runs.append((start, i))
            start = i
    return runs


def evaluate_confusion(
    model: nn.Module,
    dataset: Dataset,
    *,
    num_classes: int,
    mode: str = "whole",
    crop_size: tuple[int, int] = (512, 512),
    stride: tuple[int, int] = (341, 341),
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    flip_pairs: Sequence[tuple[int, int]] = (),
    device: str | torch.device | None = None,
    batch_size: int = 1,
    progress: bool = False,
    num_workers: int = 0,
) -> ConfusionMatrix:
    """The confusion matrix of ``model`` over ``dataset``: :func:`evaluate` without the final
    ``compute()``, for callers that merge or all-reduce matrices (one shard of the data per rank).
    """
    check_infer_args(mode, crop_size, stride, scales)
    if batch_size < 1:
        raise ValueError(f"evaluate: batch_size must be >= 1, got {batch_size}")
    if device is None:
        device = model_device(model)
    else:
        device = torch.device(device)
        model.to(device)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_list_collate,
        pin_memory=device.type == "cuda",
        # its own generator: creating the loader's iterator must not draw from the global RNG,
        # or evaluating mid-training would shift the training run's random stream
        generator=torch.Generator().manual_seed(0),
    )
    matrix = ConfusionMatrix(num_classes)
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        from rich.progress import Progress

        with torch.inference_mode(), Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("eval", total=len(dataset))
            for items in loader:
                images = [item[0] for item in items]
                masks = [torch.as_tensor(item[1]) for item in items]
                for image, mask in zip(images, masks, strict=True):
                    if image.ndim != 3 or mask.shape != image.shape[-2:]:
                        raise ValueError(f"evaluate: expected image [3, H, W] with mask [H, W], got "
                                         f"{tuple(image.shape)} and {tuple(mask.shape)}")
                    if not image.is_floating_point():
                        raise ValueError(f"evaluate: images must be normalised float tensors, got {image.dtype} "
                                         "(the dataset should apply seglab.data.transforms.normalize_image)")
                for start, stop in _same_size_runs(images):
                    batch = torch.stack(images[start:stop]).to(device, non_blocking=True)
                    probs = infer_probs(
                        model, batch, mode=mode, crop_size=crop_size, stride=stride, scales=scales,
                        flip=flip, flip_pairs=flip_pairs,
                    )
                    target = torch.stack(masks[start:stop]).to(device, non_blocking=True)
                    matrix.update(probs.argmax(dim=1), target)
                bar.update(task, advance=len(items))
    finally:
        for module, training in flags:
            module.training = training
    return matrix


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    num_classes: int,
    mode: str = "whole",
    crop_size: tuple[int, int] = (512, 512),
    stride: tuple[int, int] = (341, 341),
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    flip_pairs: Sequence[tuple[int, int]] = (),
    device: str | torch.device | None = None,
    batch_size: int = 1,
    progress: bool = False,
    num_workers: int = 0,
) -> SegMetrics:
    """Segment every ``(image, mask)`` of ``dataset`` with :func:`infer_probs` and return the metrics.

    Images are float ``[3, H, W]`` tensors already normalised, masks int ``[H, W]`` with 255 ignored.
    The images of one batch may differ in size: consecutive same-size images are stacked, the
    others run one by one. The model runs in eval mode under ``torch.inference_mode``; every
    submodule's training flag is restored afterwards. ``device`` defaults to the model's device;
    when given, the model is moved there. ``num_workers`` is the DataLoader's.
    """
    return evaluate_confusion(
        model, dataset, num_classes=num_classes, mode=mode, crop_size=crop_size, stride=stride, scales=scales,
        flip=flip, flip_pairs=flip_pairs, device=device, batch_size=batch_size, progress=progress,
        num_workers=num_workers,
    ).compute()


__all__ = ["ConfusionMatrix", "SegMetrics", "evaluate", "evaluate_confusion", "metrics_to_text"]
