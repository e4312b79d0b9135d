"""Saving and loading weights without running code from the file.

Weights are written as safetensors with seglab metadata (model name, classes, factory options), so
``seglab predict --weights W`` can rebuild the model from the file alone. A ``.pth``/``.pt`` file is
read only with ``torch.load(weights_only=True)``: plain unpickling would run whatever code the file
holds. Training state (optimiser, scheduler, RNG) is a ``.pt`` of tensors and plain containers, also
read with ``weights_only=True``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from seglab.errors import CheckpointError
from seglab.utils import atomic_write, decode_json_values


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None) -> Path:
    """Write ``state_dict`` to a safetensors file atomically; ``metadata`` values are JSON-encoded."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The seglab metadata stored in a safetensors file (empty for other formats)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    return decode_json_values(raw)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or, safely, from ``.pth``/``.pt``/``.bin``.

    A pickle that needs anything beyond tensors and plain containers is refused with CheckpointError.
    Checkpoints that wrap the weights (``{"state_dict": ...}`` or ``{"model": ...}``) are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    return _unwrap(_torch_load(path, "weights"), str(path))


def _unwrap(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """``obj`` without a ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper, checked to map names to tensors."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{source}: expected a mapping of parameter names to tensors")
    return obj


def read_state_dict(
    src: dict[str, torch.Tensor] | str | Path, what: str
) -> tuple[dict[str, torch.Tensor], str]:
    """Another library's state dict, given in memory or as a file (:func:`load_state_dict`), unwrapped and
    without DataParallel's ``module.`` prefix; returns it and the name error messages use (the path, or
    ``"<what> state dict"``). What the converters read their input with."""
    if isinstance(src, dict):
        source = f"{what} state dict"
        state_dict = _unwrap(src, source)
    else:
        state_dict, source = load_state_dict(src), str(src)
    return {k.removeprefix("module."): v for k, v in state_dict.items()}, source


def state_dict_problems(
    own: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], *, strict: bool = True
) -> list[str]:
    """What keeps ``given`` from loading where ``own`` is expected: one line each for shape mismatches and (if
    ``strict``) missing and unexpected keys, at most 20 keys per line; empty when it loads."""
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in given.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = [k for k in own if k not in given] if strict else []
    unexpected = [k for k in given if k not in own] if strict else []
    problems = []
    for label, items in (("shape mismatch", mismatched), ("missing keys", missing), ("unexpected keys", unexpected)):
        if items:
            more = f" ... ({len(items)} in all)" if len(items) > 20 else ""
            problems.append(f"{label}: " + ", ".join(items[:20]) + more)
    return problems


def foreign_key_problems(
    model: nn.Module, given: Mapping[str, torch.Tensor], to_foreign: Callable[[str], str]
) -> list[str]:
    """:func:`state_dict_problems` of another library's state dict ``given`` against ``model``, in that library's
    key names (``to_foreign`` maps a seglab key to one); BatchNorm's ``num_batches_tracked`` counters, which some
    libraries do not save, are left out on both sides. What the converters check their input with."""
    counter = ".num_batches_tracked"
    own = {to_foreign(k): v for k, v in model.state_dict().items() if not k.endswith(counter)}
    return state_dict_problems(own, {k: v for k, v in given.items() if not k.endswith(counter)})


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, strict: bool = True) -> None:
    """Load ``state_dict`` into ``model``; mismatched shapes and missing/unexpected keys are listed."""
    problems = state_dict_problems(model.state_dict(), state_dict, strict=strict)
    if problems:
        raise CheckpointError(f"{source}: weights do not match the model ({' | '.join(problems)})")
    model.load_state_dict(state_dict, strict=strict)


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> dict[str, Any]:
    """Load a weights file into ``model``; returns the file's seglab metadata."""
    load_into(model, load_state_dict(path), str(path), strict=strict)
    return read_metadata(path)


def save_training_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write optimiser/scheduler/RNG state (tensors and plain containers only) atomically."""
    return atomic_write(path, lambda p: torch.save(state, str(p)))


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a state written by :func:`save_training_state`, with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: training state not found (nothing to resume)")
    state = _torch_load(path, "training state")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a training state mapping, got {type(state).__name__}")
    return state


_TORCH_ADVICE = ("Weights only load failed", "Check the documentation", "Please file an issue")


def _torch_load(path: Path, what: str) -> Any:
    """``torch.load(weights_only=True)``; any failure (unsafe pickle, truncated or foreign file) -> CheckpointError.

    torch's own message advises retrying with ``weights_only=False``, which is exactly what must not
    be done with an untrusted file, so only its reason (e.g. the blocked global) is kept.
    """
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types (UnpicklingError, RuntimeError, OSError, ...)
        lines = [line.strip() for line in str(exc).splitlines()]
        reason = " ".join(line for line in lines if line and not line.startswith(_TORCH_ADVICE))
        raise CheckpointError(
            f"{path}: refused to load {what}: not a plain tensor checkpoint, or damaged (read with "
            f"torch.load(weights_only=True), which never runs code from the file): "
            f"{type(exc).__name__}: {reason or 'no details'}"
        ) from None


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files that atomic writes of a killed process left in ``folder``.

    A SIGKILL during :func:`seglab.utils.atomic_write` leaves its temporary file behind (the target
    file is intact). Call this only where no other process is writing, e.g. when resuming a run.
    Returns the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.glob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return sorted(removed)
