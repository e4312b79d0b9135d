"""LIP in its official and SCHP's flat layouts (also ATR, Pascal-Person-Part), the pose CSV, and build_dataset."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.config import DataConfig
from seglab.data import build_dataset
from seglab.data.datasets.lip import LIPDataset, read_lip_pose_csv
from seglab.data.palettes import LIP_FLIP_PAIRS, get_label_set
from seglab.data.parsing_transforms import PairStepsTransform, PersonAffine
from seglab.data.transforms import HorizontalFlipWithSwap, normalize_image
from seglab.errors import ConfigError, DatasetError

H, W = 12, 10


def _label(seed, num_classes=20):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, num_classes, (H, W)).astype(np.uint8)
    label[0, 0] = 255
    return label


def _write_pair(image_dir, label_dir, image_id, seed, num_classes=20):
    rng = np.random.default_rng(100 + seed)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(image_dir / f"{image_id}.jpg", quality=95)
    Image.fromarray(_label(seed, num_classes)).save(label_dir / f"{image_id}.png")


def _pose_row(image_id, joints):
    fields = [f"{image_id}.jpg"]
    for joint in joints:
        fields += ["nan", "nan", "nan"] if joint is None else [str(v) for v in joint]
    return ",".join(fields)


def _joints(seed):
    """16 joints; joint 3 (L_Hip) missing; the others at distinct positions."""
    return [None if j == 3 else (1.0 + (j + seed) % 8, 2.0 + j % 9, j % 2) for j in range(16)]


def make_lip_official(root, ids=None):
    ids = ids or {"train": ["a1", "a2"], "val": ["b1"]}
    for k, (split, split_ids) in enumerate(ids.items()):
        image_dir = root / "TrainVal_images" / f"{split}_images"
        label_dir = root / "TrainVal_parsing_annotations" / f"{split}_segmentations"
        image_dir.mkdir(parents=True)
        label_dir.mkdir(parents=True)
        (root / "TrainVal_images" / f"{split}_id.txt").write_text("\n".join(split_ids) + "\n")
        for n, i in enumerate(split_ids):
            _write_pair(image_dir, label_dir, i, 10 * k + n)
        pose_dir = root / "TrainVal_pose_annotations"
        pose_dir.mkdir(exist_ok=True)
        rows = [_pose_row(i, _joints(10 * k + n)) for n, i in enumerate(split_ids)]
        (pose_dir / f"lip_{split}_set.csv").write_text("\n".join(rows) + "\n")
    return root


def make_flat(root, num_classes, ids=None):
    ids = ids or {"train": ["t1", "t2"], "val": ["v1"]}
    for k, (split, split_ids) in enumerate(ids.items()):
        (root / f"{split}_images").mkdir(parents=True)
        (root / f"{split}_segmentations").mkdir()
        (root / f"{split}_id.txt").write_text("\n".join(split_ids) + "\n")
        for n, i in enumerate(split_ids):
            _write_pair(root / f"{split}_images", root / f"{split}_segmentations", i, 10 * k + n, num_classes)
    return root


def test_official_layout_items(tmp_path):
    root = make_lip_official(tmp_path)
    ds = LIPDataset(root, "train")
    assert len(ds) == 2 and ds.layout == "official" and ds.ids == ["a1", "a2"] and ds.label_set.name == "lip"
    x, y = ds[1]
    jpg = np.array(Image.open(root / "TrainVal_images" / "train_images" / "a2.jpg").convert("RGB"))
    torch.testing.assert_close(x, normalize_image(jpg))
    assert y.dtype == torch.int64 and torch.equal(y, torch.from_numpy(_label(1)).long())
    assert len(LIPDataset(root, "val")) == 1


def test_pose_csv_reader_and_items_with_pose(tmp_path):
    root = make_lip_official(tmp_path)
    poses = read_lip_pose_csv(root / "TrainVal_pose_annotations" / "lip_train_set.csv")
    assert sorted(poses) == ["a1", "a2"]
    expected = np.array([(-1.0, -1.0, -1.0) if j is None else j for j in _joints(1)], np.float32)
    np.testing.assert_array_equal(poses["a2"], expected)
    assert poses["a2"][3].tolist() == [-1.0, -1.0, -1.0] and poses["a2"][4].tolist() == [6.0, 6.0, 0.0]
    ds = LIPDataset(root, "train", with_pose=True)
    x, target = ds[1]
    assert set(target) == {"mask", "joints"} and target["joints"].shape == (16, 3)
    torch.testing.assert_close(target["joints"], torch.from_numpy(expected))
    assert torch.equal(target["mask"], torch.from_numpy(_label(1)).long())


def test_with_pose_through_person_affine_maps_the_joints(tmp_path):
    root = make_lip_official(tmp_path)
    # output 2x the image: H, W = 12, 10 -> 24 x 20; box (9, 11) -> aspect 20/24: w = 11 * 20/24 = 9.1667
    t = PersonAffine((24, 20), train=False)
    x, target = LIPDataset(root, "train", t, with_pose=True)[0]
    assert x.shape == (3, 24, 20) and target["mask"].shape == (24, 20)
    k = 19 / (11 * 20 / 24)
    raw = read_lip_pose_csv(root / "TrainVal_pose_annotations" / "lip_train_set.csv")["a1"]
    for j in (0, 5, 9):
        ex = k * (raw[j, 0] - 4.5) + 9.5
        ey = k * (raw[j, 1] - 5.5) + 11.5
        assert math.isclose(target["joints"][j, 0], ex, rel_tol=1e-5)
        assert math.isclose(target["joints"][j, 1], ey, rel_tol=1e-5)
        assert target["joints"][j, 2] == raw[j, 2]
    assert target["joints"][3].tolist() == [-1.0, -1.0, -1.0]


def test_malformed_pose_rows_name_file_line_and_field(tmp_path):
    good = _pose_row("x", _joints(0))
    path = tmp_path / "lip_train_set.csv"
    path.write_text(good + "\n" + good.rsplit(",", 1)[0] + "\n")
    with pytest.raises(DatasetError, match=r"lip_train_set\.csv: line 2 has 48 fields; expected 49"):
        read_lip_pose_csv(path)
    fields = good.split(",")
    fields[5] = "abc"  # joint 1 (R_Knee), y
    path.write_text(good + "\n" + ",".join(fields) + "\n")
    with pytest.raises(DatasetError, match=r"line 2, field 6 \(R_Knee y\) is 'abc'"):
        read_lip_pose_csv(path)


def test_missing_pose_csv_and_missing_rows_are_named(tmp_path):
    root = make_lip_official(tmp_path)
    csv = root / "TrainVal_pose_annotations" / "lip_val_set.csv"
    csv.write_text(_pose_row("other", _joints(0)) + "\n")
    with pytest.raises(DatasetError, match=r"lip_val_set\.csv: no row for image 'b1'"):
        LIPDataset(root, "val", with_pose=True)
    csv.unlink()
    with pytest.raises(DatasetError, match=r"lip_val_set\.csv: pose CSV not found"):
        LIPDataset(root, "val", with_pose=True)
    assert len(LIPDataset(root, "val")) == 1  # without pose the CSV is not needed


def test_missing_folders_and_files_are_named(tmp_path):
    with pytest.raises(DatasetError, match="TrainVal_images.*flat layout"):
        LIPDataset(tmp_path, "train")
    root = make_lip_official(tmp_path / "lip")
    (root / "TrainVal_parsing_annotations" / "train_segmentations" / "a2.png").unlink()
    with pytest.raises(DatasetError, match=r"train_segmentations/a2\.png: listed file not found"):
        LIPDataset(root, "train")
    import shutil

    shutil.rmtree(root / "TrainVal_parsing_annotations")
    with pytest.raises(DatasetError, match=r"train_segmentations: folder not found"):
        LIPDataset(root, "train")


def test_flat_layout_for_lip_atr_and_pascal_person_part(tmp_path):
    lip = LIPDataset(make_flat(tmp_path / "lip", 20), "val")
    assert lip.layout == "flat" and lip.ids == ["v1"]
    assert torch.equal(lip[0][1], torch.from_numpy(_label(10)).long())
    atr = LIPDataset(make_flat(tmp_path / "atr", 18), "train", label_set="atr")
    assert atr.label_set.name == "atr" and int(atr[0][1][atr[0][1] != 255].max()) <= 17
    ppp_root = make_flat(tmp_path / "ppp", 7)
    ppp = LIPDataset(ppp_root, "train", label_set="pascal_person_part")
    assert torch.equal(ppp[1][1], torch.from_numpy(_label(1, 7)).long())
    bad = _label(0, 7)
    bad[3, 3] = 9  # not a Pascal-Person-Part label
    Image.fromarray(bad).save(ppp_root / "train_segmentations" / "t1.png")
    with pytest.raises(DatasetError, match=r"t1\.png: label values \[9\].*'pascal_person_part'"):
        ppp[0]


def test_build_dataset_lip_crop_pipeline_swaps_the_label_sets_pairs(tmp_path):
    root = make_lip_official(tmp_path)
    cfg = DataConfig(dataset="lip", root=str(root), crop_size=[8, 8])
    train = build_dataset(cfg, "train", train=True, task="parsing")
    assert isinstance(train, LIPDataset) and train.label_set.name == "lip"
    assert isinstance(train.transform, PairStepsTransform)
    flips = [s for s in train.transform.steps if isinstance(s, HorizontalFlipWithSwap)]
    assert len(flips) == 1 and flips[0].pairs == LIP_FLIP_PAIRS  # data.label_swap empty -> the LIP pairs
    x, y = train[0]
    assert x.shape == (3, 8, 8) and y.shape == (8, 8) and y.dtype == torch.int64
    val = build_dataset(cfg, "val", train=False, task="parsing")
    x, y = val[0]
    assert val.transform is None and x.shape == (3, H, W)  # evaluation keeps the original size
    with pytest.raises(ConfigError, match=r"data\.with_pose: .*person_affine"):
        build_dataset(DataConfig(dataset="lip", root=str(root), with_pose=True), "train", train=True)


def test_build_dataset_lip_person_affine_with_pose(tmp_path):
    root = make_lip_official(tmp_path)
    cfg = DataConfig(dataset="lip", root=str(root), crop_size=[16, 12], augment="person_affine", with_pose=True,
                     rotation=10.0, rotation_p=0.5, scale_factor=0.1)
    ds = build_dataset(cfg, "train", train=True, task="semantic")
    t = ds.transform
    assert isinstance(t, PersonAffine) and t.size == (16, 12) and t.flip_pairs == LIP_FLIP_PAIRS
    assert (t.rotation, t.rotation_p, t.scale_factor, t.flip_p) == (10.0, 0.5, 0.1, 0.5)
    x, target = ds[0]
    assert x.shape == (3, 16, 12) and target["mask"].shape == (16, 12) and target["joints"].shape == (16, 3)
    with pytest.raises(ConfigError, match=r"data\.augment: unknown augmentation 'mosaic'"):
        build_dataset(DataConfig(dataset="lip", root=str(root), augment="mosaic"), "train", train=True)


def test_build_dataset_atr_and_pascal_person_part(tmp_path):
    atr = build_dataset(DataConfig(dataset="atr", root=str(make_flat(tmp_path / "atr", 18)), crop_size=[8, 8]),
                        "train", train=True, task="parsing")
    assert atr.label_set is get_label_set("atr")
    flips = [s for s in atr.transform.steps if isinstance(s, HorizontalFlipWithSwap)]
    assert flips[0].pairs == ((9, 10), (12, 13), (14, 15))
    ppp_cfg = DataConfig(dataset="pascal_person_part", root=str(make_flat(tmp_path / "ppp", 7)), crop_size=[8, 8])
    ppp = build_dataset(ppp_cfg, "val", train=False, task="parsing")
    assert ppp.label_set.name == "pascal_person_part" and len(ppp) == 1
    assert torch.equal(ppp[0][1], torch.from_numpy(_label(10, 7)).long())
    train = build_dataset(ppp_cfg, "train", train=True)
    flips = [s for s in train.transform.steps if isinstance(s, HorizontalFlipWithSwap)]
    assert flips[0].pairs == ()  # no left/right labels
    with pytest.raises(ConfigError, match=r"data\.root: the atr dataset needs data\.root"):
        build_dataset(DataConfig(dataset="atr"), "train", train=True)
    with pytest.raises(ConfigError, match=r"data\.dataset: 'voc' is not a human-parsing dataset"):
        build_dataset(DataConfig(dataset="voc", root="x"), "train", train=True, task="parsing")
