"""Training step time of bf16 autocast against fp32 on this machine's CPU (seglab issue 6).

One step is what the Trainer does per iteration: forward under autocast, the segmentation loss, backward
and an SGD step. fp32 and bf16 steps are interleaved (A B A B ...) after a warm-up, on the same thread
count, so drift in the machine's load hits both alike; the table gives the median and the interquartile
range of each and the median ratio. ``--smoke`` runs a tiny size once (for the test suite).

    python -m benchmarks.train_precision [--reps 10] [--threads N] [--out docs/benchmarks_training.md]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from seglab.losses import SegmentationLoss
from seglab.models import create_model
from seglab.utils import atomic_write_text

PRECISIONS = ("fp32", "bf16")


def _cases(smoke: bool) -> list[tuple[str, dict, int, int]]:
    """(model name, factory kwargs, input side, batch)."""
    if smoke:
        return [("unet", {"base_width": 4}, 64, 2), ("bisenetv2", {}, 64, 2)]
    return [("unet", {"base_width": 32}, 256, 4), ("bisenetv2", {}, 256, 4)]


def _step(model: torch.nn.Module, criterion: SegmentationLoss, optimizer: torch.optim.Optimizer,
          images: torch.Tensor, targets: torch.Tensor, precision: str) -> float:
    """Seconds of one forward, loss, backward and optimiser step."""
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        outputs = model(images)
    outputs = {k: (v.float() if isinstance(v, torch.Tensor) else [x.float() for x in v])
               for k, v in outputs.items()} if isinstance(outputs, dict) else outputs.float()
    loss, _ = criterion(outputs, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def measure(name: str, kwargs: dict, size: int, batch: int, reps: int, warmup: int) -> dict[str, list[float]]:
    """Step times per precision, interleaved; the same model and data serve both."""
    torch.manual_seed(0)
    num_classes = 21
    model = create_model(name, num_classes=num_classes, **kwargs).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    images = torch.randn(batch, 3, size, size)
    targets = torch.randint(0, num_classes, (batch, size, size))
    with torch.no_grad():  # the number of auxiliary outputs (BiSeNetV2's boosters), each weighted 1 as in the paper
        probe = model(images)
    num_aux = len(probe.get("aux") or []) if isinstance(probe, dict) else 0
    criterion = SegmentationLoss(aux_weights=[1.0] * num_aux)
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for i in range(warmup + reps):
        for precision in PRECISIONS:
            t = _step(model, criterion, optimizer, images, targets, precision)
            if i >= warmup:
                times[precision].append(t)
    return times


def _summary(values: list[float]) -> tuple[float, float]:
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return float(median), float(q3 - q1)


def markdown_table(rows: list[tuple[str, int, int, dict[str, list[float]]]], threads: int, reps: int) -> str:
    lines = [
        "# Training step time: bf16 autocast against fp32 (CPU)",
        "",
        f"Written by `python -m benchmarks.train_precision`: {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {threads} thread(s), {reps} interleaved repetitions after warm-up. "
        "A step is forward, loss, backward and an SGD step; times in ms, median (IQR).",
        "",
        "| model | input | batch | fp32 ms | bf16 ms | bf16 / fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for name, size, batch, times in rows:
        (m32, iqr32), (m16, iqr16) = _summary(times["fp32"]), _summary(times["bf16"])
        lines.append(f"| {name} | {size}x{size} | {batch} | {m32 * 1e3:.1f} ({iqr32 * 1e3:.1f}) | "
                     f"{m16 * 1e3:.1f} ({iqr16 * 1e3:.1f}) | {m16 / m32:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="docs/benchmarks_training.md")
    parser.add_argument("--smoke", action="store_true", help="tiny inputs, one repetition, no warm-up")
    args = parser.parse_args(argv)
    reps, warmup = (1, 0) if args.smoke else (args.reps, args.warmup)
    torch.set_num_threads(args.threads)
    rows = []
    for name, kwargs, size, batch in _cases(args.smoke):
        rows.append((name, size, batch, measure(name, kwargs, size, batch, reps, warmup)))
    table = markdown_table(rows, args.threads, reps)
    atomic_write_text(Path(args.out), table)
    print(table)
    return table


if __name__ == "__main__":
    main()
