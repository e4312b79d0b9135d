"""SCHP's test-time procedure: a person-centric affine warp to the network's input size and back.

SCHP (Li et al., TPAMI 2020) scores its models this way (its ``evaluate.py``, ``datasets.py`` and
``utils/transforms.py``), and its published mIoU on LIP, ATR and Pascal-Person-Part is measured so:

1. **Centre and scale** (:func:`box_center_scale`): the person box ``(x, y, w, h)``, for a whole image
   ``(0, 0, W - 1, H - 1)``, gives the centre ``(x + w / 2, y + h / 2)``; the shorter side of the box is
   lengthened until ``w / h`` equals the input's aspect ratio, so the warp keeps the picture's aspect.
2. **Warp in** (:func:`affine_matrix`, :func:`warp_bilinear`): a scale-and-shift mapping the box's centre to
   the input's centre pixel ``((in_w - 1) / 2, (in_h - 1) / 2)`` and its width onto ``in_w - 1`` pixels, bilinear,
   black outside the image (OpenCV's ``warpAffine``, ``INTER_LINEAR``, constant border 0, as SCHP).
3. **Logits**: for each scale ``s`` the warped input is resized by ``s`` (bilinear, ``align_corners=True``,
   ``floor(in * s)`` pixels) and run; with ``flip`` the mirrored input is run too and its logits mirrored
   back with the left/right classes swapped; flip and original are averaged; each scale's logits are resized
   to the input size (bilinear, ``align_corners=True``) and the scales averaged. Logits, not probabilities.
4. **Warp back** (:func:`warp_nearest`): the labels of the averaged logits go back to the image by the inverse
   warp, nearest neighbour (``INTER_NEAREST``: the source pixel ``floor(x + 0.5)``), label 0 outside.

SCHP resizes its network's 1/4-resolution output straight to the input size. SCHP's CE2P here does the same
(its forward takes ``output_size``); another model's output, at its scaled input's size, is resized to the
input size. Flip is merged after that resize rather than before, which is the same (a mirror commutes with
an ``align_corners=True`` resize).

The warps are written here with index arithmetic in float64 (no OpenCV at run time); the tests
compare them with OpenCV's ``warpAffine`` and SCHP's three-point ``get_affine_transform``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seglab.engine.forward import flip_permutation, forward_logits, logits_of

__all__ = ["affine_logits", "affine_probs", "affine_matrix", "box_center_scale", "warp_bilinear", "warp_nearest"]


def box_center_scale(box: Sequence[float], aspect_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """SCHP's ``_box2cs``: the centre ``(cx, cy)`` and scale ``(w, h)`` of the box ``(x, y, w, h)``, the shorter
    side lengthened so that ``w / h == aspect_ratio`` (the input's width / height)."""
    x, y, w, h = (float(v) for v in box)
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float64)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    return center, np.array([w, h], dtype=np.float64)


def affine_matrix(center: Sequence[float], scale: Sequence[float], output_size: tuple[int, int],
                  inverse: bool = False) -> np.ndarray:
    """SCHP's ``get_affine_transform`` without rotation: the 2x3 matrix taking image pixels to the
    ``output_size`` (H, W) input's pixels (``inverse``: input pixels to image pixels).

    The box's centre goes to ``((W - 1) / 2, (H - 1) / 2)`` and its width ``scale[0]`` to ``W - 1`` pixels; one
    factor for both axes, so the aspect is kept.
    """
    out_h, out_w = output_size
    k = (out_w - 1) / float(scale[0])
    cx, cy = float(center[0]), float(center[1])
    ox, oy = (out_w - 1) * 0.5, (out_h - 1) * 0.5
    if inverse:
        return np.array([[1 / k, 0.0, cx - ox / k], [0.0, 1 / k, cy - oy / k]], dtype=np.float64)
    return np.array([[k, 0.0, ox - k * cx], [0.0, k, oy - k * cy]], dtype=np.float64)


def _source_coordinates(matrix: np.ndarray, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """For each pixel of an output of ``size`` (H, W), its position ``(x, y)`` in the source, as
    ``warpAffine(src, matrix)`` samples it: the inverse of ``matrix`` applied to the pixel. [H, W, 2] float64."""
    m = np.vstack([matrix, [0.0, 0.0, 1.0]])
    inv = torch.as_tensor(np.linalg.inv(m)[:2], dtype=torch.float64, device=device)
    ys, xs = torch.meshgrid(torch.arange(size[0], dtype=torch.float64, device=device),
                            torch.arange(size[1], dtype=torch.float64, device=device), indexing="ij")
    return torch.stack([inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2], inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]], -1)


