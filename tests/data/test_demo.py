import json
import time

import numpy as np
import pytest
from PIL import Image

from seglab.data.datasets import demo as demo_module
from seglab.data.datasets import ensure_demo_data, generate_demo_data
from seglab.errors import DatasetError


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    a = _files(generate_demo_data(tmp_path / "a", seed=3, num_train=3, num_val=2, size=64))
    b = _files(generate_demo_data(tmp_path / "b", seed=3, num_train=3, num_val=2, size=64))
    c = _files(generate_demo_data(tmp_path / "c", seed=4, num_train=3, num_val=2, size=64))
    assert a.keys() == b.keys() == c.keys()
    assert a == b
    assert a["JPEGImages/train_00000.jpg"] != c["JPEGImages/train_00000.jpg"]
    assert a["SegmentationClass/val_00001.png"] != c["SegmentationClass/val_00001.png"]


def test_voc_layout_and_counts(demo_root):
    sets = demo_root / "ImageSets" / "Segmentation"
    train = sets.joinpath("train.txt").read_text().split()
    val = sets.joinpath("val.txt").read_text().split()
    assert len(train) == 24 and len(val) == 6
    assert sets.joinpath("trainval.txt").read_text().split() == train + val
    for i in train + val:
        assert (demo_root / "JPEGImages" / f"{i}.jpg").is_file()
    manifest = json.loads((demo_root / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["num_train"] == 24 and manifest["num_val"] == 6
    assert manifest["size"] == 96 and manifest["classes"] == ["background", "circle", "square", "triangle", "star"]
    with Image.open(demo_root / "JPEGImages" / f"{train[0]}.jpg") as img:
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (96, 96)
    with Image.open(demo_root / "SegmentationClass" / f"{train[0]}.png") as lab:
        assert lab.mode == "P" and lab.size == (96, 96)
    with Image.open(demo_root / "SegmentationObject" / f"{train[0]}.png") as obj:
        assert obj.mode == "P"
    assert not [p for p in demo_root.parent.iterdir() if p.name.endswith(".tmp")]  # no leftover temporary


def test_all_classes_present_and_borders_are_255(demo_root):
    seen = np.zeros(256, bool)
    for path in sorted((demo_root / "SegmentationClass").glob("*.png")):
        label = np.asarray(Image.open(path))
        seen[np.unique(label)] = True
        objects = np.asarray(Image.open(demo_root / "SegmentationObject" / path.name))
        np.testing.assert_array_equal(objects == 255, label == 255)  # the same borders
        np.testing.assert_array_equal(objects == 0, label == 0)
    assert np.flatnonzero(seen).tolist() == [0, 1, 2, 3, 4, 255]


def test_borders_surround_each_object(demo_root):
    label = np.asarray(Image.open(demo_root / "SegmentationClass" / "train_00000.png"))
    objects = np.asarray(Image.open(demo_root / "SegmentationObject" / "train_00000.png"))
    for k in set(np.unique(objects).tolist()) - {0, 255}:
        ys, xs = np.nonzero(objects == k)
        # scanning a row through the object: background, then 255, then the object
        y = int(np.median(ys))
        row = label[y]
        first = int(xs[ys == y].min())
        assert row[first - 1] == 255
    assert (label == 255).sum() > 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode under NumPy 2
def test_coco_json_decodes_to_the_visible_instance_masks(demo_root):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    coco = COCO(str(demo_root / "annotations" / "instances_val.json"))
    assert sorted(coco.getCatIds()) == [1, 2, 3, 4]
    assert [c["name"] for c in coco.loadCats([1, 2, 3, 4])] == ["circle", "square", "triangle", "star"]
    assert len(coco.getImgIds()) == 6
    n_checked = 0
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        stem = info["file_name"].removesuffix(".jpg")
        assert (demo_root / "JPEGImages" / info["file_name"]).is_file()
        objects = np.asarray(Image.open(demo_root / "SegmentationObject" / f"{stem}.png"))
        label = np.asarray(Image.open(demo_root / "SegmentationClass" / f"{stem}.png"))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert len(anns) == len(set(np.unique(objects).tolist()) - {0, 255})
        for k, ann in enumerate(anns, start=1):
            visible = mask_utils.decode(ann["segmentation"]).astype(bool)
            assert ann["iscrowd"] == 0 and ann["area"] == visible.sum()
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(visible)
            assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            inner = objects != 255
            np.testing.assert_array_equal(visible[inner], (objects == k)[inner])  # instance k minus borders
            assert (label[visible & inner] == ann["category_id"]).all()
            n_checked += 1
    assert n_checked > 6


def test_ensure_demo_data_reuses_then_regenerates(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(demo_module, "DEMO_PARAMS", {"seed": 1, "num_train": 2, "num_val": 1, "size": 48})
    root = ensure_demo_data()
    assert root == tmp_path / "cache" / "demo_shapes"
    manifest = root / "manifest.json"
    first = manifest.stat().st_mtime_ns
    time.sleep(0.01)
    assert ensure_demo_data() == root
    assert manifest.stat().st_mtime_ns == first  # reused, not regenerated
    manifest.unlink()
    ensure_demo_data()
    assert manifest.is_file() and manifest.stat().st_mtime_ns > first
    monkeypatch.setattr(demo_module, "DEMO_PARAMS", {"seed": 1, "num_train": 3, "num_val": 1, "size": 48})
    ensure_demo_data()  # different parameters: regenerated
    assert len((root / "ImageSets/Segmentation/train.txt").read_text().split()) == 3
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["demo_shapes"]  # nothing left beside it


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DatasetError, match="thesis.tex"):
        generate_demo_data(tmp_path / "mine", num_train=1, num_val=1, size=48)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_an_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_module, "_coco_annotations", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_demo_data(tmp_path / "demo", num_train=2, num_val=1, size=48)
    assert list(tmp_path.iterdir()) == []
