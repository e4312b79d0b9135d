"""How the engine calls a model: the device it lives on and its logits.

The inference, evaluation, fast-path and Monte Carlo dropout modules all run models through these two
functions; they live here, below all of them, so that none of those modules imports another for them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def logits_of(out: torch.Tensor | dict) -> torch.Tensor:
    """The logits of a semantic model's output: the tensor itself, or a train-mode dict's ``"out"``."""
    if isinstance(out, dict):
        if "out" not in out:
            raise ValueError(f"model returned a dict without 'out' (keys: {sorted(out)})")
        out = out["out"]
    return out


def forward_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``model(images)`` as float logits ``[B, K, H, W]`` at the input's size (dict outputs: ``"out"``)."""
    out = logits_of(model(images))
    if not isinstance(out, torch.Tensor) or out.ndim != 4:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model output must be logits [B, K, H, W], got {got}")
    out = out.float()
    if out.shape[-2:] != images.shape[-2:]:
        out = F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return out


def flip_permutation(flip_pairs: Sequence[tuple[int, int]], num_classes: int) -> list[int]:
    """The channel order that swaps each ``(a, b)`` of ``flip_pairs`` (left/right classes) in a flipped output."""
    perm = list(range(num_classes))
    for pair in flip_pairs:
        a, b = (int(v) for v in pair)
        if not (0 <= a < num_classes and 0 <= b < num_classes):
            raise ValueError(f"flip_pairs: ({a}, {b}) is outside the model's {num_classes} classes")
        perm[a], perm[b] = b, a
    return perm


__all__ = ["flip_permutation", "forward_logits", "logits_of", "model_device"]
