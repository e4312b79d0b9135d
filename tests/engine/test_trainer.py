import json

import pytest
import torch

from seglab.checkpoint import load_state_dict, read_metadata
from seglab.config import config_from_dict
from seglab.engine.trainer import Trainer, lr_factor


def tiny_config(demo_root, out, **train):
    return config_from_dict(
        {
            "name": "tiny",
            "output_dir": str(out),
            "model": {"name": "unet", "num_classes": 5, "kwargs": {"base_width": 8}},
            "data": {
                "dataset": "demo",
                "root": str(demo_root),
                "palette": "demo_shapes",
                "crop_size": [64, 64],
                "scale_range": [0.75, 1.25],
                "batch_size": 4,
                "workers": 0,
            },
            "optim": {"name": "adamw", "lr": 0.01},
            "schedule": {"name": "poly", "warmup_iters": 2},
            "train": {
                "iters": 40, "eval_interval": 0, "checkpoint_interval": 20, "log_interval": 5, "seed": 0, **train
            },
            "eval": {"batch_size": 2},
        }
    )


def test_model_learns_tiny_dataset(demo_root, tmp_path):
    trainer = Trainer(tiny_config(demo_root, tmp_path))
    before = trainer.evaluate().mIoU
    after = trainer.fit().mIoU
    losses = [r["loss"] for r in trainer.history if "loss" in r]
    assert sum(losses[-2:]) < 0.7 * sum(losses[:2]), losses
    assert after > before + 0.1, (before, after)
    run = tmp_path / "tiny"
    for name in ("config.yaml", "metrics.jsonl", "final_metrics.json", "curves.png", "checkpoints/last.safetensors",
                 "checkpoints/best.safetensors", "checkpoints/last_state.pt"):
        assert (run / name).is_file(), name
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["split"] == "val" and lines[-1]["mIoU"] == pytest.approx(after)
    meta = read_metadata(run / "checkpoints/best.safetensors")
    assert meta["model"] == "unet" and meta["num_classes"] == 5 and meta["label_set"] == "demo_shapes"


def test_resume_continues_exactly(demo_root, tmp_path):
    full = Trainer(tiny_config(demo_root, tmp_path / "a", iters=12, checkpoint_interval=100))
    full.fit()
    part = Trainer(tiny_config(demo_root, tmp_path / "b", iters=12, checkpoint_interval=100))
    part.fit(stop_at=5)
    assert part.iteration == 5
    resumed = Trainer(tiny_config(demo_root, tmp_path / "b", iters=12, checkpoint_interval=100), resume=True)
    assert resumed.iteration == 5
    resumed.fit()
    a = load_state_dict(tmp_path / "a/tiny/checkpoints/last.safetensors")
    b = load_state_dict(tmp_path / "b/tiny/checkpoints/last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_schedules(demo_root, tmp_path):
    cfg = tiny_config(demo_root, tmp_path, iters=100)
    cfg.schedule.warmup_iters = 10
    cfg.schedule.warmup_ratio = 0.1
    assert lr_factor(cfg, 0) == pytest.approx(0.1)
    assert lr_factor(cfg, 5) == pytest.approx(0.55)
    assert lr_factor(cfg, 50) == pytest.approx(0.5**0.9)
    assert lr_factor(cfg, 100) == pytest.approx(0.0)
    cfg.schedule.name = "cosine"
    assert lr_factor(cfg, 50) == pytest.approx(0.5)
