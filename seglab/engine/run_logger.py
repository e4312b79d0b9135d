"""Where a training run's records go: metrics.jsonl always, TensorBoard event files when asked.

``metrics.jsonl`` is the run's record of truth (``seglab plot``, resuming and the tests read it): one
``json.dumps(record)`` line per record, the file closed after each so a killed run keeps every line it logged.
With ``backend="tensorboard"`` (config ``train.logger: tensorboard``) each numeric scalar of a record
is also written through ``torch.utils.tensorboard.SummaryWriter`` into ``run_dir/tensorboard`` at step
``record["iter"]``: val records (``"split": "val"``) under ``val/<key>``, the others under
``train/<key>``; a list of numbers (per-class IoU) becomes ``val/IoU/<i>``. Non-numeric values,
``None`` (a NaN in JSON) and nested lists (the confusion matrix) are left to metrics.jsonl.

Choice: when TensorBoard is asked for but not installed, the constructor raises ConfigError saying
``pip install tensorboard`` rather than silently falling back to jsonl only: a user who asked for
TensorBoard curves would otherwise find out after the run, with no event files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import TracebackType
from typing import Any

from seglab.errors import ConfigError

BACKENDS = ("jsonl", "tensorboard")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def tensorboard_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The ``tag -> value`` scalars of one record as the TensorBoard backend writes them."""
    prefix = "val" if record.get("split") == "val" else "train"
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in ("iter", "split"):
            continue
        if _is_number(value):
            out[f"{prefix}/{key}"] = float(value)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if _is_number(item):
                    out[f"{prefix}/{key}/{i}"] = float(item)
    return out


class RunLogger:
    """Appends each record to ``run_dir/metrics.jsonl`` and, for ``backend="tensorboard"``, writes its
    scalars to ``run_dir/tensorboard``. Use as a context manager or call :meth:`close`."""

    def __init__(self, run_dir: str | Path, backend: str = "jsonl") -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"train.logger: unknown logger {backend!r}; expected one of {', '.join(BACKENDS)}")
        self.run_dir = Path(run_dir)
        self.backend = backend
        self.path = self.run_dir / "metrics.jsonl"
        self._writer = None
        if backend == "tensorboard":
            try:
                import tensorboard  # noqa: F401  (SummaryWriter needs it; torch does not depend on it)
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "train.logger: tensorboard is not installed; `pip install tensorboard` "
                    "or set train.logger to jsonl"
                ) from None
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._closed = False

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one JSON line (flushed), and its scalars to TensorBoard if enabled."""
        if self._closed:
            raise RuntimeError(f"RunLogger({self.run_dir}): log() after close()")
        # opened per record, as the trainer always did: a resume that rewrites metrics.jsonl (dropping
        # lines after the checkpoint) replaces the file, and a handle held open would write to the old one
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._writer is not None:
            step = record.get("iter")
            step = int(step) if _is_number(step) else None
            for tag, value in tensorboard_scalars(record).items():
                self._writer.add_scalar(tag, value, global_step=step)
            self._writer.flush()

    def close(self) -> None:
        """Close metrics.jsonl and the TensorBoard writer; closing twice is harmless."""
        self._closed = True
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


__all__ = ["BACKENDS", "RunLogger", "tensorboard_scalars"]
