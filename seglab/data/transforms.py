"""Joint image/label transforms on torchvision.transforms.v2 and tv_tensors.

The image travels as a ``tv_tensors.Image`` (uint8 [3,H,W]) and the label as a ``tv_tensors.Mask``
(uint8 [H,W]), and every geometric step receives both, so they cannot drift apart: the image is
resized bilinearly, the mask with nearest neighbour; padding fills the mask with 255 (ignore); the
horizontal flip also swaps left/right labels (LIP's arms, legs, shoes). Photometric jitter touches the
image only. Normalisation with ImageNet mean/std happens once, in :func:`normalize_image`, which the
engine's Predictor also uses.

Randomness comes from torch's global generator, so ``torch.manual_seed`` (and the DataLoader's
per-worker seeding) makes a pipeline repeat.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from seglab.config import DataConfig
from seglab.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255

_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)

Pair = tuple[torch.Tensor, torch.Tensor]


def image_tensor(image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """A uint8 [3,H,W] tensor from a PIL image, an HxWx3 uint8 array or a uint8 [3,H,W] tensor."""
    if isinstance(image, Image.Image):
        image = np.array(image.convert("RGB") if image.mode != "RGB" else image)  # a writable copy
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 array, got shape {image.shape} dtype {image.dtype}")
        if not (image.flags.writeable and image.flags.c_contiguous):
            image = np.array(image, order="C")
        return torch.from_numpy(image).permute(2, 0, 1)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 tensor [3,H,W], got shape {tuple(image.shape)} dtype {image.dtype}")
        return image.as_subclass(torch.Tensor)
    raise TypeError(f"expected a PIL image, numpy array or tensor, got {type(image).__name__}")


def normalize_image(image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Float32 [3,H,W]: RGB scaled to 0-1, minus the ImageNet mean, divided by the ImageNet std."""
    x = image_tensor(image).to(torch.float32).div_(255.0)
    return x.sub_(_MEAN).div_(_STD)


