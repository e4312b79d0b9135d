"""seglab check-dataset finds every planted problem by kind and file, and its label statistics are exact."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from seglab.cli import main
from seglab.data import io
from seglab.data.check import check_dataset, detect_layouts
from seglab.data.io import write_label_png
from seglab.data.palettes import get_label_set

VOC = get_label_set("voc")
H, W = 12, 16


def _write_pair(img_dir, lab_dir, stem, rng, size=(H, W)):
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(img_dir / f"{stem}.jpg", quality=95)
    label = np.zeros(size, np.uint8)
    label[2:6, 3:9] = 7
    write_label_png(lab_dir / f"{stem}.png", label, VOC)


def make_voc(root, train, val=()):
    rng = np.random.default_rng(0)
    img_dir, lab_dir, lists = root / "JPEGImages", root / "SegmentationClass", root / "ImageSets" / "Segmentation"
    for d in (img_dir, lab_dir, lists):
        d.mkdir(parents=True)
    for split, ids in (("train", train), ("val", val)):
        if ids:
            (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for i in ids:
            _write_pair(img_dir, lab_dir, i, rng)
    return img_dir, lab_dir


def make_broken_voc(root):
    """A VOC tree with one clean sample and one planted problem of each kind; returns {kind: path}."""
    ids = ["clean", "missing", "trunc", "empty", "rgblab", "oor", "size", "bomb", "gray"]
    img_dir, lab_dir = make_voc(root, ids[:5], ids[5:])
    (img_dir / "missing.jpg").unlink()
    data = (img_dir / "trunc.jpg").read_bytes()
    (img_dir / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (lab_dir / "empty.png").write_bytes(b"")
    Image.new("RGB", (W, H), (128, 0, 0)).save(lab_dir / "rgblab.png")
    label = np.zeros((H, W), np.uint8)
    label[0, 0], label[0, 1] = 21, 255
    write_label_png(lab_dir / "oor.png", label, VOC)
    write_label_png(lab_dir / "size.png", np.zeros((H - 1, W), np.uint8), VOC)
    rng = np.random.default_rng(1)
    _write_pair(img_dir, lab_dir, "bomb", rng, size=(40, 40))  # 1600 pixels > the test limit of 1000
    write_label_png(lab_dir / "bomb.png", np.zeros((H, W), np.uint8), VOC)  # only the image is a bomb
    Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8)).convert("L").save(img_dir / "gray.jpg")
    return {
        "missing_file": img_dir / "missing.jpg",
        "corrupt_image": img_dir / "trunc.jpg",
        "empty_file": lab_dir / "empty.png",
        "label_mode": lab_dir / "rgblab.png",
        "label_out_of_range": lab_dir / "oor.png",
        "size_mismatch": lab_dir / "size.png",
        "decompression_bomb": img_dir / "bomb.jpg",
    }


def test_finds_every_planted_problem_with_its_file(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "MAX_IMAGE_PIXELS", 1000)
    planted = make_broken_voc(tmp_path)
    report = check_dataset(tmp_path, workers=2)
    assert not report.ok
    assert report.layouts == ["voc"] and report.splits == ["train", "val"]
    assert report.errors == {kind: [str(path)] for kind, path in planted.items()}
    assert report.warnings == {"converted_image": [str(tmp_path / "JPEGImages" / "gray.jpg")]}
    assert report.counts == {"samples": 9, **{kind: 1 for kind in planted}, "converted_image": 1}
    assert "values [21] >= 21" in report.details[str(planted["label_out_of_range"])]
    text = report.to_text()
    for kind, path in planted.items():
        assert f"{kind} (1)" in text and str(path) in text
    assert "FAILED: 7 errors" in text
    # statistics over the two samples without errors (clean, gray): 24 of 192 pixels are class 7 in each
    assert report.class_pixel_share["car"] == pytest.approx(24 / 192)
    assert report.class_pixel_share["background"] == pytest.approx(168 / 192)
    assert report.images_without_foreground == []


def test_clean_dataset_is_ok(tmp_path):
    make_voc(tmp_path, ["a", "b"], ["c"])
    report = check_dataset(tmp_path, workers=1)
    assert report.ok and report.errors == {} and report.warnings == {} and report.counts == {"samples": 3}
    assert report.to_text().endswith("OK: no errors found")


def test_config_target_missing_root_and_missing_split_list(tmp_path):
    make_voc(tmp_path / "voc", ["a"])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{dataset: voc, root: {tmp_path / 'voc'}, val_split: nosuch, palette: voc}}\n")
    report = check_dataset(cfg)
    assert report.splits == ["train", "nosuch"] and report.counts["samples"] == 1
    assert report.errors == {"missing_split_list": [str(tmp_path / "voc/ImageSets/Segmentation/nosuch.txt")]}
    cfg.write_text(f"data: {{dataset: folder, root: {tmp_path / 'gone'}}}\n")
    assert check_dataset(cfg).errors == {"missing_root": [str(tmp_path / "gone")]}


def test_folder_layout_reports_unpaired_and_bad_files(tmp_path):
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for stem in ("a", "b", "c"):
        _write_pair(root / "images", root / "masks", stem, rng)
    (root / "masks" / "c.png").unlink()
    label = np.zeros((H, W), np.uint8)
    label[3, 3] = 4
    write_label_png(root / "masks" / "b.png", label, VOC)
    assert detect_layouts(root) == ["folder"]
    report = check_dataset(root, label_set="demo_shapes")  # 5 classes: value 7 in a.png is out of range
    assert report.errors == {
        "unpaired": [str(root / "images" / "c.jpg")],
        "label_out_of_range": [str(root / "masks" / "a.png")],
    }
    assert report.class_pixel_share["star"] == pytest.approx(1 / 192)


def test_label_statistics_on_a_hand_made_set(tmp_path):
    img_dir, lab_dir = make_voc(tmp_path, [])
    (tmp_path / "ImageSets" / "Segmentation" / "train.txt").write_text("x\ny\n")
    x = np.zeros((4, 4), np.uint8)
    x[2:, 2:] = 1  # 12 background, 4 circle
    y = np.zeros((4, 4), np.uint8)
    y[3] = 255  # 12 background, 4 ignore: no foreground
    for stem, label in (("x", x), ("y", y)):
        Image.new("RGB", (4, 4)).save(img_dir / f"{stem}.jpg")
        write_label_png(lab_dir / f"{stem}.png", label, VOC)
    report = check_dataset(tmp_path, label_set="demo_shapes")
    assert report.ok
    assert report.class_pixel_share == pytest.approx(
        {"background": 24 / 28, "circle": 4 / 28, "square": 0.0, "triangle": 0.0, "star": 0.0}
    )
    assert report.images_without_foreground == [str(lab_dir / "y.png")]
    assert "background 85.71%, circle 14.29%" in report.to_text()


def test_cli_exit_codes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(io, "MAX_IMAGE_PIXELS", 1000)
    make_broken_voc(tmp_path / "broken")
    make_voc(tmp_path / "clean", ["a"])
    assert main(["check-dataset", str(tmp_path / "broken"), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert "decompression_bomb (1)" in out and "bomb.jpg" in out
    assert main(["check-dataset", str(tmp_path / "clean")]) == 0
    assert "OK: no errors found" in capsys.readouterr().out
    assert main(["check-dataset", str(tmp_path / "clean"), "--workers", "0"]) == 2  # ConfigError


def test_demo_folder_is_checked_as_voc_and_coco(demo_root, tmp_path):
    root = tmp_path / "demo"
    shutil.copytree(demo_root, root)
    assert detect_layouts(root) == ["voc", "coco"]
    assert check_dataset(root, label_set="demo_shapes").ok
    ann_file = root / "annotations" / "instances_val.json"
    data = json.loads(ann_file.read_text())
    data["annotations"][0]["category_id"] = 99
    ann_file.write_text(json.dumps(data))
    report = check_dataset(root, label_set="demo_shapes")
    where = f"{ann_file}: annotation {data['annotations'][0]['id']}"
    assert report.errors == {"unknown_category": [where]}
    assert "'category_id' 99" in report.details[where]
