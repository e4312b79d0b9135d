"""Small helpers over ``torch.distributed`` for data-parallel training launched by torchrun.

torchrun (``python -m torch.distributed.run``) starts one process per device and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each; :func:`init_from_env`
reads them and joins the process group (gloo on the CPU, nccl on CUDA, one GPU per process chosen by
``LOCAL_RANK``). Outside torchrun (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) every helper is a
single-process no-op, so library code calls them unconditionally.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from seglab.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its global rank, the number of processes and its rank on this node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_initialized() -> bool:
    """Whether a process group is up (False when torch was built without distributed support)."""
    return dist.is_available() and dist.is_initialized()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r}: expected an integer (set by torchrun)") from None


def init_from_env(device: torch.device, timeout_s: float = 600.0) -> tuple[DistInfo, torch.device]:
    """Join the process group described by torchrun's environment; returns this process's info and device.

    ``device`` is the configured device type: on CUDA each process takes ``cuda:LOCAL_RANK`` and the
    backend is nccl, on the CPU gloo. With ``WORLD_SIZE`` unset or 1 nothing is initialised. A group
    already initialised by the caller (``torch.multiprocessing.spawn``) is used as it is. ``timeout_s`` bounds
    every collective: a process that hangs (rather than dies, which its peers see at once) makes the others fail
    after that long instead of torch's default 30 minutes.
    """
    if is_initialized():
        info = DistInfo(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    else:
        world_size = _env_int("WORLD_SIZE", 1)
        if world_size <= 1:
            return DistInfo(), device
        info = DistInfo(_env_int("RANK", 0), world_size, _env_int("LOCAL_RANK", 0))
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(name):
                raise ConfigError(f"WORLD_SIZE={world_size} but {name} is not set; launch with torchrun "
                                  "(torchrun --nproc_per_node=N -m seglab train CONFIG)")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        timeout = datetime.timedelta(seconds=timeout_s)
        store = None
        if "TORCHELASTIC_RESTART_COUNT" in os.environ:
            # under torchrun the store outlives a restart of the worker group; without a prefix of its own, a
            # restarted process may read the address a dead process of the previous attempt published there and
            # fail to connect (seen under load with --max-restarts)
            base, _, _ = next(dist.rendezvous("env://", rank=info.rank, world_size=info.world_size, timeout=timeout))
            store = dist.PrefixStore(f"seglab/attempt_{restart_count()}/", base)
        dist.init_process_group(backend=backend, store=store, rank=info.rank, world_size=info.world_size,
                                timeout=timeout)
    if info.world_size > 1 and device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
        device = torch.device("cuda", info.local_rank)
    return info, device


def restart_count() -> int:
    """How many times torchrun (``--max-restarts``) has restarted this worker group; 0 outside torchrun."""
    return _env_int("TORCHELASTIC_RESTART_COUNT", 0)


def is_collective_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed collective (a peer process that died, hung past the timeout or lost its
    connection) rather than an error of the step itself. gloo raises these as plain RuntimeErrors."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        mark in text
        for mark in ("gloo", "Gloo", "NCCL", "Connection reset", "Connection closed", "Timed out", "timeout caused",
                     "pair closure")
    )


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 and in a single process: the process that writes files."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over ranks (a new tensor; ``values`` itself in a single process)."""
    if not is_initialized() or dist.get_world_size() == 1:
        return values
    buf = values.detach().clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf / dist.get_world_size()


def shard_batches(dataset: Any, batch_size: int) -> Any:
    """This rank's part of ``dataset`` for evaluation: every ``world_size``-th batch of ``batch_size`` items, so
    each rank's batches are exactly the batches a single process would run (same numbers); the dataset itself
    in a single process."""
    world_size = get_world_size()
    if world_size == 1:
        return dataset
    n = len(dataset)
    starts = range(get_rank() * batch_size, n, world_size * batch_size)
    return torch.utils.data.Subset(dataset, [i for b in starts for i in range(b, min(b + batch_size, n))])


def cleanup() -> None:
    """Leave the process group if one is up."""
    if is_initialized():
        dist.destroy_process_group()


__all__ = [
    "DistInfo",
    "all_gather_object",
    "all_reduce_mean",
    "barrier",
    "cleanup",
    "get_rank",
    "get_world_size",
    "init_from_env",
    "is_collective_failure",
    "is_initialized",
    "is_main",
    "restart_count",
    "shard_batches",
]
