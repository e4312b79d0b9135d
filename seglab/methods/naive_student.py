"""Naive-Student: iterative semi-supervised learning by pseudo-labelling with a test-time-augmented teacher.

Chen et al., "Naive-Student: Leveraging Semi-Supervised Learning in Video Sequences for Urban Scene
Segmentation", ECCV 2020, arXiv 2005.10266.

A teacher trained on the labelled images labels the unlabelled ones with test-time augmentation
(multi-scale inputs and a left-right flip, probabilities averaged); a student is trained from scratch on
labelled plus pseudo-labelled images, then becomes the next teacher.

Faithful: the TTA (the paper's scales 0.5 ... 1.75 and flip, by default), hard pseudo-labels (argmax)
with low-confidence pixels (averaged max probability below ``threshold``, default 0.7) set to ignore (255),
students trained from scratch with the teacher's schedule, the student as the next teacher, the val set
untouched. Deviations: the student trains on the union of labelled and pseudo-labelled images sampled
uniformly in one stage (the paper also studies pre-training on pseudo-labels, then fine-tuning on the
labelled set); the unlabelled images are any folder of images, sub-folders included (the paper's are
Cityscapes' ``leftImg8bit_sequence`` video frames: pass ``leftImg8bit_sequence/train``).

The student's data is a folder dataset written to disk (symlinks, or copies where links fail)::

    work_dir/round<r>_pseudo/{images,masks}/    the teacher's pseudo-labels (pseudo_label's output)
    work_dir/round<r>_data/train/{images,masks}/ labelled_<stem>.* and pseudo_<stem>.*
    work_dir/round<r>_data/val/{images,masks}/   the config's val split, unchanged
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from seglab.config import Config
from seglab.data.palettes import LabelSet, get_label_set
from seglab.errors import ConfigError, DatasetError
from seglab.utils import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from seglab.engine.inference import InferenceOptions

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
PAPER_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
IGNORE = 255


@dataclass
class PseudoLabelStats:
    """What :func:`pseudo_label` wrote: image count, the fraction of pixels kept, pixels per class."""

    images: int
    labelled_fraction: float  # pixels with a label (confidence >= threshold) over all pixels
    class_pixels: list[int]  # labelled pixels per class, index order
    ignored_pixels: int


@dataclass
class RoundResult:
    """One round: round 0 is the first teacher, round r >= 1 the student trained on round r's pseudo-labels."""

    round: int
    role: str  # "teacher" or "student"
    val_mIoU: float
    run_dir: str
    weights: str  # final weights of the round's model (the next round's teacher)
    train_images: int
    pseudo: PseudoLabelStats | None = None


def list_images(images: Sequence[str | Path] | str | Path) -> list[Path]:
    """Image files of a folder and its sub-folders (sorted by path, by suffix; Cityscapes'
    ``leftImg8bit_sequence/<split>`` holds one folder per city) or the given paths; two images sharing a stem are
    an error."""
    if isinstance(images, (str, Path)):
        folder = Path(images)
        if not folder.is_dir():
            raise DatasetError(f"{folder}: folder of unlabelled images not found")
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise DatasetError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    else:
        paths = [Path(p) for p in images]
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise DatasetError(f"{path}: shares the stem {path.stem!r} with {seen[path.stem]}; masks are named by stem")
        seen[path.stem] = path
    return paths


def pseudo_label(
    model: nn.Module,
    images: Sequence[str | Path] | str | Path,
    out_dir: str | Path,
    *,
    label_set: LabelSet | str,
    options: InferenceOptions | None = None,
    threshold: float = 0.7,
    device: str | None = None,
    **option_keywords: Any,
) -> PseudoLabelStats:
    """Label ``images`` with ``model`` and TTA; write ``out_dir/images/<stem>.<ext>`` and ``out_dir/masks/<stem>.png``.

    Labels are the argmax of the probabilities averaged over the scales x (plain, flipped) of ``options``
    (default: the paper's scales 0.5 ... 1.75 and flip, with the label set's flip pairs; keywords such as
    ``scales=(1.0,)`` or ``flip=False`` change them); a pixel whose averaged max probability is below
    ``threshold`` is 255 (ignore). The output is the layout FolderSegmentation reads.
    """
    from seglab.data.io import read_image, write_label_png
    from seglab.engine.inference import InferenceOptions, Predictor

    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}")
    label_set = get_label_set(label_set) if isinstance(label_set, str) else label_set
    if options is None:
        options = InferenceOptions(scales=PAPER_SCALES, flip=True, flip_pairs=label_set.flip_pairs)
    predictor = Predictor(model, options.replace(**option_keywords), device=device)
    out_dir = Path(out_dir)
    paths = list_images(images)
    class_pixels: np.ndarray | None = None
    ignored = total = 0
    for path in paths:
        image = np.asarray(read_image(path))
        probs = predictor.predict_probs(image)
        confidence, label = probs.max(dim=0)
        label = label.numpy().astype(np.uint8)
        label[confidence.numpy() < threshold] = IGNORE
        if class_pixels is None:
            class_pixels = np.zeros(probs.shape[0], dtype=np.int64)
        kept = label[label != IGNORE]
        class_pixels += np.bincount(kept, minlength=probs.shape[0])[: probs.shape[0]]
        ignored += int(label.size - kept.size)
        total += int(label.size)
        atomic_write(out_dir / "images" / path.name, lambda tmp, src=path: shutil.copyfile(src, tmp))
        write_label_png(out_dir / "masks" / f"{path.stem}.png", label, label_set)
    counts = [] if class_pixels is None else [int(c) for c in class_pixels]
    return PseudoLabelStats(len(paths), (total - ignored) / total if total else 0.0, counts, ignored)