class RandomScale:
    """Resize image (bilinear) and mask (nearest) by a factor drawn uniformly from ``scale_range``.

    With ``base_size > 0`` the longer side is first set to ``base_size``, then the factor applies.
    """

    def __init__(self, scale_range: Sequence[float], base_size: int = 0) -> None:
        lo, hi = (float(s) for s in scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range = (lo, hi)
        self.base_size = int(base_size)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        h, w = image.shape[-2:]
        lo, hi = self.scale_range
        factor = lo + (hi - lo) * float(torch.rand(()))
        if self.base_size > 0:
            factor *= self.base_size / max(h, w)
        size = [max(1, round(h * factor)), max(1, round(w * factor))]
        if size == [h, w]:
            return image, mask
        image = F.resize(image, size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
        mask = F.resize(mask, size, interpolation=v2.InterpolationMode.NEAREST)
        return image, mask


class PadToSize:
    """Pad bottom and right up to ``size`` ([H, W]): the image with ``fill_image``, the mask with ``fill_mask``."""

    def __init__(self, size: Sequence[int], fill_image: int = 0, fill_mask: int = IGNORE_INDEX) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.fill_image = fill_image
        self.fill_mask = fill_mask

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        h, w = image.shape[-2:]
        pad_h, pad_w = max(self.size[0] - h, 0), max(self.size[1] - w, 0)
        if pad_h == 0 and pad_w == 0:
            return image, mask
        padding = [0, 0, pad_w, pad_h]  # left, top, right, bottom
        return F.pad(image, padding, fill=self.fill_image), F.pad(mask, padding, fill=self.fill_mask)


class HorizontalFlipWithSwap:
    """With probability ``p``, mirror image and mask and swap the label values of each pair (255 untouched)."""

    def __init__(self, pairs: Sequence[Sequence[int]] = (), p: float = 0.5) -> None:
        self.p = p
        self.pairs = tuple((int(a), int(b)) for a, b in pairs)
        lut = torch.arange(256, dtype=torch.uint8)
        for a, b in self.pairs:
            if not (0 <= a < 255 and 0 <= b < 255):
                raise ValueError(f"flip pair ({a}, {b}) must hold labels in 0..254")
            lut[a], lut[b] = b, a
        self.lut = lut if self.pairs else None

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        if float(torch.rand(())) >= self.p:
            return image, mask
        image, mask = F.horizontal_flip(image), F.horizontal_flip(mask)
        if self.lut is not None:
            mask = tv_tensors.wrap(self.lut[mask.as_subclass(torch.Tensor).long()], like=mask)
        return image, mask


class ImageOnly:
    """Apply a v2 transform (e.g. ColorJitter) to the image and pass the mask through."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.transform = transform

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        return self.transform(image), mask


class SegmentationTransform:
    """``(PIL image, label array) -> (float [3,H,W] normalised, int64 [H,W])`` through ``steps``.

    Each step is a callable ``(Image, Mask) -> (Image, Mask)`` on tv_tensors.
    """

    def __init__(self, steps: Sequence[Callable[[torch.Tensor, torch.Tensor], Pair]] = ()) -> None:
        self.steps = list(steps)

    def __call__(self, image: Image.Image | np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor) -> Pair:
        img = tv_tensors.Image(image_tensor(image))
        mask_data = torch.from_numpy(np.asarray(label, dtype=np.uint8)) if isinstance(label, np.ndarray) else label
        mask = tv_tensors.Mask(mask_data.to(torch.uint8))
        if img.shape[-2:] != mask.shape[-2:]:
            raise ValueError(f"image size {tuple(img.shape[-2:])} differs from label size {tuple(mask.shape[-2:])}")
        for step in self.steps:
            img, mask = step(img, mask)
        return normalize_image(img.as_subclass(torch.Tensor)), mask.as_subclass(torch.Tensor).to(torch.int64)

    def __repr__(self) -> str:
        inner = ", ".join(type(s).__name__ if not isinstance(s, v2.Transform) else repr(s) for s in self.steps)
        return f"{type(self).__name__}([{inner}])"


def _check_pair(value: Sequence, key: str, kind: type) -> tuple:
    if len(value) != 2 or not all(isinstance(v, (int, float)) for v in value):
        raise ConfigError(f"data.{key}: expected two numbers, got {value!r}")
    return tuple(kind(v) for v in value)


def build_transforms(cfg: DataConfig, train: bool) -> SegmentationTransform:
    """The training pipeline (scale, pad + crop, flip with swap, jitter, normalise) or the eval one
    (normalise only: no resize, so metrics are computed on the original labels)."""
    if not train:
        return SegmentationTransform()
    crop = _check_pair(cfg.crop_size, "crop_size", int)
    scale_range = _check_pair(cfg.scale_range, "scale_range", float)
    if not 0 < scale_range[0] <= scale_range[1]:
        raise ConfigError(f"data.scale_range: expected 0 < low <= high, got {cfg.scale_range}")
    if min(crop) <= 0:
        raise ConfigError(f"data.crop_size: expected positive [H, W], got {cfg.crop_size}")
    for pair in cfg.label_swap:
        if len(pair) != 2:
            raise ConfigError(f"data.label_swap: each entry must be a pair [a, b], got {pair!r}")
    steps: list[Callable[[torch.Tensor, torch.Tensor], Pair]] = [
        RandomScale(scale_range, cfg.base_size),
        PadToSize(crop, fill_image=0, fill_mask=IGNORE_INDEX),
        v2.RandomCrop(crop),
    ]
    if cfg.hflip:
        steps.append(HorizontalFlipWithSwap(cfg.label_swap, p=0.5))
    if cfg.color_jitter > 0:
        c = cfg.color_jitter
        steps.append(ImageOnly(v2.ColorJitter(brightness=c, contrast=c, saturation=c)))
    return SegmentationTransform(steps)


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "HorizontalFlipWithSwap",
    "ImageOnly",
    "PadToSize",
    "RandomScale",
    "SegmentationTransform",
    "build_transforms",
    "image_tensor",
    "normalize_image",
]
