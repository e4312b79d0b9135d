"""Evaluator throughput: pixels per second of a 21-class confusion matrix, three ways, on the same data.

seglab's :class:`~seglab.engine.evaluator.ConfusionMatrix`, torchmetrics' ``MulticlassJaccardIndex`` and a plain
NumPy ``bincount`` each stream over the same 200 label maps of 512x512 (about 5% ignore pixels, 255), one
``update`` per image as an evaluation loop does, then compute mIoU. The three mIoU values must agree (every class
occurs, so the absent-class conventions do not differ); they are checked before the table is written.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from benchmarks.common import interleaved, summary

NUM_CLASSES = 21
IGNORE = 255


def make_data(num_images: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 predictions and targets ``[N, size, size]``: targets uniform over the classes with ~5% ignore pixels,
    predictions equal to the target on ~70% of pixels and uniform otherwise."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, NUM_CLASSES, (num_images, size, size), generator=gen, dtype=torch.uint8)
    target[torch.rand(target.shape, generator=gen) < 0.05] = IGNORE
    noise = torch.randint(0, NUM_CLASSES, target.shape, generator=gen, dtype=torch.uint8)
    pred = torch.where(torch.rand(target.shape, generator=gen) < 0.7, target, noise)
    pred[pred == IGNORE] = 0  # predictions are always a class
    return pred, target


def miou_seglab(pred: torch.Tensor, target: torch.Tensor) -> float:
    from seglab.engine.evaluator import ConfusionMatrix

    cm = ConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE)
    for p, t in zip(pred, target, strict=True):
        cm.update(p, t)
    return float(cm.compute().mIoU)


def miou_torchmetrics(pred: torch.Tensor, target: torch.Tensor) -> float:
    from torchmetrics.classification import MulticlassJaccardIndex

    metric = MulticlassJaccardIndex(num_classes=NUM_CLASSES, ignore_index=IGNORE, average="macro")
    for p, t in zip(pred, target, strict=True):
        metric.update(p.long(), t.long())
    return float(metric.compute())


def miou_numpy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """The plain NumPy reference: one ``bincount`` of ``C * gt + pred`` per image over the kept pixels."""
    c = NUM_CLASSES
    hist = np.zeros((c, c), dtype=np.int64)
    for p, t in zip(pred.numpy(), target.numpy(), strict=True):
        gt, pr = t.reshape(-1).astype(np.int64), p.reshape(-1).astype(np.int64)
        keep = gt != IGNORE
        hist += np.bincount(c * gt[keep] + pr[keep], minlength=c * c).reshape(c, c)
    tp = np.diag(hist).astype(np.float64)
    union = hist.sum(0) + hist.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.nanmean(np.where(union > 0, tp / union, np.nan)))


METHODS = {"seglab ConfusionMatrix": miou_seglab, "torchmetrics MulticlassJaccardIndex": miou_torchmetrics,
           "NumPy bincount": miou_numpy}


def run(reps: int, threads: int, smoke: bool) -> list[dict[str, Any]]:
    """One row per method: seconds per pass over all images, pixels per pass and the mIoU it computed.

    Raises ``RuntimeError`` if the three mIoU values differ by more than 1e-6."""
    torch.set_num_threads(threads)
    num_images, size, warmup = (2, 64, 0) if smoke else (200, 512, 1)
    pred, target = make_data(num_images, size)
    results = {name: fn(pred, target) for name, fn in METHODS.items()}
    if max(results.values()) - min(results.values()) > 1e-6:
        raise RuntimeError(f"evaluator benchmark: the mIoU values disagree: {results}")
    times = interleaved({name: (lambda fn=fn: fn(pred, target)) for name, fn in METHODS.items()}, reps, warmup)
    return [{"section": "evaluator", "method": name, "images": num_images, "size": size, "pixels": pred.numel(),
             "miou": results[name], "times": times[name]} for name in METHODS]


def markdown(rows: list[dict[str, Any]]) -> str:
    """Throughput table: Mpixels/s median (IQR) and the speed-up over torchmetrics."""
    first = rows[0]
    lines = [
        "## Evaluator throughput", "",
        f"{NUM_CLASSES}-class confusion matrix over {first['images']} label maps of {first['size']}x{first['size']} "
        f"with ignore ({IGNORE}) pixels, one update per image, then mIoU; methods interleaved. Mpixel/s from the "
        "median pass (IQR of the pass time in ms).", "",
        "| method | Mpixel/s | pass ms | x torchmetrics | mIoU |",
        "|---|---|---|---|---|",
    ]
    medians = {r["method"]: summary(r["times"])[0] for r in rows}
    tm = medians.get("torchmetrics MulticlassJaccardIndex")
    for r in rows:
        median, iqr = summary(r["times"])
        speedup = f"{tm / median:.1f}" if tm else "-"
        lines.append(f"| {r['method']} | {r['pixels'] / median / 1e6:.1f} | {median * 1e3:.1f} ({iqr * 1e3:.1f}) | "
                     f"{speedup} | {r['miou']:.6f} |")
    return "\n".join(lines) + "\n"
