"""COCO box and mask AP of an instance model, computed by pycocotools' COCOeval.

Detections are converted to the COCO results format (the format of the official evaluation server):
``bbox`` results carry the box score; ``segm`` results carry an RLE of the mask thresholded at 0.5 and
the box score, or the mask score where the model predicts one (Mask Scoring R-CNN, Huang et al.,
CVPR 2019, ranks masks by their predicted mask IoU). Hence two result lists, one per IoU type.
COCOeval's printed summary goes to the log; the returned numbers are its ``stats[0:6]`` (AP at
IoU .50:.95, AP50, AP75, AP small, medium, large; -1 where the ground truth has no object of that size,
as in pycocotools).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from seglab.utils import atomic_write_text

if TYPE_CHECKING:
    from pycocotools.coco import COCO

    from seglab.data.datasets.coco import COCOInstances

log = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm")


def instances_to_coco_results(
    outputs: Sequence[dict[str, torch.Tensor]],
    image_ids: Sequence[int],
    label_to_cat_id: dict[int, int],
    *,
    mask_threshold: float = 0.5,
) -> dict[str, list[dict[str, Any]]]:
    """COCO results ``{"bbox": [...], "segm": [...]}`` of model outputs (one dict per image).

    Each output has ``boxes`` (XYXY), ``labels`` (contiguous 1..K), ``scores`` and optionally ``masks``
    ([N,1,H,W] probabilities) and ``mask_scores``; ``segm`` stays empty for outputs without masks.
    """
    from pycocotools import mask as mask_utils

    if len(outputs) != len(image_ids):
        raise ValueError(f"{len(outputs)} outputs but {len(image_ids)} image ids")
    results: dict[str, list[dict[str, Any]]] = {"bbox": [], "segm": []}
    for out, image_id in zip(outputs, image_ids, strict=True):
        boxes = out["boxes"].detach().float().cpu()
        if boxes.numel() == 0:
            continue
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        scores = out["scores"].detach().float().cpu().tolist()
        labels = out["labels"].detach().cpu().tolist()
        unknown = sorted({lab for lab in labels if lab not in label_to_cat_id})
        if unknown:
            raise ValueError(f"image {image_id}: predicted labels {unknown} have no category id "
                             f"(known labels {sorted(label_to_cat_id)})")
        cat_ids = [label_to_cat_id[lab] for lab in labels]
        for box, score, cat in zip(xywh, scores, cat_ids, strict=True):
            results["bbox"].append({"image_id": int(image_id), "category_id": cat, "bbox": box, "score": score})
        if "masks" not in out:
            continue
        masks = out["masks"].detach().cpu()
        binary = (masks[:, 0] > mask_threshold).to(torch.uint8).permute(1, 2, 0).numpy()  # H, W, N
        rles = mask_utils.encode(np.asfortranarray(binary))
        mask_scores = out["mask_scores"].detach().float().cpu().tolist() if "mask_scores" in out else scores
        for rle, score, cat in zip(rles, mask_scores, cat_ids, strict=True):
            segmentation = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
            results["segm"].append({"image_id": int(image_id), "category_id": cat,
                                    "segmentation": segmentation, "score": score})
    return results


def image_ids_by_file_name(annotations: str | Path, files: Sequence[str | Path]) -> list[int]:
    """The COCO image id of each of ``files`` in the instances JSON ``annotations``, matched by file name (the
    base name of its ``images[].file_name``), so that results written with them load with pycocotools'
    ``COCO.loadRes`` on that file. Raises :class:`~seglab.errors.DatasetError` naming the file for an unreadable
    JSON, for images it does not list (the first few and the count) and for a name it lists twice."""
    from seglab.errors import DatasetError

    path = Path(annotations)
    try:
        images = json.loads(path.read_text(encoding="utf-8"))["images"]
        by_name: dict[str, list[int]] = {}
        for image in images:
            by_name.setdefault(Path(str(image["file_name"])).name, []).append(int(image["id"]))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: not a COCO instances JSON with images[].file_name and images[].id "
                           f"({type(exc).__name__}: {exc})") from None
    names = [Path(f).name for f in files]
    missing = [n for n in names if n not in by_name]
    if missing:
        raise DatasetError(f"{path}: lists no image named {', '.join(missing[:5])} ({len(missing)} of the "
                           f"{len(names)} images); predict only the images of the annotation file, or drop "
                           "--annotations (image ids are then the input order)")
    repeated = [n for n in names if len(by_name[n]) > 1]
    if repeated:
        raise DatasetError(f"{path}: lists {repeated[0]} under several ids {by_name[repeated[0]]}; the image id "
                           "cannot be told by file name")
    return [by_name[n][0] for n in names]


def coco_evaluate(
    coco_gt: COCO,
    results: dict[str, list[dict[str, Any]]],
    iou_types: Sequence[str] = IOU_TYPES,
    *,
    image_ids: Sequence[int] | None = None,
) -> dict[str, dict[str, float]]:
    """``{iou_type: {AP, AP50, AP75, APs, APm, APl}}`` by COCOeval over ``image_ids`` (default: all of
    ``coco_gt``). An empty result list scores zeros (pycocotools cannot load one)."""
    from pycocotools.cocoeval import COCOeval

    metrics: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"unknown iou type {iou_type!r}; expected one of {IOU_TYPES}")
        dets = results.get(iou_type, [])
        if not dets:
            log.warning("no %s detections: %s AP is 0", iou_type, iou_type)
            metrics[iou_type] = dict.fromkeys(STAT_NAMES, 0.0)
            continue
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):  # pycocotools prints; keep it in the log
            coco_dt = coco_gt.loadRes([dict(d) for d in dets])  # copies: loadRes adds keys to each result
            evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
            if image_ids is not None:
                evaluator.params.imgIds = list(image_ids)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        log.info("COCO %s evaluation:\n%s", iou_type, buffer.getvalue())
        metrics[iou_type] = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats[:6], strict=True)}
    return metrics


@dataclass
class InstanceMetrics:
    """COCO AP per IoU type: ``bbox`` and ``segm`` map AP, AP50, AP75, APs, APm, APl to values."""

    bbox: dict[str, float] = field(default_factory=dict)
    segm: dict[str, float] = field(default_factory=dict)

    @property
    def segm_AP(self) -> float:  # noqa: N802 - the metric's name
        return self.segm.get("AP", 0.0)

    @property
    def bbox_AP(self) -> float:  # noqa: N802
        return self.bbox.get("AP", 0.0)

    def to_dict(self) -> dict[str, float]:
        """Flat ``{"bbox_AP": ..., "segm_AP50": ...}`` for metrics.jsonl."""
        return {f"{kind}_{k}": v for kind in IOU_TYPES for k, v in getattr(self, kind).items()}


def evaluate_instances(
    model: torch.nn.Module,
    dataset: COCOInstances,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    results_dir: str | Path | None = None,
    progress: bool = False,
) -> InstanceMetrics:
    """COCO box and mask AP of ``model`` on ``dataset`` (built with the evaluation transforms).

    Outputs must be at the image's original size (the model's own transform resizes back). With
    ``results_dir``, writes ``bbox_results.json`` and ``segm_results.json`` there (COCO results format).
    Under ``torch.distributed`` each rank runs every ``world_size``-th batch and the results are gathered
    (:func:`_gather_batches`), so every rank returns the single-process metrics.
    """
    from rich.progress import Progress

    from seglab.engine.distributed import get_rank, get_world_size

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    # each batch becomes COCO results (RLE) at once: full-size mask probabilities of a whole
    # evaluation set would not fit in memory
    batches: list[tuple[int, dict[str, list[dict[str, Any]]], list[int]]] = []  # (start, results, image ids)
    has_masks = False
    rank, world_size = get_rank(), get_world_size()
    try:
        with torch.inference_mode(), Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("eval", total=len(dataset))
            for start in range(rank * batch_size, len(dataset), world_size * batch_size):
                items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
                images = [item[0].to(device) for item in items]
                outputs, ids = [], []
                for out, (_, target) in zip(model(images), items, strict=True):
                    image_id = int(target["image_id"])
                    info = dataset.coco.imgs[image_id]
                    expected = (info["height"], info["width"])
                    if "masks" in out and tuple(out["masks"].shape[-2:]) != expected:
                        raise ValueError(f"evaluate_instances: image {image_id}: masks are "
                                         f"{tuple(out['masks'].shape[-2:])} but the image is {expected}; "
                                         "build the dataset with the evaluation transforms (no resizing)")
                    has_masks = has_masks or "masks" in out
                    outputs.append({k: v.cpu() for k, v in out.items() if isinstance(v, torch.Tensor)})
                    ids.append(image_id)
                batches.append((start, instances_to_coco_results(outputs, ids, dataset.label_to_cat_id), ids))
                bar.advance(task, len(items))
    finally:
        for m, training in flags:
            m.train(training)
    if world_size > 1:
        batches, has_masks = _gather_batches(batches, has_masks)
    results: dict[str, list[dict[str, Any]]] = {t: [] for t in IOU_TYPES}
    image_ids: list[int] = []
    for _, batch_results, ids in batches:
        for kind, entries in batch_results.items():
            results[kind].extend(entries)
        image_ids.extend(ids)
    if results_dir is not None:
        for iou_type in IOU_TYPES:
            atomic_write_text(Path(results_dir) / f"{iou_type}_results.json", json.dumps(results[iou_type]))
    iou_types = [t for t in IOU_TYPES if t == "bbox" or has_masks or not image_ids]
    metrics = coco_evaluate(dataset.coco, results, iou_types, image_ids=image_ids)
    return InstanceMetrics(bbox=metrics["bbox"], segm=metrics.get("segm", {}))


def _gather_batches(batches: list, has_masks: bool) -> tuple[list, bool]:
    """Every rank's per-batch results, in the single-process batch order (all_gather_object)."""
    from seglab.engine.distributed import all_gather_object

    gathered = all_gather_object((batches, has_masks))
    merged = sorted((b for rank_batches, _ in gathered for b in rank_batches), key=lambda b: b[0])
    return merged, any(masks for _, masks in gathered)


def instance_metrics_to_text(metrics: InstanceMetrics) -> str:
    """A small table: one row per IoU type, one column per COCO statistic."""
    lines = ["      " + "".join(f"{name:>8}" for name in STAT_NAMES)]
    for kind in IOU_TYPES:
        values = getattr(metrics, kind)
        if values:
            lines.append(f"{kind:<6}" + "".join(f"{values.get(name, 0.0):8.3f}" for name in STAT_NAMES))
    return "\n".join(lines)


__all__ = [
    "InstanceMetrics",
    "coco_evaluate",
    "evaluate_instances",
    "image_ids_by_file_name",
    "instance_metrics_to_text",
    "instances_to_coco_results",
]
