"""Bounded resources: huge images switch to sliding-window inference; a dying data worker fails the run cleanly."""

import logging
import os

import numpy as np
import pytest
import torch
from torch import nn

from seglab.config import config_from_dict
from seglab.engine.inference import DEFAULT_MAX_WHOLE_PIXELS, Predictor, infer_probs, sliding_windows
from seglab.engine.trainer import Trainer
from seglab.errors import SeglabError


class _CountingModel(nn.Module):
    """A 1x1 conv plus a position-dependent term (so slide and whole differ), counting forward calls."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.calls: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape[-2:]))
        h, w = x.shape[-2:]
        ramp = torch.linspace(0, 3, w).view(1, 1, 1, w)  # depends on the window's own width
        return self.conv(x) + ramp * torch.arange(4.0).view(1, 4, 1, 1) / (h / 48)


def _image(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_large_image_switches_to_slide_and_equals_explicit_slide(caplog):
    model = _CountingModel()
    image = _image(96, 80)  # 7680 pixels
    crop, stride = (48, 48), (32, 32)
    expected_windows = sliding_windows((96, 80), crop, stride)
    # mmsegmentation's grid by hand: rows (96-48+31)//32+1 = 3, cols (80-48+31)//32+1 = 2
    assert len(expected_windows) == 6

    whole = Predictor(model, mode="whole", crop_size=crop, stride=stride, max_whole_pixels=None)
    whole_probs = whole.predict_probs(image)
    assert model.calls == [(96, 80)]

    model.calls.clear()
    slide = Predictor(model, mode="slide", crop_size=crop, stride=stride)
    slide_probs = slide.predict_probs(image)
    assert len(model.calls) == 6 and set(model.calls) == {(48, 48)}

    model.calls.clear()
    auto = Predictor(model, mode="whole", crop_size=crop, stride=stride, max_whole_pixels=96 * 80 - 1)
    with caplog.at_level(logging.INFO, logger="seglab.engine.inference"):
        auto_probs = auto.predict_probs(image)
    assert len(model.calls) == 6 and set(model.calls) == {(48, 48)}
    assert torch.equal(auto_probs, slide_probs)
    assert not torch.allclose(auto_probs, whole_probs, atol=1e-3)  # the switch changed the computation
    assert "96x80" in caplog.text and "max_whole_pixels=7679" in caplog.text

    # at exactly the threshold the image still runs whole
    model.calls.clear()
    at_limit = Predictor(model, mode="whole", crop_size=crop, stride=stride, max_whole_pixels=96 * 80)
    assert torch.equal(at_limit.predict_probs(image), whole_probs)
    assert model.calls == [(96, 80)]


def test_threshold_applies_per_scale():
    """With scales (0.5, 1), only the full-size pass exceeds the limit: 1 whole pass + 6 windows."""
    model = _CountingModel().eval()
    x = torch.randn(1, 3, 96, 80)
    with torch.inference_mode():
        probs = infer_probs(model, x, mode="whole", crop_size=(48, 48), stride=(32, 32), scales=(0.5, 1.0),
                            max_whole_pixels=48 * 40)
    assert model.calls == [(48, 40)] + [(48, 48)] * 6
    assert probs.shape == (1, 4, 96, 80)
    assert torch.allclose(probs.sum(dim=1), torch.ones(1, 96, 80), atol=1e-5)


def test_default_and_bad_threshold():
    model = _CountingModel()
    assert Predictor(model).max_whole_pixels == DEFAULT_MAX_WHOLE_PIXELS == 2048 * 2048
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="max_whole_pixels"):
            Predictor(model, max_whole_pixels=bad)


# -- a data worker that dies -----------------------------------------------------------------------

class _DyingDataset(torch.utils.data.Dataset):
    """Random 32x32 samples; inside a DataLoader worker, ``__getitem__`` kills the worker process."""

    def __init__(self, n: int = 8) -> None:
        self.n = n
        self.label_paths: list = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        if torch.utils.data.get_worker_info() is not None:
            os._exit(1)
        g = torch.Generator().manual_seed(index)
        return torch.randn(3, 32, 32, generator=g), torch.randint(0, 3, (32, 32), generator=g)


def test_dead_worker_fails_the_run_cleanly(tmp_path, monkeypatch):
    import seglab.data

    cfg = config_from_dict({
        "name": "dying",
        "output_dir": str(tmp_path),
        "model": {"name": "unet", "num_classes": 5, "kwargs": {"base_width": 4}},
        "data": {"dataset": "demo", "palette": "demo_shapes", "batch_size": 2, "workers": 2},
        "optim": {"name": "sgd", "lr": 0.01},
        "train": {"iters": 4, "eval_interval": 0, "checkpoint_interval": 1, "log_interval": 1, "seed": 0,
                  "device": "cpu"},
    })
    monkeypatch.setattr(seglab.data, "build_dataset", lambda *args, **kwargs: _DyingDataset())
    trainer = Trainer(cfg)
    with pytest.raises(SeglabError) as err:
        trainer.fit()
    message = str(err.value)
    assert "worker" in message.lower(), message
    assert trainer.iteration == 0


_EVALUATION_GROWTH = """
import json
import torch
from torch import nn
from benchmarks.memory import rss_mb
from seglab.engine.evaluator import evaluate


class RecordingImages(torch.utils.data.Dataset):
    # n random 256x256 images and labels; records the resident set each time one is read. keep holds on to every
    # item read (a leak of 1.3 MB per image), to show that the measurement sees one.
    def __init__(self, n, keep=False):
        self.n, self.keep, self.kept, self.rss = n, keep, [], []

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        self.rss.append(rss_mb())
        g = torch.Generator().manual_seed(index)
        item = torch.randn(3, 256, 256, generator=g), torch.randint(0, 4, (256, 256), generator=g)
        if self.keep:
            self.kept.append(item)
        return item


torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
evaluate(model, RecordingImages(10), num_classes=4, batch_size=2)  # one-time allocations (thread pools, caches)
grows = {}
for keep in (False, True):
    data = RecordingImages(60, keep=keep)
    evaluate(model, data, num_classes=4, batch_size=2)
    grows[str(keep)] = data.rss[-1] - data.rss[10]
print(json.dumps(grows))
"""


def test_evaluation_memory_does_not_grow_with_the_number_of_images():
    """The resident set while evaluating 60 images is flat after the first few (the evaluator keeps one confusion
    matrix, not per-image outputs); a dataset that leaks 1.3 MB per image shows the growth the check would see.

    Measured in a fresh process whose malloc returns every block of 128 KiB or more to the system when it is freed
    (MALLOC_MMAP_THRESHOLD_): in the suite's own process the heap left by earlier tests is resident already and
    serves new tensors without the resident set moving, so a leak would not show."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
           "MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _EVALUATION_GROWTH], env=env, cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    grows = {key == "True": value for key, value in json.loads(proc.stdout.splitlines()[-1]).items()}
    print(f"resident set growth over 50 images (MiB): {grows}")
    assert grows[False] < 25, grows  # MiB over 50 images (the allocator's noise)
    assert grows[True] > 40, grows  # the leak: 50 x 1.3 MB
