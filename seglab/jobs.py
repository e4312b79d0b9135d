"""The jobs the ``seglab`` command runs, as library functions: train, evaluate, predict.

``seglab.cli`` only parses arguments and calls these; a Python user calls the same functions. What differs per
model kind comes from the model's task (:mod:`seglab.tasks`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seglab.errors import ConfigError

if TYPE_CHECKING:
    from seglab.config import Config
    from seglab.engine.inference import InferenceOptions
    from seglab.engine.trainer import Trainer
    from seglab.tasks import PredictSettings, Task

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


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
    cfg: Config, weights: str | Path, *, options: InferenceOptions | None = None, results_dir: str | Path | None = None,
    progress: bool = False,
) -> tuple[Task, Any]:
    """The metrics of ``weights`` (the config's model) on the config's val split; returns the task and them.

    ``options`` (dense models) default to the config's ``eval`` section; ``results_dir`` is where instance
    models' COCO results JSON go (default: the run folder's ``coco_results``).
    """
    from seglab.data import label_set_for
    from seglab.pretrained import load_model
    from seglab.tasks import task_of
    from seglab.utils import resolve_device

    task = task_of(cfg.model.name)
    label_set = label_set_for(cfg.data)
    task.check_classes(cfg, label_set)
    device = resolve_device(cfg.train.device)
    model = load_model(weights, config=cfg).to(device)
    dataset = task.build_dataset(cfg.data, cfg.data.val_split, train=False)
    results = Path(results_dir) if results_dir else cfg.run_dir / "coco_results"
    return task, task.evaluate(model, dataset, cfg, label_set, device=device, options=options, progress=progress,
                               results_dir=results)


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
    weights: str | Path, inputs: Sequence[str | Path], out: str | Path, settings: PredictSettings, *,
    model_name: str | None = None, num_classes: int | None = None, label_set: str | None = None,
) -> Iterator[str]:
    """Rebuild the model of ``weights`` (:func:`seglab.pretrained.load_model`), predict every image of ``inputs``
    and write what its task writes under ``out`` (:meth:`seglab.tasks.Task.predict_files`); yields a line per
    image. ``label_set`` defaults to the one recorded in the weights, else VOC's."""
    from seglab.checkpoint import read_metadata
    from seglab.data.palettes import get_label_set, label_set_from_metadata
    from seglab.models import model_info
    from seglab.pretrained import load_model, model_spec
    from seglab.tasks import task_of
    from seglab.visualize import save_legend

    files = image_files(inputs)
    meta = read_metadata(weights)
    name, kwargs = model_spec(weights, name=model_name, num_classes=num_classes)
    model = load_model(weights, name=model_name, num_classes=num_classes)
    info = model_info(name)
    task = task_of(info)
    labels = get_label_set(label_set) if label_set else label_set_from_metadata(meta)
    out = Path(out)
    if task.legend:
        save_legend(out / "legend.png", labels.classes, labels.colors)
    yield from task.predict_files(model, info, files, out, settings, labels,
                                  {**meta, "num_classes": kwargs.get("num_classes")})


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


__all__ = ["IMAGE_SUFFIXES", "build_trainer", "evaluate_weights", "image_files", "predict", "predict_onnx", "train"]
