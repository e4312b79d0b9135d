"""Semantic segmentation metrics from a streaming confusion matrix, and the evaluation loop.

Why a hand-written confusion matrix rather than a metrics library: the matrix is the one quantity
that must be summed across data-parallel ranks (an integer ``C x C`` tensor all-reduces exactly,
per-image metrics do not), and every number seglab reports must match the papers' definitions
(FCN, Parsing R-CNN, SCHP: their evaluation scripts, cited below) to the last digit. All metrics below
derive from that single matrix, in one place, so no script recomputes them differently.

Definitions (``hist[g, p]`` counts pixels with ground truth ``g`` predicted as ``p``; rows are
ground truth; pixels whose ground truth is ``ignore_index`` or outside ``[0, C)`` are dropped, and
evaluation refuses the latter, :func:`check_ground_truth`):

- ``aAcc`` (pixel accuracy) = trace / sum.
- ``Acc_c`` = hist[c, c] / hist[c, :].sum();  ``mAcc`` = mean over classes.
- ``IoU_c`` = hist[c, c] / (hist[c, :].sum() + hist[:, c].sum() - hist[c, c]);  ``mIoU`` = mean.
- ``fwIoU`` = sum over classes present in the ground truth of (gt pixels of c / all pixels) * IoU_c.

Absent classes, two rules (``ConfusionMatrix.compute(absent=...)``, :func:`parsing_metrics`):

- ``"nan"`` (the default): a class that appears in neither the ground truth nor the prediction
  (union 0) has IoU NaN and is left out of the mean (``nanmean``), as in Parsing R-CNN
  (``parsing_eval.py``: ``mean_IoU``, ``per_class_acc``) and most toolkits; its accuracy is NaN as
  well, and likewise for any class absent from the ground truth. A class that is predicted but absent
  from the ground truth has IoU 0 and does count: predicting it is an error. The reason for this
  default: an absent class says nothing about the model, and counting it as 0 would make a perfect
  prediction on a split that lacks one class score below 1. If nothing at all was counted, every
  metric is NaN.
- ``"zero"``: SCHP's rule (``utils/miou.py``: ``IoU = tp / max(1, pos + res - tp)`` and
  ``mean_accuracy = mean(tp / max(1, pos))``, both averaged over all classes): an absent class has
  IoU 0, a class absent from the ground truth has accuracy 0, and both count in the means. The LIP
  numbers of SCHP (59.36) were computed this way.

On full benchmark validation sets, where every class occurs, both rules agree. Pixel accuracy and
fwIoU do not depend on the rule.

Optional metrics (``eval.metrics``; computed only when asked), as mmsegmentation's ``IoUMetric``
computes them (``mmseg/evaluation/metrics/iou_metric.py``, ``total_area_to_metrics``), with TP_c =
hist[c, c], pred_c = hist[:, c].sum() and gt_c = hist[c, :].sum():

- ``"dice"``: ``Dice_c`` = 2 TP_c / (pred_c + gt_c);  ``mDice``.
- ``"fscore"``: ``Precision_c`` = TP_c / pred_c, ``Recall_c`` = TP_c / gt_c (= ``Acc_c``) and
  ``Fscore_c`` = (1 + b^2) P R / (b^2 P + R) with b = 1, from those two;  ``mFscore``, ``mPrecision``,
  ``mRecall``.
- ``"boundary_iou"``: ``BIoU_c`` = boundary intersection / boundary union summed over the images
  (:mod:`seglab.engine.boundary`: Cheng et al. 2021, dilation ratio 0.02);  ``mBIoU``.

The absent rule applies to them as to IoU and accuracy: under ``"nan"`` a value whose denominator is
0 is NaN and left out of the mean (mmseg's 0/0, its ``np.nanmean``), under ``"zero"`` it is 0 and
counted. So under ``"nan"`` the numbers are mmseg's to float precision (mmseg sums in float32),
including its F-score rule: a class with no true positive (P = R = 0), or one never predicted (P
undefined) or absent from the ground truth (R undefined), has no F-score and is left out of mFscore,
while its Dice is 0 and counts; mDice is the stricter of the two.

Instance-level human parsing (CIHP) adds two detection-style metrics over part or person masks,
computed here as the reference scripts do:
:func:`region_ap` (PGN's AP^r, CIHP_PGN ``evaluation/test_inst_part_ap.py``) and
:func:`person_parsing_ap` (Parsing R-CNN's AP^p and PCP, ``utils/data/evaluation/parsing_eval.py``).
Both use the continuous VOC AP (:func:`voc_ap`) and IoU thresholds 0.1, ..., 0.9, a match needing
IoU strictly greater than the threshold.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from seglab.config import check_eval_metrics
from seglab.engine.boundary import boundary_counts
from seglab.engine.forward import model_device
from seglab.engine.inference import InferenceOptions, infer_probs
from seglab.errors import DatasetError

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
    # the optional metrics (eval.metrics), None unless asked for: per-class values; the means are properties
    dice: np.ndarray | None = None
    fscore: np.ndarray | None = None
    precision: np.ndarray | None = None
    recall: np.ndarray | None = None
    boundary_iou: np.ndarray | None = None

    @property
    def mDice(self) -> float | None:  # noqa: N802 - the metric's name
        return _mean_of(self.dice)

    @property
    def mFscore(self) -> float | None:  # noqa: N802
        return _mean_of(self.fscore)

    @property
    def mPrecision(self) -> float | None:  # noqa: N802
        return _mean_of(self.precision)

    @property
    def mRecall(self) -> float | None:  # noqa: N802
        return _mean_of(self.recall)

    @property
    def mBIoU(self) -> float | None:  # noqa: N802
        return _mean_of(self.boundary_iou)

    def extra(self) -> list[tuple[str, str, float, np.ndarray]]:
        """The optional metrics that were computed: ``(mean name, per-class name, mean, per-class values)``."""
        fields = [("mDice", "Dice", self.dice), ("mFscore", "Fscore", self.fscore),
                  ("mPrecision", "Precision", self.precision), ("mRecall", "Recall", self.recall),
                  ("mBIoU", "BIoU", self.boundary_iou)]
        return [(mean, name, getattr(self, mean), values) for mean, name, values in fields if values is not None]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: floats, with None wherever a value is NaN (JSON has no NaN), and
        ``"confusion"`` as a list of rows of ints when the matrix is known. The optional metrics appear
        (mean, then per class: ``"mDice"``, ``"Dice"``, ...) only when they were computed."""
        out: dict[str, Any] = {
            "aAcc": _json_float(self.aAcc),
            "mAcc": _json_float(self.mAcc),
            "mIoU": _json_float(self.mIoU),
            "fwIoU": _json_float(self.fwIoU),
            "IoU": [_json_float(v) for v in self.iou.tolist()],
            "Acc": [_json_float(v) for v in self.acc.tolist()],
        }
        for mean_name, name, mean, values in self.extra():
            out[mean_name] = _json_float(mean)
            out[name] = [_json_float(v) for v in values.tolist()]
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


