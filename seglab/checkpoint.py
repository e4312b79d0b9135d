"""Saving and loading weights without running code from the file.

Weights are written as safetensors with seglab metadata (model name, classes, factory options), so
``seglab predict --weights W`` can rebuild the model from the file alone. A ``.pth``/``.pt`` file is
read only with ``torch.load(weights_only=True)``: plain unpickling would run whatever code the file
holds. Training state (optimiser, scheduler, RNG) is a ``.pt`` of tensors and plain containers, also
read with ``weights_only=True``.

Both carry a SHA-256 of their content (weights: the tensors and the metadata; training state: every value),
checked on load, because neither format notices damage by itself: safetensors reads flipped data bits as
other numbers, and ``torch.load`` accepts most bit flips in a ``.pt`` (measured: 4,206 of 6,053 single-bit
flips of a small state loaded without an error and with other values). A file written without the checksum
(by another library, or by seglab before it had one) loads unchecked; ``verify=False`` skips the check.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from seglab.errors import CheckpointError
from seglab.utils import atomic_write, decode_json_values

CHECKSUM_KEY = "sha256"


def content_sha256(obj: Any) -> str:
    """A SHA-256 of nested dicts, lists, tuples, tensors and plain values: dict keys sorted, tensors by dtype,
    shape and bytes, other values by type and ``repr`` (exact for floats). What weights files and training
    states carry as their checksum."""
    digest = hashlib.sha256()

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().to("cpu").contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            digest.update(f"D{len(value)}".encode())
            for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
                digest.update(f"K{type(key).__name__}:{key!r}".encode())
                visit(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(f"{type(value).__name__}{len(value)}".encode())
            for item in value:
                visit(item)
        else:
            digest.update(f"V{type(value).__name__}:{value!r}".encode())

    visit(obj)
    return digest.hexdigest()


def _weights_checksum(tensors: Mapping[str, torch.Tensor], raw_metadata: Mapping[str, str]) -> str:
    return content_sha256({"tensors": dict(tensors),
                           "metadata": {k: v for k, v in raw_metadata.items() if k != CHECKSUM_KEY}})


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None) -> Path:
    """Write ``state_dict`` to a safetensors file atomically; ``metadata`` values are JSON-encoded, and the
    metadata gets a SHA-256 of the tensors and the other metadata (checked by :func:`load_state_dict`)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items() if k != CHECKSUM_KEY}
    meta[CHECKSUM_KEY] = json.dumps(_weights_checksum(tensors, meta))
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The seglab metadata stored in a safetensors file (empty for other formats), without the checksum."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    return decode_json_values({k: v for k, v in raw.items() if k != CHECKSUM_KEY})


def read_checksum(path: str | Path) -> str | None:
    """The SHA-256 a seglab safetensors file stores of its content (None for a file written without one)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(CHECKSUM_KEY)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if raw is None:
        return None
    try:
        return str(json.loads(raw))
    except json.JSONDecodeError:
        return raw


def load_state_dict(path: str | Path, *, verify: bool = True) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or, safely, from ``.pth``/``.pt``/``.bin``.

    A pickle that needs anything beyond tensors and plain containers is refused with CheckpointError.
    Checkpoints that wrap the weights (``{"state_dict": ...}`` or ``{"model": ...}``) are unwrapped. A
    safetensors file with seglab's checksum is checked against it (``verify=False`` skips that: about 1.7 s
    per GB); a damaged file is a CheckpointError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:  # one open for tensors and metadata: a file replaced in between (a run saving) cannot mix two saves
            with safe_open(str(path), framework="pt") as fh:
                raw = fh.metadata() or {}
                tensors = {key: fh.get_tensor(key) for key in fh.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file, or damaged ({exc})") from None
        if verify:
            _check_stray_checksum(path, raw)
            if CHECKSUM_KEY in raw:
                try:
                    expected = json.loads(raw[CHECKSUM_KEY])
                except json.JSONDecodeError:
                    expected = raw[CHECKSUM_KEY]
                _check_sum(path, expected, _weights_checksum(tensors, raw))
        return tensors
    return _unwrap(_torch_load(path, "weights"), str(path))


def _check_stray_checksum(path: Path, mapping: Mapping[Any, Any]) -> None:
    """A key one character away from ``"sha256"`` is the checksum's key damaged (a flipped bit in its name would
    otherwise make the file look like one written without a checksum, and load unchecked)."""
    for key in mapping:
        if isinstance(key, str) and len(key) == len(CHECKSUM_KEY) and sum(
            a != b for a, b in zip(key, CHECKSUM_KEY, strict=True)
        ) == 1:
            raise CheckpointError(f"{path}: damaged: its checksum is stored under {key!r} instead of "
                                  f"{CHECKSUM_KEY!r}; restore the file from a good copy")


def _check_sum(path: Path, expected: Any, actual: str) -> None:
    if expected != actual:
        raise CheckpointError(
            f"{path}: damaged: its content does not match the SHA-256 stored in it (stored {str(expected)[:16]}..., "
            f"content {actual[:16]}...); restore the file from a good copy (or load with verify=False at your own "
            f"risk)"
        )


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


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in the file ``path`` (a model folder's config.json); a CheckpointError naming the file when
    it cannot be read, is not JSON or is not an object."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return config


def rename_prefix(key: str, modules: Mapping[str, str]) -> str:
    """``key`` with its longest module prefix found in ``modules`` replaced (unchanged when none is): how the
    converters map another library's state-dict keys onto seglab's module names."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        new = modules.get(".".join(parts[:cut]))
        if new is not None:
            return ".".join([new, *parts[cut:]])
    return key


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, strict: bool = True) -> None:
    """Load ``state_dict`` into ``model``; mismatched shapes and missing/unexpected keys are listed."""
    problems = state_dict_problems(model.state_dict(), state_dict, strict=strict)
    if problems:
        raise CheckpointError(f"{source}: weights do not match the model ({' | '.join(problems)})")
    model.load_state_dict(state_dict, strict=strict)


def load_weights(model: nn.Module, path: str | Path, strict: bool = True, *, verify: bool = True) -> dict[str, Any]:
    """Load a weights file into ``model`` (checksum checked unless ``verify=False``); returns the file's seglab
    metadata."""
    load_into(model, load_state_dict(path, verify=verify), str(path), strict=strict)
    return read_metadata(path)


def save_training_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write optimiser/scheduler/RNG state (tensors and plain containers only) atomically, with a SHA-256 of it
    under ``"sha256"``."""
    state = {k: v for k, v in state.items() if k != CHECKSUM_KEY}
    state[CHECKSUM_KEY] = content_sha256(state)
    return atomic_write(path, lambda p: torch.save(state, str(p)))


def load_training_state(path: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """Read a state written by :func:`save_training_state`, with ``weights_only=True``; its checksum is checked
    unless ``verify=False`` (the returned state has no ``"sha256"`` key)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: training state not found (nothing to resume)")
    state = _torch_load(path, "training state")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a training state mapping, got {type(state).__name__}")
    stored = state.pop(CHECKSUM_KEY, None)
    if verify:
        _check_stray_checksum(path, state)
        if stored is not None:
            _check_sum(path, stored, content_sha256(state))
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
