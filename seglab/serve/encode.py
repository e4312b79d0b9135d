"""What the server reads and writes: uploaded images checked before they are decoded, and label maps encoded as
index PNGs, overlays, COCO run-length encodings and polygons.

Torch-free (NumPy, Pillow, pycocotools; OpenCV for polygons), so an ONNX model can be served without torch.
RLE is COCO's compressed run-length string (pycocotools' ``mask.encode``, column-major as COCO stores it), which
pycocotools, the COCO API of every language and the web page decode. Polygons are OpenCV's outer contours
(``cv2.findContours``, ``CHAIN_APPROX_SIMPLE``) as COCO's flat ``[x0, y0, x1, y1, ...]`` lists. PNGs are written
with zlib level 1: on a 512 x 512 label map that is several times faster than Pillow's default level 6 for a
file a few percent larger, and encoding is what a busy server spends its time on besides the model.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from seglab.visualize import colorize, overlay

PNG_COMPRESS_LEVEL = 1
OUTPUTS = ("png", "rle", "polygons", "overlay")


class InputError(ValueError):
    """A request the server refuses: ``status`` is the HTTP status code (4xx) it answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_image(data: bytes, *, max_pixels: int, what: str = "the request body") -> np.ndarray:
    """The uploaded image as ``H x W x 3`` uint8 RGB. Refused with an :class:`InputError`: empty bodies and
    non-images (400), images over ``max_pixels`` pixels judged from the header before any pixel is decoded, so a
    decompression bomb costs nothing (413), and truncated or corrupt files (400). A photo with an EXIF orientation
    is turned upright first, as browsers show it (``seglab predict`` reads files' pixels as stored)."""
    if not data:
        raise InputError(400, f"{what} is empty; send the bytes of a PNG, JPEG, BMP, TIFF or WebP image")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # Pillow's own limit, checked on the header too
        raise InputError(413, f"{what}: {exc}; the server's limit is {max_pixels} pixels") from None
    except UnidentifiedImageError:
        raise InputError(400, f"{what} ({len(data)} bytes) is not an image Pillow can read; send a PNG, JPEG, BMP, "
                              "TIFF or WebP image") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise InputError(400, f"{what}: the image header gives a size of {width}x{height}")
    if width * height > max_pixels:
        raise InputError(413, f"{what}: the image is {width}x{height} = {width * height} pixels, over the server's "
                              f"limit of {max_pixels} pixels")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's truncated/corrupt-file errors
        raise InputError(400, f"{what}: the {image.format} image ({width}x{height}) cannot be decoded: {exc} "
                              "(a truncated or corrupt file?)") from None
    image = ImageOps.exif_transpose(image)  # upright, as a browser or a photo viewer shows a phone's photo
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def png_bytes(picture: np.ndarray, palette: bytes | None = None) -> bytes:
    """An ``H x W`` (with ``palette``: a P-mode PNG) or ``H x W x 3`` uint8 array as PNG bytes."""
    image = Image.fromarray(np.ascontiguousarray(picture))
    if palette is not None:
        image.putpalette(palette)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def label_png(label: np.ndarray, palette: bytes) -> bytes:
    """Class indices ``H x W`` (0..255) as a palette PNG: pixel values are the indices, shown in the class colours."""
    label = np.asarray(label)
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label_png: indices must be in 0..255, got {label.min()}..{label.max()}")
    return png_bytes(label.astype(np.uint8, copy=False), palette)


def overlay_png(image: np.ndarray, label: np.ndarray, colors: Sequence[tuple[int, int, int]],
                alpha: float = 0.5) -> bytes:
    """The image blended with the coloured label map, as PNG bytes."""
    return png_bytes(overlay(image, label, colors, alpha))


def colored_png(label: np.ndarray, colors: Sequence[tuple[int, int, int]]) -> bytes:
    """The coloured label map as an RGB PNG."""
    return png_bytes(colorize(label, colors))


def b64(data: bytes) -> str:
    """Bytes as base64 text (PNGs inside JSON)."""
    return base64.b64encode(data).decode("ascii")


def rle(mask: np.ndarray) -> dict[str, Any]:
    """A binary ``H x W`` mask as COCO's compressed RLE ``{"size": [H, W], "counts": str}``."""
    from pycocotools import mask as mask_utils

    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8, copy=False)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def polygons(mask: np.ndarray, min_points: int = 3) -> list[list[float]]:
    """The outer contours of a binary mask as flat ``[x0, y0, x1, y1, ...]`` lists (pixel coordinates)."""
    try:
        import cv2
    except ImportError:
        raise ImportError("polygon outputs need OpenCV: pip install 'seglab[serve]' "
                          "(or pip install opencv-python-headless)") from None
    contours, _ = cv2.findContours(mask.astype(np.uint8, copy=False), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= min_points]


def mask_outputs(mask: np.ndarray, outputs: Sequence[str]) -> dict[str, Any]:
    """A binary mask's ``"rle"`` and/or ``"polygons"``, as ``outputs`` ask (a class's, an instance's, a person's)."""
    fields: dict[str, Any] = {}
    if "rle" in outputs:
        fields["rle"] = rle(mask)
    if "polygons" in outputs:
        fields["polygons"] = polygons(mask)
    return fields


def class_counts(label: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels per class index ``0..max(num_classes, max label)``."""
    return np.bincount(np.asarray(label, dtype=np.int64).ravel(), minlength=num_classes)


def class_segments(label: np.ndarray, classes: Sequence[str], outputs: Sequence[str]) -> list[dict[str, Any]]:
    """One entry per class present in ``label``: ``{"class_id", "name", "pixels"}`` with ``"rle"`` and/or
    ``"polygons"`` of its pixels when ``outputs`` asks for them."""
    counts = class_counts(label, len(classes))
    segments = []
    for class_id in np.flatnonzero(counts):
        entry: dict[str, Any] = {"class_id": int(class_id), "pixels": int(counts[class_id]),
                                 "name": classes[class_id] if class_id < len(classes) else str(class_id)}
        if "rle" in outputs or "polygons" in outputs:
            entry.update(mask_outputs(label == class_id, outputs))
        segments.append(entry)
    return segments


__all__ = [
    "OUTPUTS",
    "InputError",
    "b64",
    "class_counts",
    "class_segments",
    "colored_png",
    "decode_image",
    "label_png",
    "mask_outputs",
    "overlay_png",
    "png_bytes",
    "polygons",
    "rle",
]