def _mean_of(values: np.ndarray | None) -> float | None:
    """The class mean of an optional metric (None when not computed). Under the "zero" rule no value is NaN,
    so this is the plain mean there and the nanmean under "nan", as for mIoU."""
    return None if values is None else _nanmean(values)


class ConfusionMatrix:
    """A ``num_classes x num_classes`` int64 histogram of (ground truth, prediction) pixel pairs.

    ``hist`` stays on the CPU; ``update`` counts on the inputs' device (``torch.bincount``) and adds
    the small result. For data-parallel evaluation each rank updates its own matrix and
    :meth:`all_reduce` sums them, after which every rank computes the same metrics.

    ``metrics`` (names of :data:`~seglab.config.EVAL_METRICS`) are what :meth:`compute` reports. All but
    Boundary IoU derive from ``hist``; with ``"boundary_iou"`` each update also counts the boundary
    regions' intersection and union per class (``boundary``, int64 ``[2, C]``), which needs the label maps
    as ``[H, W]`` or ``[B, H, W]`` and costs two min/max filters per map.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, metrics: Sequence[str] = ("miou",)) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"ConfusionMatrix: num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.metrics = check_eval_metrics(metrics, "metrics")
        self.hist = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self.boundary = (torch.zeros(2, self.num_classes, dtype=torch.int64) if "boundary_iou" in self.metrics
                         else None)

    def reset(self) -> None:
        self.hist.zero_()
        if self.boundary is not None:
            self.boundary.zero_()

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
        else:
            gt = target.reshape(-1).to(torch.int64)
            pr = pred.reshape(-1).to(gt.device, torch.int64)
            keep = (gt != self.ignore_index) & (gt >= 0) & (gt < c)
            gt, pr = gt[keep], pr[keep]
            if pr.numel():
                self._check_predictions(*(int(v) for v in torch.aminmax(pr)))
            counts = torch.bincount(c * gt + pr, minlength=c * c).reshape(c, c)
            self.hist += counts.cpu()
        if self.boundary is not None:
            if pred.ndim not in (2, 3):
                raise ValueError(f"ConfusionMatrix.update: Boundary IoU needs label maps [H, W] or [B, H, W], got "
                                 f"{tuple(pred.shape)}")
            intersection, union = boundary_counts(pred, target, c, self.ignore_index)
            self.boundary[0] += intersection
            self.boundary[1] += union

    def _check_predictions(self, low: int, high: int) -> None:
        if low < 0 or high >= self.num_classes:
            raise ValueError(f"ConfusionMatrix.update: predictions must lie in [0, {self.num_classes}), got values "
                             f"from {low} to {high}")

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts into this matrix (in place); returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"ConfusionMatrix.merge: {other.num_classes} classes into {self.num_classes}")
        if (other.boundary is None) != (self.boundary is None):
            raise ValueError("ConfusionMatrix.merge: one matrix counts Boundary IoU and the other does not")
        self.hist += other.hist.to(self.hist.device)
        if self.boundary is not None:
            self.boundary += other.boundary
        return self

    def all_reduce(self, group: Any = None) -> ConfusionMatrix:
        """Sum the matrices of all ranks (no-op outside ``torch.distributed``); returns self."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
        parts = [self.hist] if self.boundary is None else [self.hist, self.boundary]
        buf = torch.cat([p.reshape(-1) for p in parts]).to(device)  # one collective for all counts
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
        for part, reduced in zip(parts, buf.cpu().split([p.numel() for p in parts]), strict=True):
            part.copy_(reduced.reshape(part.shape))
        return self

    def compute(self, absent: str = "nan", metrics: Sequence[str] | None = None) -> SegMetrics:
        """The metrics of the counts so far (see the module docstring for the definitions).

        ``absent`` picks the rule for classes absent from the ground truth and the prediction:
        ``"nan"`` (NaN, left out of the means) or ``"zero"`` (SCHP's: 0, counted in the means).
        ``metrics`` default to the matrix's own; Boundary IoU only where the matrix counted it.
        """
        metrics = self.metrics if metrics is None else check_eval_metrics(metrics, "metrics")
        if "boundary_iou" in metrics and self.boundary is None:
            raise ValueError("ConfusionMatrix.compute: Boundary IoU is counted per image; create the matrix with "
                             "metrics including 'boundary_iou'")
        return _segmetrics_from_hist(self.hist, absent, metrics, self.boundary)


