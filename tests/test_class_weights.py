import numpy as np
import pytest
import torch
from PIL import Image

from seglab.config import config_from_dict
from seglab.engine.trainer import Trainer
from seglab.errors import ConfigError
from seglab.losses import median_frequency_weights


def _config(demo_root, out, **train):
    return config_from_dict({
        "name": "cw",
        "output_dir": str(out),
        "model": {"name": "unet", "num_classes": 5, "kwargs": {"base_width": 4}},
        "data": {"dataset": "demo", "root": str(demo_root), "palette": "demo_shapes", "crop_size": [32, 32],
                 "batch_size": 2, "workers": 0},
        "train": {"iters": 1, "device": "cpu", **train},
    })


def _weights_by_hand(demo_root, num_classes=5):
    ids = (demo_root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    counts = np.zeros(num_classes, dtype=np.int64)
    image_pixels = np.zeros(num_classes, dtype=np.int64)
    for i in ids:
        label = np.array(Image.open(demo_root / "SegmentationClass" / f"{i}.png"))
        valid = label[label < num_classes]
        per_class = np.bincount(valid, minlength=num_classes)
        counts += per_class
        image_pixels += (per_class > 0) * valid.size
    return median_frequency_weights(counts, image_pixels)


def test_median_frequency_weights_from_training_labels(demo_root, tmp_path):
    trainer = Trainer(_config(demo_root, tmp_path, class_weighting="median_frequency"))
    expected = _weights_by_hand(demo_root).float()
    got = trainer.criterion.class_weights
    assert got is not None
    torch.testing.assert_close(got.cpu().float(), expected)
    assert (expected > 0).all() and not torch.allclose(expected, torch.ones(5))


def test_explicit_class_weights_win(demo_root, tmp_path):
    trainer = Trainer(_config(demo_root, tmp_path, class_weighting="median_frequency",
                              class_weights=[1.0, 2.0, 3.0, 4.0, 5.0]))
    torch.testing.assert_close(trainer.criterion.class_weights.cpu().float(), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert Trainer(_config(demo_root, tmp_path)).criterion.class_weights is None


def test_unknown_class_weighting_raises(demo_root, tmp_path):
    with pytest.raises(ConfigError, match="train.class_weighting"):
        Trainer(_config(demo_root, tmp_path, class_weighting="inverse"))

