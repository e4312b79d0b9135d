"""Ultralytics YOLO segmentation labels (YOLO-seg) -> label maps.

The layout (Ultralytics' dataset documentation): each image ``.../images/.../<stem>.<ext>`` has its labels in
the same path with the last ``images`` folder replaced by ``labels`` and the suffix by ``.txt``, e.g.
``images/train/a.jpg`` -> ``labels/train/a.txt`` or ``train/images/a.jpg`` -> ``train/labels/a.txt``. Each line
is one object, ``class x1 y1 x2 y2 ...``, coordinates normalised to 0..1 by the image's width and height. The
class names come from ``data.yaml`` (``names:`` a list, or a dict ``{0: name, ...}``) or a ``classes.txt`` (one
name per line); class k becomes index k+1 (one named ``background`` becomes 0). An image without a label
file is a background image, as Ultralytics reads it; a label file without an image is an error. The folder
next to ``images`` (``train``, ``val``, ...) becomes the split.

An object with a hole is one line whose polygon goes out to the hole's ring and back (Ultralytics' COCO
converter writes it so); it is rasterised even-odd and comes out as a ring (see :mod:`.common`). Overlapping
objects: largest first, as Ultralytics' ``polygons2masks_overlap`` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import yaml

from seglab.data.annotations.common import (
    LabelClass,
    Sample,
    Source,
    check_polygon,
    class_table,
    image_size,
    image_suffixes,
    paint,
    polygons_rle,
    read_classes_file,
    read_text,
)
from seglab.errors import DatasetError

NAME_FILES = ("data.yaml", "dataset.yaml", "classes.txt")
EPS = 1e-6  # slack for normalised coordinates written as 1.0000001


def read_names(path: Path) -> list[LabelClass]:
    """The class names of a ``data.yaml`` (``names:`` list or ``{id: name}`` dict) or a ``classes.txt``."""
    if path.suffix.lower() not in (".yaml", ".yml"):
        return read_classes_file(path)
    try:
        data = yaml.safe_load(read_text(path, "dataset YAML"))
    except yaml.YAMLError as exc:
        raise DatasetError(f"{path}: not valid YAML: {exc}") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        if set(names) != set(range(len(names))):
            raise DatasetError(f"{path}: 'names' keys are {sorted(names, key=str)}; expected the class ids 0..N-1")
        names = [names[k] for k in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{path}: no 'names:' list or dict of class names")
    return [LabelClass(str(name)) for name in names]


def _label_path(root: Path, image: Path) -> tuple[Path, str | None]:
    """The label file of ``image`` (the last ``images`` folder -> ``labels``) and its split."""
    parts = image.relative_to(root).parts
    at = len(parts) - 1 - parts[::-1].index("images")
    label = root.joinpath(*parts[:at], "labels", *parts[at + 1:]).with_suffix(".txt")
    if len(parts) - at > 2:
        split = parts[at + 1]
    else:
        split = parts[at - 1] if at > 0 else None
    return label, split


def _parse(path: Path, num_classes: int) -> list[tuple[int, list[float]]]:
    """The ``(class, normalised polygon)`` objects of one label file."""
    objects = []
    for number, line in enumerate(read_text(path, "label file").splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{path}:{number}"
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            raise DatasetError(f"{where}: {line.strip()!r} is not numbers; expected 'class x1 y1 x2 y2 ...'") from None
        cls, coords = values[0], values[1:]
        if len(coords) == 4:
            raise DatasetError(f"{where}: 4 numbers after the class (a detection box 'class cx cy w h', or a polygon "
                               "of 2 points); expected a polygon 'class x1 y1 x2 y2 x3 y3 ...' (YOLO-seg)")
        if cls != int(cls) or not 0 <= cls < num_classes:
            raise DatasetError(f"{where}: class {tokens[0]!r} is not a class id 0..{num_classes - 1}")
        polygon = check_polygon(coords, where)
        if min(polygon) < -EPS or max(polygon) > 1 + EPS:
            raise DatasetError(f"{where}: coordinates outside 0..1; expected coordinates normalised by the image size")
        objects.append((int(cls), polygon))
    return objects


def read_yolo(src: str | Path, *, classes: str | Path | None = None) -> Source:
    """Read an Ultralytics YOLO-seg dataset folder ``src``.

    ``classes``: the file of class names (a YAML with ``names:`` or a one-name-per-line txt); default
    ``src/data.yaml``, ``src/dataset.yaml`` or ``src/classes.txt``, the first that exists."""
    src = Path(src)
    if classes is None:
        found = [src / name for name in NAME_FILES if (src / name).is_file()]
        if not found:
            raise DatasetError(f"{src}: no class names; expected {', '.join(NAME_FILES)} (or pass classes=FILE)")
        classes = found[0]
    labels = read_names(Path(classes))
    table, indices = class_table(labels, str(classes))
    suffixes = image_suffixes()
    images = sorted(p for p in src.rglob("*") if p.suffix.lower() in suffixes and "images" in
                    p.relative_to(src).parts[:-1] and p.is_file())
    if not images:
        raise DatasetError(f"{src}: no images under an images/ folder; expected images/<stem>.<ext> with "
                           "labels/<stem>.txt (or <split>/images, <split>/labels)")
    pairs = [(image, *_label_path(src, image)) for image in images]
    paired = {label for _, label, _ in pairs}
    orphans = sorted(p for p in src.rglob("*.txt") if "labels" in p.relative_to(src).parts[:-1] and p not in paired)
    if orphans:
        raise DatasetError(f"{orphans[0]}: label file without an image (expected it under the matching images/ "
                           f"folder){f'; {len(orphans) - 1} more' if len(orphans) > 1 else ''}")
    parsed = [(image, _parse(label, len(labels)) if label.is_file() else [], split) for image, label, split in pairs]

    def samples() -> Iterator[Sample]:
        for image, objects, split in parsed:
            width, height = image_size(image)
            masks = []
            for cls, polygon in objects:
                scaled = [v * (width if k % 2 == 0 else height) for k, v in enumerate(polygon)]
                masks.append((indices[cls], polygons_rle([scaled], height, width)))
            yield Sample(image.stem, image, paint(height, width, masks), len(masks), split, (width, height))

    return Source(table, samples())