ABSENT_RULES = ("nan", "zero")


def _segmetrics_from_hist(
    hist: Any, absent: str = "nan", metrics: Sequence[str] = ("miou",), boundary: Any = None
) -> SegMetrics:
    """:class:`SegMetrics` of a ``C x C`` count matrix (rows ground truth) under an absent-class rule, with the
    optional ``metrics``; Boundary IoU from ``boundary``, the ``[2, C]`` boundary intersections and unions."""
    if absent not in ABSENT_RULES:
        raise ValueError(f"absent must be one of {ABSENT_RULES}, got {absent!r}")
    counts = hist.detach().cpu().numpy() if isinstance(hist, torch.Tensor) else np.asarray(hist)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"confusion matrix must be square C x C, got shape {counts.shape}")
    h = counts.astype(np.float64)
    tp = np.diag(h)
    gt = h.sum(axis=1)
    pred = h.sum(axis=0)
    union = gt + pred - tp
    total = h.sum()
    if absent == "zero":
        # SCHP utils/miou.py: tp / max(1, union) and tp / max(1, pos); counts are integers, so this
        # is exactly "0 where the denominator is 0"
        iou = tp / np.maximum(1.0, union)
        acc = tp / np.maximum(1.0, gt)
        m_iou, m_acc = float(iou.mean()), float(acc.mean())
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            acc = np.where(gt > 0, tp / gt, np.nan)
        m_iou, m_acc = _nanmean(iou), _nanmean(acc)
    if total > 0:
        a_acc = float(tp.sum() / total)
        present = gt > 0
        fw_iou = float((gt[present] / total * iou[present]).sum())
    else:
        a_acc = fw_iou = float("nan")
    extra: dict[str, np.ndarray] = {}
    if "dice" in metrics:
        extra["dice"] = _ratio(2.0 * tp, pred + gt, absent)
    if "fscore" in metrics:
        precision, recall = _ratio(tp, pred, absent), _ratio(tp, gt, absent)
        extra.update(precision=precision, recall=recall, fscore=_fscore(precision, recall, absent))
    if "boundary_iou" in metrics:
        b = boundary.detach().cpu().numpy() if isinstance(boundary, torch.Tensor) else np.asarray(boundary)
        if b.shape != (2, counts.shape[0]):
            raise ValueError(f"boundary counts must be [2, {counts.shape[0]}], got shape {b.shape}")
        extra["boundary_iou"] = _ratio(b[0].astype(np.float64), b[1].astype(np.float64), absent)
    return SegMetrics(aAcc=a_acc, mAcc=m_acc, mIoU=m_iou, fwIoU=fw_iou, iou=iou, acc=acc,
                      confusion=counts.astype(np.int64).copy(), **extra)


def _ratio(numerator: np.ndarray, denominator: np.ndarray, absent: str) -> np.ndarray:
    """``numerator / denominator`` per class; where the denominator is 0: NaN (``absent="nan"``) or 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan if absent == "nan" else 0.0)


def _fscore(precision: np.ndarray, recall: np.ndarray, absent: str, beta: float = 1.0) -> np.ndarray:
    """mmseg's ``f_score``: (1 + b^2) P R / (b^2 P + R). NaN propagates and 0/0 (no true positive) is NaN
    under ``absent="nan"``; under "zero" P and R are already 0 where undefined, and 0/0 gives 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        score = (1 + beta**2) * (precision * recall) / ((beta**2 * precision) + recall)
    return score if absent == "nan" else np.nan_to_num(score, nan=0.0)


