"""Annotation tools' exports -> seglab's folder layout (``seglab convert-data FORMAT SRC DST``).

Each format has one module that reads its export into a :class:`~.common.Source` (classes and label maps); the
writer here turns any source into the layout :class:`seglab.data.datasets.FolderSegmentation` reads::

    DST/images/<stem>.<ext>   each image, copied byte for byte
    DST/masks/<stem>.png      palette PNG of class indices (0 = background, 255 = ignore)
    DST/classes.txt           one class per line in index order ('name' or 'name #rrggbb'), line 0 background
    DST/<split>.txt           the stems of each split, when the export has more than one subset

Every file is written atomically (a temporary file, then a rename), so an interrupted run leaves no
half-written file; ``classes.txt`` is written last. A non-empty ``DST`` is refused unless ``overwrite=True``,
which also removes images and masks a previous run left there that this run did not write.

    from seglab.data.annotations import convert
    result = convert("coco", "annotations/instances_train.json", "data/mine", images="train2017")
"""

from __future__ import annotations

import inspect
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seglab.data.annotations.coco import read_coco
from seglab.data.annotations.color_png import read_color_png
from seglab.data.annotations.common import (
    COLOR_TOKEN,
    LabelClass,
    Sample,
    Source,
    hex_color,
    image_size,
    image_suffixes,
)
from seglab.data.annotations.cvat_coco import read_cvat_coco
from seglab.data.annotations.cvat_mask import read_cvat_mask
from seglab.data.annotations.label_studio import read_label_studio
from seglab.data.annotations.yolo import read_yolo
from seglab.data.io import write_label_png
from seglab.data.palettes import LabelSet, voc_colormap
from seglab.errors import ConfigError, DatasetError
from seglab.utils import atomic_write

log = logging.getLogger(__name__)

FORMATS: dict[str, Callable[..., Source]] = {
    "coco": read_coco,
    "yolo": read_yolo,
    "label-studio": read_label_studio,
    "cvat-mask": read_cvat_mask,
    "cvat-coco": read_cvat_coco,
    "color-png": read_color_png,
}


@dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert` wrote: ``images`` image/mask pairs, ``objects`` objects painted (for label-image
    formats: the classes present per image, other than index 0, summed), ``classes`` lines of classes.txt
    (background included), and the inputs ``skipped`` on purpose, each with its reason."""

    format: str
    src: Path
    dst: Path
    images: int
    objects: int
    classes: int
    skipped: tuple[str, ...] = ()

    def summary(self) -> str:
        skipped = f", {len(self.skipped)} skipped" if self.skipped else ""
        return (f"{self.src} ({self.format}) -> {self.dst}: {self.images} images, {self.objects} objects, "
                f"{self.classes} classes{skipped}")


def convert(format: str, src: str | Path, dst: str | Path, *, overwrite: bool = False, **options: Any) -> ConvertResult:
    """Convert the ``format`` export at ``src`` into seglab's folder layout at ``dst``.

    ``format``: a key of :data:`FORMATS`; ``options``: that format's keyword options (``images``, ``classes``,
    ``palette``, ``labels``, ``crowd``, ``boxes``, ``image_key``: see each reader). Raises
    :class:`~seglab.errors.DatasetError` for bad input (naming the file and what was expected) and
    :class:`~seglab.errors.ConfigError` for an unknown format or an option the format does not take."""
    if format not in FORMATS:
        raise ConfigError(f"unknown annotation format {format!r}; expected one of {', '.join(FORMATS)}")
    reader = FORMATS[format]
    accepted = [p for p in inspect.signature(reader).parameters if p != "src"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"format {format!r} takes no option {', '.join(unknown)}; it takes: "
                          f"{', '.join(accepted) or 'none'}")
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise DatasetError(f"{src}: not found")
    _check_destination(src, dst, overwrite)
    source = reader(src, **options)
    images, objects = write_dataset(source, dst, overwrite=overwrite, where=str(src))
    return ConvertResult(format, src, dst, images, objects, len(source.classes), tuple(source.skipped))


def _check_destination(src: Path, dst: Path, overwrite: bool) -> None:
    a, b = src.resolve(), dst.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise DatasetError(f"{dst}: the output folder must lie outside the source {src} (and not contain it)")
    if dst.exists() and not dst.is_dir():
        raise DatasetError(f"{dst}: exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise DatasetError(f"{dst}: output folder is not empty; choose an empty one or pass overwrite=True "
                           "(--overwrite)")


def classes_text(classes: list[LabelClass]) -> str:
    """classes.txt: ``name`` or ``name #rrggbb`` per line, in index order."""
    lines = []
    for index, cls in enumerate(classes):
        name = cls.name.strip()
        if not name or "\n" in name or "\r" in name:
            raise DatasetError(f"class {index} has the name {cls.name!r}; a class name is one non-empty line")
        tokens = name.split()
        if cls.color is None and len(tokens) > 1 and COLOR_TOKEN.fullmatch(tokens[-1]):
            raise DatasetError(f"class {index} {name!r} ends in a colour-like token and has no colour; "
                               "classes.txt would read it as one")
        lines.append(f"{name} {hex_color(cls.color)}" if cls.color else name)
    return "\n".join(lines) + "\n"


def _write_sample(sample: Sample, dst: Path, label_set: LabelSet) -> list[Path]:
    if sample.image.suffix.lower() not in image_suffixes():
        raise DatasetError(f"{sample.image}: the folder layout reads {', '.join(image_suffixes())} images; "
                           "convert this image first")
    width, height = sample.image_size or image_size(sample.image)
    label = np.asarray(sample.label)
    if label.shape != (height, width) or label.dtype != np.uint8:
        raise DatasetError(f"{sample.image}: its label has shape {label.shape} (height, width) and dtype {label.dtype} "
                           f"but the image is {width}x{height} (width x height); expected a uint8 label of its size")
    image_path = dst / "images" / f"{sample.stem}{sample.image.suffix}"
    atomic_write(image_path, lambda tmp: shutil.copyfile(sample.image, tmp))
    return [image_path, write_label_png(dst / "masks" / f"{sample.stem}.png", label, label_set)]


def write_dataset(
    source: Source, dst: str | Path, *, overwrite: bool = False, where: str = "source"
) -> tuple[int, int]:
    """Write ``source`` in seglab's folder layout at ``dst``; returns ``(images, objects)``.

    Two samples with one stem are an error (rename one of the images); so is a source without images (``where``
    names it). With ``overwrite``, images and masks in ``dst`` that this run did not write are removed."""
    dst = Path(dst)
    text = classes_text(source.classes)  # checked before anything is written
    colors = voc_colormap(len(source.classes))
    label_set = LabelSet("converted", tuple(c.name for c in source.classes),
                         tuple(c.color or colors[i] for i, c in enumerate(source.classes)))
    written: set[Path] = set()
    stems: dict[str, Path] = {}
    splits: dict[str, list[str]] = {}
    images = objects = 0
    for sample in source.samples:
        if sample.stem in stems:
            raise DatasetError(f"{sample.image}: has the stem {sample.stem!r} of {stems[sample.stem]}; output files "
                               "are named by stem, so rename one of them")
        stems[sample.stem] = sample.image
        written.update(_write_sample(sample, dst, label_set))
        splits.setdefault(sample.split or "", []).append(sample.stem)
        images += 1
        objects += sample.objects
    if not images:
        raise DatasetError(f"{where}: no images to convert; the export lists none")
    named = {split: names for split, names in splits.items() if split}
    if len(splits) > 1 or len(named) > 1:
        for split, names in named.items():
            if split == "classes" or "/" in split or "\\" in split:
                raise DatasetError(f"split {split!r} cannot be written as {dst}/{split}.txt")
            listing = "\n".join(names) + "\n"
            path = atomic_write(dst / f"{split}.txt", lambda tmp, body=listing: tmp.write_text(body, encoding="utf-8"))
            written.add(path)
    if overwrite:
        stale = [p for folder in ("images", "masks") for p in sorted((dst / folder).iterdir()) if p not in written
                 and p.is_file()]
        for path in stale:
            path.unlink()
        if stale:
            log.info("%s: removed %d images and masks of an earlier run", dst, len(stale))
    atomic_write(dst / "classes.txt", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return images, objects


__all__ = ["FORMATS", "ConvertResult", "convert", "write_dataset"]
