"""seglab check-dataset on the human-parsing layouts: planted faults in LIP and CIHP folders are each reported with
their kind and file, a clean folder passes, and configs of the parsing datasets are checked with their label set."""

import shutil

import numpy as np
import pytest
from PIL import Image

from seglab.cli import main
from seglab.data.check import check_dataset, detect_layouts
from seglab.data.datasets.demo_people import generate_demo_people
from seglab.errors import ConfigError


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    """Demo people in the official LIP and CIHP layouts (LIP: 4 train, 3 val; CIHP: 3 train, 2 val; 64x64)."""
    root = tmp_path_factory.mktemp("people") / "demo_people"
    return generate_demo_people(root, seed=0, num_train=4, num_val=3, size=64, num_cihp_train=3, num_cihp_val=2)


@pytest.fixture
def lip(people, tmp_path):
    return shutil.copytree(people / "LIP", tmp_path / "LIP")


@pytest.fixture
def cihp(people, tmp_path):
    return shutil.copytree(people / "CIHP", tmp_path / "CIHP")


def _write_png(path, array):
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def plant_lip_faults(root):
    """One fault of each kind in the official LIP layout under ``root``; returns ``{kind: [path, ...]}``."""
    images, labels = root / "TrainVal_images", root / "TrainVal_parsing_annotations"
    train_img, train_lab = images / "train_images", labels / "train_segmentations"
    val_img, val_lab = images / "val_images", labels / "val_segmentations"
    (train_lab / "train_00000.png").unlink()  # a missing label file
    Image.new("RGB", (64, 64), (128, 0, 0)).save(train_lab / "train_00001.png")  # a colour label
    label = np.asarray(Image.open(train_lab / "train_00002.png")).copy()
    label[0, 0] = 25  # not a LIP label (20 classes)
    _write_png(train_lab / "train_00002.png", label)
    _truncate(val_img / "val_00000.jpg")
    _write_png(val_lab / "val_00001.png", np.zeros((60, 64)))  # label 64x60, image 64x64
    with open(images / "train_id.txt", "a") as fh:
        fh.write("ghost\n")  # listed, no files
    return {
        "missing_file": [train_lab / "train_00000.png", train_img / "ghost.jpg", train_lab / "ghost.png"],
        "label_mode": [train_lab / "train_00001.png"],
        "label_out_of_range": [train_lab / "train_00002.png"],
        "corrupt_image": [val_img / "val_00000.jpg"],
        "size_mismatch": [val_lab / "val_00001.png"],
    }


def plant_cihp_faults(root):
    """Faults in the CIHP layout under ``root``: each kind with its files."""
    train = root / "instance-level_human_parsing" / "Training"
    val = root / "instance-level_human_parsing" / "Validation"
    (train / "Human_ids" / "train_00000.png").unlink()
    _write_png(train / "Instance_ids" / "train_00001.png", np.zeros((32, 64)))  # Category_ids is 64x64
    category = np.asarray(Image.open(train / "Category_ids" / "train_00002.png")).copy()
    category[0, 0] = 25
    _write_png(train / "Category_ids" / "train_00002.png", category)
    _write_png(val / "Human_ids" / "val_00000.png", np.zeros((64, 64)))  # every part now lies outside a person
    _truncate(val / "Images" / "val_00001.jpg")
    return {
        "missing_file": [train / "Human_ids" / "train_00000.png"],
        "size_mismatch": [train / "Instance_ids" / "train_00001.png"],
        "label_out_of_range": [train / "Category_ids" / "train_00002.png"],
        "inconsistent_ids": [val / "Human_ids" / "val_00000.png"],
        "corrupt_image": [val / "Images" / "val_00001.jpg"],
    }


