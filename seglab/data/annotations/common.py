"""What every importer shares: the classes and samples it hands to the writer, the class files, polygon and
COCO-RLE rasterising, and the order in which overlapping objects are painted.

Rules (the same for every format that has objects):

- **Pixels.** Polygon coordinates are continuous with pixel ``(x, y)`` spanning ``[x, x+1) x [y, y+1)``, the
  COCO convention; pycocotools rasterises them (``frPyObjects``), so a rectangle ``(2, 2)-(8, 7)`` covers
  pixels ``x = 2..7, y = 2..6`` exactly.
- **Holes.** Inside one polygon the fill is even-odd: pycocotools' rasteriser counts boundary crossings, so a
  polygon that walks out to an inner ring and back along the same line (how Ultralytics' COCO converter
  ``merge_multi_segment`` writes an object with a hole into one YOLO line) comes out as a ring. Across the
  polygons of one object the rule is *containment parity*: a polygon lying wholly inside another polygon of
  the same object cuts a hole in it (inside two, it fills again: an island in the hole), and polygons that
  merely overlap are united. For nested rings this equals the even-odd rule of OpenCV's ``fillPoly`` (what
  Ultralytics draws YOLO masks with) and of SVG/canvas ``evenodd``; for parts that overlap by an annotator's
  slip it equals pycocotools' ``annToMask`` (``frPyObjects`` then ``merge``, a union), which would otherwise
  fill every hole. No library offers this rule for COCO polygons, so it is written here, on pycocotools' RLE
  operations: a polygon is inside another when the area of their intersection equals its own area.
- **Overlaps.** The objects of an image are painted largest area first (pixels after rasterising; ties keep
  file order), so a smaller object lying on a larger one stays visible: Ultralytics' ``polygons2masks_overlap``
  orders YOLO-seg masks the same way. Formats that are already label images keep their pixels.
- **Background.** A label named ``background`` (any case) is index 0, so its objects paint background (CVAT's
  documented way to cut a hole into a shape); the other labels are 1..N in the tool's order.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from seglab.data.io import open_image_file
from seglab.data.palettes import read_classes_entries
from seglab.errors import DatasetError

log = logging.getLogger(__name__)

IGNORE = 255
MAX_CLASSES = 255  # indices 0..254; 255 is ignore
COLOR_TOKEN = re.compile(r"#[0-9a-fA-F]{6}")

Color = tuple[int, int, int]


@dataclass(frozen=True)
class LabelClass:
    """One line of classes.txt: a class name and, where the source has one, its colour."""

    name: str
    color: Color | None = None


@dataclass
class Sample:
    """One converted image: its file (copied as it is), its label map and how many objects were painted.

    ``stem`` names the output files; ``split`` is the source's subset (train, val, ...), if it has any.
    ``image_size`` is ``(width, height)`` when the importer already read it."""

    stem: str
    image: Path
    label: np.ndarray
    objects: int
    split: str | None = None
    image_size: tuple[int, int] | None = None


@dataclass
class Source:
    """What an importer returns: the classes (index order, 0 = background) and the samples, made lazily.

    ``skipped`` names inputs left out on purpose (a Label Studio task nobody annotated), each with the reason."""

    classes: list[LabelClass]
    samples: Iterable[Sample]
    skipped: list[str] = field(default_factory=list)


# -- classes ------------------------------------------------------------------------------------------------


def hex_color(color: Color) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


def parse_hex_color(token: str, where: str) -> Color:
    """``#rrggbb`` as an (r, g, b) tuple, or a DatasetError naming ``where``."""
    if not COLOR_TOKEN.fullmatch(token):
        raise DatasetError(f"{where}: colour {token!r} is not of the form #rrggbb")
    return int(token[1:3], 16), int(token[3:5], 16), int(token[5:7], 16)


