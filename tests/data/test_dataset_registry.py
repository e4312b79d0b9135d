"""The dataset registry: build_dataset and check-dataset read the same registrations, every registered name builds
from a folder of its layout and is checkable, and docs/datasets.md holds the generated table."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seglab.config import DataConfig
from seglab.data import TASKS, build_dataset
from seglab.data.check import check_dataset
from seglab.data.datasets import get_dataset, list_datasets, list_layouts, with_datasets_table
from seglab.data.datasets.demo_people import generate_demo_people
from seglab.data.registry import Layout, register_dataset, register_layout
from seglab.errors import ConfigError, DatasetError

from .layouts import write_ade20k, write_camvid, write_cityscapes, write_coco_stuff

DOCS = Path(__file__).resolve().parents[2] / "docs" / "datasets.md"


@pytest.fixture(scope="module")
def folders(demo_root, tmp_path_factory):
    """A folder of each registered dataset's layout: name -> (data.root, expected class per task)."""
    people = generate_demo_people(tmp_path_factory.mktemp("people") / "p", num_train=2, num_val=1, size=64,
                                  num_cihp_train=2, num_cihp_val=1)  # fmt: skip
    mine = tmp_path_factory.mktemp("folder")
    for sub in ("images", "masks"):
        (mine / sub).mkdir()
    Image.new("RGB", (8, 6)).save(mine / "images" / "a.png")
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(mine / "masks" / "a.png")
    lip, cihp = people / "LIP", people / "CIHP"
    scenes = tmp_path_factory.mktemp("scenes")
    cityscapes = write_cityscapes(scenes / "cityscapes")
    return {
        "cityscapes": (cityscapes, {"semantic": "CityscapesSegmentation"}),
        "cityscapes_coarse": (cityscapes, {"semantic": "CityscapesSegmentation"}),
        "ade20k": (write_ade20k(scenes / "ade"), {"semantic": "ADE20KSegmentation"}),
        "camvid": (write_camvid(scenes / "CamVid"), {"semantic": "CamVidSegmentation"}),
        "coco_stuff": (write_coco_stuff(scenes / "cocostuff"), {"semantic": "COCOStuffSegmentation"}),
        "voc": (demo_root, {"semantic": "VOCSegmentation"}),
        "demo": (demo_root, {"semantic": "VOCSegmentation", "instance": "COCOInstances"}),
        "coco": (demo_root, {"instance": "COCOInstances"}),
        "folder": (mine, {"semantic": "FolderSegmentation"}),
        **{name: (lip, {"semantic": "LIPDataset", "parsing": "LIPDataset"})
           for name in ("lip", "atr", "pascal_person_part", "demo_people")},
        **{name: (cihp, {task: "CIHPDataset" for task in TASKS}) for name in ("cihp", "demo_people_cihp")},
    }  # fmt: skip


def test_every_registered_name_builds_each_task_it_serves_from_its_layout(folders):
    assert set(folders) == set(list_datasets()), "add a folder of the new dataset's layout to this test"
    for name, (root, classes) in folders.items():
        info = get_dataset(name)
        assert set(info.tasks) == set(classes), name
        for task in TASKS:
            cfg = DataConfig(dataset=name, root=str(root), crop_size=[32, 32])
            if task in info.tasks:
                ds = build_dataset(cfg, "train", train=False, task=task)
                assert type(ds).__name__ == classes[task] and len(ds) > 0, (name, task)
            else:
                with pytest.raises(ConfigError, match=rf"data\.dataset: '{name}' .*{', '.join(list_datasets(task))}"):
                    build_dataset(cfg, "train", train=False, task=task)


def test_every_registered_name_fails_only_for_its_missing_root(tmp_path):
    nowhere = tmp_path / "nowhere"
    for name in list_datasets():
        for task in get_dataset(name).tasks:
            with pytest.raises(DatasetError, match=str(nowhere)):
                build_dataset(DataConfig(dataset=name, root=str(nowhere)), "train", train=False, task=task)


def test_check_dataset_accepts_every_registered_name_and_only_those(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGLAB_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "c.yaml"
    checkable = set()
    for name in [*list_datasets(), "imagenet"]:
        cfg.write_text(f"data: {{dataset: {name}, root: {tmp_path / 'nowhere'}}}\n")
        try:
            report = check_dataset(cfg)
        except ConfigError as exc:
            assert "unknown dataset 'imagenet'" in str(exc)
            continue
        assert report.errors == {"missing_root": [str(tmp_path / "nowhere")]}, name
        checkable.add(name)
    assert checkable == set(list_datasets())
    for name in ("demo", "demo_people", "demo_people_cihp"):  # data.root empty: the cache folder, not generated
        cfg.write_text(f"data: {{dataset: {name}}}\n")
        (where,) = check_dataset(cfg).errors["missing_root"]
        assert where.startswith(str(tmp_path / "cache"))


def test_registered_datasets_check_clean_with_their_layouts(folders, tmp_path):
    cfg = tmp_path / "c.yaml"
    for name, (root, _) in folders.items():
        info = get_dataset(name)
        cfg.write_text(f"data: {{dataset: {name}, root: {root}, train_split: train, val_split: val}}\n")
        report = check_dataset(cfg)
        assert report.layouts == [layout.name for layout in info.layouts], name
        if name not in ("atr", "pascal_person_part"):  # fewer classes than the LIP-labelled demo people
            assert report.ok, (name, report.to_text())


def test_folder_layouts_are_detected_from_the_registry(folders):
    names = [layout.name for layout in list_layouts()]
    assert sorted(names) == ["ade20k", "camvid", "cihp", "cityscapes", "cityscapes_coarse", "coco", "coco_stuff",
                             "folder", "lip", "voc"]
    for name, expected in (("folder", ["folder"]), ("lip", ["lip"]), ("cihp", ["cihp"]), ("demo", ["voc", "coco"]),
                           ("cityscapes", ["cityscapes", "cityscapes_coarse"]), ("ade20k", ["ade20k"]),
                           ("camvid", ["camvid"]), ("coco_stuff", ["coco_stuff"])):
        assert check_dataset(folders[name][0]).layouts == expected


def test_registration_refuses_duplicates_unknown_tasks_and_unregistered_layouts():
    voc = get_dataset("voc")
    with pytest.raises(ValueError, match="'voc' is registered twice"):
        register_dataset("voc", builders=voc.builders, label_set="voc", layouts=voc.layouts, summary="")
    with pytest.raises(ValueError, match="registered twice"):
        register_layout(voc.layouts[0])
    with pytest.raises(ValueError, match="tasks"):
        register_dataset("x", builders={"panoptic": voc.builders["semantic"]}, label_set="voc", layouts=(),
                         summary="")
    stray = Layout("stray", "", "voc", lambda root: False, lambda root, splits, add: {})
    with pytest.raises(ValueError, match="layout 'stray' is not registered"):
        register_dataset("x", builders=voc.builders, label_set="voc", layouts=(stray,), summary="")
    assert "x" not in list_datasets() and "stray" not in [layout.name for layout in list_layouts()]


def test_registry_module_imports_no_dataset_file():
    code = "import sys, seglab.data.registry; print(any(m.startswith('seglab.data.datasets') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_docs_datasets_md_table_is_current():
    text = DOCS.read_text()
    assert text == with_datasets_table(text), "docs/datasets.md is stale: run `python scripts/gen_dataset_docs.py`"
    for name in list_datasets():
        assert f"| `{name}` |" in text