def assert_reports_planted(root, planted, capsys):
    """check_dataset reports exactly the planted errors; the CLI exits 1 and prints each kind and file."""
    report = check_dataset(root, workers=2)
    assert {kind: sorted(paths) for kind, paths in report.errors.items()} == {
        kind: sorted(map(str, paths)) for kind, paths in planted.items()
    }
    assert main(["check-dataset", str(root), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    for kind, paths in planted.items():
        assert f"{kind} ({len(paths)})" in out and all(str(p) in out for p in paths)
    return report, out


def test_clean_lip_and_cihp_folders_pass(people, capsys):
    assert detect_layouts(people / "LIP") == ["lip"]
    assert detect_layouts(people / "CIHP") == ["cihp"]
    assert detect_layouts(people / "CIHP" / "instance-level_human_parsing") == ["cihp"]
    for part, label_set, samples in (("LIP", "lip", 7), ("CIHP", "cihp", 5)):
        report = check_dataset(people / part)
        assert report.ok and report.warnings == {} and report.counts == {"samples": samples}
        assert report.layouts == [part.lower()] and report.splits == ["train", "val"]
        assert report.label_set == label_set and len(report.class_pixel_share) == 20
        assert main(["check-dataset", str(people / part)]) == 0
        assert "OK: no errors found" in capsys.readouterr().out


def test_lip_folder_faults_are_reported_with_kind_and_file(lip, capsys):
    planted = plant_lip_faults(lip)
    report, _ = assert_reports_planted(lip, planted, capsys)
    assert "values [25] >= 20" in report.details[str(planted["label_out_of_range"][0])]
    assert "64x60" in report.details[str(planted["size_mismatch"][0])]


def test_lip_folder_layout_problems_pose_csv_and_unlisted_files(lip):
    (lip / "TrainVal_images" / "val_id.txt").unlink()
    pose = lip / "TrainVal_pose_annotations" / "lip_train_set.csv"
    pose.write_text(pose.read_text().replace(",", ",x", 1))  # the first joint's x is not a number
    orphan = lip / "TrainVal_parsing_annotations" / "train_segmentations" / "extra.png"
    _write_png(orphan, np.zeros((64, 64)))
    report = check_dataset(lip)
    assert report.splits == ["train"]  # val has no id list, so it is not detected
    assert report.errors == {"bad_pose_csv": [str(pose)]}
    assert "line 1, field 2 (R_Ankle x)" in report.details[str(pose)]
    assert report.warnings == {"unpaired": [str(orphan)]}
    assert "bad_pose_csv (1): LIP pose CSV" in report.to_text()

    cfg = lip.parent / "lip.yaml"
    cfg.write_text(f"data: {{dataset: lip, root: {lip}}}\n")
    report = check_dataset(cfg)  # a config names its splits: the missing list is an error
    assert report.errors["missing_split_list"] == [str(lip / "TrainVal_images" / "val_id.txt")]
    shutil.rmtree(lip / "TrainVal_parsing_annotations" / "train_segmentations")
    report = check_dataset(cfg)
    assert report.errors["missing_root"] == [str(lip / "TrainVal_parsing_annotations" / "train_segmentations")]


def test_cihp_folder_faults_are_reported_with_kind_and_file(cihp, capsys):
    planted = plant_cihp_faults(cihp)
    extra = cihp / "instance-level_human_parsing" / "Validation" / "Images" / "extra.jpg"
    Image.new("RGB", (64, 64)).save(extra)  # in no split list and without maps: a warning
    report, out = assert_reports_planted(cihp, planted, capsys)
    assert report.warnings == {"unpaired": [str(extra)]}
    assert "missing from Category_ids, Instance_ids, Human_ids" in report.details[str(extra)]
    assert "outside every person" in report.details[str(planted["inconsistent_ids"][0])]
    assert "64x32" in report.details[str(planted["size_mismatch"][0])]
    assert "inconsistent_ids (1): CIHP Category_ids, Instance_ids and Human_ids disagree" in out


def test_cihp_missing_map_folder_and_split_list(cihp):
    train = cihp / "instance-level_human_parsing" / "Training"
    shutil.rmtree(train / "Human_ids")
    (cihp / "instance-level_human_parsing" / "Validation" / "val_id.txt").unlink()
    report = check_dataset(cihp)
    assert report.errors == {
        "missing_root": [str(train / "Human_ids")],
        "missing_split_list": [str(cihp / "instance-level_human_parsing" / "Validation" / "val_id.txt")],
    }


@pytest.mark.parametrize(
    "dataset, part, label_set, classes",
    [("lip", "LIP", "lip", 20), ("atr", "LIP", "atr", 18), ("pascal_person_part", "LIP", "pascal_person_part", 7),
     ("demo_people", "LIP", "lip", 20), ("cihp", "CIHP", "cihp", 20), ("demo_people_cihp", "CIHP", "cihp", 20)],
)  # fmt: skip
def test_parsing_configs_are_checked_with_their_label_set(people, tmp_path, dataset, part, label_set, classes):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{dataset: {dataset}, root: {people / part}}}\n")
    report = check_dataset(cfg)
    assert report.layouts == [part.lower()] and report.splits == ["train", "val"]
    assert report.label_set == label_set
    if classes == 20:
        assert report.ok and len(report.class_pixel_share) == 20
    else:  # the demo people's LIP labels go up to 19: values >= the class count are found
        assert set(report.errors) == {"label_out_of_range"}
        assert all(report.details[p].endswith(f">= {classes}") for p in report.errors["label_out_of_range"])
    cfg.write_text(f"data: {{dataset: {dataset}, root: {people / part}, palette: lip}}\n")
    assert check_dataset(cfg).label_set == "lip"
    assert check_dataset(cfg, label_set="cihp").label_set == "cihp"


def test_demo_people_configs_read_the_cache_or_the_parent_folder(people, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGLAB_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "c.yaml"
    for dataset, part in (("demo_people", "LIP"), ("demo_people_cihp", "CIHP")):
        cfg.write_text(f"data: {{dataset: {dataset}}}\n")
        report = check_dataset(cfg)  # nothing generated: the missing cache folder is reported
        assert report.errors == {"missing_root": [str(tmp_path / "cache" / "demo_people" / part)]}
        cfg.write_text(f"data: {{dataset: {dataset}, root: {people}}}\n")  # the folder holding LIP/ and CIHP/
        assert check_dataset(cfg).ok
    assert not (tmp_path / "cache").exists()


def test_unknown_dataset_and_label_set_in_a_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {dataset: imagenet, root: x}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: data\.dataset: unknown dataset 'imagenet'; expected one of: "):
        check_dataset(cfg)
    cfg.write_text("data: {dataset: lip, root: x, palette: nope}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: data\.palette: unknown label set 'nope'"):
        check_dataset(cfg)
    cfg.write_text("data: {dataset: lip}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: data\.root: the lip dataset needs data\.root"):
        check_dataset(cfg)
