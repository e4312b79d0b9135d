"""Cityscapes, ADE20K, CamVid and COCO-Stuff in their official layouts, on small folders written here: each loader
maps the stored ids to train ids by its dataset's rule (checked pixel by pixel against tables written out by hand),
builds from a config, names a missing file, and `seglab check-dataset` passes a clean folder and reports planted
faults with their kind and file."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.cli import main
from seglab.config import config_from_dict
from seglab.data import build_dataset
from seglab.data.check import check_dataset, detect_layouts
from seglab.data.datasets.ade20k import ADE20KSegmentation
from seglab.data.datasets.camvid import CamVidSegmentation
from seglab.data.datasets.cityscapes import CityscapesSegmentation, sequence_frames, to_label_ids
from seglab.data.datasets.coco_stuff import COCOStuffSegmentation
from seglab.errors import DatasetError

from .layouts import CITYSCAPES_ROWS, H, W, write_png

# -- Cityscapes -----------------------------------------------------------------------------------------------



def test_cityscapes_label_ids_become_the_19_train_ids(cityscapes):
    ds = CityscapesSegmentation(cityscapes, "train")
    assert len(ds) == 4 and ds.label_set.num_classes == 19 and ds.ids[0] == "aachen_000000_000000"
    for i in range(len(ds)):
        raw = np.asarray(Image.open(ds.label_paths[i]))
        _, label = ds[i]
        expected = np.vectorize(CITYSCAPES_ROWS.get)(raw)
        assert np.array_equal(label, expected)
    assert set(np.unique(label)) == set(range(19)) | {255}


def test_cityscapes_reads_label_train_ids_as_they_are_and_maps_back(cityscapes):
    ds = CityscapesSegmentation(cityscapes, "val")
    assert ds.label_paths[1].name.endswith("_gtFine_labelTrainIds.png")
    assert ds.label_paths[0].name.endswith("_gtFine_labelIds.png")
    _, label = ds[1]
    assert np.array_equal(label, np.asarray(Image.open(ds.label_paths[1])))
    back = to_label_ids(np.arange(19))
    assert [CITYSCAPES_ROWS[int(i)] for i in back] == list(range(19))
    assert to_label_ids(np.array([255]))[0] == 0


def test_cityscapes_coarse_sequence_and_config(cityscapes):
    coarse = CityscapesSegmentation(cityscapes, "train", fine=False)
    assert all("_gtCoarse_labelIds" in p.name for p in coarse.label_paths)
    _, label = coarse[0]
    assert set(np.unique(label)) <= {0, 255}
    frames = sequence_frames(cityscapes, "train")
    assert [p.name for p in frames] == [f"aachen_000000_{i:06d}_leftImg8bit.png" for i in range(3)]
    for name in ("cityscapes", "cityscapes_coarse"):
        cfg = config_from_dict({"data": {"dataset": name, "root": str(cityscapes), "crop_size": [16, 16]}})
        image, mask = build_dataset(cfg.data, "train", train=True)[0]
        assert image.shape == (3, 16, 16) and mask.shape == (16, 16) and mask.dtype == torch.int64


def test_cityscapes_missing_label_is_named(cityscapes, tmp_path):
    root = shutil.copytree(cityscapes, tmp_path / "cs")
    (root / "gtFine/train/bochum/bochum_000000_000001_gtFine_labelIds.png").unlink()
    with pytest.raises(DatasetError, match="bochum_000000_000001_gtFine_labelIds.png: label file not found"):
        CityscapesSegmentation(root, "train")
    with pytest.raises(DatasetError, match="leftImg8bit/test: Cityscapes split folder not found"):
        CityscapesSegmentation(root, "test")


def test_cityscapes_check_dataset(cityscapes, tmp_path, capsys):
    assert detect_layouts(cityscapes) == ["cityscapes", "cityscapes_coarse"]
    report = check_dataset(cityscapes)
    assert report.ok and report.warnings == {}, report.to_text()
    assert len(report.class_pixel_share) == 19
    root = shutil.copytree(cityscapes, tmp_path / "cs")
    missing = root / "gtFine/train/bochum/bochum_000000_000001_gtFine_labelIds.png"
    missing.unlink()
    bad = root / "gtFine/val/frankfurt/frankfurt_000000_000001_gtFine_labelTrainIds.png"
    write_png(bad, np.full((H, W), 19))  # train id 19 does not exist
    small = root / "gtFine/train/aachen/aachen_000000_000000_gtFine_labelIds.png"
    write_png(small, np.zeros((H, W - 1)))
    report = check_dataset(root)
    assert report.errors["missing_file"] == [str(missing)]
    assert report.errors["label_out_of_range"] == [str(bad)]
    assert report.errors["size_mismatch"] == [str(small)]
    assert "after the layout's id mapping" in report.details[str(bad)]
    assert main(["check-dataset", str(root)]) == 1
    assert str(missing) in capsys.readouterr().out


# -- ADE20K ---------------------------------------------------------------------------------------------------


def test_ade20k_reduces_the_zero_label(ade):
    ds = ADE20KSegmentation(ade, "train")
    assert len(ds) == 3 and ds.label_set.num_classes == 150 and ds.label_set.classes[0] == "wall"
    raw = np.asarray(Image.open(ds.label_paths[0]))
    _, label = ds[0]
    assert np.array_equal(label[raw == 0], np.full((raw == 0).sum(), 255))  # "other" -> ignore
    assert np.array_equal(label[raw == 255], np.full((raw == 255).sum(), 255))
    assert np.array_equal(label[(raw >= 1) & (raw <= 150)], raw[(raw >= 1) & (raw <= 150)] - 1)
    assert len(ADE20KSegmentation(ade, "validation")) == len(ADE20KSegmentation(ade, "val")) == 2
    cfg = config_from_dict({"data": {"dataset": "ade20k", "root": str(ade), "crop_size": [16, 16]}})
    assert build_dataset(cfg.data, "val", train=False)[0][1].shape == (H, W)


def test_ade20k_faults(ade, tmp_path):
    assert detect_layouts(ade) == ["ade20k"]
    assert check_dataset(ade).ok
    root = shutil.copytree(ade, tmp_path / "ADEChallengeData2016")
    bad = root / "annotations/training/ADE_train_00000001.png"
    write_png(bad, np.full((H, W), 151))  # 151 - 1 = 150: not one of the 150 classes
    missing = root / "annotations/validation/ADE_val_00000000.png"
    missing.unlink()
    with pytest.raises(DatasetError, match=r"values \[150\] are >= the 150 classes"):
        ADE20KSegmentation(root, "train")[1]
    with pytest.raises(DatasetError, match="ADE_val_00000000.png: label file not found for ADE_val_00000000.jpg"):
        ADE20KSegmentation(root, "val")
    report = check_dataset(root)
    assert report.errors == {"label_out_of_range": [str(bad)], "missing_file": [str(missing)]}


# -- CamVid ---------------------------------------------------------------------------------------------------


def test_camvid_void_is_ignored(camvid, tmp_path):
    ds = CamVidSegmentation(camvid, "train")
    assert len(ds) == 3 and ds.label_set.num_classes == 11
    raw = np.asarray(Image.open(ds.label_paths[2]))
    _, label = ds[2]
    assert np.array_equal(label, np.where(raw == 11, 255, raw))
    assert detect_layouts(camvid) == ["camvid"]
    report = check_dataset(camvid)
    assert report.ok and report.splits == ["train", "val", "test"] and report.counts["samples"] == 6
    root = shutil.copytree(camvid, tmp_path / "CamVid")
    bad = root / "valannot/0001TP_000001.png"
    write_png(bad, np.full((H, W), 12))
    stray = root / "testannot/0001TP_999999.png"
    write_png(stray, np.zeros((H, W)))
    report = check_dataset(root)
    assert report.errors == {"label_out_of_range": [str(bad)]}
    assert report.warnings == {"unpaired": [str(stray)]}


# -- COCO-Stuff -----------------------------------------------------------------------------------------------

UNUSED = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)  # stuffthingmaps ids of COCO's unused category ids 12, 26, ...


def test_coco_stuff_raw_ids_become_171_contiguous_train_ids(coco_stuff):
    ds = COCOStuffSegmentation(coco_stuff, "train")
    assert ds.label_set.num_classes == 171 and ds.label_set.classes[80] == "banner"
    raw = np.asarray(Image.open(ds.label_paths[0]))
    _, label = ds[0]
    used = [i for i in range(182) if i not in UNUSED]
    for train_id, raw_id in enumerate(used):
        assert (label[raw == raw_id] == train_id).all()
    assert (train_id, raw_id) == (170, 181)
    for unused in (*UNUSED, 255):
        assert (label[raw == unused] == 255).all()
    val = COCOStuffSegmentation(coco_stuff, "val2017")
    assert val.label_paths[1].name == "000000000001_labelTrainIds.png"
    assert np.array_equal(val[1][1], np.asarray(Image.open(val.label_paths[1])))


def test_coco_stuff_check_dataset(coco_stuff, tmp_path):
    assert detect_layouts(coco_stuff) == ["coco_stuff"]
    report = check_dataset(coco_stuff)
    assert report.ok and report.warnings == {} and report.counts["samples"] == 4, report.to_text()
    root = shutil.copytree(coco_stuff, tmp_path / "cocostuff")
    bad = root / "annotations/val2017/000000000001_labelTrainIds.png"
    write_png(bad, np.full((H, W), 171))
    report = check_dataset(root)
    assert report.errors == {"label_out_of_range": [str(bad)]}
    cfg = config_from_dict({"data": {"dataset": "coco_stuff", "root": str(coco_stuff), "crop_size": [16, 16]}})
    assert build_dataset(cfg.data, "train", train=True)[1][0].shape == (3, 16, 16)


# -- metrics: mmsegmentation's IoUMetric on ADE20K (reduce_zero_label) and COCO-Stuff, by hand ---------------


@pytest.mark.parametrize("dataset, raw, pred, expected_iou, expected_acc", [
    # ADE20K: 0 (other) ignored, k -> k - 1. Valid pixels: class 0 label 2 / pred 2 / both 1 -> 1/3; class 1:
    # 2 / 3 / 2 -> 2/3; class 2: 2 / 1 / 1 -> 1/2; mIoU 1/2, aAcc 4/6. Predictions on ignored pixels count nowhere.
    ("ade20k", [[0, 1, 1, 2], [3, 3, 0, 2]], [[5, 0, 1, 1], [2, 0, 2, 1]], {0: 1 / 3, 1: 2 / 3, 2: 1 / 2}, 4 / 6),
    # COCO-Stuff: raw 11 and 90 (unused COCO ids) and 255 ignored, 12 -> 11, 181 -> 170. Class 0 and 11 right;
    # 170 labelled but predicted 169: both IoU 0; mIoU 1/2 over the four classes seen, aAcc 2/3.
    ("coco_stuff", [[0, 11, 12], [181, 255, 90]], [[0, 3, 11], [169, 0, 0]], {0: 1.0, 11: 1.0, 169: 0.0, 170: 0.0},
     2 / 3),
])  # fmt: skip
def test_scene_metrics_follow_mmsegmentation_iou_metric(tmp_path, dataset, raw, pred, expected_iou, expected_acc):
    from seglab.engine.evaluator import ConfusionMatrix

    raw = np.asarray(raw, np.uint8)
    images, labels, cls, num_classes = {
        "ade20k": ("images/validation", "annotations/validation", ADE20KSegmentation, 150),
        "coco_stuff": ("images/val2017", "annotations/val2017", COCOStuffSegmentation, 171),
    }[dataset]
    (tmp_path / images).mkdir(parents=True)
    Image.new("RGB", raw.shape[::-1]).save(tmp_path / images / "a.jpg")
    write_png(tmp_path / labels / "a.png", raw)
    _, label = cls(tmp_path, "val")[0]  # the loader's own reading: stored ids -> train ids
    hist = ConfusionMatrix(num_classes)
    hist.update(torch.as_tensor(np.asarray(pred)), torch.as_tensor(label.astype(np.int64)))
    metrics = hist.compute()
    seen = {c: float(v) for c, v in enumerate(metrics.iou) if not np.isnan(v)}
    assert seen == pytest.approx(expected_iou)
    assert metrics.mIoU == pytest.approx(np.mean(list(expected_iou.values())))
    assert metrics.aAcc == pytest.approx(expected_acc)
