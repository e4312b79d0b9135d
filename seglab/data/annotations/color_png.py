"""Colour-coded label images with a given palette -> label maps.

``src/images/`` holds the images and ``src/labels/`` (or ``src/masks/``) the label PNGs of the same stems, each
pixel's colour a class colour. The palette is a file of ``name #rrggbb`` lines, line k being index k (a line
named ``ignore`` gives the colour of ignored pixels, 255, and takes no index), or the name of a seglab label set
(``seglab.data.palettes.list_label_sets()``), whose index order and colours are used and whose void colour
(224, 224, 192) is 255. A palette PNG is read through its palette (as colours) and an RGBA one without its
alpha. A colour that is not in the palette is an error naming the file, the colour and a pixel where it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from seglab.data.annotations.common import (
    IGNORE,
    MAX_CLASSES,
    Color,
    LabelClass,
    Sample,
    Source,
    hex_color,
    image_suffixes,
    read_classes_file,
)
from seglab.data.io import open_image_file
from seglab.data.palettes import VOID_COLOR, get_label_set, list_label_sets
from seglab.errors import ConfigError, DatasetError


def pack(color: Color) -> int:
    return (color[0] << 16) | (color[1] << 8) | color[2]


def color_lookup(colors: list[tuple[Color, int]], where: str) -> dict[int, int]:
    """``{packed colour: index}``; two indices sharing a colour is an error."""
    lookup: dict[int, int] = {}
    for color, index in colors:
        if lookup.get(pack(color), index) != index:
            raise DatasetError(f"{where}: colour {hex_color(color)} is given to two classes")
        lookup[pack(color)] = index
    return lookup


def read_palette(palette: str | Path) -> tuple[list[LabelClass], dict[int, int], str]:
    """The classes, the colour lookup and a description of ``palette`` (a file or a label set name)."""
    path = Path(palette)
    if path.is_file():
        entries = read_classes_file(path)
        classes = [e for e in entries if e.name != "ignore"]
        missing = [e.name for e in entries if e.color is None]
        if missing:
            raise DatasetError(f"{path}: classes {missing} have no colour; expected 'name #rrggbb' lines")
        if len(classes) > MAX_CLASSES:
            raise DatasetError(f"{path}: {len(classes)} classes; a label PNG holds at most {MAX_CLASSES}")
        pairs = [(c.color, i) for i, c in enumerate(classes)]
        pairs += [(e.color, IGNORE) for e in entries if e.name == "ignore"]
        return classes, color_lookup(pairs, str(path)), str(path)
    if str(palette) in list_label_sets():
        label_set = get_label_set(str(palette))
        classes = [LabelClass(name, color) for name, color in zip(label_set.classes, label_set.colors, strict=True)]
        pairs = [(color, i) for i, color in enumerate(label_set.colors)]
        if VOID_COLOR not in label_set.colors:
            pairs.append((VOID_COLOR, IGNORE))
        return classes, color_lookup(pairs, f"label set {palette!r}"), f"label set {palette!r}"
    raise ConfigError(f"palette {str(palette)!r}: no such file and no such label set; expected a file of "
                      f"'name #rrggbb' lines or one of {', '.join(list_label_sets())}")


def read_rgb(path: Path) -> np.ndarray:
    """A colour label image as HxWx3 uint8 (palette images through their palette, alpha dropped)."""
    img = open_image_file(path, "label")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        raise DatasetError(f"{path}: label image has mode {img.mode}; expected an 8-bit colour (RGB or palette) PNG")
    return np.asarray(img.convert("RGB"))


def colors_to_indices(rgb: np.ndarray, lookup: dict[int, int], path: Path, palette: str) -> np.ndarray:
    """HxWx3 colours as an HxW uint8 index map; a colour not in ``lookup`` is a DatasetError naming the file,
    the colour and the first pixel (row-major) that has it."""
    height, width = rgb.shape[:2]
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    colors, inverse = np.unique(packed.ravel(), return_inverse=True)
    values = np.empty(len(colors), dtype=np.uint8)
    for k, color in enumerate(colors.tolist()):
        if color not in lookup:
            y, x = divmod(int(np.flatnonzero(inverse == k)[0]), width)
            rgb_text = (color >> 16, (color >> 8) & 255, color & 255)
            raise DatasetError(f"{path}: colour #{color:06x} {rgb_text} at pixel x={x}, y={y} is not in the palette "
                               f"({palette})")
        values[k] = lookup[color]
    return values[inverse.reshape(-1)].reshape(height, width)


def files_by_stem(folder: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
    """The files under ``folder`` (sub-folders included) with one of ``suffixes``, by stem (unique)."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: {what} folder not found")
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in suffixes and path.is_file():
            if path.stem in found:
                raise DatasetError(f"{path}: two {what} files share the stem {path.stem!r} ({found[path.stem]})")
            found[path.stem] = path
    return found


def present_classes(label: np.ndarray) -> int:
    """The number of classes other than index 0 and ignore in a label map (the "objects" of a label image)."""
    values = np.unique(label)
    return int(np.count_nonzero((values != 0) & (values != IGNORE)))


def read_color_png(
    src: str | Path,
    *,
    palette: str | Path | None = None,
    images: str | Path | None = None,
    labels: str | Path | None = None,
) -> Source:
    """Read a folder ``src`` of images and colour-coded label PNGs.

    ``palette``: a file of ``name #rrggbb`` lines (line k = index k) or a label set name (required);
    ``images``/``labels``: the folders (default ``src/images`` and ``src/labels``, else ``src/masks``)."""
    if palette is None:
        raise ConfigError("color-png needs palette=FILE_OR_LABEL_SET (--palette): a file of 'name #rrggbb' lines "
                          f"or one of {', '.join(list_label_sets())}")
    src = Path(src)
    classes, lookup, described = read_palette(palette)
    images_dir = Path(images) if images is not None else src / "images"
    labels_dir = Path(labels) if labels is not None else next(
        (d for d in (src / "labels", src / "masks") if d.is_dir()), src / "labels")
    image_files = files_by_stem(images_dir, image_suffixes(), "image")
    label_files = files_by_stem(labels_dir, (".png",), "label")
    for stem in sorted(set(image_files) ^ set(label_files)):
        if stem in image_files:
            raise DatasetError(f"{image_files[stem]}: image without a label {labels_dir / stem}.png")
        raise DatasetError(f"{label_files[stem]}: label without an image {images_dir / stem}.*")
    if not label_files:
        raise DatasetError(f"{labels_dir}: no label PNGs")

    def samples() -> Iterator[Sample]:
        for stem in sorted(label_files):
            label = colors_to_indices(read_rgb(label_files[stem]), lookup, label_files[stem], described)
            yield Sample(stem, image_files[stem], label, present_classes(label))

    return Source(classes, samples())
