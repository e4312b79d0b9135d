import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from seglab.checkpoint import save_weights
from seglab.cli import main
from seglab.config import config_from_dict
from seglab.data.datasets import FolderSegmentation, VOCSegmentation
from seglab.data.datasets.demo import generate_demo_data
from seglab.data.io import read_label
from seglab.data.palettes import LabelSet, get_label_set
from seglab.methods.naive_student import make_semi_supervised_split, naive_student, pseudo_label
from seglab.models import create_model


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    return generate_demo_data(tmp_path_factory.mktemp("ns_demo"), num_train=8, num_val=4, size=64)


@pytest.fixture(scope="module")
def split(tiny_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("ns_split")
    counts = make_semi_supervised_split(tiny_demo, out, labelled_fraction=0.5, seed=0)
    return out, counts


class FixedLogits(nn.Module):
    """Test double: returns the same logits [K, H, W] whatever the input (of that size)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2:] == self.logits.shape[-2:]
        return self.logits.expand(x.shape[0], -1, -1, -1)


def _label_set(k: int, flip_pairs=()) -> LabelSet:
    return LabelSet(f"stub{k}", tuple(f"c{i}" for i in range(k)), tuple((10 * i, 0, 0) for i in range(k)),
                    tuple(flip_pairs))


def _write_images(folder, names, h, w):
    folder.mkdir(parents=True)
    for name in names:
        Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(folder / name)


def test_pseudo_label_sets_low_confidence_pixels_to_255_in_the_folder_layout(tmp_path):
    # two classes: logit margin m gives max probability sigmoid(|m|): 2 -> 0.881, 0.4 -> 0.599, -3 -> 0.953
    margin = torch.tensor([[2.0, 0.4, -3.0], [-0.4, 2.0, 0.4]])
    model = FixedLogits(torch.stack([margin, torch.zeros_like(margin)]))
    _write_images(tmp_path / "unlabelled", ["a.png", "b.jpg"], 2, 3)
    stats = pseudo_label(model, tmp_path / "unlabelled", tmp_path / "pseudo", label_set=_label_set(2),
                         scales=(1.0,), flip=False, threshold=0.7)
    expected = np.array([[0, 255, 1], [255, 0, 255]], np.uint8)
    for stem in ("a", "b"):
        assert Image.open(tmp_path / "pseudo" / "masks" / f"{stem}.png").mode == "P"
        np.testing.assert_array_equal(read_label(tmp_path / "pseudo" / "masks" / f"{stem}.png"), expected)
    assert sorted(p.name for p in (tmp_path / "pseudo" / "images").iterdir()) == ["a.png", "b.jpg"]
    assert (tmp_path / "pseudo" / "images" / "b.jpg").read_bytes() == (tmp_path / "unlabelled" / "b.jpg").read_bytes()
    assert (stats.images, stats.class_pixels, stats.ignored_pixels) == (2, [4, 2], 6)
    assert stats.labelled_fraction == pytest.approx(0.5)
    dataset = FolderSegmentation(tmp_path / "pseudo", label_set=_label_set(2))
    assert dataset.ids == ["a", "b"]
    np.testing.assert_array_equal(dataset[1][1], expected)
    # threshold 0.5 keeps every pixel (all above 0.5); argmax where the margin is negative is class 1
    stats = pseudo_label(model, [tmp_path / "unlabelled" / "a.png"], tmp_path / "all", label_set=_label_set(2),
                         scales=(1.0,), flip=False, threshold=0.5)
    np.testing.assert_array_equal(read_label(tmp_path / "all" / "masks" / "a.png"), [[0, 0, 1], [1, 0, 0]])
    assert stats.ignored_pixels == 0 and stats.labelled_fraction == 1.0


def test_flip_tta_averages_the_flipped_probabilities_with_swapped_channels(tmp_path):
    # 3 classes, flip swaps 1 <-> 2. Column 0: class 1 at logit 4; column 1: class 0 at logit 2.
    logits = torch.zeros(3, 1, 2)
    logits[1, 0, 0], logits[0, 0, 1] = 4.0, 2.0
    p4, q4 = math.exp(4) / (math.exp(4) + 2), 1 / (math.exp(4) + 2)
    p2, q2 = math.exp(2) / (math.exp(2) + 2), 1 / (math.exp(2) + 2)
    # the flipped pass puts column 1's prediction on column 0 and column 0's (class 1 -> 2) on column 1
    conf = 0.5 * (p4 + q2)  # column 0: class 1; column 1: class 2; both 0.5356
    assert conf == pytest.approx(0.53558, abs=1e-4) and 0.5 * (q4 + p2) < conf
    _write_images(tmp_path / "in", ["x.png"], 1, 2)
    model, labels = FixedLogits(logits), _label_set(3, [(1, 2)])
    pseudo_label(model, tmp_path / "in", tmp_path / "lo", label_set=labels, scales=(1.0,), threshold=conf - 1e-3)
    np.testing.assert_array_equal(read_label(tmp_path / "lo" / "masks" / "x.png"), [[1, 2]])
    pseudo_label(model, tmp_path / "in", tmp_path / "hi", label_set=labels, scales=(1.0,), threshold=conf + 1e-3)
    np.testing.assert_array_equal(read_label(tmp_path / "hi" / "masks" / "x.png"), [[255, 255]])
    # without the swap, column 1 would average to class 1
    pseudo_label(model, tmp_path / "in", tmp_path / "noswap", label_set=labels, flip_pairs=(), scales=(1.0,),
                 threshold=0.0)
    np.testing.assert_array_equal(read_label(tmp_path / "noswap" / "masks" / "x.png"), [[1, 1]])
    # no flip: the plain argmax with its own confidences (p4 and p2 above 0.7)
    pseudo_label(model, tmp_path / "in", tmp_path / "plain", label_set=labels, flip=False, scales=(1.0,),
                 threshold=0.7)
    np.testing.assert_array_equal(read_label(tmp_path / "plain" / "masks" / "x.png"), [[1, 0]])


def test_semi_supervised_split_partitions_the_train_ids_and_keeps_val(tiny_demo, split):
    out, counts = split
    assert counts == {"labelled": 4, "unlabelled": 4, "val": 4}
    train_ids = set(VOCSegmentation(tiny_demo, "train").ids)
    labelled = {p.stem for p in (out / "labelled" / "images").iterdir()}
    unlabelled = {p.stem for p in (out / "unlabelled" / "images").iterdir()}
    assert labelled | unlabelled == train_ids and not labelled & unlabelled and len(labelled) == 4
    assert {p.stem for p in (out / "labelled" / "masks").iterdir()} == labelled
    assert not (out / "unlabelled" / "masks").exists()
    val = VOCSegmentation(tiny_demo, "val")
    folder_val = FolderSegmentation(out, "val", label_set=val.label_set)
    assert folder_val.ids == sorted(val.ids)
    np.testing.assert_array_equal(folder_val[0][1], val[val.ids.index(folder_val.ids[0])][1])
    again = make_semi_supervised_split(tiny_demo, out.parent / "again", labelled_fraction=0.5, seed=0)
    assert again == counts and {p.stem for p in (out.parent / "again" / "labelled" / "images").iterdir()} == labelled


def _tiny_cfg(root, out, iters=2) -> dict:
    return {
        "name": "tiny",
        "output_dir": str(out),
        "model": {"name": "unet", "num_classes": 5, "kwargs": {"base_width": 4}},
        "data": {"dataset": "folder", "root": str(root), "train_split": "labelled", "val_split": "val",
                 "palette": "demo_shapes", "crop_size": [64, 64], "batch_size": 2, "workers": 0},
        "optim": {"name": "adamw", "lr": 0.003},
        "schedule": {"name": "poly", "warmup_iters": 1},
        "train": {"iters": iters, "log_interval": 1, "eval_interval": 0, "checkpoint_interval": iters,
                  "device": "cpu"},
        "eval": {"batch_size": 4},
    }


def test_naive_student_one_round_trains_teacher_then_student_on_labelled_plus_pseudo(split, tmp_path):
    root, _ = split
    cfg = config_from_dict(_tiny_cfg(root, tmp_path / "runs"))
    results = naive_student(cfg, unlabelled=root / "unlabelled" / "images", rounds=1, work_dir=tmp_path / "ns",
                            threshold=0.0, scales=(0.75, 1.0), flip=True)
    assert [(r.round, r.role) for r in results] == [(0, "teacher"), (1, "student")]
    assert results[0].train_images == 4 and results[1].train_images == 8
    assert all(0.0 <= r.val_mIoU <= 1.0 for r in results)
    # threshold 0 keeps every pixel of the four 64 x 64 images
    assert results[1].pseudo.images == 4 and sum(results[1].pseudo.class_pixels) == 4 * 64 * 64
    assert results[1].pseudo.labelled_fraction == 1.0
    train = tmp_path / "ns" / "round1_data" / "train"
    names = sorted(p.stem for p in (train / "images").iterdir())
    assert sum(n.startswith("labelled_") for n in names) == 4 and sum(n.startswith("pseudo_") for n in names) == 4
    assert len(FolderSegmentation(train, label_set=get_label_set("demo_shapes"))) == 8
    for stem in (p.stem for p in (root / "unlabelled" / "images").iterdir()):
        np.testing.assert_array_equal(read_label(train / "masks" / f"pseudo_{stem}.png"),
                                      read_label(tmp_path / "ns" / "round1_pseudo" / "masks" / f"{stem}.png"))
    assert len(list((tmp_path / "ns" / "round1_data" / "val" / "images").iterdir())) == 4
    record = json.loads((tmp_path / "ns" / "naive_student.json").read_text())
    assert [r["val_mIoU"] for r in record["rounds"]] == [r.val_mIoU for r in results]
    assert record["threshold"] == 0.0 and record["scales"] == [0.75, 1.0]
    for r in results:
        assert (tmp_path / "ns" / f"round{r.round}_{r.role}" / "checkpoints" / "last.safetensors").is_file()


def test_cli_pseudo_label_and_naive_student(split, tmp_path, capsys):
    import yaml

    root, _ = split
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(_tiny_cfg(root, tmp_path / "runs")))
    model = create_model("unet", num_classes=5, base_width=4)
    weights = save_weights(tmp_path / "teacher.safetensors", model.state_dict(), {"model": "unet"})
    assert main(["pseudo-label", str(cfg_path), "--weights", str(weights), "--images",
                 str(root / "unlabelled" / "images"), "--out", str(tmp_path / "pseudo"), "--threshold", "0.0",
                 "--tta", "flip,scales=0.5,1"]) == 0
    assert "4 pseudo-labels" in capsys.readouterr().out
    masks = sorted((tmp_path / "pseudo" / "masks").iterdir())
    assert len(masks) == 4 and all((read_label(m) < 5).all() for m in masks)  # threshold 0: no pixel ignored
    assert main(["naive-student", str(cfg_path), "--unlabelled", str(root / "unlabelled" / "images"), "--rounds", "1",
                 "--teacher-weights", str(weights), "--work-dir", str(tmp_path / "ns"), "train.iters=1"]) == 0
    out = capsys.readouterr().out
    assert "round 0 teacher" in out and "round 1 student" in out
    record = json.loads((tmp_path / "ns" / "naive_student.json").read_text())
    assert record["rounds"][0]["weights"] == str(weights) and len(record["rounds"]) == 2


def test_demo_config_is_the_demo_recipe_on_the_labelled_split():
    from pathlib import Path

    from seglab.config import load_config
    from seglab.demos.semantic import demo_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs/naive_student/unet_demo_shapes.yaml")
    demo = demo_config()
    assert (cfg.model, cfg.optim, cfg.schedule, cfg.train, cfg.eval) == (
        demo.model, demo.optim, demo.schedule, demo.train, demo.eval)
    assert (cfg.data.dataset, cfg.data.train_split, cfg.data.val_split) == ("folder", "labelled", "val")
    assert (cfg.data.crop_size, cfg.data.batch_size, cfg.data.palette) == (demo.data.crop_size, 8, "demo_shapes")


def test_naive_student_on_cityscapes_with_sequence_frames_as_the_unlabelled_set(tmp_path, capsys):
    """Naive-Student's setting: a Cityscapes-layout labelled set (labelIds, mapped to train ids) and the
    leftImg8bit_sequence frames of all cities as the unlabelled images, through the CLI."""
    import yaml
    from data.layouts import CITYSCAPES_ROWS, write_cityscapes

    root = write_cityscapes(tmp_path / "cityscapes")
    cfg = _tiny_cfg(root, tmp_path / "runs", iters=1)
    cfg["model"]["num_classes"] = 19
    cfg["data"] = {"dataset": "cityscapes", "root": str(root), "crop_size": [16, 16], "batch_size": 2, "workers": 0}
    cfg_path = tmp_path / "cs.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert main(["naive-student", str(cfg_path), "--unlabelled", str(root / "leftImg8bit_sequence" / "train"),
                 "--rounds", "1", "--work-dir", str(tmp_path / "ns"), "--threshold", "0"]) == 0
    assert "round 1 student" in capsys.readouterr().out
    train = tmp_path / "ns" / "round1_data" / "train"
    pseudo = sorted(p.name for p in (train / "masks").iterdir() if p.name.startswith("pseudo_"))
    assert pseudo == [f"pseudo_aachen_000000_{i:06d}_leftImg8bit.png" for i in range(3)]
    # the labelled part is written in train ids, not linked as labelIds
    label = read_label(train / "masks" / "labelled_aachen_000000_000000.png")
    raw = read_label(root / "gtFine/train/aachen/aachen_000000_000000_gtFine_labelIds.png")
    np.testing.assert_array_equal(label, np.vectorize(CITYSCAPES_ROWS.get)(raw))
