"""Read mmsegmentation checkpoints without running code from them.

An mmseg checkpoint is a ``torch.save`` of ``{"meta": {...}, "state_dict": {...}}``, often with ``"optimizer"``,
``"param_schedulers"`` and ``"message_hub"`` beside. The weights are plain tensors, but the rest holds objects of
other libraries: mmengine's ``HistoryBuffer`` (the logged losses), numpy arrays, dtypes and scalars (buffers and
best scores), and, in mmcv 1.x files (mmseg 0.x, the released checkpoints), whatever the hooks stored. Plain
``torch.load(weights_only=True)`` refuses those; plain unpickling would run whatever code the file names.

:func:`read_mmseg_checkpoint` keeps ``weights_only=True`` (torch's unpickler that builds only tensors and plain
containers, and calls nothing but its allow-list) and extends the allow-list for the read with stand-ins: each
global the file names from numpy or OpenMMLab's packages (and a few data types of the standard library) is bound to
a fresh subclass of :class:`InertObject`, so the pickle builds an inert record of its arguments and state in its
place, and the real class or function is never imported or called (``builtins.getattr`` too, which a pickled bound
method names: mmengine's ``HistoryBuffer`` holds some). The names are found before anything is
unpickled (``torch.serialization.get_unsafe_globals_in_checkpoint`` disassembles the pickle); a file that names any
other global (``os.system``, ``builtins.exec``, ...) is refused as it stands, since no mmseg checkpoint needs one.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from seglab.errors import CheckpointError

__all__ = ["INERT_MODULES", "InertObject", "read_mmseg_checkpoint"]

# globals from these packages become InertObject stand-ins (the first dotted part of the name)
INERT_MODULES = ("numpy", "mmengine", "mmcv", "mmseg", "mmdet", "mmpretrain", "mmcls")
# and these names of the standard library: data types (a path or a date in a hook's record), and getattr, which
# pickles a bound method: mmengine's HistoryBuffer keeps its statistics methods, written as getattr(buffer, "min")
_INERT_NAMES = (
    "builtins.getattr", "collections.defaultdict", "collections.deque", "datetime.date", "datetime.datetime",
    "datetime.timedelta", "pathlib.Path", "pathlib.PosixPath", "pathlib.WindowsPath",
)
_TORCH_ADVICE = ("Weights only load failed", "Check the documentation", "Please file an issue")


class InertObject:
    """What a pickled object of another library reads as: its pickled arguments (``args``) and state (``state``)
    kept as data; its class (named by ``global_name``) is neither imported nor called."""

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        obj = super().__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.global_name}, not unpickled>"


def _inert(name: str) -> type[InertObject]:
    return type(name.rsplit(".", 1)[-1], (InertObject,), {"global_name": name, "__module__": __name__})


def _is_inert(name: str) -> bool:
    return name.split(".", 1)[0] in INERT_MODULES or name in _INERT_NAMES


def _torch_reason(exc: Exception) -> str:
    """torch's message without its advice to retry with ``weights_only=False`` (exactly what must not be done)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    return " ".join(line for line in lines if line and not line.startswith(_TORCH_ADVICE)) or "no details"


def _load(path: Path) -> Any:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if zipfile.is_zipfile(path) else []
    except Exception as exc:  # a damaged archive, a pickle that does not disassemble
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    refused = sorted(name for name in names if not _is_inert(name))
    if refused:
        raise CheckpointError(
            f"{path}: refused: the file names {', '.join(refused)}, which no mmsegmentation checkpoint needs (only "
            f"tensors, containers and inert records of {', '.join(INERT_MODULES)} objects are read; nothing in the "
            f"file was run)"
        )
    stand_ins = [(_inert(name), name) for name in names]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ...: refused or damaged, nothing run
        raise CheckpointError(
            f"{path}: refused to load: not a plain mmsegmentation checkpoint, or damaged (read with "
            f"torch.load(weights_only=True), which runs no code from the file): {type(exc).__name__}: "
            f"{_torch_reason(exc)}"
        ) from None


def _classes(meta: Any) -> list[str] | None:
    """The class names mmseg recorded: ``meta["dataset_meta"]["classes"]`` (mmengine) or ``meta["CLASSES"]``
    (mmcv 1.x); None when absent or not plain strings."""
    if not isinstance(meta, dict):
        return None
    dataset_meta = meta.get("dataset_meta")
    classes = dataset_meta.get("classes") if isinstance(dataset_meta, dict) else meta.get("CLASSES")
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes):
        return [c.strip() for c in classes]
    return None


def read_mmseg_checkpoint(
    src: dict[str, Any] | str | Path,
) -> tuple[dict[str, torch.Tensor], list[str] | None, str]:
    """The state dict of the mmseg checkpoint ``src`` (a ``.pth`` file, a ``.safetensors`` file, or the loaded
    mapping), the class names its metadata records (or None), and the name error messages use.

    ``{"state_dict": ...}`` is unwrapped (a bare mapping of tensors is taken as it is) and DataParallel's
    ``module.`` prefix dropped. Raises :class:`~seglab.errors.CheckpointError` for a missing, damaged or refused
    file, or one without a mapping of names to tensors.
    """
    if isinstance(src, dict):
        obj, source = src, "mmsegmentation state dict"
    else:
        path = Path(src)
        source = str(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint not found")
        if path.suffix == ".safetensors":
            from seglab.checkpoint import load_state_dict

            obj = load_state_dict(path)
        else:
            obj = _load(path)
    classes = _classes(obj.get("meta")) if isinstance(obj, dict) else None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(
            f"{source}: expected an mmsegmentation checkpoint: a mapping of parameter names to tensors, or one under "
            f"'state_dict'"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}, classes, source