def read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise DatasetError(f"{path}: {what} not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_classes_file(path: Path) -> list[LabelClass]:
    """A file of ``name`` or ``name #rrggbb`` lines (seglab's classes.txt format, read by
    :func:`seglab.data.palettes.read_classes_entries`), in order; a DatasetError for a malformed one."""
    if not path.is_file():
        raise DatasetError(f"{path}: classes file not found")
    try:
        return [LabelClass(name, color) for name, color in read_classes_entries(path)]
    except ValueError as exc:
        raise DatasetError(str(exc)) from None


def is_background(name: str) -> bool:
    return name.strip().lower() == "background"


def class_table(labels: Sequence[LabelClass], where: str) -> tuple[list[LabelClass], list[int]]:
    """Index a tool's labels: one named ``background`` (any case) becomes index 0, the others 1..N in order.

    Returns the classes in index order (line 0 ``background``, with the background label's colour if any) and
    the index given to each entry of ``labels``."""
    background: LabelClass | None = None
    classes = [LabelClass("background")]
    indices = []
    seen: set[str] = set()
    for label in labels:
        name = label.name.strip()
        if not name:
            raise DatasetError(f"{where}: a class has an empty name")
        if name in seen:
            raise DatasetError(f"{where}: class {name!r} is listed twice")
        seen.add(name)
        if is_background(name):
            if background is not None:
                raise DatasetError(f"{where}: two background classes ({background.name!r} and {name!r})")
            background = label
            indices.append(0)
        else:
            indices.append(len(classes))
            classes.append(LabelClass(name, label.color))
    if background is not None:
        classes[0] = LabelClass("background", background.color)
    if len(classes) > MAX_CLASSES:
        raise DatasetError(f"{where}: {len(classes)} classes with background; a label PNG holds at most "
                           f"{MAX_CLASSES} (indices 0..254, 255 = ignore)")
    return classes, indices


# -- files --------------------------------------------------------------------------------------------------


def load_json(path: Path, what: str) -> Any:
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: {what} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") \
            from None


def image_suffixes() -> tuple[str, ...]:
    """The image suffixes the folder layout reads (imported when needed: the dataset package loads torch)."""
    from seglab.data.datasets.folder import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES


def find_image(folder: Path, stem: str, where: str) -> Path:
    """The one image ``folder/<stem>.<ext>`` (any image suffix), or a DatasetError naming ``where``."""
    suffixes = image_suffixes()
    found = sorted(p for p in folder.glob(glob.escape(stem) + ".*") if p.suffix.lower() in suffixes and p.is_file())
    if not found:
        raise DatasetError(f"{where}: no image {folder / stem}.{{{','.join(s[1:] for s in suffixes)}}}")
    if len(found) > 1:
        raise DatasetError(f"{where}: several images for {stem!r}: {', '.join(p.name for p in found)}")
    return found[0]


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file, fully decoded so that a corrupt file fails here, naming it."""
    img = open_image_file(path, "image")
    size = img.size
    img.close()
    return size


def check_size(image: Path, size: tuple[int, int], declared: tuple[int, int], where: str) -> None:
    """A DatasetError when the annotation's ``declared`` (width, height) differs from the image's."""
    if tuple(size) != tuple(declared):
        raise DatasetError(f"{where}: annotation is for a {declared[0]}x{declared[1]} image but {image} is "
                           f"{size[0]}x{size[1]} (width x height)")


# -- rasterising ---------------------------------------------------------------------------------------------


def check_polygon(values: Any, where: str) -> list[float]:
    """A flat ``[x1, y1, x2, y2, ...]`` of at least 3 finite points, or a DatasetError naming ``where``."""
    if not isinstance(values, (list, tuple)) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        raise DatasetError(f"{where}: polygon is not a list of numbers; expected [x1, y1, x2, y2, ...]")
    if len(values) % 2:
        raise DatasetError(f"{where}: polygon has an odd number of coordinates ({len(values)}); "
                           "expected x, y pairs")
    if len(values) < 6:
        raise DatasetError(f"{where}: polygon has {len(values) // 2} point(s); expected at least 3")
    if not all(math.isfinite(v) for v in values):
        raise DatasetError(f"{where}: polygon has a coordinate that is not a finite number")
    return [float(v) for v in values]


def polygons_rle(polygons: Sequence[Sequence[float]], height: int, width: int) -> dict:
    """The pixels of one object drawn as ``polygons`` (checked with :func:`check_polygon`), as a COCO RLE.

    Each polygon is rasterised by pycocotools; a polygon inside another of the object cuts a hole, overlapping
    polygons are united (containment parity: see the module docstring)."""
    rles = mask_utils.frPyObjects([list(p) for p in polygons], height, width)
    if len(rles) == 1:
        return rles[0]
    areas = mask_utils.area(rles)
    depth = [0] * len(rles)
    for i in range(len(rles)):
        for j in range(len(rles)):
            if i != j and 0 < areas[i] < areas[j]:
                common = mask_utils.area(mask_utils.merge([rles[i], rles[j]], intersect=True))
                depth[i] += int(common == areas[i])
    if not any(depth):
        return mask_utils.merge(rles)
    out = np.zeros((height, width), dtype=bool)
    for level in sorted(set(depth)):
        layer = mask_utils.merge([r for r, d in zip(rles, depth, strict=True) if d == level])
        layer = mask_utils.decode(layer).astype(bool)
        if level % 2:
            out &= ~layer
        else:
            out |= layer
    return mask_rle(out)


def mask_rle(mask: np.ndarray) -> dict:
    """An HxW bool mask as a COCO RLE (objects are kept as RLEs until painted, to hold little memory)."""
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def _rle_string_counts(counts: str, where: str) -> list[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``), to check them before
    pycocotools decodes: its decoder trusts the counts and writes past the mask when they add up to more."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise DatasetError(f"{where}: compressed RLE counts end in the middle of a number")
            c = ord(counts[position]) - 48
            if not 0 <= c < 64:
                raise DatasetError(f"{where}: compressed RLE counts hold {counts[position]!r}, not an RLE character")
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            position += 1
            shift += 1
            if not more and c & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def coco_rle(segmentation: dict, height: int, width: int, where: str) -> dict:
    """A COCO segmentation RLE (``counts`` compressed string or uncompressed list, ``size`` [h, w]), checked and
    in pycocotools' form."""
    size = segmentation.get("size")
    counts = segmentation.get("counts")
    if not isinstance(size, list) or len(size) != 2 or size != [height, width]:
        raise DatasetError(f"{where}: RLE size {size} differs from the image's [height, width] = [{height}, {width}]")
    if isinstance(counts, list):
        runs = counts
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in runs):
            raise DatasetError(f"{where}: uncompressed RLE counts must be integers")
        rle = mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)
    elif isinstance(counts, str):
        runs = _rle_string_counts(counts, where)
        rle = {"size": size, "counts": counts.encode("ascii")}
    else:
        raise DatasetError(f"{where}: RLE counts must be a string (compressed) or a list of integers (uncompressed)")
    if any(c < 0 for c in runs) or sum(runs) != height * width:
        raise DatasetError(f"{where}: RLE run lengths add up to {sum(runs)} pixels (or one is negative); "
                           f"expected {height} x {width} = {height * width}")
    return rle


def paint(height: int, width: int, objects: Sequence[tuple[int, dict]]) -> np.ndarray:
    """An HxW uint8 label map of ``objects`` ``(index, COCO RLE)``: the largest area painted first, so smaller
    objects stay on top (ties keep their order)."""
    label = np.zeros((height, width), dtype=np.uint8)
    areas = [int(mask_utils.area(rle)) for _, rle in objects]
    for i in sorted(range(len(objects)), key=lambda k: -areas[k]):
        index, rle = objects[i]
        label[mask_utils.decode(rle).astype(bool)] = index
    return label
