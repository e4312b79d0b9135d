"""Reading images and label maps from disk, and writing label maps as palette PNGs.

Every loader goes through these three functions so that the rules hold everywhere:

- images come back as 8-bit RGB whatever their mode (grayscale, RGBA, palette, 16-bit);
- label files are class-index maps. A palette (P) PNG such as VOC's or LIP's is read as its
  indices, never converted through its palette to colours; a colour (RGB) label is refused, because
  mapping colours back to classes is guesswork;
- errors raised here carry a ``kind`` attribute (``missing_file``, ``empty_file``, ``corrupt_image``,
  ``decompression_bomb``, ``label_mode``, ``label_out_of_range``) that ``seglab check-dataset`` counts by;
- a file that cannot be decoded (missing, empty, truncated, corrupt) raises :class:`DatasetError` naming it;
- an image of more than :data:`MAX_IMAGE_PIXELS` pixels is refused before it is decoded, as a possible
  decompression bomb (a small file that expands to gigabytes). The limit is seglab's, read at each call;
  PIL's own warning for images between its limit and twice it is silenced because seglab decides.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from seglab.data.palettes import LabelSet
from seglab.errors import DatasetError
from seglab.utils import atomic_write

# Largest image (width x height) read, as PIL's hard limit; set it lower or higher for your data.
MAX_IMAGE_PIXELS: int = 178_956_970

# What a malformed file makes PIL raise (OSError covers UnidentifiedImageError and truncation).
_DECODE_ERRORS = (
    OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, struct.error, zlib.error,
    Image.DecompressionBombError,
)
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # 16/32-bit integer grayscale


def _error(kind: str, message: str) -> DatasetError:
    """A :class:`DatasetError` tagged with the problem ``kind`` (see :data:`PROBLEM_KINDS`), for check-dataset."""
    err = DatasetError(message)
    err.kind = kind
    return err


def open_image_file(path: str | Path, what: str = "image") -> Image.Image:
    """Open and fully decode an image file in its own mode, or raise a :class:`DatasetError` with a ``kind``.

    ``what`` ("image" or "label") only words the message. Checks, in order: the file exists, is not empty,
    has at most :data:`MAX_IMAGE_PIXELS` pixels (read from the header, before decoding), and decodes.
    """
    path = Path(path)
    if not path.is_file():
        raise _error("missing_file", f"{path}: {what} file not found")
    if path.stat().st_size == 0:
        raise _error("empty_file", f"{path}: {what} file is empty (0 bytes); expected an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        width, height = img.size
        if width * height > MAX_IMAGE_PIXELS:
            img.close()
            raise _error(
                "decompression_bomb",
                f"{path}: {what} is {width}x{height} = {width * height} pixels, more than "
                f"seglab.data.io.MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS}; refused as a possible decompression bomb "
                "(raise the limit if the file is trusted)",
            )
        img.load()  # decode now, so a truncated file fails here and not later in a worker
    except Image.DecompressionBombError as exc:
        raise _error(
            "decompression_bomb",
            f"{path}: {what} refused by PIL as a possible decompression bomb: {exc} (PIL.Image.MAX_IMAGE_PIXELS)",
        ) from None
    except _DECODE_ERRORS as exc:
        raise _error("corrupt_image", f"{path}: cannot read {what}: {type(exc).__name__}: {exc}") from None
    return img


def image_to_rgb(img: Image.Image, path: str | Path) -> Image.Image:
    """``img`` as 8-bit RGB: L, LA, RGBA, P, CMYK and 16-bit images are converted (16-bit keeps the top 8 bits)."""
    if img.mode == "RGB":
        return img
    try:
        if img.mode in _WIDE_MODES:
            values = np.asarray(img).astype(np.float64)
            gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
            return Image.fromarray(gray).convert("RGB")
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        return img.convert("RGB")
    except _DECODE_ERRORS as exc:
        raise _error("corrupt_image", f"{path}: cannot convert image mode {img.mode} to RGB: {exc}") from None


def label_to_array(img: Image.Image, path: str | Path) -> np.ndarray:
    """A decoded label image as a uint8 HxW index array; colour labels and 16-bit values > 255 are refused."""
    if img.mode in ("P", "L", "1"):
        return np.array(img, dtype=np.uint8)
    if img.mode in _WIDE_MODES:
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise _error(
                "label_out_of_range",
                f"{path}: 16-bit label has values outside 0..255 (min {values.min()}, max {values.max()}); "
                "expected class indices 0..255 with 255 = ignore",
            )
        return values.astype(np.uint8)
    raise _error(
        "label_mode",
        f"{path}: label image has mode {img.mode}; expected a palette (P) or grayscale (L) PNG of class "
        "indices (colour labels are not converted back to classes)",
    )


def rgb_array(image: Any, who: str = "image") -> np.ndarray:
    """An image given in memory as an ``H x W x 3`` uint8 array: HxWx3 / HxWx4 (alpha dropped) / HxW (grey
    repeated) uint8 arrays or a PIL image of any mode. ``who`` names the caller in the ValueError of anything else
    (floats, other shapes, other types)."""
    if not isinstance(image, np.ndarray):
        if not isinstance(image, Image.Image):
            raise ValueError(f"{who}: cannot read an image of type {type(image).__name__}; expected an HxWx3 uint8 "
                             "array or a PIL image")
        # a writable copy: torch warns on the read-only array np.asarray(PIL image) gives
        return np.array(image.convert("RGB") if image.mode != "RGB" else image)
    if image.dtype != np.uint8:
        raise ValueError(f"{who}: a numpy image must be uint8 HxWx3, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{who}: a numpy image must be HxWx3 uint8, got shape {image.shape}")
    return np.ascontiguousarray(image)


def read_image(path: str | Path) -> Image.Image:
    """An image as an 8-bit RGB PIL image (L, RGBA, P and 16-bit images are converted)."""
    return image_to_rgb(open_image_file(path, "image"), path)


def read_label(path: str | Path) -> np.ndarray:
    """A label map as a uint8 HxW array of class indices (255 = ignore).

    Palette (P) and grayscale (L) PNGs are read as indices; 16-bit grayscale is accepted when every
    value fits in 0..255. Colour (RGB/RGBA) labels raise :class:`DatasetError`.
    """
    return label_to_array(open_image_file(path, "label"), path)


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


__all__ = [
    "MAX_IMAGE_PIXELS",
    "image_to_rgb",
    "label_to_array",
    "open_image_file",
    "read_image",
    "read_label",
    "write_label_png",
]