def _link(src: Path, dst: Path) -> None:
    """``dst`` pointing at ``src`` (a symlink; a copy where the file system has none)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        shutil.copyfile(src, dst)


def _add_pairs(dataset: Any, dst: Path, prefix: str, label_set: LabelSet) -> int:
    """Link a paired dataset's images and masks into ``dst/{images,masks}`` as ``<prefix><stem>``."""
    from seglab.data.io import write_label_png

    for stem, image, label in zip(dataset.ids, dataset.image_paths, dataset.label_paths, strict=True):
        name = f"{prefix}{Path(stem).name}"
        _link(Path(image), dst / "images" / f"{name}{Path(image).suffix}")
        if Path(label).suffix.lower() == ".png" and getattr(dataset, "label_map", None) is None:
            _link(Path(label), dst / "masks" / f"{name}.png")
        else:  # SBD .mat labels, or files of other ids (Cityscapes' labelIds, ADE20K's): train ids as PNG
            write_label_png(dst / "masks" / f"{name}.png", dataset.load_label(Path(label)), label_set)
    return len(dataset.ids)


def build_student_data(cfg: Config, pseudo_dir: Path, out_dir: Path) -> int:
    """Write the student's folder dataset: ``out_dir/train`` = labelled + pseudo-labelled, ``out_dir/val`` = the
    config's val split. Returns the number of training images."""
    from seglab.data import build_dataset, label_set_for
    from seglab.data.datasets import FolderSegmentation

    if out_dir.exists():
        shutil.rmtree(out_dir)
    label_set = label_set_for(cfg.data)
    labelled = build_dataset(cfg.data, cfg.data.train_split, train=False)
    val = build_dataset(cfg.data, cfg.data.val_split, train=False)
    n = _add_pairs(labelled, out_dir / "train", "labelled_", label_set)
    n += _add_pairs(FolderSegmentation(pseudo_dir, None, label_set=label_set), out_dir / "train", "pseudo_", label_set)
    _add_pairs(val, out_dir / "val", "", label_set)
    return n


def _student_config(cfg: Config, data_dir: Path, work_dir: Path, name: str) -> Config:
    student = copy.deepcopy(cfg)
    student.name, student.output_dir = name, str(work_dir)
    from seglab.data import label_set_for

    student.data.palette = label_set_for(cfg.data).name  # the folder layout has no label set of its own
    student.data.dataset, student.data.root = "folder", str(data_dir)
    student.data.train_split, student.data.val_split, student.data.sbd_root = "train", "val", ""
    return student


def _write_record(path: Path, results: list[RoundResult], settings: dict[str, Any]) -> None:
    record = {**settings, "rounds": [dataclasses.asdict(r) for r in results]}
    atomic_write_text(path, json.dumps(record, indent=2))


