"""Detection transforms: torchvision.transforms.v2 pipelines that keep boxes, masks and labels aligned.

A sample is ``(tv_tensors.Image, target)`` with ``boxes`` (``BoundingBoxes``) and ``masks`` (``Mask``);
every geometric step transforms all of them together. Training: horizontal flip, scale jitter,
optional colour jitter, then :class:`~torchvision.transforms.v2.SanitizeBoundingBoxes` drops boxes that
became empty together with their labels, masks, ``area`` and ``iscrowd``; evaluation only converts the
image to float 0-1. No resizing to a fixed size and no ImageNet normalisation here: torchvision's
detection models do both inside (``GeneralizedRCNNTransform``).

Scale jitter is :class:`RandomScaleCrop`, large-scale jitter (Ghiasi et al., "Simple Copy-Paste is a
Strong Data Augmentation Method for Instance Segmentation", CVPR 2021) relative to the image's own size:
resize by a factor from ``cfg.scale_range``, then crop (factor > 1) or pad (factor < 1) back to the
original size. A plain resize would be undone by the model's own resize to a fixed shorter side; the
crop/pad keeps the canvas, so objects really change scale relative to it. ``area`` keeps the
annotation's value (the evaluation reads it from the ground truth, not from the targets).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from seglab.config import DataConfig
from seglab.errors import ConfigError


class RandomScaleCrop(v2.Transform):
    """Resize by a factor drawn uniformly from ``scale_range``, then random-crop or pad (bottom/right,
    zeros) back to the input's size; boxes are clipped to the crop."""

    def __init__(self, scale_range: Sequence[float]) -> None:
        super().__init__()
        lo, hi = (float(s) for s in scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {list(scale_range)}")
        self.scale_range = (lo, hi)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        lo, hi = self.scale_range
        factor = lo + (hi - lo) * float(torch.rand(()))
        new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
        top = int(torch.randint(0, max(new_h - height, 0) + 1, ()))
        left = int(torch.randint(0, max(new_w - width, 0) + 1, ()))
        return {"size": [new_h, new_w], "top": top, "left": left, "height": height, "width": width}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = F.resize(inpt, params["size"], antialias=True)  # masks: nearest, boxes: scaled
        new_h, new_w = params["size"]
        h, w = min(new_h, params["height"]), min(new_w, params["width"])
        out = F.crop(out, params["top"], params["left"], h, w)
        if h < params["height"] or w < params["width"]:
            out = F.pad(out, [0, 0, params["width"] - w, params["height"] - h], fill=0)
        return out


def _sanitized_labels(inputs: Any) -> tuple[torch.Tensor, ...]:
    """The per-instance tensors of the target that SanitizeBoundingBoxes filters with the boxes."""
    target = inputs[1]
    return tuple(target[k] for k in ("labels", "area", "iscrowd") if k in target)


def build_instance_transforms(cfg: DataConfig, train: bool) -> v2.Compose:
    """The training or evaluation pipeline ``(image, target) -> (image, target)`` of ``cfg``."""
    if not train:
        return v2.Compose([v2.ToDtype(torch.float32, scale=True)])
    if len(cfg.scale_range) != 2:
        raise ConfigError(f"data.scale_range: expected [low, high], got {cfg.scale_range!r}")
    lo, hi = cfg.scale_range
    if not 0 < lo <= hi:
        raise ConfigError(f"data.scale_range: expected 0 < low <= high, got {cfg.scale_range!r}")
    if cfg.color_jitter < 0:
        raise ConfigError(f"data.color_jitter: expected a value >= 0, got {cfg.color_jitter!r}")
    steps: list[Any] = []
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    if (lo, hi) != (1.0, 1.0):
        steps.append(RandomScaleCrop((lo, hi)))
    if cfg.color_jitter > 0:
        c = cfg.color_jitter
        steps.append(v2.ColorJitter(brightness=c, contrast=c, saturation=c))
    steps += [v2.SanitizeBoundingBoxes(labels_getter=_sanitized_labels), v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(steps)


def collate_instances(
    batch: Sequence[tuple[tv_tensors.Image, dict[str, torch.Tensor]]],
) -> tuple[list[tv_tensors.Image], list[dict[str, torch.Tensor]]]:
    """``(images, targets)`` lists, the input of torchvision detection models (sizes may differ)."""
    return [b[0] for b in batch], [b[1] for b in batch]


__all__ = ["RandomScaleCrop", "build_instance_transforms", "collate_instances"]