def parsing_metrics(hist: ConfusionMatrix | torch.Tensor | np.ndarray, rule: str = "schp") -> dict[str, Any]:
    """LIP/CIHP-style parsing metrics of a confusion matrix: pixel accuracy, mean accuracy, mIoU and
    the per-class IoU and accuracy (fractions, not percent).

    ``rule="schp"`` averages over all classes with absent ones counting 0 (SCHP's ``utils/miou.py``,
    how the LIP/ATR/Pascal-Person-Part numbers of SCHP were computed); ``rule="nan"`` leaves absent
    classes out of the means (Parsing R-CNN's ``parsing_eval.py``, seglab's default elsewhere).
    Returns ``{"pixel_acc", "mean_acc", "mIoU", "IoU": ndarray[C], "Acc": ndarray[C]}``.
    """
    rules = {"schp": "zero", "nan": "nan"}
    if rule not in rules:
        raise ValueError(f"parsing_metrics: rule must be 'schp' or 'nan', got {rule!r}")
    m = _segmetrics_from_hist(hist.hist if isinstance(hist, ConfusionMatrix) else hist, rules[rule])
    return {"pixel_acc": m.aAcc, "mean_acc": m.mAcc, "mIoU": m.mIoU, "IoU": m.iou, "Acc": m.acc}


# the column headers of the optional metrics in metrics_to_text
_SHORT_NAMES = {"Dice": "Dice", "Fscore": "Fscore", "Precision": "Prec", "Recall": "Recall", "BIoU": "BIoU"}


def metrics_to_text(metrics: SegMetrics, class_names: Sequence[str]) -> str:
    """A per-class table (name, IoU %, Acc %, then the optional metrics computed) followed by the summary line
    (and a second one of the optional means); NaN shows as '-'."""

    def pct(value: float) -> str:
        return "-" if math.isnan(value) else f"{100.0 * value:.2f}"

    extra = metrics.extra()
    names = [class_names[i] if i < len(class_names) else f"class {i}" for i in range(len(metrics.iou))]
    width = max([len("class"), *(len(n) for n in names)])
    rule = "-" * (width + 18 + 9 * len(extra))
    header = "".join(f"  {_SHORT_NAMES[name]:>7}" for _, name, _, _ in extra)
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'Acc':>7}{header}", rule]
    for i, (name, iou, acc) in enumerate(zip(names, metrics.iou.tolist(), metrics.acc.tolist(), strict=True)):
        cells = "".join(f"  {pct(float(values[i])):>7}" for _, _, _, values in extra)
        lines.append(f"{name:<{width}}  {pct(iou):>7}  {pct(acc):>7}{cells}")
    lines.append(rule)
    lines.append(
        f"aAcc {pct(metrics.aAcc)}  mAcc {pct(metrics.mAcc)}  mIoU {pct(metrics.mIoU)}  fwIoU {pct(metrics.fwIoU)}"
    )
    if extra:
        lines.append("  ".join(f"{mean_name} {pct(mean)}" for mean_name, _, mean, _ in extra))
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


def check_ground_truth(mask: torch.Tensor, num_classes: int, where: str, ignore_index: int = 255) -> None:
    """Raise :class:`~seglab.errors.DatasetError` naming ``where`` if ``mask`` holds values outside
    ``[0, num_classes)`` other than ``ignore_index``: evaluation must not drop such pixels silently (they mean
    a label set with more classes than the model, or a corrupt label)."""
    bad = mask[(mask != ignore_index) & ((mask < 0) | (mask >= num_classes))]
    if bad.numel():
        values = sorted({int(v) for v in bad.unique()[:10]})
        raise DatasetError(f"{where}: ground-truth values {values} are outside the model's {num_classes} classes "
                           f"[0, {num_classes}) and not the ignore index {ignore_index}; check the label files "
                           "and model.num_classes against the label set")


def _sample_name(dataset: Dataset, index: int) -> str:
    """The label file of sample ``index`` where the dataset lists them (else its index), for error messages."""
    paths = getattr(dataset, "label_paths", None)
    if isinstance(dataset, torch.utils.data.Subset):
        paths, index = getattr(dataset.dataset, "label_paths", None), dataset.indices[index]
    return str(paths[index]) if paths is not None and index < len(paths) else f"sample {index}"


