import numpy as np
import pytest
import torch
from PIL import Image

from seglab.config import DataConfig
from seglab.data.datasets import VOCSegmentation
from seglab.data.io import write_label_png
from seglab.data.palettes import get_label_set
from seglab.data.transforms import build_transforms
from seglab.errors import DatasetError

VOC = get_label_set("voc")


def make_voc(root, splits, size=(24, 32), seed=0):
    """A tiny VOC2012 tree: JPEGImages, SegmentationClass (palette PNGs), ImageSets/Segmentation."""
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    labels = {}
    for split, ids in splits.items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for i in ids:
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
            label = np.zeros(size, np.uint8)
            label[4:12, 6:20] = rng.integers(1, 21)
            label[4:12, 5] = 255
            write_label_png(root / "SegmentationClass" / f"{i}.png", label, VOC)
            labels[i] = label
    return labels


def test_reads_the_voc_layout(tmp_path):
    labels = make_voc(tmp_path, {"train": ["2007_000032", "2007_000039"], "val": ["2008_000001"]})
    ds = VOCSegmentation(tmp_path, "train")
    assert len(ds) == 2 and ds.ids == ["2007_000032", "2007_000039"]
    assert ds.image_paths[0] == tmp_path / "JPEGImages" / "2007_000032.jpg"
    assert ds.label_paths[1] == tmp_path / "SegmentationClass" / "2007_000039.png"
    assert ds.label_set.name == "voc"
    image, label = ds[1]
    assert image.mode == "RGB" and image.size == (32, 24)
    np.testing.assert_array_equal(label, labels["2007_000039"])
    assert len(VOCSegmentation(tmp_path, "val")) == 1


def test_demo_data_through_the_full_train_pipeline_keeps_255(demo_root):
    cfg = DataConfig(crop_size=[64, 64], scale_range=[0.75, 1.25], hflip=True)
    ds = VOCSegmentation(demo_root, "train", build_transforms(cfg, train=True), label_set=get_label_set("demo_shapes"))
    assert len(ds) == 24 and ds.ids[0] == "train_00000"
    raw_label = np.asarray(Image.open(ds.label_paths[0]))
    assert (raw_label == 255).any()
    torch.manual_seed(0)
    counts = []
    for i in range(4):
        image, mask = ds[i]
        assert image.shape == (3, 64, 64) and mask.shape == (64, 64) and mask.dtype == torch.int64
        values = set(mask.unique().tolist())
        assert values <= {0, 1, 2, 3, 4, 255}
        counts.append(int((mask == 255).sum()))
    assert sum(counts) > 0  # object borders survive scaling, cropping and flipping as 255
    val = VOCSegmentation(demo_root, "val", build_transforms(cfg, train=False), label_set=get_label_set("demo_shapes"))
    image, mask = val[0]
    assert image.shape == (3, 96, 96) and (mask == 255).any()


def test_missing_root_split_and_listed_files(tmp_path):
    with pytest.raises(DatasetError, match="JPEGImages"):
        VOCSegmentation(tmp_path / "nowhere")
    make_voc(tmp_path, {"train": ["a", "b"]})
    with pytest.raises(DatasetError, match=r"val\.txt.*ImageSets/Segmentation"):
        VOCSegmentation(tmp_path, "val")
    (tmp_path / "SegmentationClass" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"SegmentationClass/b\.png"):
        VOCSegmentation(tmp_path, "train")


def test_size_mismatch_names_both_files(tmp_path):
    make_voc(tmp_path, {"train": ["a"]})
    write_label_png(tmp_path / "SegmentationClass" / "a.png", np.zeros((10, 10), np.uint8), VOC)
    ds = VOCSegmentation(tmp_path, "train")
    with pytest.raises(DatasetError, match=r"SegmentationClass/a\.png.*JPEGImages/a\.jpg"):
        ds[0]


