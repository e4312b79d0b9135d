"""Shared pieces of the CPU benchmark suite (seglab issue 7): interleaved timing, summaries, FLOPs, ceilings.

Every comparison is measured pair by pair in one process: after a warm-up, the candidates run in turn
(A B A B ...) on the same input and thread count, so drift in the machine's load hits all of them alike.
Summaries are the median and the interquartile range (IQR) of the repetitions.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["count_flops", "fmt_ms", "interleaved", "machine_info", "matmul_ceiling", "summary"]


def interleaved(fns: Mapping[Any, Callable[[], Any]], reps: int, warmup: int = 1) -> dict[Any, list[float]]:
    """Seconds per call of each function in ``fns``, called in turn (A B A B ...) ``warmup + reps`` times.

    The first ``warmup`` rounds are run but not recorded. Returns ``{name: [seconds] * reps}``.
    """
    times: dict[Any, list[float]] = {name: [] for name in fns}
    for i in range(warmup + reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times[name].append(elapsed)
    return times


def summary(values: list[float]) -> tuple[float, float]:
    """(median, interquartile range) of ``values`` (NumPy's linear percentile interpolation)."""
    q1, median, q3 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])
    return float(median), float(q3 - q1)


def fmt_ms(values: list[float] | None) -> str:
    """'median (IQR)' in milliseconds, or '-' when not measured."""
    if not values:
        return "-"
    median, iqr = summary(values)
    return f"{median * 1e3:.1f} ({iqr * 1e3:.1f})"


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of ``fn`` counted by ``torch.utils.flop_counter`` (2 FLOPs per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return float(counter.get_total_flops())


def matmul_ceiling(dtype: torch.dtype, n: int = 4096, reps: int = 5) -> tuple[float, list[float]]:
    """The matrix-product ceiling: GFLOP/s of an ``n x n`` by ``n x n`` product in ``dtype`` (median of ``reps``
    after one warm-up) and the raw seconds. ``2 n^3`` FLOPs per product, as the flop counter counts."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    times = interleaved({"mm": lambda: torch.mm(a, b)}, reps=reps, warmup=1)["mm"]
    return 2.0 * n**3 / summary(times)[0] / 1e9, times


def machine_info(threads: int) -> str:
    """One line naming the CPU, Python, torch and thread count (and whether the CPU has bf16 matmul kernels)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass  # not Linux: platform's name above is what there is
    isa = torch.backends.cpu.get_cpu_capability()
    return (f"{cpu}; {platform.system()} {platform.release()}; Python {sys.version.split()[0]}; "
            f"torch {torch.__version__}; CPU capability {isa}; {threads} thread(s)")
