"""One rule set for numeric precision, in training and in inference.

``fp32`` runs everywhere. ``bf16`` is autocast to bfloat16: on CUDA where the GPU supports it, on the CPU
everywhere, natively where oneDNN has bf16 kernels (:func:`bf16_supported`). ``fp16`` is autocast to float16
and needs CUDA (training adds a GradScaler). The one difference between the two uses: inference asked for
bf16 on a device without native bf16 runs fp32 with a warning (bf16 there would only be slower), training
keeps bf16 (the user asked for its numerics, and emulated bf16 still trains).
"""

from __future__ import annotations

import logging

import torch

from seglab.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def bf16_supported() -> bool:
    """Whether this CPU runs bf16 convolutions and matrix products natively (oneDNN's check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _native_bf16(device: torch.device) -> bool:
    if device.type == "cpu":
        return bf16_supported()
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def resolve_precision(
    precision: str, device: str | torch.device = "cpu", *, training: bool = False, key: str = "precision"
) -> str:
    """``precision`` checked against ``device`` (see the module docstring); ``key`` names the option in errors.

    Raises :class:`~seglab.errors.ConfigError` (a ValueError) for an unknown name or fp16 off CUDA.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ConfigError(f"{key}: unknown value {precision!r}; precision must be one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        scaler = " + GradScaler" if training else ""
        raise ConfigError(f"{key}: fp16 needs a CUDA device (float16 autocast{scaler}), got {device.type}; "
                          f"precision must be one of fp32, bf16 there")
    if precision == "bf16" and not training and not _native_bf16(device):
        log.warning("precision='bf16': this %s does not support bf16; running in fp32", device.type.upper())
        return "fp32"
    return precision


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The autocast context of a resolved ``precision`` on ``device`` (disabled for fp32)."""
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES.get(precision, torch.bfloat16),
                          enabled=precision != "fp32")


__all__ = ["AUTOCAST_DTYPES", "PRECISIONS", "autocast", "bf16_supported", "resolve_precision"]
