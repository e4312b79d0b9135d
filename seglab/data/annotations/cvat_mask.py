"""CVAT's "Segmentation mask 1.1" export -> label maps.

The export (CVAT's format documentation, "Segmentation Mask", a Pascal VOC variant):

    export/
      labelmap.txt                      '# label:color_rgb:parts:actions' then 'name:r,g,b::' lines (optional:
                                        without it the labels are Pascal VOC's, with VOC's colours)
      ImageSets/Segmentation/<subset>.txt   image names without extension
      SegmentationClass/<name>.png      class colours (3-channel or palette); 1-channel = labelmap line indices
      SegmentationObject/<name>.png     instance masks (not read)
      JPEGImages/<name>.<ext>           the images, when exported with them (else pass images=DIR)

The background (index 0) is, as CVAT's documentation defines it, the label named ``background`` (any case), else
a label coloured (0, 0, 0), else the implicit black background; the other labels are 1..N in labelmap order,
with their colours. CVAT draws its shapes into these masks itself (z-order, holes cut with background shapes),
so the pixels are kept as they are. A colour not in the labelmap is an error naming the file, the colour and a
pixel. With several subset lists, each becomes a split list in the output.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from seglab.data.annotations.color_png import color_lookup, colors_to_indices, present_classes, read_rgb
from seglab.data.annotations.common import (
    Color,
    LabelClass,
    Sample,
    Source,
    class_table,
    find_image,
    is_background,
    read_text,
)
from seglab.data.io import open_image_file
from seglab.data.palettes import get_label_set
from seglab.errors import DatasetError

BLACK = (0, 0, 0)


def read_labelmap(path: Path) -> list[LabelClass]:
    """The ``name:r,g,b:parts:actions`` lines of a CVAT/Datumaro ``labelmap.txt``, in order."""
    labels = []
    for number, line in enumerate(read_text(path, "labelmap").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        rgb = fields[1].split(",") if len(fields) > 1 else []
        if len(rgb) != 3 or not all(v.strip().isdigit() and int(v) <= 255 for v in rgb):
            raise DatasetError(f"{path}:{number}: {line!r}; expected 'name:r,g,b:parts:actions' with r, g, b in 0..255")
        labels.append(LabelClass(fields[0].strip(), (int(rgb[0]), int(rgb[1]), int(rgb[2]))))
    if not labels:
        raise DatasetError(f"{path}: no labels; expected 'name:r,g,b::' lines")
    return labels


def _with_background(labels: list[LabelClass]) -> tuple[list[LabelClass], bool]:
    """The labels with CVAT's background named ``background``, and whether black is an implicit background."""
    if any(is_background(label.name) for label in labels):
        return labels, False
    black = [k for k, label in enumerate(labels) if label.color == BLACK]
    if black:
        labels = list(labels)
        labels[black[0]] = LabelClass("background", BLACK)
        return labels, False
    return labels, True


def _subsets(src: Path, masks: Path) -> list[tuple[str | None, str]]:
    """``(split, name)`` of every listed image, or of every mask when there are no lists."""
    lists = sorted((src / "ImageSets" / "Segmentation").glob("*.txt"))
    if not lists:
        return [(None, p.relative_to(masks).with_suffix("").as_posix()) for p in sorted(masks.rglob("*.png"))]
    listed = []
    for path in lists:
        names = [line.split()[0] for line in read_text(path, "subset list").splitlines() if line.strip()]
        listed += [(path.stem, name) for name in names]
    names = {name for _, name in listed}
    unlisted = [p for p in sorted(masks.rglob("*.png")) if p.relative_to(masks).with_suffix("").as_posix() not in names]
    if unlisted:
        raise DatasetError(f"{unlisted[0]}: mask not listed in any of {', '.join(p.name for p in lists)}")
    return listed


def read_cvat_mask(src: str | Path, *, images: str | Path | None = None) -> Source:
    """Read an unpacked CVAT "Segmentation mask 1.1" export folder ``src``.

    ``images``: the folder of the images (default ``src/JPEGImages``)."""
    src = Path(src)
    masks = src / "SegmentationClass"
    if not masks.is_dir():
        raise DatasetError(f"{masks}: folder not found; expected CVAT's Segmentation mask 1.1 export (labelmap.txt, "
                           "ImageSets/Segmentation/, SegmentationClass/)")
    if (src / "labelmap.txt").is_file():
        labels, where = read_labelmap(src / "labelmap.txt"), str(src / "labelmap.txt")
    else:
        voc = get_label_set("voc")
        labels, where = [LabelClass(n, c) for n, c in zip(voc.classes, voc.colors, strict=True)], "Pascal VOC labels"
    labels, implicit_black = _with_background(labels)
    classes, indices = class_table(labels, where)
    pairs: list[tuple[Color, int]] = [(label.color, i) for label, i in zip(labels, indices, strict=True) if label.color]
    if implicit_black:
        classes[0] = LabelClass("background", BLACK)
        pairs.append((BLACK, 0))
    lookup = color_lookup(pairs, where)
    line_index = np.asarray(indices, dtype=np.uint8)
    images_dir = Path(images) if images is not None else src / "JPEGImages"
    listed = _subsets(src, masks)
    for _, name in listed:
        if not (masks / f"{name}.png").is_file():
            raise DatasetError(f"{masks / name}.png: listed image has no mask in {masks}")
    found = [(split, name, find_image(images_dir, name, f"{masks / name}.png")) for split, name in listed]

    def read_mask(path: Path) -> np.ndarray:
        with open_image_file(path, "label") as img:
            mode = img.mode
            values = np.asarray(img) if mode in ("L", "1") else None
        if values is None:
            return colors_to_indices(read_rgb(path), lookup, path, where)
        values = values.astype(np.uint8)
        if values.max(initial=0) >= len(labels):
            raise DatasetError(f"{path}: 1-channel mask has value {values.max()}; the labelmap has {len(labels)} lines "
                               "(1-channel values are labelmap line indices)")
        return line_index[values]

    def samples() -> Iterator[Sample]:
        for split, name, image in found:
            label = read_mask(masks / f"{name}.png")
            yield Sample(Path(name).name, image, label, present_classes(label), split)

    return Source(classes, samples())
