"""Label Studio's JSON export (a list of tasks) -> label maps: ``brushlabels`` (RLE) and ``polygonlabels`` regions.

Each task has ``data.image`` (an upload URL such as ``/data/upload/3/1a2b3c4d-photo.jpg``, a local-files URL
``/data/local-files/?d=dir/photo.jpg``, or any URL) and ``annotations[].result[]`` regions, each with
``original_width``/``original_height`` and a ``value``:

- brush: ``{"format": "rle", "rle": [bytes...], "brushlabels": [name]}``. The RLE is Label Studio's own, the
  ``@thi-ng/rle-pack`` bit stream of the region's RGBA canvas: a 32-bit value count, a 5-bit word size - 1,
  four 4-bit run-length widths - 1, then chunks of a 1-bit repeat flag, a 2-bit width choice, a run length - 1,
  and one word (repeat) or that many words (literal). A pixel is in the region when its alpha is not 0, as in
  ``label_studio_converter.brush.ls_rle_to_coco_rle``. :func:`decode_brush_rle` is written here (with tests)
  because label-studio-converter, which has the reference decoder, pulls in pandas, nltk, lxml and requests.
- polygon: ``{"points": [[x%, y%], ...], "polygonlabels": [name]}``, points in percent of the original width
  and height. A polygon that walks out to an inner ring and back is a ring (even-odd, see :mod:`.common`).

Regions are painted largest first. Results that are not regions (choices, text areas, ratings, relations) are
not read; other region types (rectangles, ellipses, key points) are an error. A task without an annotation
(or only cancelled ones) is left out and reported in ``Source.skipped``; a task with several annotations is an
error. The class order is ``classes=`` (a classes file, or the project's labelling config XML, whose ``<Label
background="#rrggbb">`` colours are kept), else the labels used, sorted by name.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from seglab.data.annotations.common import (
    LabelClass,
    Sample,
    Source,
    check_polygon,
    check_size,
    class_table,
    image_size,
    load_json,
    mask_rle,
    paint,
    polygons_rle,
    read_classes_file,
    read_text,
)
from seglab.errors import DatasetError

log = logging.getLogger(__name__)

UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")  # Label Studio prefixes uploaded file names with 8 hex digits


def decode_brush_rle(rle: Any, where: str = "RLE", expected: int | None = None) -> np.ndarray:
    """Label Studio's brush RLE (a list of byte values) as the flat uint8 array it encodes.

    ``expected``: the value count it must hold (``width * height * 4``), checked before anything is allocated."""
    if not isinstance(rle, list) or not all(isinstance(b, int) and 0 <= b <= 255 for b in rle):
        raise DatasetError(f"{where}: 'rle' is not a list of byte values 0..255")
    bits = np.unpackbits(np.asarray(rle, dtype=np.uint8))
    text = (bits + ord("0")).tobytes().decode("ascii")
    position = 0

    def read(n: int) -> int:
        nonlocal position
        if position + n > len(text):
            raise DatasetError(f"{where}: brush RLE ends early (at bit {position} of {len(text)})")
        value = int(text[position:position + n], 2)
        position += n
        return value

    num = read(32)
    if expected is not None and num != expected:
        raise DatasetError(f"{where}: brush RLE holds {num} values; expected width x height x 4 = {expected}")
    word = read(5) + 1
    if word > 8:
        raise DatasetError(f"{where}: brush RLE word size is {word} bits; expected 8-bit RGBA values")
    widths = [read(4) + 1 for _ in range(4)]
    weights = 1 << np.arange(word - 1, -1, -1)
    out = np.zeros(num, dtype=np.uint8)
    i = 0
    while i < num:
        repeat = read(1)
        j = i + 1 + read(widths[read(2)])
        if j > num:
            raise DatasetError(f"{where}: brush RLE run goes past its {num} values")
        if repeat:
            out[i:j] = read(word)
        else:
            if position + (j - i) * word > len(text):
                raise DatasetError(f"{where}: brush RLE ends early (at bit {position} of {len(text)})")
            block = bits[position:position + (j - i) * word].reshape(j - i, word)
            out[i:j] = block @ weights
            position += (j - i) * word
        i = j
    return out


def read_label_config(path: Path) -> list[LabelClass]:
    """The ``<Label value=... background=...>`` entries of a Label Studio labelling config, in order (a label in
    several tags, e.g. BrushLabels and PolygonLabels, once)."""
    try:
        root = ET.fromstring(read_text(path, "labelling config"))
    except ET.ParseError as exc:
        raise DatasetError(f"{path}: labelling config is not valid XML: {exc}") from None
    found: dict[str, LabelClass] = {}
    for tag in root.iter():
        if not tag.tag.endswith("Labels"):
            continue
        for label in tag.iter("Label"):
            value = label.get("value")
            if value and value not in found:
                found[value] = LabelClass(value, _css_color(label.get("background", "")))
    if not found:
        raise DatasetError(f"{path}: no <Label value=...> inside a *Labels tag")
    return list(found.values())


def _css_color(text: str) -> tuple[int, int, int] | None:
    text = text.strip()
    if re.fullmatch(r"#[0-9a-fA-F]{3}", text):
        text = "#" + "".join(c * 2 for c in text[1:])
    if re.fullmatch(r"#[0-9a-fA-F]{6}", text):
        return int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)
    return None  # a colour name or rgba(): no colour recorded


def _image_path(url: str, folder: Path, where: str) -> Path:
    parsed = urllib.parse.urlparse(url)
    local = urllib.parse.parse_qs(parsed.query).get("d")
    relative = (local[0] if local else urllib.parse.unquote(parsed.path)).lstrip("/")
    name = PurePosixPath(relative).name
    candidates = [folder / relative, folder / name]
    if match := UPLOAD_PREFIX.match(name):
        candidates.append(folder / match.group(1))
    for path in candidates:
        if path.is_file():
            return path
    raise DatasetError(f"{where}: image {url!r} not found (looked for {', '.join(str(p) for p in candidates)}); "
                       "pass images=DIR (--images) for the folder that holds the images")


def _region(result: dict, where: str) -> tuple[str, str, Any, int, int] | None:
    """``(kind, label, data, width, height)`` of one result, None when it is not a region."""
    if not isinstance(result, dict):
        raise DatasetError(f"{where}: a result is not an object")
    value = result.get("value")
    keys = [k for k in value if k.endswith("labels")] if isinstance(value, dict) else []
    if not keys:
        return None
    names = value[keys[0]]
    if not isinstance(names, list) or len(names) != 1 or not isinstance(names[0], str):
        raise DatasetError(f"{where}: region has labels {names!r}; expected exactly one label")
    width, height = result.get("original_width"), result.get("original_height")
    if not all(isinstance(v, int) and v > 0 for v in (width, height)):
        raise DatasetError(f"{where}: region needs positive integer original_width and original_height")
    if result.get("image_rotation", 0):
        raise DatasetError(f"{where}: image_rotation is {result['image_rotation']}; rotated images are not read")
    if "rle" in value:
        return "rle", names[0], value["rle"], width, height
    if "points" in value:
        if value.get("closed") is False:
            raise DatasetError(f"{where}: polygon is not closed")
        points = value["points"]
        if not isinstance(points, list) or not all(isinstance(p, list) and len(p) == 2 for p in points):
            raise DatasetError(f"{where}: points are not a list of [x, y] pairs")
        flat = check_polygon([c for p in points for c in p], where)
        return "polygon", names[0], flat, width, height
    raise DatasetError(f"{where}: region type {result.get('type')!r} is not read; convert-data reads brushlabels "
                       "(RLE) and polygonlabels")


def read_label_studio(
    src: str | Path,
    *,
    images: str | Path | None = None,
    classes: str | Path | None = None,
    image_key: str = "image",
) -> Source:
    """Read a Label Studio JSON export file ``src``.

    ``images``: the folder of the images (default: the export's folder); ``classes``: the class order, as a
    classes file (``name`` or ``name #rrggbb`` lines) or the labelling config XML; ``image_key``: the task
    data field holding the image URL."""
    src = Path(src)
    folder = Path(images) if images is not None else src.parent
    tasks = load_json(src, "Label Studio export")
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and "annotations" in t for t in tasks):
        raise DatasetError(f"{src}: expected Label Studio's JSON export: a list of tasks with 'data' and "
                           "'annotations' (not JSON-MIN or CSV)")
    parsed, skipped, used = [], [], []
    for number, task in enumerate(tasks):
        where = f"{src}: task {task.get('id', number)}"
        annotations = [a for a in task["annotations"] if isinstance(a, dict) and not a.get("was_cancelled")]
        if not annotations:
            skipped.append(f"{where}: no annotation")
            log.warning("%s: no annotation (or only cancelled ones); left out", where)
            continue
        if len(annotations) > 1:
            raise DatasetError(f"{where}: {len(annotations)} annotations; expected one per task (remove the others "
                               "in Label Studio before exporting)")
        data = task.get("data")
        url = data.get(image_key) if isinstance(data, dict) else None
        if not isinstance(url, str):
            raise DatasetError(f"{where}: no data.{image_key}; pass image_key= for the field with the image URL")
        results = annotations[0].get("result", [])
        if not isinstance(results, list):
            raise DatasetError(f"{where}: the annotation's 'result' is not a list")
        regions = [r for k, res in enumerate(results) if (r := _region(res, f"{where}, result {k}")) is not None]
        if len({(r[3], r[4]) for r in regions}) > 1:
            raise DatasetError(f"{where}: regions give different original_width/original_height")
        used += [r[1] for r in regions]
        parsed.append((where, _image_path(url, folder, where), regions))
    if classes is not None:
        path = Path(classes)
        labels = read_label_config(path) if path.suffix.lower() == ".xml" else read_classes_file(path)
        known = {label.name for label in labels}
        unknown = sorted(set(used) - known)
        if unknown:
            raise DatasetError(f"{src}: labels {unknown} are not in {path}")
    else:
        labels = [LabelClass(name) for name in sorted(set(used))]
    table, indices = class_table(labels, str(classes or src))
    index = {label.name: i for label, i in zip(labels, indices, strict=True)}

    def samples() -> Iterator[Sample]:
        for where, image, regions in parsed:
            width, height = size = image_size(image)
            objects = []
            for kind, name, data, region_width, region_height in regions:
                check_size(image, size, (region_width, region_height), where)
                if kind == "rle":
                    values = decode_brush_rle(data, f"{where}, label {name!r}", width * height * 4)
                    mask = mask_rle(values.reshape(height, width, 4)[:, :, 3] > 0)
                else:
                    scaled = [v * (width if k % 2 == 0 else height) / 100 for k, v in enumerate(data)]
                    mask = polygons_rle([scaled], height, width)
                objects.append((index[name], mask))
            yield Sample(image.stem, image, paint(height, width, objects), len(objects), None, size)

    return Source(table, samples(), skipped)