def evaluate_confusion(
    model: nn.Module,
    dataset: Dataset,
    options: InferenceOptions | None = None,
    *,
    num_classes: int,
    device: str | torch.device | None = None,
    batch_size: int = 1,
    progress: bool = False,
    num_workers: int = 0,
    metrics: Sequence[str] = ("miou",),
    **option_keywords: Any,
) -> ConfusionMatrix:
    """The confusion matrix of ``model`` over ``dataset``: :func:`evaluate` without the final
    ``compute()``, for callers that merge or all-reduce matrices (one shard of the data per rank).
    ``metrics`` are the matrix's (:class:`ConfusionMatrix`): with ``"boundary_iou"`` it also counts boundaries.
    """
    options = InferenceOptions.build(options, **option_keywords)
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
    matrix = ConfusionMatrix(num_classes, metrics=metrics)
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        from rich.progress import Progress

        with torch.inference_mode(), Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("eval", total=len(dataset))
            for batch_index, items in enumerate(loader):
                images = [item[0] for item in items]
                masks = [torch.as_tensor(item[1]) for item in items]
                for j, (image, mask) in enumerate(zip(images, masks, strict=True)):
                    if image.ndim != 3 or mask.shape != image.shape[-2:]:
                        raise ValueError(f"evaluate: expected image [3, H, W] with mask [H, W], got "
                                         f"{tuple(image.shape)} and {tuple(mask.shape)}")
                    if not image.is_floating_point():
                        raise ValueError(f"evaluate: images must be normalised float tensors, got {image.dtype} "
                                         "(the dataset should apply seglab.data.transforms.normalize_image)")
                    check_ground_truth(mask, num_classes, _sample_name(dataset, batch_index * batch_size + j),
                                       matrix.ignore_index)
                for start, stop in _same_size_runs(images):
                    batch = torch.stack(images[start:stop]).to(device, non_blocking=True)
                    probs = infer_probs(model, batch, options)
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
    options: InferenceOptions | None = None,
    *,
    num_classes: int,
    device: str | torch.device | None = None,
    batch_size: int = 1,
    progress: bool = False,
    num_workers: int = 0,
    absent: str = "nan",
    metrics: Sequence[str] = ("miou",),
    **option_keywords: Any,
) -> SegMetrics:
    """Segment every ``(image, mask)`` of ``dataset`` with :func:`infer_probs` as ``options`` say (keywords such
    as ``mode="slide"`` build or change them) and return the metrics (``absent``: the rule for classes absent
    from ground truth and prediction, see ConfusionMatrix.compute).

    Images are float ``[3, H, W]`` tensors already normalised, masks int ``[H, W]`` with 255 ignored; a
    ground-truth value outside ``[0, num_classes)`` other than 255 is a DatasetError naming the label file.
    The images of one batch may differ in size: consecutive same-size images are stacked, the
    others run one by one. The model runs in eval mode under ``torch.inference_mode``; every
    submodule's training flag is restored afterwards. ``device`` defaults to the model's device;
    when given, the model is moved there. ``num_workers`` is the DataLoader's. ``metrics``: what is reported
    besides mIoU and its companions (:data:`~seglab.config.EVAL_METRICS`).
    """
    return evaluate_confusion(
        model, dataset, options, num_classes=num_classes, device=device, batch_size=batch_size, progress=progress,
        num_workers=num_workers, metrics=metrics, **option_keywords,
    ).compute(absent=absent)


def evaluate_label_files(
    pairs: Sequence[tuple[Path, Path]],
    *,
    num_classes: int,
    read_ground_truth: Callable[[Path], np.ndarray] | None = None,
    absent: str = "nan",
    metrics: Sequence[str] = ("miou",),
    progress: bool = False,
    ignore_index: int = 255,
) -> SegMetrics:
    """The metrics of label maps written by any tool: ``pairs`` of (ground-truth file, prediction file), the
    ground truth read by ``read_ground_truth`` (default :func:`~seglab.data.io.read_label`; a dataset's
    ``load_label`` maps stored ids to train ids), each prediction as an index PNG (:func:`~seglab.data.io.read_label`).

    Raises :class:`~seglab.errors.DatasetError` naming the files when a prediction's size differs from its
    ground truth's, when it holds values that are neither a class in ``[0, num_classes)`` nor ``ignore_index``,
    when it is ``ignore_index`` where the ground truth is scored (no class there has no score), and, as
    :func:`evaluate`, for ground-truth values outside the classes.
    """
    from rich.progress import Progress

    from seglab.data.io import read_label

    read_ground_truth = read_ground_truth or read_label
    matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index, metrics=metrics)
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("eval", total=len(pairs))
        for gt_path, pred_path in pairs:
            target = torch.from_numpy(np.asarray(read_ground_truth(gt_path)).astype(np.int64))
            check_ground_truth(target, num_classes, str(gt_path), ignore_index)
            pred = torch.from_numpy(read_label(pred_path).astype(np.int64))
            _check_prediction(pred, target, pred_path, gt_path, num_classes, ignore_index)
            matrix.update(pred, target)
            bar.update(task, advance=1)
    return matrix.compute(absent=absent)


