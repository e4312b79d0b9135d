"""Every config under configs/ builds its model and its dataset and trains: two iterations and one evaluation through
the same job ``seglab train`` runs (:func:`seglab.jobs.build_trainer`), on a small fixture generated in the config's
dataset layout, with the config's own recipe (optimiser, schedule, loss, aux weights, augmentation, eval mode) and
only the sizes shrunk: crops of 32x32 (64x64 for human parsing and detectors), batch 2, no pretrained weights.
docs/recipes.md must list every registered semantic model and every config.

Time split, measured on 2 shared cores with OMP_NUM_THREADS=1: the default part (28 configs: one of each family
and model structure) takes about 90 s; :data:`SLOW` (``make test-slow``, 36 configs) about 330 s more: the
VGG16 FCNs (fc6 alone is 103M parameters: each step and each checkpoint write takes seconds), the ResNet-101 parsing
models (SCHP, PGN, JPPNet, SS-JPPNet), the detectors (Mask R-CNN, Parsing R-CNN; 40 s for Parsing R-CNN), Swin-S/B,
ConvNeXt-S/B and SegFormer-B1-B5 (and B0's second dataset), the unpadded U-Net, and the deeper sibling where a
family has two depths (ResNet-101, ResNet-50 U-Net, Bayesian SegNet beside SegNet).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from seglab.config import config_from_dict
from seglab.jobs import build_trainer
from seglab.models import list_models, model_info
from seglab.recipes import list_recipes
from tests.data.layouts import write_ade20k, write_camvid, write_cityscapes, write_coco_stuff

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))

# configs too heavy for the default run (see the module docstring)
SLOW = {
    "fcn8s_vgg16_voc", "fcn16s_vgg16_voc", "fcn32s_vgg16_voc",
    "schp_resnet101_lip", "schp_resnet101_atr", "schp_resnet101_pascal_person_part",
    "pgn_resnet101_cihp", "jppnet_lip", "ss_jppnet_lip",
    "mask_rcnn_resnet50_fpn_coco", "mask_rcnn_mobilenet_v3_demo_shapes", "parsing_rcnn_resnet50_fpn_cihp",
    "upernet_swin_s_ade20k", "upernet_swin_b_ade20k", "unet_isbi_em", "bayesian_segnet_vgg16_camvid",
    "deeplabv3_resnet101_voc", "fcn_resnet101_voc", "semantic_fpn_resnet101_cityscapes", "unet_resnet50_camvid",
    "fcn_resnet101_v1c_cityscapes", "deeplabv3_resnet101_v1c_cityscapes", "semantic_fpn_resnet101_v1c_cityscapes",
    "upernet_convnext_s_ade20k", "upernet_convnext_b_ade20k", "segformer_b0_cityscapes", "segformer_b1_ade20k",
    "segformer_b1_cityscapes", "segformer_b2_ade20k", "segformer_b2_cityscapes", "segformer_b3_ade20k",
    "segformer_b3_cityscapes", "segformer_b4_ade20k", "segformer_b4_cityscapes", "segformer_b5_ade20k",
    "segformer_b5_cityscapes",
}  # fmt: skip
BIG_INPUT_TASKS = ("parsing", "instance")  # person-centric warps and detectors: 64x64


def _config_id(path: Path) -> str:
    return path.relative_to(ROOT / "configs").with_suffix("").as_posix()


def _write_pairs(folder: Path, n: int, num_classes: int, seed: int, size=(40, 48)) -> list[str]:
    """``n`` random images and label maps (values below ``num_classes``) in folder/{images,masks}."""
    rng = np.random.default_rng(seed)
    stems = [f"s{seed}_{i}" for i in range(n)]
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for stem in stems:
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / "images" / f"{stem}.png")
        Image.fromarray(rng.integers(0, num_classes, size, dtype=np.uint8)).save(folder / "masks" / f"{stem}.png")
    return stems


def _write_flat_parsing(root: Path, num_classes: int) -> Path:
    """SCHP's flat layout (ATR, Pascal-Person-Part): {split}_images/, {split}_segmentations/, {split}_id.txt."""
    rng = np.random.default_rng(num_classes)
    for split, n in (("train", 4), ("val", 2)):
        (root / f"{split}_images").mkdir(parents=True)
        (root / f"{split}_segmentations").mkdir(parents=True)
        ids = [f"{split}{i}" for i in range(n)]
        for i in ids:
            label = np.zeros((64, 48), np.uint8)
            label[8:56, 12:36] = rng.integers(1, num_classes, (48, 24))  # a "person" on background
            Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)).save(root / f"{split}_images/{i}.jpg")
            Image.fromarray(label).save(root / f"{split}_segmentations/{i}.png")
        (root / f"{split}_id.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    """``fixture_root(dataset)``: a folder in that dataset's layout, written on first use."""
    from seglab.data.datasets.demo import generate_demo_data
    from seglab.data.datasets.demo_people import generate_demo_people

    base = tmp_path_factory.mktemp("layouts")

    def folder() -> Path:
        for split, n in (("train", 4), ("val", 2), ("labelled", 4)):
            _write_pairs(base / "folder" / split, n, 2, seed=n + len(split))
        return base / "folder"

    def coco() -> Path:
        """The demo shapes' COCO files with COCO's 80 categories declared (the shapes use the first 4), so that
        an 81-class detector's predictions all have a category id."""
        shutil.copytree(get("demo"), base / "coco")
        for ann in (base / "coco" / "annotations").glob("instances_*.json"):
            data = json.loads(ann.read_text())
            known = {c["id"] for c in data["categories"]}
            data["categories"] += [{"id": i, "name": f"class{i}", "supercategory": "none"}
                                   for i in range(1, 81) if i not in known]
            ann.write_text(json.dumps(data))
        return base / "coco"

    def coco_stuff() -> Path:
        write_coco_stuff(base / "coco_stuff")
        return base / "coco_stuff"

    makers = {
        "shapes": lambda: generate_demo_data(base / "shapes", seed=0, num_train=4, num_val=2, size=48),
        "people": lambda: generate_demo_people(base / "people", num_train=4, num_val=2, size=64, num_cihp_train=2,
                                               num_cihp_val=2),
        "folder": folder,
        "coco": coco,
        "cityscapes": lambda: write_cityscapes(base / "cityscapes"),
        "ade20k": lambda: write_ade20k(base / "ade20k"),
        "camvid": lambda: write_camvid(base / "camvid"),
        "coco_stuff": coco_stuff,
        "atr": lambda: _write_flat_parsing(base / "atr", 18),
        "pascal_person_part": lambda: _write_flat_parsing(base / "ppp", 7),
    }
    group = {"voc": "shapes", "demo": "shapes", "lip": "people", "demo_people": "people",
             "cihp": "people"}
    part = {"lip": "LIP", "demo_people": "LIP", "cihp": "CIHP"}
    cache: dict[str, Path] = {}

    def get(dataset: str) -> Path:
        key = group.get(dataset, dataset)
        if key not in cache:
            cache[key] = Path(makers[key]())
        return cache[key] / part.get(dataset, "")

    return get


def tiny(data: dict, root: Path, out: Path) -> dict:
    """The config ``data`` (a loaded YAML mapping) with the sizes shrunk for a two-iteration CPU run on ``root``;
    the recipe itself (optimiser, schedule, loss, augmentation, eval mode) is left as it is."""
    info = model_info(data["model"]["name"])
    task = "instance" if info.detector else info.task
    side = 64 if task in BIG_INPUT_TASKS else 32
    kwargs = dict(data["model"].get("kwargs") or {})
    if "pretrained_backbone" in kwargs:
        kwargs["pretrained_backbone"] = False
    if task == "instance":
        kwargs.update(min_size=64, max_size=64)
    d = {**data["data"], "root": str(root), "workers": 0, "batch_size": 2, "crop_size": [side, side], "base_size": 0}
    if d.get("sbd_root"):
        d["sbd_root"] = ""
    if d["dataset"] == "coco":
        d.update(train_split="train", val_split="val")  # the demo shapes' COCO layout
    train = {**data.get("train", {}), "iters": 2, "eval_interval": 0, "checkpoint_interval": 2, "log_interval": 1,
             "device": "cpu", "precision": "fp32", "amp": False, "sync_bn": False, "accumulate_steps": 1}
    evaluation = {**data.get("eval", {}), "batch_size": 1}
    if evaluation.get("mode") in ("slide", "affine"):
        evaluation.update(crop_size=[side, side], stride=[side // 2, side // 2])
    config = {**data, "name": Path(out).name, "output_dir": str(Path(out).parent), "data": d, "train": train,
              "eval": evaluation, "model": {**data["model"], "kwargs": kwargs}}
    if (data.get("self_correction") or {}).get("enabled"):  # one warm-up iteration, then a cycle per iteration
        config["self_correction"] = {**data["self_correction"], "cycle_start": 1, "cycle_len": 1, "bn_batches": 1}
        config["schedule"] = {**data.get("schedule", {}), "warmup_iters": min(1, data["schedule"]["warmup_iters"])}
    return config


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, id=_config_id(p), marks=[pytest.mark.slow] if p.stem in SLOW else []) for p in CONFIGS],
)
def test_config_builds_and_trains_two_iterations(path, fixture_root, tmp_path):
    data = yaml.safe_load(path.read_text())
    cfg = config_from_dict(tiny(data, fixture_root(data["data"]["dataset"]), tmp_path / path.stem), str(path))
    trainer = build_trainer(cfg)
    assert type(trainer.model).__name__ and cfg.model.name == data["model"]["name"]
    metrics = trainer.fit()
    assert trainer.iteration == 2
    name, score = trainer.task.score(metrics)
    assert math.isfinite(score), (name, score)
    losses = [r["loss"] for r in trainer.history if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert (cfg.run_dir / "checkpoints" / "last.safetensors").is_file()
    shutil.rmtree(cfg.run_dir)  # checkpoints of the big models are GBs each; 64 configs would fill a CI disk


def test_every_registered_semantic_model_has_a_config():
    models = {load["model"]["name"] for load in (yaml.safe_load(p.read_text()) for p in CONFIGS)}
    assert sorted(set(list_models(task="semantic")) - models) == []


def test_config_names_say_model_and_dataset():
    """configs/<family>/<model>_<dataset>.yaml; the demos' configs and the folder-dataset U-Nets are named after
    what they train on."""
    named_otherwise = {"unet_demo_shapes", "unet_folder", "unet_isbi_em", "mask_rcnn_mobilenet_v3_demo_shapes"}
    for recipe in list_recipes():
        if recipe.name not in named_otherwise:
            assert recipe.name == f"{recipe.model}_{recipe.dataset}", recipe.path


def test_recipes_doc_lists_every_semantic_model_and_config():
    doc = (ROOT / "docs" / "recipes.md").read_text()
    missing = [m for m in list_models(task="semantic") if f"`{m}`" not in doc]
    assert missing == []
    missing_configs = [p.stem for p in CONFIGS if f"{_config_id(p)}.yaml" not in doc]
    assert missing_configs == []


def test_configs_folder_is_the_packaged_one():
    """configs/ in the repository is the package's seglab/configs (a link), so a path and a name agree."""
    assert (ROOT / "configs").resolve() == (ROOT / "seglab" / "configs").resolve()
    assert {r.path.resolve() for r in list_recipes()} == {p.resolve() for p in CONFIGS}