def warp_bilinear(images: torch.Tensor, matrix: np.ndarray, size: tuple[int, int],
                  border: torch.Tensor | float = 0.0) -> torch.Tensor:
    """``warpAffine(images, matrix, size, INTER_LINEAR, BORDER_CONSTANT)`` for ``images`` [B, C, h, w]: the
    output [B, C, H, W] interpolates each pixel bilinearly at its inverse-mapped position, neighbours outside
    the source taking ``border`` (a scalar or one value per channel). The position is snapped to 1/1024 pixel
    (OpenCV's fixed-point unit) and the sums run in float64; rounded, the result is within one grey level of
    OpenCV's 8-bit warp, and equal to it for almost every pixel of a smooth picture."""
    b, c, h, w = images.shape
    src = torch.floor(_source_coordinates(matrix, size, images.device) * 1024 + 0.5) / 1024
    x0, y0 = torch.floor(src[..., 0]), torch.floor(src[..., 1])
    fx, fy = src[..., 0] - x0, src[..., 1] - y0
    x0, y0 = x0.long(), y0.long()
    border = torch.as_tensor(border, dtype=torch.float64, device=images.device).reshape(1, -1, 1, 1)
    flat = (images.to(torch.float64) - border).flatten(2)
    out = torch.zeros(b, c, *size, dtype=torch.float64, device=images.device)
    for dy, dx, weight in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).flatten()
        out += flat[:, :, index].reshape(b, c, *size) * (weight * inside)
    return (out + border).to(images.dtype)


def warp_nearest(values: torch.Tensor, matrix: np.ndarray, size: tuple[int, int], fill: torch.Tensor | float = 0
                 ) -> torch.Tensor:
    """``warpAffine(values, matrix, size, INTER_NEAREST, BORDER_CONSTANT)`` for ``values`` [B, C, h, w]: each
    output pixel takes the source pixel ``floor(x + 0.5), floor(y + 0.5)`` at its inverse-mapped position, or
    ``fill`` (a scalar or one value per channel) where that pixel is outside the source."""
    b, c, h, w = values.shape
    src = _source_coordinates(matrix, size, values.device)
    xi, yi = torch.floor(src[..., 0] + 0.5).long(), torch.floor(src[..., 1] + 0.5).long()
    inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).flatten()
    out = values.flatten(2)[:, :, index].reshape(b, c, *size)
    fill = torch.as_tensor(fill, dtype=values.dtype, device=values.device).reshape(1, -1, 1, 1)
    return torch.where(inside, out, fill)


def _logits(model: nn.Module, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """The model's logits for ``x`` at ``size``: models whose forward takes ``output_size`` (SCHP's CE2P) resize
    their own low-resolution logits to it; other models' logits (at ``x``'s size) are resized bilinearly with
    ``align_corners=True``."""
    if getattr(model, "takes_output_size", False):
        return logits_of(model(x, output_size=tuple(size))).float()
    logits = forward_logits(model, x)
    if logits.shape[-2:] != size:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
    return logits


def affine_logits(model: nn.Module, warped: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False,
                  flip_pairs: Sequence[tuple[int, int]] = ()) -> torch.Tensor:
    """Step 3 on inputs already warped to the input size [B, 3, H, W]: logits averaged over flip and scales,
    at the input size (float32)."""
    size = warped.shape[-2:]
    total: torch.Tensor | None = None
    for scale in scales:
        scaled_size = (math.floor(size[0] * scale), math.floor(size[1] * scale))
        x = warped if scaled_size == tuple(size) else F.interpolate(warped, size=scaled_size, mode="bilinear",
                                                                    align_corners=True)
        logits = _logits(model, x, size)
        if flip:
            mirrored = _logits(model, x.flip(-1), size).flip(-1)
            logits = (logits + mirrored[:, flip_permutation(flip_pairs, mirrored.shape[1])]) * 0.5
        total = logits if total is None else total + logits
    assert total is not None
    return total / len(scales)


def affine_probs(model: nn.Module, images: torch.Tensor, input_size: tuple[int, int], scales: Sequence[float] = (1.0,),
                 flip: bool = False, flip_pairs: Sequence[tuple[int, int]] = (),
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> torch.Tensor:
    """SCHP's procedure on normalised ``images`` [B, 3, H, W] (one size): probabilities [B, K, H, W].

    The whole image is the person box. The picture is warped in 0-255 (black around it) and rounded to integers,
    as OpenCV warps SCHP's 8-bit image, then normalised again with ``mean``/``std`` (default ImageNet's, the
    normalisation ``images`` went through). The softmax of the averaged logits is warped back by nearest
    neighbour, so its argmax is SCHP's label map; pixels the warp leaves outside are background (class 0,
    probability 1).
    """
    from seglab.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    h, w = images.shape[-2:]
    in_h, in_w = input_size
    center, scale = box_center_scale((0, 0, w - 1, h - 1), in_w / in_h)
    mean_t = torch.tensor(IMAGENET_MEAN if mean is None else mean, dtype=torch.float64, device=images.device)
    std_t = torch.tensor(IMAGENET_STD if std is None else std, dtype=torch.float64, device=images.device)
    mean_t, std_t = mean_t.view(1, 3, 1, 1) * 255, std_t.view(1, 3, 1, 1) * 255
    pixels = torch.round(images.double() * std_t + mean_t)  # back to 0-255: SCHP warps its 8-bit image
    warped = warp_bilinear(pixels, affine_matrix(center, scale, (in_h, in_w)), (in_h, in_w))
    warped = ((torch.round(warped).clamp(0, 255) - mean_t) / std_t).to(images.dtype)
    probs = affine_logits(model, warped, scales, flip, flip_pairs).softmax(dim=1)
    background = torch.zeros(probs.shape[1], dtype=probs.dtype, device=probs.device)
    background[0] = 1.0
    return warp_nearest(probs, affine_matrix(center, scale, (in_h, in_w), inverse=True), (h, w), fill=background)
