"""``seglab demo``: train, evaluate and predict on the built-in demo shapes, end to end.

The demo data is generated (once, into a cache folder) in the PASCAL VOC 2012 layout and read back
through the same VOC loader as real data. The config below is also kept as configs/demo/unet_demo_shapes.yaml
(a test checks they agree), so ``seglab train configs/demo/unet_demo_shapes.yaml`` runs the same job.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from seglab.config import Config, apply_overrides, config_from_dict

DEMO_CONFIG: dict[str, Any] = {
    "name": "demo",
    "output_dir": "runs",
    "model": {"name": "unet", "num_classes": 5, "kwargs": {"base_width": 16}},
    "data": {
        "dataset": "demo",
        "root": "",
        "palette": "demo_shapes",
        "crop_size": [128, 128],
        "scale_range": [0.75, 1.25],
        "hflip": True,
        "batch_size": 8,
        "workers": 1,
    },
    "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0001},
    "schedule": {"name": "poly", "power": 0.9, "warmup_iters": 50},
    "train": {"iters": 500, "eval_interval": 250, "checkpoint_interval": 250, "log_interval": 20, "seed": 0},
    "eval": {"mode": "whole", "batch_size": 4},
}


def config_with_overrides(base: dict[str, Any], overrides: list[str] | None, source: str) -> Config:
    """``base`` (left unchanged) with ``key.sub=value`` overrides applied, as a typed Config."""
    import copy

    data = copy.deepcopy(base)
    if overrides:
        apply_overrides(data, overrides)
    return config_from_dict(data, source)


def demo_config(overrides: list[str] | None = None) -> Config:
    """The demo's config, with ``key.sub=value`` overrides applied."""
    return config_with_overrides(DEMO_CONFIG, overrides, "seglab demo")


def write_val_predictions(predictor: Any, trainer: Any, out_dir: Path, num_images: int) -> None:
    """For the first ``num_images`` val images: what ``seglab predict`` writes (label PNG, overlay, legend)."""
    import numpy as np

    from seglab.data.io import read_image
    from seglab.visualize import save_prediction

    for image_path in trainer.val_set.image_paths[:num_images]:
        image = np.asarray(read_image(image_path))
        save_prediction(out_dir, image_path.stem, image, predictor(image), trainer.label_set)


def fit_and_report(trainer: Any, console: Any) -> tuple[Any, float]:
    """Train ``trainer`` to the end, telling ``console`` what runs and then the task's metrics summary; returns the
    final metrics and the training seconds."""
    cfg = trainer.cfg
    kwargs = f" {cfg.model.kwargs}" if cfg.model.kwargs else ""
    console.print(f"training {cfg.model.name}{kwargs} for {cfg.train.iters} iterations on {len(trainer.train_set)} "
                  f"images; validating on {len(trainer.val_set)}")
    t0 = time.perf_counter()
    metrics = trainer.fit()
    train_s = time.perf_counter() - t0
    console.print(trainer.task.summary(metrics, trainer.label_set))
    return metrics, train_s


def run_demo(overrides: list[str] | None = None, *, num_overlays: int = 8, console=None) -> dict[str, Any]:
    """Generate the data if needed, train, evaluate, write overlays; returns what went where."""
    from rich.console import Console

    from seglab.data.datasets.demo import ensure_demo_data
    from seglab.engine.inference import Predictor
    from seglab.engine.trainer import Trainer

    console = console or Console()
    t_start = time.perf_counter()
    cfg = demo_config(overrides)
    t0 = time.perf_counter()
    root = ensure_demo_data(cfg.data.root or None)
    cfg.data.root = str(root)
    console.print(f"demo data: {root} (ready in {time.perf_counter() - t0:.1f} s)")

    trainer = Trainer(cfg, progress=True)
    metrics, train_s = fit_and_report(trainer, console)

    out_dir = cfg.run_dir / "overlays"
    write_val_predictions(Predictor(trainer.model, device=trainer.device), trainer, out_dir, num_overlays)

    total_s = time.perf_counter() - t_start
    ckpt = cfg.run_dir / "checkpoints"
    summary = {
        "mIoU": metrics.mIoU,
        "train_seconds": train_s,
        "total_seconds": total_s,
        "data": str(root),
        "run_dir": str(cfg.run_dir),
        "best_weights": str(ckpt / "best.safetensors"),
        "last_weights": str(ckpt / "last.safetensors"),
        "metrics": str(cfg.run_dir / "metrics.jsonl"),
        "curves": str(cfg.run_dir / "curves.png"),
        "overlays": str(out_dir),
    }
    console.print(f"[bold]val mIoU {metrics.mIoU:.4f}[/bold]  (training {train_s:.0f} s, total {total_s:.0f} s)")
    for key in ("data", "run_dir", "best_weights", "metrics", "curves", "overlays"):
        console.print(f"  {key:13s} {summary[key]}")
    return summary