def test_out_of_range_labels_are_named(tmp_path):
    make_voc(tmp_path, {"train": ["a"]})
    label = np.zeros((24, 32), np.uint8)
    label[0, 0], label[0, 1], label[0, 2] = 21, 40, 255
    write_label_png(tmp_path / "SegmentationClass" / "a.png", label, VOC)
    with pytest.raises(DatasetError, match=r"a\.png.*\[21, 40\]"):
        VOCSegmentation(tmp_path, "train")[0]
    label[0, 0], label[0, 1] = 3, 20
    write_label_png(tmp_path / "SegmentationClass" / "a.png", label, VOC)
    assert VOCSegmentation(tmp_path, "train")[0][1][0, 1] == 20  # 20 < 21 classes: fine
    with pytest.raises(DatasetError, match=r"\[20\].*'camvid'"):
        VOCSegmentation(tmp_path, "train", label_set=get_label_set("camvid"))[0]


def _make_sbd(root, train_ids, val_ids, size=(24, 32)):
    savemat = pytest.importorskip("scipy.io").savemat
    (root / "img").mkdir(parents=True)
    (root / "cls").mkdir()
    (root / "train.txt").write_text("".join(f"{i}\n" for i in train_ids))
    (root / "val.txt").write_text("".join(f"{i}\n" for i in val_ids))
    segs = {}
    for k, i in enumerate(train_ids + val_ids):
        Image.new("RGB", size[::-1], (k * 20, 0, 0)).save(root / "img" / f"{i}.jpg")
        seg = np.zeros(size, np.uint8)
        seg[2:10, 3:9] = k + 1
        boundaries = np.empty((1, 1), dtype=object)  # SBD stores a cell of per-class boundary maps
        boundaries[0, 0] = np.zeros(size, np.uint8)
        gt = {"Segmentation": seg, "Boundaries": boundaries, "CategoriesPresent": np.uint8(k + 1)}
        savemat(root / "cls" / f"{i}.mat", {"GTcls": gt})
        segs[i] = seg
    return segs


def test_sbd_train_ids_are_merged_into_the_voc_train_split(tmp_path):
    make_voc(tmp_path / "VOC2012", {"train": ["v1", "shared"], "val": ["v2"]})
    segs = _make_sbd(tmp_path / "sbd", ["shared", "s1", "v2", "s2"], ["s3"])
    ds = VOCSegmentation(tmp_path / "VOC2012", "train", sbd_root=tmp_path / "sbd")
    # VOC ids first with their VOC files; SBD adds s1, s2 (not "shared": VOC's; not "v2": VOC val; not s3: SBD val)
    assert ds.ids == ["v1", "shared", "s1", "s2"]
    assert ds.label_paths[1] == tmp_path / "VOC2012" / "SegmentationClass" / "shared.png"
    assert ds.label_paths[2] == tmp_path / "sbd" / "cls" / "s1.mat"
    assert ds.image_paths[3] == tmp_path / "sbd" / "img" / "s2.jpg"
    image, label = ds[2]
    assert image.size == (32, 24) and label.dtype == np.uint8
    np.testing.assert_array_equal(label, segs["s1"])


def test_sbd_missing_file_and_missing_scipy(tmp_path, monkeypatch):
    import builtins

    make_voc(tmp_path / "VOC2012", {"train": ["v1"], "val": ["v2"]})
    _make_sbd(tmp_path / "sbd", ["s1"], [])
    (tmp_path / "sbd" / "cls" / "s1.mat").unlink()
    with pytest.raises(DatasetError, match=r"cls/s1\.mat"):
        VOCSegmentation(tmp_path / "VOC2012", "train", sbd_root=tmp_path / "sbd")

    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError("No module named 'scipy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    with pytest.raises(DatasetError, match=r"pip install seglab\[sbd\]"):
        VOCSegmentation(tmp_path / "VOC2012", "train", sbd_root=tmp_path / "sbd")


def test_build_dataset_merges_sbd_into_the_train_split_only(tmp_path):
    from seglab.data import build_dataset

    make_voc(tmp_path / "VOC2012", {"train": ["v1"], "val": ["v2"]})
    _make_sbd(tmp_path / "sbd", ["s1", "v2"], [])
    cfg = DataConfig(dataset="voc", root=str(tmp_path / "VOC2012"), sbd_root=str(tmp_path / "sbd"), crop_size=[16, 16])
    assert build_dataset(cfg, "train", train=True).ids == ["v1", "s1"]
    assert build_dataset(cfg, "val", train=False).ids == ["v2"]
