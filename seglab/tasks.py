"""Tasks: what differs between semantic segmentation, instance segmentation and human parsing, in one place.

Every registered model has a task (:func:`task_of`). The trainer, ``seglab eval``, ``seglab predict``,
self-correction and the model table ask the task instead of branching on the model kind:

- **data**: which items :func:`seglab.data.build_dataset` is asked for and how a batch is collated;
- **training**: how a batch moves to the device, how the model is called and which loss it is scored with;
- **evaluation**: the metrics (confusion-matrix mIoU, COCO AP, AP^p), the score the best checkpoint is chosen
  by, the printed summary and what a weights file records;
- **prediction**: what ``seglab predict`` writes per image.

Four tasks: ``semantic`` (label maps, the semantic contract: a batch tensor in, logits out), ``parsing``
(human parsing on the same contract, with its own losses and, for PGN, one output per person),
``instance`` (the torchvision detection contract: lists in, a dict of losses in training and of detections in
evaluation) and ``person_parsing`` (Parsing R-CNN: detection contract, one part map per detected person).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from seglab.errors import ConfigError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from seglab.config import Config, DataConfig
    from seglab.data.palettes import LabelSet
    from seglab.engine.inference import InferenceOptions
    from seglab.registry import ModelInfo

# train.loss -> "module:class" of the loss (each reads its model's train-mode output dict); "ce" is the
# SegmentationLoss built from train.aux_weights / class_weights / bootstrap_top_k
LOSSES = {
    "ce2p": "seglab.losses:CE2PLoss",
    "jppnet": "seglab.models.parsing.pose:JPPNetLoss",
    "ss_jppnet": "seglab.models.parsing.pose:SSJPPNetLoss",
    "pgn": "seglab.models.parsing.pgn:PGNLoss",
}
CLASS_WEIGHTINGS = ("none", "median_frequency", "enet")


@dataclass(frozen=True)
class PredictSettings:
    """What ``seglab predict`` is asked besides the images: the inference options, Monte Carlo dropout
    samples, precision, backend and compilation (dense models), the score threshold (per-person and
    per-instance outputs; None: the model folder's, else 0.5, as :func:`seglab.jobs.predict` resolves it) and
    a COCO annotation file whose image ids the instance results take (matched by file name)."""

    options: InferenceOptions | None = None
    mc_samples: int = 0
    precision: str = "fp32"
    backend: str = "torch"
    compile: bool = False
    score_threshold: float | None = 0.5
    format: str = "seglab"  # seglab (label map, overlay, legend) | cityscapes (label ids, for cityscapesScripts)
    annotations: str | Path | None = None  # instance models: COCO instances JSON giving the results' image ids


class Task:
    """The semantic task; the base of the others. See the module docstring for what a task owns."""

    name = "semantic"
    data_task = "semantic"  # the items seglab.data.build_dataset gives
    detection = False  # the torchvision detection contract: lists in, a dict of losses / detections out
    score_name = "mIoU"  # the validation number the best checkpoint is chosen by
    pseudo_labels = True  # its labels are maps a teacher can write (Naive-Student)
    legend = False  # seglab predict writes legend.png of the whole label set

    # -- data ------------------------------------------------------------------------------------------
    def build_dataset(self, data: DataConfig, split: str, train: bool) -> Any:
        """The dataset of ``split`` with the training or evaluation transforms (evaluation drops training-only
        targets such as pose joints and person ids)."""
        from seglab.data import build_dataset

        if not train:
            extras = {f: False for f in ("with_pose", "with_humans") if getattr(data, f, False)}
            data = dataclasses.replace(data, **extras) if extras else data
        return build_dataset(data, split, train=train, task=self.data_task)

    def collate_fn(self) -> Any:
        """The DataLoader's collate function (None: torch's default stacking)."""
        return None

    def check_classes(self, cfg: Config, label_set: LabelSet) -> None:
        """``model.num_classes`` must be the label set's class count (background included where it has one)."""
        if cfg.model.num_classes != label_set.num_classes:
            raise ConfigError(
                f"model.num_classes={cfg.model.num_classes} but the label set {label_set.name!r} (data.palette / "
                f"data.dataset {cfg.data.dataset!r}) has {label_set.num_classes} classes; make them agree"
            )

    # -- training --------------------------------------------------------------------------------------
    def build_criterion(self, cfg: Config, train_set: Any) -> nn.Module | None:
        """The loss ``train.loss`` names: ``ce`` (SegmentationLoss with aux weights, class weights and
        bootstrapping) or a model's own loss (:data:`LOSSES`)."""
        name = cfg.train.loss
        if name == "ce":
            from seglab.losses import SegmentationLoss

            return SegmentationLoss(aux_weights=cfg.train.aux_weights, class_weights=_class_weights(cfg, train_set),
                                    bootstrap_top_k=_top_k(cfg.train.bootstrap_top_k), ohem=_ohem(cfg))
        if name not in LOSSES:
            raise ConfigError(f"train.loss: unknown loss {name!r}; expected one of: ce, {', '.join(LOSSES)}")
        module, cls = LOSSES[name].split(":")
        loss = getattr(importlib.import_module(module), cls)
        return loss(cfg.model.num_classes) if name == "ce2p" else loss()

    def prepare_batch(self, images: Any, targets: Any, device: torch.device, channels_last: bool) -> tuple[Any, Any]:
        """A collated batch on ``device``: images ``[B, 3, H, W]`` (channels-last if asked) and mask targets
        (a tensor, or a dict of them for parsing extras such as pose joints)."""
        images = images.to(device, non_blocking=True)
        if isinstance(targets, dict):
            targets = {k: v.to(device, non_blocking=True) for k, v in targets.items()}
        else:
            targets = targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets

    def train_forward(self, model: nn.Module, inputs: Any, targets: Any) -> Any:
        """The model's training-mode output (run under the trainer's autocast)."""
        return model(inputs)

    def loss(self, outputs: Any, targets: Any, criterion: nn.Module | None) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of ``outputs`` (computed in float32) and its logged parts."""
        from seglab.losses import SegmentationLoss

        if isinstance(targets, dict) and isinstance(criterion, SegmentationLoss):
            targets = targets["mask"]  # parsing extras are for the models' own losses
        outputs = {k: _to_float(v) for k, v in outputs.items()} if isinstance(outputs, dict) else outputs.float()
        return criterion(outputs, targets)

    # -- evaluation ------------------------------------------------------------------------------------
    def evaluate(
        self, model: nn.Module, dataset: Any, cfg: Config, label_set: LabelSet, *, device: torch.device,
        options: InferenceOptions | None = None, progress: bool = False, results_dir: Path | None = None,
    ) -> Any:
        """Validation metrics of ``model`` on ``dataset`` (``options`` default to the config's eval section).

        Under torch.distributed every rank must call it: each evaluates every ``world_size``-th batch, the
        confusion matrices are summed, and every rank returns the single-process metrics.
        """
        from seglab.engine.distributed import shard_batches
        from seglab.engine.evaluator import evaluate_confusion
        from seglab.engine.inference import InferenceOptions

        e = cfg.eval
        options = options or InferenceOptions.from_config(e, label_set.flip_pairs)
        return evaluate_confusion(
            model, shard_batches(dataset, e.batch_size), options, num_classes=cfg.model.num_classes, device=device,
            batch_size=e.batch_size, progress=progress, metrics=e.metrics,
        ).all_reduce().compute(absent=e.absent)

    def score(self, metrics: Any) -> tuple[str, float]:
        """The name and value of the number the best checkpoint is chosen by."""
        return self.score_name, float(getattr(metrics, self.score_name))

    def summary(self, metrics: Any, label_set: LabelSet) -> str:
        """The metrics as the CLI prints them."""
        from seglab.engine.evaluator import metrics_to_text

        return metrics_to_text(metrics, label_set.classes)

    def weights_metadata(self, train_set: Any) -> dict[str, Any]:
        """What a weights file records beyond the model and label set (instance models: category ids)."""
        return {}

    def results_lines(self, results_dir: Path) -> list[str]:
        """Lines naming the files :meth:`evaluate` wrote beside the metrics (instance models: COCO results)."""
        return []

    # -- prediction ------------------------------------------------------------------------------------
    def predict_files(
        self, model: nn.Module, info: ModelInfo, files: Sequence[Path], out: Path, settings: PredictSettings,
        label_set: LabelSet, meta: dict[str, Any],
    ) -> Iterator[str]:
        """Predict each image file with ``model`` (registered as ``info``; ``meta`` is its weights file's metadata)
        and write the outputs under ``out``; yields one line per image.

        Semantic maps: ``<stem>.png`` (label indices with the label set's palette), ``<stem>_overlay.png`` and
        ``<stem>_legend.png`` (:func:`seglab.visualize.save_prediction`); with Monte Carlo dropout also
        ``<stem>_entropy.npy``, ``<stem>_variance.npy`` and ``<stem>_uncertainty.png``. ``settings.format``
        "cityscapes" writes only ``<name>_labelIds.png`` (:func:`seglab.data.datasets.cityscapes.write_label_ids`).
        """
        from seglab.data.io import read_image
        from seglab.engine.inference import InferenceOptions, Predictor
        from seglab.visualize import save_prediction, save_uncertainty

        if settings.format not in ("seglab", "cityscapes"):
            raise ConfigError(f"predict: unknown format {settings.format!r}; expected seglab or cityscapes")
        if settings.format == "cityscapes":
            from seglab.data.datasets.cityscapes import write_label_ids

            if label_set.num_classes != 19 or settings.mc_samples:
                raise ConfigError(f"predict: --format cityscapes writes the 19 Cityscapes train ids as label ids, "
                                  f"nothing else; the model has {label_set.num_classes} classes"
                                  f"{' and --mc-samples is set' if settings.mc_samples else ''}")
        options = settings.options or InferenceOptions()
        predictor = Predictor(model, options.replace(flip_pairs=options.flip_pairs or label_set.flip_pairs),
                              mc_samples=settings.mc_samples, precision=settings.precision, backend=settings.backend,
                              compile=settings.compile)
        for path in files:
            image = np.asarray(read_image(path))
            if settings.mc_samples:
                result = predictor.predict_uncertainty(image)
                label = result["label"]
                save_uncertainty(out, path.stem, result["entropy"], result["variance"], result["mean"].shape[0])
            else:
                label = predictor(image)
            if settings.format == "cityscapes":
                written = [write_label_ids(out, path, label)]
            else:
                written = save_prediction(out, path.stem, image, label, label_set)
            yield f"{path} -> {written[0]}"


class ParsingTask(Task):
    """Human parsing on the semantic contract (SCHP, JPPNet, SS-JPPNet, PGN): parsing datasets and losses;
    PGN, which groups parts into people, predicts each person (``ModelInfo.people``)."""

    name = "parsing"
    data_task = "parsing"
    pseudo_labels = False
    legend = True

    def predict_files(self, model, info, files, out, settings, label_set, meta):  # noqa: D102 - see Task
        if info.people:
            return predict_people(model, files, out, label_set, score_threshold=settings.score_threshold)
        return super().predict_files(model, info, files, out, settings, label_set, meta)


class InstanceTask(Task):
    """Instance segmentation (the torchvision detection contract): COCO-style data, the model's own losses,
    COCO box and mask AP."""

    name = "instance"
    data_task = "instance"
    detection = True
    score_name = "segm_AP"
    pseudo_labels = False

    def collate_fn(self) -> Any:
        from seglab.data.instance_transforms import collate_instances

        return collate_instances

    def build_criterion(self, cfg: Config, train_set: Any) -> None:
        return None  # the model computes its own losses

    def prepare_batch(self, images, targets, device, channels_last):  # noqa: D102 - lists of images and targets
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: _plain(v).to(device) for k, v in t.items()} for t in targets]
        return images, targets

    def train_forward(self, model: nn.Module, inputs: Any, targets: Any) -> Any:
        return model(inputs, targets)

    def loss(self, outputs: Any, targets: Any, criterion: nn.Module | None) -> tuple[torch.Tensor, dict[str, float]]:
        losses = {k: v.float() for k, v in outputs.items()}
        loss = sum(losses.values())
        return loss, {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}

    def evaluate(self, model, dataset, cfg, label_set, *, device, options=None, progress=False, results_dir=None):
        """COCO box and mask AP; writes the COCO results JSON to ``results_dir`` (sharded over ranks by
        :func:`~seglab.engine.coco_eval.evaluate_instances` itself)."""
        from seglab.engine.coco_eval import evaluate_instances

        _no_dense_options(options, self.name)
        return evaluate_instances(model, dataset, device=device, batch_size=cfg.eval.batch_size,
                                  results_dir=results_dir, progress=progress)

    def summary(self, metrics: Any, label_set: LabelSet) -> str:
        from seglab.engine.coco_eval import instance_metrics_to_text

        return instance_metrics_to_text(metrics)

    def results_lines(self, results_dir: Path) -> list[str]:
        return [f"COCO results: {results_dir / 'bbox_results.json'}, {results_dir / 'segm_results.json'}"]

    def weights_metadata(self, train_set: Any) -> dict[str, Any]:
        return {"classes": list(train_set.classes),
                "label_to_cat_id": {str(k): int(v) for k, v in train_set.label_to_cat_id.items()}}

    def predict_files(self, model, info, files, out, settings, label_set, meta):
        """``<stem>_instances.png`` per image (each instance in its colour, with box, class name and score) and
        the instances scoring at least ``settings.score_threshold`` as COCO results (``bbox_results.json``,
        ``segm_results.json``, each entry with ``file_name`` beside the COCO fields). The image ids are those of
        ``settings.annotations`` (a COCO instances JSON, matched by file name; an image it does not list is an
        error before anything runs), so the files go straight to pycocotools' ``loadRes`` and ``COCOeval``;
        without it, the position in the input order (1, 2, ...)."""
        from seglab.data.io import read_image
        from seglab.engine.coco_eval import image_ids_by_file_name, instances_to_coco_results
        from seglab.engine.inference import InstancePredictor
        from seglab.utils import atomic_write_text
        from seglab.visualize import save_instances

        _no_dense_options(settings.options, self.name)
        image_ids = (image_ids_by_file_name(settings.annotations, files) if settings.annotations
                     else list(range(1, len(files) + 1)))
        names = list(meta.get("classes") or label_set.classes)
        # labels -> category ids as recorded at training; converted torchvision weights use the ids as labels
        mapping = {int(k): int(v) for k, v in (meta.get("label_to_cat_id") or {}).items()}
        mapping = mapping or {label: label for label in range(1, max(int(meta.get("num_classes") or 0), 1))}
        predictor = InstancePredictor(model)
        results: dict[str, list] = {"bbox": [], "segm": []}
        for image_id, path in zip(image_ids, files, strict=True):
            image = np.asarray(read_image(path))
            instances = predictor(image)
            save_instances(out / f"{path.stem}_instances.png", image, instances, names,
                           score_threshold=settings.score_threshold)
            keep = instances.get("mask_scores", instances["scores"]) >= settings.score_threshold
            kept = {k: v[keep] for k, v in instances.items()}
            for kind, entries in instances_to_coco_results([kept], [image_id], mapping).items():
                results[kind].extend({**e, "file_name": path.name} for e in entries)
            yield f"{path} -> {out / (path.stem + '_instances.png')} ({int(keep.sum())} instances)"
        for kind, entries in results.items():
            atomic_write_text(out / f"{kind}_results.json", json.dumps(entries))
        source = (f"image_id from {settings.annotations}" if settings.annotations
                  else "image_id = position in the input order")
        yield (f"COCO results: {out / 'bbox_results.json'}, {out / 'segm_results.json'} ({source}, file_name beside "
               f"it; score >= {settings.score_threshold})")


class PersonParsingTask(InstanceTask):
    """Detector-based human parsing (Parsing R-CNN): CIHP's per-person items, AP^p, PCP and the merged maps'
    mIoU; predicts each detected person."""

    name = "person_parsing"
    score_name = "mIoU"
    legend = True

    def evaluate(self, model, dataset, cfg, label_set, *, device, options=None, progress=False, results_dir=None):
        """AP^p, PCP50 and the merged maps' mIoU (every rank evaluates the whole set)."""
        from seglab.engine.parsing_eval import evaluate_person_parsing

        _no_dense_options(options, self.name)
        return evaluate_person_parsing(model, dataset, num_classes=cfg.model.num_classes, device=device,
                                       absent=cfg.eval.absent)

    def summary(self, metrics: Any, label_set: LabelSet) -> str:
        from seglab.engine.parsing_eval import person_parsing_metrics_to_text

        return person_parsing_metrics_to_text(metrics)

    def weights_metadata(self, train_set: Any) -> dict[str, Any]:
        return {}

    def results_lines(self, results_dir: Path) -> list[str]:
        return []

    def predict_files(self, model, info, files, out, settings, label_set, meta):
        _no_dense_options(settings.options, self.name)
        return predict_people(model, files, out, label_set, score_threshold=settings.score_threshold)


TASKS: dict[str, Task] = {t.name: t for t in (Task(), ParsingTask(), InstanceTask(), PersonParsingTask())}


def task_of(model: str | ModelInfo) -> Task:
    """The task of a registered model (name or :class:`~seglab.registry.ModelInfo`)."""
    from seglab.models import model_info

    info = model_info(model) if isinstance(model, str) else model
    return TASKS["person_parsing" if info.task == "parsing" and info.detector else info.task]


def predict_people(
    model: nn.Module, files: Sequence[Path], out: Path, label_set: LabelSet, *, score_threshold: float = 0.5
) -> Iterator[str]:
    """Multi-person parsing of each file (:class:`~seglab.engine.people.PeopleParser`), written by
    :func:`seglab.visualize.save_people`: the part map, the picture with each person outlined, the person-id
    map and the people as JSON."""
    from seglab.data.io import read_image
    from seglab.engine.people import PeopleParser
    from seglab.visualize import save_people

    parser = PeopleParser(model, score_threshold=score_threshold)
    for path in files:
        image = np.asarray(read_image(path))
        result = parser(image)
        picture = save_people(out, path.stem, image, result, label_set)
        yield f"{path} -> {picture} ({len(result['people'])} people)"


def _no_dense_options(options: InferenceOptions | None, task: str) -> None:
    """Refuse a sliding window or test-time augmentation for a model that takes whole images its own way."""
    if options is not None and (options.mode != "whole" or options.flip or options.scales != (1.0,)):
        raise ConfigError(f"the inference mode and test-time augmentation (--mode, --tta) apply to dense models "
                          f"only; a {task} model resizes its input itself")


def _class_weights(cfg: Config, train_set: Any) -> torch.Tensor | None:
    """``train.class_weights`` if given, else the ``train.class_weighting`` scheme's weights (or None)."""
    scheme = cfg.train.class_weighting
    if scheme not in CLASS_WEIGHTINGS:
        raise ConfigError(
            f"train.class_weighting: unknown value {scheme!r}; expected one of: {', '.join(CLASS_WEIGHTINGS)}"
        )
    if cfg.train.class_weights:
        if scheme != "none":
            log.info("train.class_weights given: train.class_weighting=%s is not used", scheme)
        return torch.tensor(cfg.train.class_weights)
    if scheme == "none":
        return None
    if scheme == "enet":
        weights = enet_class_weights(train_set, cfg.model.num_classes)
    else:
        weights = median_frequency_class_weights(train_set, cfg.model.num_classes)
    log.info("%s class weights: %s", scheme, [round(float(w), 4) for w in weights])
    return weights


def median_frequency_class_weights(dataset: Any, num_classes: int) -> torch.Tensor:
    """SegNet's median frequency weights from ``dataset``'s label files, read without augmentation."""
    from seglab.data.io import read_label
    from seglab.losses import class_pixel_counts, median_frequency_weights

    read = getattr(dataset, "load_label", read_label)  # VOC datasets also read SBD .mat labels
    labels = (read(path) for path in dataset.label_paths)
    counts, image_pixels = class_pixel_counts(labels, num_classes)
    return median_frequency_weights(counts, image_pixels).float()


def enet_class_weights(dataset: Any, num_classes: int) -> torch.Tensor:
    """ENet's weights ``1 / ln(1.02 + p_c)`` from ``dataset``'s label files, read without augmentation."""
    from seglab.data.io import read_label
    from seglab.losses import class_pixel_counts, enet_weights

    read = getattr(dataset, "load_label", read_label)
    counts, _ = class_pixel_counts((read(path) for path in dataset.label_paths), num_classes)
    return enet_weights(counts)


def _ohem(cfg: Config) -> tuple[float, float | int] | None:
    """``train.ohem_thresh`` / ``ohem_min_kept`` as the loss takes them: None (off) or (thresh, count or fraction)."""
    thresh, kept = cfg.train.ohem_thresh, cfg.train.ohem_min_kept
    if thresh == 0:
        return None
    if not 0 < thresh < 1:
        raise ConfigError(f"train.ohem_thresh must be 0 (off) or a probability in (0, 1), got {thresh}")
    if kept < 0:
        raise ConfigError(f"train.ohem_min_kept must be >= 0, got {kept}")
    if cfg.train.bootstrap_top_k:
        raise ConfigError("train.ohem_thresh and train.bootstrap_top_k both select hard pixels; set one of them")
    return thresh, (int(kept) if kept >= 1 else float(kept))


def _top_k(value: float) -> float | int | None:
    """``train.bootstrap_top_k`` as the loss takes it: None (off), a pixel count, or a fraction."""
    if value < 0:
        raise ConfigError(f"train.bootstrap_top_k must be >= 0, got {value}")
    if value == 0:
        return None
    return int(value) if value >= 1 else float(value)


def _to_float(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.float()
    if isinstance(v, (list, tuple)):
        return [_to_float(x) for x in v]
    return v


def _plain(value: Any) -> torch.Tensor:
    """A tv_tensors subclass as a plain tensor (models index and concatenate them freely)."""
    return value.as_subclass(torch.Tensor) if isinstance(value, torch.Tensor) else torch.as_tensor(value)


__all__ = ["LOSSES", "TASKS", "InstanceTask", "ParsingTask", "PersonParsingTask", "PredictSettings", "Task",
           "median_frequency_class_weights", "predict_people", "task_of"]