def _check_prediction(pred: torch.Tensor, target: torch.Tensor, pred_path: Path, gt_path: Path, num_classes: int,
                      ignore_index: int) -> None:
    """A prediction file's size and values against its ground truth (see :func:`evaluate_label_files`)."""
    if pred.shape != target.shape:
        raise DatasetError(f"{pred_path}: prediction size {pred.shape[1]}x{pred.shape[0]} (WxH) differs from the "
                           f"ground truth {gt_path} size {target.shape[1]}x{target.shape[0]}")
    bad = pred[(pred != ignore_index) & (pred >= num_classes)]
    if bad.numel():
        values = sorted(int(v) for v in bad.unique()[:10])
        raise DatasetError(f"{pred_path}: prediction values {values} are not among the {num_classes} classes "
                           f"[0, {num_classes}) nor {ignore_index}; a prediction holds the class indices (train ids) "
                           "that seglab predict writes, not a dataset's stored ids")
    scored = (target != ignore_index) & (target >= 0) & (target < num_classes)
    unlabelled = int(((pred == ignore_index) & scored).sum())
    if unlabelled:
        raise DatasetError(f"{pred_path}: {unlabelled} pixels are {ignore_index} (no class) where the ground truth "
                           f"{gt_path} has a class; {ignore_index} is allowed only where the ground truth is ignored, "
                           "every scored pixel needs a class")


# ---- instance-level human parsing (CIHP): PGN's AP^r, Parsing R-CNN's AP^p and PCP ----