def naive_student(
    cfg: Config,
    *,
    unlabelled: str | Path,
    rounds: int,
    work_dir: str | Path,
    teacher_weights: str | Path | None = None,
    threshold: float = 0.7,
    scales: Sequence[float] = PAPER_SCALES,
    flip: bool = True,
    progress: bool = False,
) -> list[RoundResult]:
    """Train a teacher on ``cfg`` (or load ``teacher_weights``), then ``rounds`` times: pseudo-label ``unlabelled``,
    train a student from scratch on labelled + pseudo-labelled data with ``cfg``'s schedule, make it the teacher.

    Every round's val mIoU (on ``cfg``'s val split) is recorded in ``work_dir/naive_student.json`` as it ends;
    returns the rounds, teacher first.
    """
    from seglab.checkpoint import load_weights
    from seglab.data import label_set_for
    from seglab.engine.inference import InferenceOptions
    from seglab.engine.trainer import Trainer

    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"naive_student: rounds must be a positive integer, got {rounds!r}")
    from seglab.data import build_dataset
    from seglab.data.datasets import PairedSegmentationDataset

    if not isinstance(build_dataset(cfg.data, cfg.data.train_split, train=False), PairedSegmentationDataset):
        raise ConfigError(f"data.dataset: naive_student needs a dataset of image/label-map pairs (voc, folder, "
                          f"cityscapes, ade20k, camvid, coco_stuff, demo), got {cfg.data.dataset!r}")
    work_dir = Path(work_dir)
    images = list_images(unlabelled)
    record = work_dir / "naive_student.json"
    settings = {"unlabelled": str(unlabelled), "threshold": threshold, "scales": list(scales), "flip": flip}
    label_set = label_set_for(cfg.data)

    teacher_cfg = copy.deepcopy(cfg)
    teacher_cfg.name, teacher_cfg.output_dir = "round0_teacher", str(work_dir)
    trainer = Trainer(teacher_cfg, progress=progress)
    if not trainer.task.pseudo_labels:
        raise ConfigError(f"model.name: naive_student trains semantic models; {cfg.model.name!r} is a "
                          f"{trainer.task.name} model")
    if teacher_weights is not None:
        load_weights(trainer.model, teacher_weights)
        metrics, weights = trainer.evaluate(), Path(teacher_weights)
    else:
        metrics = trainer.fit()
        weights = trainer.ckpt_dir / "last.safetensors"
    results = [
        RoundResult(0, "teacher", float(metrics.mIoU), str(trainer.run_dir), str(weights), len(trainer.train_set))
    ]
    log.info("round 0 teacher: val mIoU %.4f", metrics.mIoU)
    _write_record(record, results, settings)
    teacher = trainer.model

    for r in range(1, rounds + 1):
        pseudo_dir, data_dir = work_dir / f"round{r}_pseudo", work_dir / f"round{r}_data"
        if pseudo_dir.exists():
            shutil.rmtree(pseudo_dir)
        options = InferenceOptions.from_config(cfg.eval, label_set.flip_pairs, scales=tuple(scales), flip=flip)
        stats = pseudo_label(teacher, images, pseudo_dir, label_set=label_set, options=options, threshold=threshold)
        log.info("round %d: %d pseudo-labels, %.1f%% of pixels kept", r, stats.images, 100 * stats.labelled_fraction)
        train_images = build_student_data(cfg, pseudo_dir, data_dir)
        trainer = Trainer(_student_config(cfg, data_dir, work_dir, f"round{r}_student"), progress=progress)
        metrics = trainer.fit()
        weights = trainer.ckpt_dir / "last.safetensors"
        results.append(RoundResult(r, "student", float(metrics.mIoU), str(trainer.run_dir), str(weights),
                                   train_images, stats))
        log.info("round %d student: val mIoU %.4f", r, metrics.mIoU)
        _write_record(record, results, settings)
        teacher = trainer.model
    return results


def make_semi_supervised_split(
    demo_root: str | Path, out_dir: str | Path, labelled_fraction: float = 0.1, seed: int = 0
) -> dict[str, int]:
    """Split the demo data's train images into a labelled fraction and unlabelled images; keep its val split.

    Writes (copies, so regenerating the demo cache cannot change them) ``out_dir/labelled/{images,masks}``
    (a random ``labelled_fraction`` of the train ids, at least one), ``out_dir/unlabelled/images`` (the rest,
    images only) and ``out_dir/val/{images,masks}`` (the demo's val split). A folder-dataset config with
    ``root: out_dir``, ``train_split: labelled``, ``val_split: val`` reads it. Returns the counts.
    """
    from seglab.data.datasets import VOCSegmentation

    if not 0.0 < labelled_fraction < 1.0:
        raise ValueError(f"labelled_fraction must be in (0, 1), got {labelled_fraction}")
    demo_root, out_dir = Path(demo_root), Path(out_dir)
    train = VOCSegmentation(demo_root, "train")
    val = VOCSegmentation(demo_root, "val")
    if len(train) < 2:
        raise DatasetError(f"{demo_root}: {len(train)} train images; a split needs at least 2")
    n_labelled = min(max(1, round(labelled_fraction * len(train))), len(train) - 1)
    order = np.random.default_rng(seed).permutation(len(train))
    labelled = set(order[:n_labelled].tolist())
    for part in ("labelled", "unlabelled", "val"):
        if (out_dir / part).exists():
            shutil.rmtree(out_dir / part)

    def copy_to(src: Path) -> Any:
        return lambda tmp: shutil.copyfile(src, tmp)

    for i, (stem, image, label) in enumerate(zip(train.ids, train.image_paths, train.label_paths, strict=True)):
        part = "labelled" if i in labelled else "unlabelled"
        atomic_write(out_dir / part / "images" / f"{stem}{image.suffix}", copy_to(image))
        if part == "labelled":
            atomic_write(out_dir / part / "masks" / f"{stem}.png", copy_to(label))
    for stem, image, label in zip(val.ids, val.image_paths, val.label_paths, strict=True):
        atomic_write(out_dir / "val" / "images" / f"{stem}{image.suffix}", copy_to(image))
        atomic_write(out_dir / "val" / "masks" / f"{stem}.png", copy_to(label))
    return {"labelled": n_labelled, "unlabelled": len(train) - n_labelled, "val": len(val)}


__all__ = [
    "PAPER_SCALES",
    "PseudoLabelStats",
    "RoundResult",
    "build_student_data",
    "list_images",
    "make_semi_supervised_split",
    "naive_student",
    "pseudo_label",
]
