"""Evaluation of detector-based multi-person parsing (Parsing R-CNN) on CIHP-style data.

Parsing R-CNN reports two kinds of numbers (Yang et al., CVPR 2019; its ``parsing_eval.py``): person-level
parsing AP (AP^p at IoU 0.5, AP^p_vol over the thresholds 0.1-0.9) with PCP50, computed per predicted person
against the ground-truth persons (:func:`seglab.engine.evaluator.person_parsing_ap`), and mIoU on the merged
semantic maps (each image's people painted in increasing score order, as its ``parsing_png``). This module
runs a model over a dataset of CIHP instance items and computes both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from seglab.engine.evaluator import ConfusionMatrix, _json_float, check_ground_truth, person_parsing_ap
from seglab.engine.people import semantic_from_instances


@dataclass
class PersonParsingMetrics:
    """AP^p and PCP (per predicted person) and the merged maps' mIoU, pixel and mean accuracy."""

    APp50: float
    APp_vol: float
    PCP50: float
    mIoU: float
    aAcc: float
    mAcc: float
    APp: list[float] = field(default_factory=list)
    iou: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: _json_float(getattr(self, k)) for k in ("APp50", "APp_vol", "PCP50", "mIoU",
                                                                            "aAcc", "mAcc")}
        out["APp"] = [_json_float(v) for v in self.APp]
        if self.iou is not None:
            out["IoU"] = [_json_float(v) for v in self.iou.tolist()]
        return out


def _merged_ground_truth(parsing: torch.Tensor) -> torch.Tensor:
    """One image's ground-truth part map from its per-person maps ``[N, H, W]`` (0 outside each person)."""
    merged = torch.zeros(parsing.shape[-2:], dtype=torch.int64)
    for person in parsing:
        merged = torch.where(person > 0, person, merged)
    return merged


@torch.inference_mode()
def evaluate_person_parsing(
    model: nn.Module,
    dataset: Any,
    *,
    num_classes: int,
    device: str | torch.device | None = None,
    absent: str = "zero",
    merge_score_threshold: float = 0.3,
) -> PersonParsingMetrics:
    """Run ``model`` (the detection contract, eval outputs with ``parsing`` and ``parsing_scores``) over
    ``dataset`` (items ``(image [3,H,W] in 0-1, target with "parsing" [N,H,W])``) and compute AP^p, PCP and
    the merged maps' metrics (``absent`` as :meth:`ConfusionMatrix.compute`)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    training = model.training
    model.eval()
    predictions, ground_truths = [], []
    matrix = ConfusionMatrix(num_classes)
    try:
        for index in range(len(dataset)):
            image, target = dataset[index]
            image = image.as_subclass(torch.Tensor) if isinstance(image, torch.Tensor) else torch.as_tensor(image)
            result = {k: v.cpu() for k, v in model([image.to(device)])[0].items()}
            gt = torch.as_tensor(target["parsing"]).as_subclass(torch.Tensor).long()
            predictions.append([(float(s), p.numpy()) for s, p in zip(result["parsing_scores"], result["parsing"],
                                                                          strict=True)])
            ground_truths.append([p.numpy() for p in gt])
            merged = semantic_from_instances(result, tuple(image.shape[-2:]), merge_score_threshold)
            merged_gt = _merged_ground_truth(gt)
            check_ground_truth(merged_gt, num_classes, f"sample {index} (person parsing maps)")
            matrix.update(merged, merged_gt)
    finally:
        model.train(training)
    ap = person_parsing_ap(predictions, ground_truths, num_classes=num_classes)
    seg = matrix.compute(absent=absent)
    return PersonParsingMetrics(
        APp50=float(ap["APp50"]), APp_vol=float(ap["APp_vol"]), PCP50=float(ap["PCP50"]), mIoU=seg.mIoU,
        aAcc=seg.aAcc, mAcc=seg.mAcc, APp=[float(v) for v in ap["APp"]], iou=seg.iou,
    )


def person_parsing_metrics_to_text(metrics: PersonParsingMetrics) -> str:
    """A short report: AP^p50, AP^p_vol, PCP50 and the merged maps' mIoU."""
    return (f"APp50 {100 * metrics.APp50:.2f}  APp_vol {100 * metrics.APp_vol:.2f}  PCP50 {100 * metrics.PCP50:.2f}"
            f"  mIoU {100 * metrics.mIoU:.2f}  pixel acc {100 * metrics.aAcc:.2f}  mean acc {100 * metrics.mAcc:.2f}")


__all__ = ["PersonParsingMetrics", "evaluate_person_parsing", "person_parsing_metrics_to_text"]