PARSING_IOU_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Continuous VOC AP (VOC2010+, not the 11-point VOC07 rule): the area under the precision
    envelope, summed where the recall changes, with sentinels (0, 0) and (1, 0) as in py-faster-rcnn's
    ``voc_ap(use_07_metric=False)``, which both CIHP_PGN and Parsing R-CNN call. Empty input gives 0.
    """
    mrec = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(precision, dtype=np.float64), [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changed = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[changed + 1] - mrec[changed]) * mpre[changed + 1]))


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _check_thresholds(thresholds: Sequence[float], where: str) -> tuple[float, ...]:
    thresholds = tuple(float(t) for t in thresholds)
    if not thresholds or any(not 0.0 <= t < 1.0 for t in thresholds):
        raise ValueError(f"{where}: thresholds must be a non-empty list of IoUs in [0, 1), got {thresholds}")
    return thresholds


def _at_half(values: Sequence[float], thresholds: Sequence[float]) -> float:
    """The value at IoU threshold 0.5, NaN when 0.5 is not among the thresholds."""
    for t, v in zip(thresholds, values, strict=True):
        if abs(t - 0.5) < 1e-9:
            return float(v)
    return float("nan")


def _ap_from_hits(hits: np.ndarray, num_gt: int, order: np.ndarray) -> float:
    """VOC AP of detections ``hits`` (bool, one per detection) ranked by ``order``; NaN without GT."""
    if num_gt == 0:
        return float("nan")
    tp = np.cumsum(hits[order].astype(np.float64))
    fp = np.cumsum((~hits[order]).astype(np.float64))
    return voc_ap(tp / num_gt, tp / np.maximum(tp + fp, np.finfo(np.float64).eps))


def part_instances_from_maps(category_ids: Any, instance_ids: Any) -> list[tuple[int, np.ndarray]]:
    """CIHP ground truth for :func:`region_ap`: ``(class, bool mask)`` per part instance of an image, from
    its ``Category_ids`` and ``Instance_ids`` maps (id 0 = none, ids in increasing order). An instance's
    class is the category under its pixels (the most frequent one, should the two maps disagree);
    instances on background (category 0) are left out."""
    category, instance = _to_numpy(category_ids).astype(np.int64), _to_numpy(instance_ids).astype(np.int64)
    if category.shape != instance.shape:
        raise ValueError(f"part_instances_from_maps: Category_ids {category.shape} and Instance_ids "
                         f"{instance.shape} differ in shape")
    parts = []
    for inst in np.unique(instance):
        if inst == 0:
            continue
        mask = instance == inst
        classes = category[mask]
        classes = classes[(classes > 0) & (classes != 255)]
        if classes.size:
            parts.append((int(np.bincount(classes).argmax()), mask))
    return parts


def person_parsings_from_maps(category_ids: Any, human_ids: Any) -> list[np.ndarray]:
    """CIHP ground truth for :func:`person_parsing_ap`: one int64 part map per person of an image (its
    ``Category_ids`` inside the person's ``Human_ids`` region, 0 elsewhere), persons in increasing id
    order; ``Category_ids`` of 255 stays 255 (ignored)."""
    category, human = _to_numpy(category_ids).astype(np.int64), _to_numpy(human_ids).astype(np.int64)
    if category.shape != human.shape:
        raise ValueError(f"person_parsings_from_maps: Category_ids {category.shape} and Human_ids "
                         f"{human.shape} differ in shape")
    return [np.where(human == h, category, 0) for h in np.unique(human) if h != 0]


def region_ap(
    predictions: Sequence[Sequence[tuple[int, float, Any]]],
    ground_truths: Sequence[Sequence[tuple[int, Any]]],
    num_classes: int = 20,
    thresholds: Sequence[float] = PARSING_IOU_THRESHOLDS,
) -> dict[str, Any]:
    """PGN's region-level part AP (AP^r), as CIHP_PGN ``evaluation/test_inst_part_ap.py`` computes it.

    ``predictions[i]`` lists image i's predicted part instances as ``(class, score, bool mask [H, W])``,
    ``ground_truths[i]`` its GT part instances as ``(class, bool mask)`` (see
    :func:`part_instances_from_maps`). For each part class (1 .. C-1, background excluded), over all
    images pooled: a prediction's IoU is its maximum IoU with the same-class GT instances of its image
    (0 when there are none), it is a true positive at threshold t when that IoU > t (strictly), and
    there is **no one-to-one matching**: one GT instance can make several predictions true positives.
    Predictions are ranked by score; precision/recall give the continuous VOC AP (:func:`voc_ap`),
    recall being TP / (number of GT instances of the class).

    Faithful to the reference, including its quirks: without one-to-one matching the recall, and so
    the AP of a class, can exceed 1 when several predictions overlap one GT above the threshold (two
    halves of one arm at t = 0.4, say). Tied scores are ranked as the reference's
    ``argsort(scores)[::-1]`` ranks them: the later-listed prediction first.
    Deviations: empty masks are dropped (the reference reads instances from an id map, where an empty
    instance cannot occur); a class with no GT instance anywhere gets AP NaN and is left out of the
    class mean (the reference gives 0 when it has no predictions either and NaN, making the whole mean
    NaN, when it has some; on CIHP val every class has GT and the two agree).

    Returns ``{"thresholds", "APr": [mean over classes per threshold], "APr50", "APr_vol" (mean of
    APr over the thresholds), "per_class": ndarray [C, T] (row 0, background, and GT-less classes NaN)}``.
    """
    thresholds = _check_thresholds(thresholds, "region_ap")
    if len(predictions) != len(ground_truths):
        raise ValueError(f"region_ap: {len(predictions)} images of predictions but {len(ground_truths)} of "
                         "ground truth")
    scores: dict[int, list[float]] = {c: [] for c in range(1, num_classes)}
    ious: dict[int, list[float]] = {c: [] for c in range(1, num_classes)}
    num_gt = dict.fromkeys(range(1, num_classes), 0)
    for i, (preds, gts) in enumerate(zip(predictions, ground_truths, strict=True)):
        gt_by_class: dict[int, list[np.ndarray]] = {}
        shape = None
        for j, (cls, mask) in enumerate(gts):
            mask = _to_numpy(mask).astype(bool)
            shape = shape or mask.shape
            if mask.shape != shape:
                raise ValueError(f"region_ap: image {i}: GT instance {j} has shape {mask.shape}, expected {shape}")
            if 1 <= int(cls) < num_classes and mask.any():
                gt_by_class.setdefault(int(cls), []).append(mask)
        for cls, masks in gt_by_class.items():
            num_gt[cls] += len(masks)
        for j, (cls, score, mask) in enumerate(preds):
            mask = _to_numpy(mask).astype(bool)
            if shape is not None and mask.shape != shape:
                raise ValueError(f"region_ap: image {i}: predicted instance {j} has shape {mask.shape}, "
                                 f"but the GT masks have {shape}")
            if not 1 <= int(cls) < num_classes or not mask.any():
                continue
            area = int(mask.sum())
            best = 0.0
            for gt in gt_by_class.get(int(cls), []):
                inter = int(np.logical_and(mask, gt).sum())
                best = max(best, inter / (area + int(gt.sum()) - inter))
            scores[int(cls)].append(float(score))
            ious[int(cls)].append(best)
    per_class = np.full((num_classes, len(thresholds)), np.nan)
    for cls in range(1, num_classes):
        cls_ious = np.asarray(ious[cls], dtype=np.float64)
        order = np.argsort(np.asarray(scores[cls], dtype=np.float64), kind="stable")[::-1]
        for k, t in enumerate(thresholds):
            per_class[cls, k] = _ap_from_hits(cls_ious > t, num_gt[cls], order)
    ap = [_nanmean(per_class[1:, k]) for k in range(len(thresholds))]
    return {"thresholds": list(thresholds), "APr": ap, "APr50": _at_half(ap, thresholds),
            "APr_vol": float(np.mean(ap)), "per_class": per_class}


def person_parsing_ap(
    predictions: Sequence[Sequence[tuple[float, Any]]],
    ground_truths: Sequence[Sequence[Any]],
    num_classes: int = 20,
    thresholds: Sequence[float] = PARSING_IOU_THRESHOLDS,
    score_threshold: float = 0.001,
) -> dict[str, Any]:
    """Parsing R-CNN's person-level parsing AP (AP^p) and PCP, as ``utils/data/evaluation/parsing_eval.py``
    (``eval_parsing_ap``) computes them.

    ``predictions[i]`` lists image i's predicted persons as ``(score, int part map [H, W])`` (the
    person's part labels, 0 outside it), ``ground_truths[i]`` its GT persons as int part maps (255
    ignored; see :func:`person_parsings_from_maps`). Predictions with score < ``score_threshold`` are
    dropped (the reference's ``PRCNN.SCORE_THRESH``, 0.001). The rest, all images pooled, are ranked by
    score; each one's IoU with a GT person of its image is the ``nanmean`` over all C classes,
    **background included**, of the per-class IoU of the ``C x C`` confusion matrix of the two maps (GT
    pixels outside [0, C) ignored; classes absent from both maps are NaN and dropped), and it takes the
    GT with the highest IoU (the first on ties). At threshold t it is a true positive when that IoU > t
    (strictly) and the GT is not yet matched at t (**one-to-one**), else a false positive (a duplicate
    of a matched person, a low IoU, or an image without GT). AP^p at t is the continuous VOC AP
    (:func:`voc_ap`) with recall = TP / (number of GT persons); AP^p_vol is the mean over thresholds.

    PCP at t: each true positive scores (number of part classes 1 .. C-1 with IoU > t against its GT)
    / (number of part classes present in that GT person), 0 when it has none; unmatched GT persons
    score 0; PCP is the mean over all GT persons. PCP50 is the reported one.

    Tied scores keep the listed order (the reference's ``argsort(-scores)``). Without any GT person
    the APs and PCPs are NaN. The semantic mIoU the paper reports beside these comes from the
    images' merged semantic maps: use :class:`ConfusionMatrix` for it.

    Returns ``{"thresholds", "APp": [per threshold], "APp50", "APp_vol", "PCP": [per threshold], "PCP50"}``.
    """
    thresholds = _check_thresholds(thresholds, "person_parsing_ap")
    if len(predictions) != len(ground_truths):
        raise ValueError(f"person_parsing_ap: {len(predictions)} images of predictions but {len(ground_truths)} "
                         "of ground truth")
    c = int(num_classes)
    gts = [[_to_numpy(g).astype(np.int64) for g in image] for image in ground_truths]
    num_gt = sum(len(image) for image in gts)
    gt_parts = [[int(np.count_nonzero(np.bincount(g[(g > 0) & (g < c)], minlength=c)[1:])) for g in image]
                for image in gts]
    entries = [(i, j, float(score)) for i, image in enumerate(predictions) for j, (score, _) in enumerate(image)
               if float(score) >= score_threshold]
    entry_scores = np.asarray([e[2] for e in entries], dtype=np.float64)
    order = np.argsort(-entry_scores, kind="stable")
    hits = np.zeros((len(thresholds), len(entries)), dtype=bool)
    matched = [[[False] * len(image) for image in gts] for _ in thresholds]
    pcp: list[list[float]] = [[] for _ in thresholds]
    for rank in order:
        i, j, _ = entries[rank]
        pred = _to_numpy(predictions[i][j][1]).astype(np.int64)
        best, best_gt, best_iou = -np.inf, -1, None
        for g_index, gt in enumerate(gts[i]):
            if gt.shape != pred.shape:
                raise ValueError(f"person_parsing_ap: image {i}: predicted person {j} has shape {pred.shape} but "
                                 f"GT person {g_index} has {gt.shape}")
            keep = (gt >= 0) & (gt < c)
            p = pred[keep]
            if p.size and (p.min() < 0 or p.max() >= c):
                raise ValueError(f"person_parsing_ap: image {i}: predicted person {j} has labels outside [0, {c})")
            hist = np.bincount(c * gt[keep] + p, minlength=c * c).reshape(c, c).astype(np.float64)
            tp = np.diag(hist)
            union = hist.sum(0) + hist.sum(1) - tp
            with np.errstate(divide="ignore", invalid="ignore"):
                class_iou = np.where(union > 0, tp / union, np.nan)
            mean_iou = _nanmean(class_iou)
            if mean_iou > best:  # NaN never wins, as in the reference
                best, best_gt, best_iou = mean_iou, g_index, class_iou
        for k, t in enumerate(thresholds):
            if best > t and not matched[k][i][best_gt]:
                matched[k][i][best_gt] = True
                hits[k, rank] = True
                parts = gt_parts[i][best_gt]
                pcp[k].append(float(np.sum(best_iou[1:] > t)) / parts if parts else 0.0)
    ap = [_ap_from_hits(hits[k], num_gt, order) for k in range(len(thresholds))]
    pcps = [float(sum(v) / num_gt) if num_gt else float("nan") for v in pcp]
    return {"thresholds": list(thresholds), "APp": ap, "APp50": _at_half(ap, thresholds),
            "APp_vol": float(np.mean(ap)), "PCP": pcps, "PCP50": _at_half(pcps, thresholds)}


__all__ = [
    "ABSENT_RULES",
    "PARSING_IOU_THRESHOLDS",
    "ConfusionMatrix",
    "SegMetrics",
    "check_ground_truth",
    "evaluate",
    "evaluate_confusion",
    "evaluate_label_files",
    "metrics_to_text",
    "parsing_metrics",
    "part_instances_from_maps",
    "person_parsing_ap",
    "person_parsings_from_maps",
    "region_ap",
    "voc_ap",
]
