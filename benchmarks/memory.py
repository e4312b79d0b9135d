"""Resident memory of what users run for long: a long training run and the evaluation of huge images.

    python -m benchmarks.memory slide-eval [--images 10] [--height 3000] [--width 4000] [--out F.json]
    python -m benchmarks.memory train [--iters 2000] [--out F.json]

``slide-eval`` evaluates ``--images`` synthetic images (made one at a time, so the data holds no more than one)
with sliding-window inference, as ``seglab eval`` with ``eval.mode: slide`` does (LR-ASPP MobileNetV3, 19
classes, Cityscapes' 1024 x 1024 windows every 768 pixels), and records the process's resident set after each
image and its peak (``ru_maxrss``). ``train`` runs ``seglab demo`` for ``--iters`` iterations in a child process
and samples the resident set of it and its data workers every 0.2 s, against the iteration it was at; the growth
is the median over the last 10% of the iterations against the median just after warm-up (iterations 10-20% of
the run). Memory, not time, is measured: the machine's load does not change these figures much.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["descendants", "rss_mb", "slide_eval", "tree_rss_mb", "train_rss"]


def rss_mb(pid: int | str = "self") -> float:
    """The resident set of process ``pid`` in MiB (VmRSS from /proc; 0 when it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, their children, ...), from /proc's parent links (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_rss_mb(pid: int) -> float:
    """The resident sets of ``pid`` and all its descendants (the data workers), summed, in MiB."""
    return rss_mb(pid) + sum(rss_mb(child) for child in descendants(pid))


class _HugeImages(torch.utils.data.Dataset):
    """``n`` smooth synthetic images of ``height x width`` with random labels, made when read (one in memory at a
    time); records the resident set each time an image is read."""

    def __init__(self, n: int, height: int, width: int, num_classes: int) -> None:
        self.n, self.size, self.num_classes = n, (height, width), num_classes
        self.rss: list[float] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.rss.append(rss_mb())
        g = torch.Generator().manual_seed(index)
        h, w = self.size
        coarse = torch.randn(1, 3, h // 64 + 1, w // 64 + 1, generator=g)
        image = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
        mask = torch.randint(0, self.num_classes, (h // 64 + 1, w // 64 + 1), generator=g)
        mask = torch.nn.functional.interpolate(mask[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
        return image, mask


def slide_eval(images: int = 10, height: int = 3000, width: int = 4000, model_name: str = "lraspp_mobilenet_v3_large",
               num_classes: int = 19, crop: int = 1024, stride: int = 768) -> dict[str, Any]:
    """Evaluate ``images`` huge images by sliding window; the resident set per image and at its peak (MiB)."""
    from seglab.engine.evaluator import evaluate
    from seglab.models import create_model

    torch.manual_seed(0)
    model = create_model(model_name, num_classes=num_classes).eval()
    data = _HugeImages(images, height, width, num_classes)
    start = rss_mb()
    t0 = time.perf_counter()
    metrics = evaluate(model, data, num_classes=num_classes, mode="slide", crop_size=crop, stride=stride)
    seconds = time.perf_counter() - t0
    after = data.rss[1:] + [rss_mb()]  # the set as each image's evaluation ended (the next one's read), and at the end
    return {
        "what": f"evaluate() of {images} images of {height}x{width}, mode slide, crop {crop}, stride {stride}, "
                f"{model_name}, {num_classes} classes, fp32",
        "rss_before_mb": round(start, 1),
        "rss_after_each_image_mb": [round(v, 1) for v in after],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "seconds": round(seconds, 1),
        "pixels_counted": int(metrics.confusion.sum()),
        "threads": torch.get_num_threads(),
    }


def train_rss(iters: int = 2000, sample_s: float = 0.2, overrides: list[str] | None = None) -> dict[str, Any]:
    """``seglab demo`` for ``iters`` iterations in a child process; its resident set (with its data workers) by
    iteration, and the growth after warm-up."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "runs"
        args = [sys.executable, "-m", "seglab", "demo", f"output_dir={run_dir}", f"train.iters={iters}",
                f"train.eval_interval={max(iters // 4, 1)}", f"train.checkpoint_interval={max(iters // 4, 1)}",
                "train.log_interval=1", *(overrides or [])]
        env = {**os.environ, "SEGLAB_CACHE": os.environ.get("SEGLAB_CACHE", str(Path(tmp) / "cache"))}
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        samples: list[tuple[int, float]] = []
        metrics = None
        t0 = time.perf_counter()
        while proc.poll() is None:
            if metrics is None:
                found = list(run_dir.glob("*/metrics.jsonl"))
                metrics = found[0] if found else None
            done = _train_lines(metrics) if metrics is not None else 0
            samples.append((done, tree_rss_mb(proc.pid)))
            time.sleep(sample_s)
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        if proc.returncode != 0:
            raise RuntimeError(f"seglab demo failed ({proc.returncode}): {stderr[-2000:]}")
        seconds = time.perf_counter() - t0
    by_iter = np.array([(i, r) for i, r in samples if r > 0], dtype=np.float64)
    window = lambda lo, hi: by_iter[(by_iter[:, 0] >= lo) & (by_iter[:, 0] < hi), 1]  # noqa: E731
    warm, last = window(0.1 * iters, 0.2 * iters), window(0.9 * iters, iters)
    return {
        "what": f"seglab demo, {iters} iterations (eval and checkpoint every {max(iters // 4, 1)}), resident set of "
                f"the process and its data workers every {sample_s} s",
        "after_warmup_median_mb": round(float(np.median(warm)), 1),
        "last_10pct_median_mb": round(float(np.median(last)), 1),
        "growth_pct": round(100 * (float(np.median(last)) / float(np.median(warm)) - 1), 2),
        "max_mb": round(float(by_iter[:, 1].max()), 1),
        "samples": len(by_iter),
        "seconds": round(seconds, 1),
        "rss_by_iteration_mb": [[int(i), round(r, 1)] for i, r in by_iter[:: max(len(by_iter) // 50, 1)]],
    }


def _train_lines(metrics: Path) -> int:
    try:
        lines = metrics.read_text().splitlines()
    except OSError:
        return 0
    return sum(1 for line in lines if '"loss"' in line and '"split"' not in line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("slide-eval")
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--height", type=int, default=3000)
    p.add_argument("--width", type=int, default=4000)
    p.add_argument("--out")
    p = sub.add_parser("train")
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--out")
    p.add_argument("overrides", nargs="*", help="key=value for the demo's config")
    args = parser.parse_args(argv)
    if args.what == "slide-eval":
        result = slide_eval(args.images, args.height, args.width)
    else:
        result = train_rss(args.iters, overrides=args.overrides)
    text = json.dumps(result, indent=1)
    if args.out:
        from seglab.utils import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
