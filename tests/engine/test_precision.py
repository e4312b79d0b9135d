"""Mixed precision, gradient accumulation and channels-last in the Trainer, and the precision benchmark."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.config import config_from_dict
from seglab.engine.trainer import Trainer
from seglab.engine.trainer import resolve_train_precision as resolve_precision
from seglab.errors import ConfigError


def drop_ignore_pixels(root: Path) -> None:
    """Relabel the demo data's 255 bands as background: with no ignored pixels every image of a batch
    weighs the same in the mean loss, so split batches average to the full batch's gradient."""
    for path in root.rglob("SegmentationClass/*.png"):
        label = Image.open(path)
        values = np.array(label)
        values[values == 255] = 0
        out = Image.fromarray(values, mode="P")
        out.putpalette(label.getpalette())
        out.save(path)


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory):
    from seglab.data.datasets.demo import generate_demo_data

    root = generate_demo_data(tmp_path_factory.mktemp("demo"), seed=0, num_train=8, num_val=2, size=64)
    drop_ignore_pixels(root)
    return root


def config(root: Path, out: Path, batch_size: int = 4, **train):
    return config_from_dict({
        "name": "p",
        "output_dir": str(out),
        "model": {"name": "unet", "num_classes": 5, "kwargs": {"base_width": 4, "batch_norm": False}},
        "data": {"dataset": "demo", "root": str(root), "palette": "demo_shapes", "crop_size": [64, 64],
                 "scale_range": [1.0, 1.0], "batch_size": batch_size, "workers": 0},
        "optim": {"name": "sgd", "lr": 0.05},
        "schedule": {"name": "poly", "warmup_iters": 0},
        "train": {"iters": 2, "eval_interval": 0, "checkpoint_interval": 100, "log_interval": 1, "seed": 0,
                  "device": "cpu", **train},
        "eval": {"batch_size": 2},
    })


def train_losses(trainer: Trainer, iters: int) -> list[float]:
    batches = trainer._batches()
    losses = []
    for _ in range(iters):
        micro = [trainer._next_batch(batches) for _ in range(trainer.cfg.train.accumulate_steps)]
        losses.append(trainer.train_step(micro)["loss"])
        trainer.iteration += 1
    return losses


def test_no_ignored_pixels_in_training_crops(clean_root, tmp_path):
    trainer = Trainer(config(clean_root, tmp_path))
    for i in range(len(trainer.train_set)):
        _, target = trainer.train_set[i]
        assert int(torch.as_tensor(target).max()) < 5


def test_bf16_autocast_trains_with_finite_loss(clean_root, tmp_path):
    trainer = Trainer(config(clean_root, tmp_path, precision="bf16"))
    dtypes = []
    first_conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
    losses = train_losses(trainer, 2)
    assert dtypes == [torch.bfloat16, torch.bfloat16]  # the convolutions ran in bf16
    assert all(np.isfinite(losses)) and losses[0] > 0
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # weights stay fp32


def test_precision_options_are_checked(clean_root, tmp_path):
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        Trainer(config(clean_root, tmp_path, precision="fp16"))
    with pytest.raises(ConfigError, match="train.precision: unknown value 'fp8'"):
        resolve_precision(config(clean_root, tmp_path, precision="fp8"), cpu)
    assert resolve_precision(config(clean_root, tmp_path, amp=True), cpu) == "bf16"  # the deprecated alias
    with pytest.raises(ConfigError, match="conflicts"):
        resolve_precision(config(clean_root, tmp_path, amp=True, precision="fp16"), torch.device("cuda"))
    with pytest.raises(ConfigError, match="accumulate_steps"):
        Trainer(config(clean_root, tmp_path, accumulate_steps=0))


def test_accumulation_equals_the_full_batch(clean_root, tmp_path):
    """Batch 4 in one step and batch 2 accumulated twice read the same samples and reach the same weights."""
    full = Trainer(config(clean_root, tmp_path / "full", batch_size=4))
    acc = Trainer(config(clean_root, tmp_path / "acc", batch_size=2, accumulate_steps=2))
    start = {k: v.clone() for k, v in full.model.state_dict().items()}
    full_losses, acc_losses = train_losses(full, 3), train_losses(acc, 3)
    assert acc.scheduler.last_epoch == full.scheduler.last_epoch == 3  # an iteration is an optimiser step
    assert acc_losses == pytest.approx(full_losses, rel=1e-5)
    moved = max((full.model.state_dict()[k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-3
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(acc.model.state_dict()[key], value, rtol=1e-4, atol=1e-6)


def test_accumulated_run_resumes_at_the_right_sample(clean_root, tmp_path):
    """With 2 micro-batches per step, iteration 1 starts at micro-batch 2 of the epoch."""
    trainer = Trainer(config(clean_root, tmp_path, batch_size=2, accumulate_steps=2))
    all_batches = trainer._batches()
    expected = [next(all_batches)[0] for _ in range(4)]
    trainer.iteration = 1
    resumed = trainer._batches()
    assert torch.equal(next(resumed)[0], expected[2]) and torch.equal(next(resumed)[0], expected[3])


def test_channels_last_gives_the_same_loss(clean_root, tmp_path):
    plain = Trainer(config(clean_root, tmp_path / "a"))
    last = Trainer(config(clean_root, tmp_path / "b", channels_last=True))
    conv = next(m for m in last.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not next(m for m in plain.model.modules() if isinstance(m, torch.nn.Conv2d)).weight.is_contiguous(
        memory_format=torch.channels_last)
    assert train_losses(last, 2) == pytest.approx(train_losses(plain, 2), rel=1e-5)
    for key, value in plain.model.state_dict().items():
        torch.testing.assert_close(last.model.state_dict()[key], value, rtol=1e-4, atol=1e-6)


def test_benchmark_smoke_writes_a_table(tmp_path):
    from benchmarks.train_precision import main

    out = tmp_path / "bench.md"
    table = main(["--smoke", "--threads", "1", "--out", str(out)])
    assert out.read_text() == table
    rows = [line for line in table.splitlines() if line.startswith("| unet") or line.startswith("| bisenetv2")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        fp32, bf16, ratio = (float(c.split()[0]) for c in cells[3:6])
        assert fp32 > 0 and bf16 > 0 and ratio == pytest.approx(bf16 / fp32, abs=0.01)
