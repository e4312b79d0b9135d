"""Reading images and label maps from disk, and writing label maps as palette PNGs.

Every loader goes through these three functions so that the rules hold everywhere:

- images come back as 8-bit RGB whatever their mode (grayscale, RGBA, palette, 16-bit);
- label files are class-index maps. A palette (P) PNG such as VOC's or LIP's is read as its
  indices, never converted through its palette to colours; a colour (RGB) label is refused, because
  mapping colours back to classes is guesswork;
- a file that cannot be decoded (missing, empty, truncated) raises :class:`DatasetError` naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from seglab.data.palettes import LabelSet
from seglab.errors import DatasetError
from seglab.utils import atomic_write

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # 16/32-bit integer grayscale


def _open(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise DatasetError(f"{path}: {what} file not found")
    try:
        img = Image.open(path)
        img.load()  # decode now, so a truncated file fails here and not later in a worker
    except _DECODE_ERRORS as exc:
        raise DatasetError(f"{path}: cannot read {what}: {exc}") from None
    return img


def read_image(path: str | Path) -> Image.Image:
    """An image as an 8-bit RGB PIL image (L, RGBA, P and 16-bit images are converted)."""
    path = Path(path)
    img = _open(path, "image")
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_MODES:
        # 16-bit grayscale: keep the top 8 bits of the 0-65535 range
        values = np.asarray(img).astype(np.float64)
        gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    try:
        return img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot convert image mode {img.mode} to RGB: {exc}") from None


def read_label(path: str | Path) -> np.ndarray:
    """A label map as a uint8 HxW array of class indices (255 = ignore).

    Palette (P) and grayscale (L) PNGs are read as indices; 16-bit grayscale is accepted when every
    value fits in 0..255. Colour (RGB/RGBA) labels raise :class:`DatasetError`.
    """
    path = Path(path)
    img = _open(path, "label")
    if img.mode in ("P", "L", "1"):
        return np.array(img, dtype=np.uint8)
    if img.mode in _WIDE_MODES:
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise DatasetError(
                f"{path}: 16-bit label has values outside 0..255 (min {values.min()}, max {values.max()}); "
                "expected class indices 0..255 with 255 = ignore"
            )
        return values.astype(np.uint8)
    raise DatasetError(
        f"{path}: label image has mode {img.mode}; expected a palette (P) or grayscale (L) PNG of class "
        "indices (colour labels are not converted back to classes)"
    )


def write_label_png(path: str | Path, label: np.ndarray, label_set: LabelSet) -> Path:
    """Write ``label`` (HxW class indices 0..255) as a P-mode PNG with the label set's palette, atomically."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be HxW, got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label values must be in 0..255, got {label.min()}..{label.max()}")
    img = Image.fromarray(label.astype(np.uint8, copy=False))
    img.putpalette(label_set.palette_bytes())  # turns the L image into a P image
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


__all__ = ["read_image", "read_label", "write_label_png"]
