"""The jobs the ``seglab`` command runs, as library functions: train, evaluate, predict.

``seglab.cli`` only parses arguments and calls these; a Python user calls the same functions. What differs per
model kind comes from the model's task (:mod:`seglab.tasks`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seglab.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from seglab.config import Config
    from seglab.engine.inference import InferenceOptions
    from seglab.engine.trainer import Trainer
    from seglab.tasks import PredictSettings, Task

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# what seglab predict writes beside each label map <stem>.png (and legend.png): not predictions of their own
PREDICT_COMPANIONS = ("_overlay", "_legend", "_uncertainty")


def build_trainer(cfg: Config, *, resume: bool = False, progress: bool = False, **objects: Any) -> Trainer:
    """A :class:`~seglab.engine.trainer.Trainer` for ``cfg``, or SCHP's SelfCorrectionTrainer when
    ``self_correction.enabled``; ``objects`` (``model``, ``train_set``, ``val_set``) are passed on."""
    from seglab.engine.trainer import Trainer

    sc = cfg.self_correction
    if not sc.enabled:
        return Trainer(cfg, resume=resume, progress=progress, **objects)
    from seglab.methods.self_correction import SelfCorrectionOptions, SelfCorrectionTrainer

    options = SelfCorrectionOptions(
        cycle_start=sc.cycle_start, cycle_len=sc.cycle_len, bn_batches=sc.bn_batches, lambda_s=sc.lambda_s,
        lambda_e=sc.lambda_e, lambda_c=sc.lambda_c,
    )
    return SelfCorrectionTrainer(cfg, options, resume=resume, progress=progress, **objects)


def train(cfg: Config, *, resume: bool = False, progress: bool = False) -> tuple[Trainer, Any]:
    """Build the trainer for ``cfg`` (:func:`build_trainer`) and run it; returns the trainer and the final
    validation metrics. Under torchrun the process group is left at the end."""
    from seglab.engine.distributed import cleanup

    try:
        trainer = build_trainer(cfg, resume=resume, progress=progress)
        return trainer, trainer.fit()
    finally:
        cleanup()


def evaluate_weights(
    cfg: Config, weights: str | Path | None, *, model: str | None = None, options: InferenceOptions | None = None,
    results_dir: str | Path | None = None, progress: bool = False,
) -> tuple[Task, Any]:
    """The metrics of ``weights`` (the config's model) on the config's val split; returns the task and them.

    ``model`` is a model folder or Hub id to evaluate instead (no ``weights``), or a registered name overriding the
    config's (:func:`seglab.pretrained.load_any`). ``options`` (dense models) default to the config's ``eval``
    section; ``results_dir`` is where instance models' COCO results JSON go (default: the run folder's
    ``coco_results``).
    """
    from seglab.data import label_set_for
    from seglab.pretrained import load_any
    from seglab.tasks import task_of
    from seglab.utils import resolve_device

    label_set = label_set_for(cfg.data)
    device = resolve_device(cfg.train.device)
    loaded = load_any(model, weights, config=cfg)
    task = task_of(loaded.name)
    task.check_classes(cfg, label_set)
    classes = loaded.kwargs.get("num_classes")
    if classes != cfg.model.num_classes:
        raise ConfigError(f"{model or weights}: the model has {classes} classes but the config's data "
                          f"({cfg.data.dataset}, label set {label_set.name!r}) {cfg.model.num_classes}")
    dataset = task.build_dataset(cfg.data, cfg.data.val_split, train=False)
    results = Path(results_dir) if results_dir else cfg.run_dir / "coco_results"
    return task, task.evaluate(loaded.model.to(device), dataset, cfg, label_set, device=device, options=options,
                               progress=progress, results_dir=results)


def evaluate_predictions(
    cfg: Config, pred_dir: str | Path, *, allow_extra: bool = False, progress: bool = False
) -> tuple[Task, Any]:
    """The metrics of label maps written by any tool, one per sample of the config's val split in ``pred_dir``
    (:func:`match_predictions`), scored as :func:`evaluate_weights` scores a model: the same metrics
    (``eval.metrics``), absent-class rule (``eval.absent``) and summary; returns the task and the metrics.

    No model is built: ``model.name`` only picks the task (semantic or parsing; detection models are refused)
    and ``model.num_classes`` must match the label set. Each prediction is an index PNG of the train ids
    (the model's classes, as seglab predict writes them), of its ground truth's size; see
    :func:`seglab.engine.evaluator.evaluate_label_files` for the checks.
    """
    from seglab.data import label_set_for
    from seglab.engine.evaluator import evaluate_label_files
    from seglab.tasks import task_of

    task = task_of(cfg.model.name)
    if task.detection:
        raise ConfigError(f"model.name: {cfg.model.name!r} is a {task.name} model; scoring a folder of label maps "
                          "(--pred-dir) serves semantic and parsing models")
    label_set = label_set_for(cfg.data)
    task.check_classes(cfg, label_set)
    dataset = task.build_dataset(cfg.data, cfg.data.val_split, train=False)
    if not all(hasattr(dataset, name) for name in ("ids", "image_paths", "label_paths", "load_label")):
        raise ConfigError(f"data.dataset: {cfg.data.dataset!r} gives no label maps to score predictions against")
    predictions = match_predictions(dataset, pred_dir, allow_extra=allow_extra)
    metrics = evaluate_label_files(
        list(zip(dataset.label_paths, predictions, strict=True)), num_classes=cfg.model.num_classes,
        read_ground_truth=dataset.load_label, absent=cfg.eval.absent, metrics=cfg.eval.metrics, progress=progress,
    )
    return task, metrics


def match_predictions(dataset: Any, pred_dir: str | Path, *, allow_extra: bool = False) -> list[Path]:
    """The prediction file of each sample of ``dataset`` (``ids``, ``label_paths``, ``image_paths``) in
    ``pred_dir``: ``<id>.png``, else ``<label file stem>.png``, else ``<image file stem>.png``, the first that
    exists (the suffix in any case; files whose name starts with "." are skipped).

    Raises :class:`~seglab.errors.DatasetError` when samples have no prediction (naming the first few and the
    count), when one file would serve two samples, and when PNG files in ``pred_dir`` match no sample; with
    ``allow_extra`` those are logged as a warning instead. What seglab predict writes beside each label map
    (``<stem>_overlay.png``, ``<stem>_legend.png``, ``<stem>_uncertainty.png``, ``legend.png``) is not extra.
    """
    folder = Path(pred_dir)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: prediction folder not found")
    files = {p.stem: p for p in sorted(folder.iterdir())
             if p.suffix.lower() == ".png" and not p.name.startswith(".") and p.is_file()}
    matched: list[Path] = []
    missing: list[str] = []
    owner: dict[Path, str] = {}
    for sample_id, label, image in zip(dataset.ids, dataset.label_paths, dataset.image_paths, strict=True):
        stem = next((s for s in (str(sample_id), Path(label).stem, Path(image).stem) if s in files), None)
        if stem is None:
            missing.append(str(sample_id))
            continue
        path = files[stem]
        if path in owner:
            raise DatasetError(f"{path}: the prediction of two samples, {owner[path]!r} and {sample_id!r}; name "
                               "each prediction <id>.png")
        owner[path] = str(sample_id)
        matched.append(path)
    if missing:
        raise DatasetError(
            f"{folder}: no prediction for {len(missing)} of the {len(dataset.ids)} samples, e.g. "
            f"{', '.join(missing[:5])}; expected <id>.png per sample (or the label's or image's file name with "
            f".png), e.g. {folder / (missing[0] + '.png')}"
        )
    used = {p.stem for p in matched}
    companions = {f"{stem}{tag}" for stem in used for tag in PREDICT_COMPANIONS} | {"legend"}
    extra = [p.name for stem, p in files.items() if stem not in used and stem not in companions]
    if extra:
        message = (f"{folder}: {len(extra)} PNG files match no sample of the split, e.g. {', '.join(extra[:5])}")
        if not allow_extra:
            raise DatasetError(f"{message}; a prediction folder of another split? Pass --allow-extra "
                               "(allow_extra=True) to score the matched files anyway")
        log.warning("%s; scoring the %d matched files", message, len(matched))
    return matched


def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files named by ``inputs`` (files, or folders whose images are taken in name order)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif item.is_file():
            files.append(item)
        else:
            raise ConfigError(f"{item}: no such image file or folder")
    if not files:
        raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}")
    return files


def predict(
    weights: str | Path | None, inputs: Sequence[str | Path], out: str | Path, settings: PredictSettings, *,
    model_name: str | None = None, num_classes: int | None = None, label_set: str | None = None,
) -> Iterator[str]:
    """Rebuild a model (:func:`seglab.pretrained.load_any`: ``model_name`` a model folder or Hub id, else the
    weights file ``weights`` with ``model_name`` as a registered name), predict every image of ``inputs`` and write
    what its task writes under ``out`` (:meth:`seglab.tasks.Task.predict_files`); yields a line per image.
    ``label_set`` defaults to the recorded one, else VOC's; ``settings.score_threshold`` None takes the model
    folder's, else :data:`seglab.pretrained.DEFAULT_SCORE_THRESHOLD`."""
    import dataclasses

    from seglab.data.palettes import get_label_set, label_set_from_metadata
    from seglab.models import model_info
    from seglab.pretrained import DEFAULT_SCORE_THRESHOLD, load_any
    from seglab.tasks import task_of
    from seglab.visualize import save_legend

    files = image_files(inputs)
    loaded = load_any(model_name, weights, num_classes=num_classes)
    info = model_info(loaded.name)
    task = task_of(info)
    if settings.annotations and task.name != "instance":
        raise ConfigError(f"predict: --annotations (COCO image ids for the results JSON) applies to instance "
                          f"models; {loaded.name} is a {task.name} model")
    if settings.score_threshold is None:
        threshold = loaded.score_threshold if loaded.score_threshold is not None else DEFAULT_SCORE_THRESHOLD
        settings = dataclasses.replace(settings, score_threshold=threshold)
    meta = loaded.metadata
    labels = get_label_set(label_set) if label_set else label_set_from_metadata(meta)
    out = Path(out)
    if task.legend:
        save_legend(out / "legend.png", labels.classes, labels.colors)
    yield from task.predict_files(loaded.model, info, files, out, settings, labels,
                                  {**meta, "num_classes": loaded.kwargs.get("num_classes")})


def predict_onnx(onnx: str | Path, inputs: Sequence[str | Path], out: str | Path, *,
                 label_set: str | None = None) -> Iterator[str]:
    """Whole-image prediction with an exported ONNX file on onnxruntime, without torch: the files of
    :func:`seglab.visualize.save_prediction` per image; yields a line per image."""
    import numpy as np

    from seglab.data.io import read_image
    from seglab.data.palettes import get_label_set, label_set_from_metadata
    from seglab.export.ort import OnnxPredictor
    from seglab.visualize import save_prediction

    predictor = OnnxPredictor(onnx)
    labels = get_label_set(label_set) if label_set else label_set_from_metadata(predictor.metadata)
    for path in image_files(inputs):
        image = np.asarray(read_image(path))
        written = save_prediction(out, path.stem, image, predictor(image), labels)
        yield f"{path} -> {written[0]}"


__all__ = [
    "IMAGE_SUFFIXES",
    "PREDICT_COMPANIONS",
    "build_trainer",
    "evaluate_predictions",
    "evaluate_weights",
    "image_files",
    "match_predictions",
    "predict",
    "predict_onnx",
    "train",
]
