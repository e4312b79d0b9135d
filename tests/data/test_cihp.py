"""CIHP in its official layout: semantic items, person ids, per-person instance items, the id-map consistency check."""

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.config import DataConfig
from seglab.data import build_dataset
from seglab.data.datasets.cihp import CIHPDataset, check_cihp_ids
from seglab.data.parsing_transforms import InstanceFlipWithSwap, PersonAffine
from seglab.data.transforms import normalize_image
from seglab.errors import ConfigError, DatasetError

H, W = 10, 12


def two_people():
    """Person 1: x 1..4, y 1..4 (hair above a left arm); person 2: x 6..10, y 5..8 (face above upper clothes)."""
    category = np.zeros((H, W), np.uint8)
    instance = np.zeros((H, W), np.uint8)
    human = np.zeros((H, W), np.uint8)
    human[1:5, 1:5] = 1
    category[1:3, 1:5], instance[1:3, 1:5] = 2, 1
    category[3:5, 1:5], instance[3:5, 1:5] = 14, 2
    human[5:9, 6:11] = 2
    category[5:7, 6:11], instance[5:7, 6:11] = 13, 3
    category[7:9, 6:11], instance[7:9, 6:11] = 5, 4
    return category, instance, human


def write_sample(folder, image_id, maps, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(folder / "Images" / f"{image_id}.jpg")
    for name, values in zip(("Category_ids", "Instance_ids", "Human_ids"), maps, strict=True):
        Image.fromarray(values).save(folder / name / f"{image_id}.png")


def make_cihp(root, inner=True):
    base = root / "instance-level_human_parsing" if inner else root
    for split, folder_name, ids in (("train", "Training", ["c1", "c2"]), ("val", "Validation", ["d1"])):
        folder = base / folder_name
        for name in ("Images", "Category_ids", "Instance_ids", "Human_ids"):
            (folder / name).mkdir(parents=True)
        (folder / f"{split}_id.txt").write_text("\n".join(ids) + "\n")
        for n, i in enumerate(ids):
            category, instance, human = two_people()
            if n == 1:  # the second image shows person 2 only
                keep = human == 2
                category, instance, human = category * keep, instance * keep, human * keep
            write_sample(folder, i, (category, instance, human), seed=n)
    return root


def test_semantic_items_and_person_ids(tmp_path):
    root = make_cihp(tmp_path)
    ds = CIHPDataset(root, "train")
    assert len(ds) == 2 and ds.label_set.name == "cihp"
    x, y = ds[0]
    image = np.array(Image.open(root / "instance-level_human_parsing" / "Training" / "Images" / "c1.jpg"))
    torch.testing.assert_close(x, normalize_image(image))
    category, _, human = two_people()
    assert y.dtype == torch.int64 and torch.equal(y, torch.from_numpy(category).long())
    x, target = CIHPDataset(root, "train", with_humans=True)[0]
    assert torch.equal(target["mask"], torch.from_numpy(category).long())
    assert torch.equal(target["human_ids"], torch.from_numpy(human).long())
    # root may be the instance-level_human_parsing folder itself
    assert len(CIHPDataset(root / "instance-level_human_parsing", "val")) == 1


def test_person_ids_follow_person_affine_with_fill_0(tmp_path):
    root = make_cihp(tmp_path)
    # 10 x 12 into 14 x 12: box (11, 9) -> height 11 * 14/12, k = 11/11 = 1; centre row 4.5 -> 6.5: rows shift by 2
    x, target = CIHPDataset(root, "train", PersonAffine((14, 12), train=False), with_humans=True)[0]
    category, _, human = two_people()
    assert x.shape == (3, 14, 12)
    assert torch.equal(target["human_ids"][2:12], torch.from_numpy(human).long())
    assert (target["human_ids"][:2] == 0).all() and (target["mask"][:2] == 255).all()
    assert torch.equal(target["mask"][2:12], torch.from_numpy(category).long())


def test_instance_items_per_person(tmp_path):
    root = make_cihp(tmp_path)
    image, target = CIHPDataset(root, "train", instance=True)[0]
    assert image.dtype == torch.float32 and 0 <= float(image.min()) and float(image.max()) <= 1
    jpg = np.array(Image.open(root / "instance-level_human_parsing" / "Training" / "Images" / "c1.jpg"))
    torch.testing.assert_close(image.as_subclass(torch.Tensor), torch.from_numpy(jpg).permute(2, 0, 1).float() / 255)
    assert target["boxes"].tolist() == [[1.0, 1.0, 5.0, 5.0], [6.0, 5.0, 11.0, 9.0]]  # x2 = last column + 1
    assert target["labels"].tolist() == [1, 1] and target["image_id"] == 0
    assert target["masks"].dtype == torch.uint8 and target["masks"].sum(dim=(1, 2)).tolist() == [16, 20]
    assert target["area"].tolist() == [16.0, 20.0] and target["iscrowd"].tolist() == [0, 0]
    category, _, human = two_people()
    for k in range(2):
        expected = np.where(human == k + 1, category, 0)
        assert target["parsing"].dtype == torch.int64
        assert torch.equal(target["parsing"][k].as_subclass(torch.Tensor), torch.from_numpy(expected).long())
    _, target = CIHPDataset(root, "train", instance=True)[1]
    assert target["boxes"].tolist() == [[6.0, 5.0, 11.0, 9.0]] and target["parsing"].shape == (1, H, W)


def test_inconsistent_id_maps_raise_naming_file_and_id(tmp_path):
    category, instance, human = two_people()
    check_cihp_ids(category, instance, human, "ok")  # consistent: no error
    spread = instance.copy()
    spread[5, 6] = 2  # part instance 2 (person 1's left arm) also on a pixel of person 2
    with pytest.raises(DatasetError, match=r"x\.png: part instance id 2 spans person \(Human_ids\) values \[1, 2\]"):
        check_cihp_ids(category, spread, human, "x.png")
    two_labels = category.copy()
    two_labels[1, 1] = 5  # part instance 1 carries hair and upper clothes
    with pytest.raises(DatasetError, match=r"part instance id 1 spans category \(Category_ids\) values \[2, 5\]"):
        check_cihp_ids(two_labels, instance, human, "x.png")
    unlabelled = category.copy()
    unlabelled[2, 3] = 0
    with pytest.raises(DatasetError, match=r"human id 1 at pixel \(x=3, y=2\) has category 0"):
        check_cihp_ids(unlabelled, instance, human, "x.png")
    outside = instance.copy()
    outside[0, 0] = 7
    with pytest.raises(DatasetError, match=r"part instance id 7 at pixel \(x=0, y=0\) lies outside every person"):
        check_cihp_ids(category, outside, human, "x.png")
    # read from disk: the message names the file
    root = make_cihp(tmp_path)
    folder = root / "instance-level_human_parsing" / "Validation"
    Image.fromarray(spread).save(folder / "Instance_ids" / "d1.png")
    ds = CIHPDataset(root, "val")
    named = r"Human_ids/d1\.png with Category_ids/ and Instance_ids/: part instance id 2 spans"
    with pytest.raises(DatasetError, match=named):
        ds[0]
    assert CIHPDataset(root, "val", check_ids=False)[0][1].shape == (H, W)


def test_missing_folders_and_bad_split(tmp_path):
    root = make_cihp(tmp_path)
    with pytest.raises(DatasetError, match=r"unknown CIHP split 'test'"):
        CIHPDataset(root, "test")
    (root / "instance-level_human_parsing" / "Validation" / "Human_ids" / "d1.png").unlink()
    with pytest.raises(DatasetError, match=r"Human_ids/d1\.png: listed file not found"):
        CIHPDataset(root, "val")
    with pytest.raises(DatasetError, match=r"Training: folder not found"):
        CIHPDataset(tmp_path / "instance-level_human_parsing" / "Validation", "train")


def test_build_dataset_cihp_semantic_and_instance(tmp_path):
    root = make_cihp(tmp_path)
    cfg = DataConfig(dataset="cihp", root=str(root), crop_size=[8, 8])
    train = build_dataset(cfg, "train", train=True, task="parsing")
    assert isinstance(train, CIHPDataset) and not train.instance
    x, y = train[0]
    assert x.shape == (3, 8, 8) and y.shape == (8, 8)
    val = build_dataset(DataConfig(dataset="cihp", root=str(root), with_humans=True), "val", train=False)
    x, target = val[0]
    assert x.shape == (3, H, W) and torch.equal(target["human_ids"], torch.from_numpy(two_people()[2]).long())
    inst = build_dataset(cfg, "train", train=True, task="instance")
    assert inst.instance and isinstance(inst.transform.transforms[0], InstanceFlipWithSwap)
    image, target = inst[0]
    assert image.dtype == torch.float32 and image.shape == (3, H, W) and target["parsing"].shape[1:] == (H, W)
    parts = set(target["parsing"].unique().tolist())
    assert parts <= {0, 2, 13, 5, 14, 15}  # a flip turns the left arm (14) into a right arm (15)
    with pytest.raises(ConfigError, match=r"data\.with_humans: .*person_affine"):
        build_dataset(DataConfig(dataset="cihp", root=str(root), with_humans=True), "train", train=True)
    with pytest.raises(ConfigError, match=r"data\.dataset: 'lip' has no person instances"):
        build_dataset(DataConfig(dataset="lip", root=str(root)), "train", train=True, task="instance")
