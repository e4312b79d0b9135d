"""Data pipeline throughput: training images per second through ``build_dataset`` on the demo data.

One pass decodes, augments (random scale, crop, flip: seglab's training transforms at a 512x512 crop) and
collates every demo training image (300) in batches of 8, through a ``DataLoader`` with 0 and with 2 worker
processes, interleaved. A pass with workers includes their start-up, as every epoch of a non-persistent loader does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from benchmarks.common import interleaved, summary

WORKERS = (0, 2)


def _dataset(crop: int, num_images: int | None) -> Subset:
    """The demo training set with training transforms at ``crop``; its first ``num_images`` (None: all)."""
    from seglab.config import DataConfig
    from seglab.data import build_dataset

    dataset = build_dataset(DataConfig(dataset="demo", crop_size=[crop, crop]), "train", train=True)
    return Subset(dataset, range(len(dataset) if num_images is None else min(num_images, len(dataset))))


def _pass(dataset: Subset, batch_size: int, workers: int) -> int:
    """Iterate once over ``dataset``; returns the number of images seen."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    return sum(len(images) for images, _ in loader)


def run(reps: int, threads: int, smoke: bool) -> list[dict[str, Any]]:
    """One row per worker count: seconds per pass over the same images."""
    torch.set_num_threads(threads)
    crop, num_images, batch_size, warmup = (64, 4, 2, 0) if smoke else (512, None, 8, 1)
    dataset = _dataset(crop, num_images)
    times = interleaved({w: (lambda w=w: _pass(dataset, batch_size, w)) for w in WORKERS}, reps, warmup)
    return [{"section": "data", "workers": w, "images": len(dataset), "crop": crop, "batch_size": batch_size,
             "times": times[w]} for w in WORKERS]


def markdown(rows: list[dict[str, Any]]) -> str:
    """Throughput table: images/s from the median pass."""
    first = rows[0]
    lines = [
        "## Data pipeline throughput", "",
        f"Demo data, training transforms, {first['crop']}x{first['crop']} crops, batches of {first['batch_size']}, "
        f"{first['images']} images per pass (decode, augment, collate); worker counts interleaved.", "",
        "| workers | images/s | pass ms |",
        "|---|---|---|",
    ]
    for r in rows:
        median, iqr = summary(r["times"])
        lines.append(f"| {r['workers']} | {r['images'] / median:.1f} | {median * 1e3:.1f} ({iqr * 1e3:.1f}) |")
    return "\n".join(lines) + "\n"
