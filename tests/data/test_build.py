import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.config import DataConfig
from seglab.data import build_dataset
from seglab.data.datasets import FolderSegmentation, VOCSegmentation
from seglab.errors import ConfigError


def test_demo_dataset(demo_root):
    cfg = DataConfig(dataset="demo", root=str(demo_root), palette="demo_shapes", crop_size=[48, 48])
    train = build_dataset(cfg, "train", train=True)
    val = build_dataset(cfg, "val", train=False)
    assert isinstance(train, VOCSegmentation) and len(train) == 24 and len(val) == 6
    assert train.label_set.name == "demo_shapes"
    x, y = train[0]
    assert x.shape == (3, 48, 48) and y.shape == (48, 48) and y.dtype == torch.int64
    x, y = val[0]
    assert x.shape == (3, 96, 96)


def test_demo_dataset_defaults_to_the_cache(tmp_path, monkeypatch):
    from seglab.data.datasets import demo as demo_module

    monkeypatch.setenv("SEGLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(demo_module, "DEMO_PARAMS", {"seed": 0, "num_train": 2, "num_val": 1, "size": 48})
    ds = build_dataset(DataConfig(dataset="demo", palette="demo_shapes"), "val", train=False)
    assert len(ds) == 1 and ds.root == tmp_path / "demo_shapes"


def test_folder_dataset(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for stem in ("a", "b"):
        Image.new("RGB", (20, 10)).save(tmp_path / "images" / f"{stem}.png")
        Image.fromarray(np.ones((10, 20), np.uint8)).save(tmp_path / "masks" / f"{stem}.png")
    cfg = DataConfig(dataset="folder", root=str(tmp_path), crop_size=[8, 8], palette="camvid")
    ds = build_dataset(cfg, "train", train=True)
    assert isinstance(ds, FolderSegmentation) and len(ds) == 2 and ds.label_set.name == "camvid"
    x, y = ds[1]
    assert x.shape == (3, 8, 8) and set(y.unique().tolist()) <= {1, 255}


def test_unknown_dataset_and_palette_are_config_errors():
    with pytest.raises(ConfigError, match=r"data\.dataset: .*'imagenet'"):
        build_dataset(DataConfig(dataset="imagenet"), "train", train=True)
    with pytest.raises(ConfigError, match=r"data\.palette"):
        build_dataset(DataConfig(dataset="demo", root="x", palette="nope"), "train", train=True)


def test_importing_seglab_data_is_light():
    code = "import sys, seglab.data; print(any(m in sys.modules for m in ('scipy', 'pycocotools', 'torchvision')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
