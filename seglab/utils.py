"""Small helpers shared across seglab: atomic writes, seeding, device choice."""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seglab.errors import StorageError

if TYPE_CHECKING:  # torch is imported inside the functions that need it: atomic writes stay torch-free
    import torch


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` atomically: ``write(tmp_path)`` fills a temporary file in the same folder,
    which is fsynced and renamed over ``path``, then the folder is fsynced so the rename is durable.
    A killed process leaves the old file intact (and at worst a stray ``.<name>.*.tmp``). A write that fails
    (a full disk, an I/O error) removes its temporary file, keeps the old file and raises
    :class:`~seglab.errors.StorageError` naming the path and the free space."""
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        write(tmp_path)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException as exc:
        if tmp_path is not None:
            try:
                tmp_path.unlink(missing_ok=True)
            except OSError:
                pass  # the folder itself failed (e.g. went read-only); nothing more can be cleaned here
        if isinstance(exc, OSError) and not isinstance(exc, StorageError):
            kept = " (the previous file is intact)" if path.is_file() else ""
            raise StorageError(f"{path}: could not be written: {exc.strerror or exc}{kept}; "
                               f"{free_space(path.parent)}") from exc
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_folder(
    path: str | Path, write: Callable[[Path], None], *, replaceable: Callable[[Path], bool] | None = None
) -> Path:
    """Write the folder ``path`` as a whole: ``write(tmp_folder)`` fills a temporary folder beside it, whose files
    are fsynced, and which is then renamed to ``path``. A folder already at ``path`` is replaced only when it is
    empty or ``replaceable(path)`` says so (else :class:`~seglab.errors.StorageError`): it is moved aside, the new
    one renamed in, and the old one deleted, so ``path`` never holds a half-written folder (a kill between the two
    renames leaves the old folder as ``.<name>.*.old`` beside it). A failed write removes its temporary folder."""
    path = Path(path)
    if path.exists() and not (path.is_dir() and (not any(path.iterdir()) or (replaceable and replaceable(path)))):
        raise StorageError(f"{path}: exists and is not a folder this write may replace; choose another path or "
                           "remove it")
    tmp = old = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        write(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb+") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if path.exists() and any(path.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old)  # onto the empty folder just made: a unique name nobody else takes
        os.replace(tmp, path)
        tmp = None
    except BaseException as exc:
        if old is not None and not path.exists():
            os.replace(old, path)  # the new folder did not arrive: put the old one back
            old = None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, StorageError):
            raise StorageError(f"{path}: could not be written: {exc.strerror or exc}; "
                               f"{free_space(path.parent)}") from exc
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(path.parent)
    return path


def free_space(folder: str | Path) -> str:
    """``"<n> MiB free on <folder>"`` for error messages (the nearest existing folder above ``folder``)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return f"free space on {folder} unknown"
    return f"{free / 2**20:.1f} MiB free on {folder}"


def check_writable(folder: str | Path, what: str = "folder") -> Path:
    """Create ``folder`` if needed and write and remove a probe file in it; a folder that cannot be written (a
    read-only mount, no permission, a file in the way) is a :class:`~seglab.errors.StorageError` now, not after
    hours of work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".seglab-write-check.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StorageError(f"{folder}: the {what} is not writable ({exc.strerror or exc}); "
                           f"choose a writable one") from exc
    return folder


def _fsync_dir(folder: Path) -> None:
    """fsync a folder so a rename in it survives a power loss (POSIX; a no-op where folders can't be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def decode_json_values(props: dict[str, str]) -> dict[str, Any]:
    """String metadata (safetensors' or ONNX's) with JSON values decoded; other strings stay strings."""
    out: dict[str, Any] = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so runs repeat."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    import torch

    torch.manual_seed(seed)


def resolve_device(name: str = "auto") -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
