"""Cityscapes' official evaluation agrees with seglab's: a model trained a little on a generated Cityscapes-layout
set writes its val predictions with `seglab predict --format cityscapes` (label ids), cityscapesScripts'
evalPixelLevelSemanticLabeling (a test dependency) scores them against gtFine's labelIds, and its class IoUs equal
`seglab eval`'s to 1e-6 (the same labels: checked pixel for pixel first)."""

import math

import numpy as np
import pytest
import yaml
from PIL import Image

from seglab.cli import main
from seglab.data.datasets.cityscapes import LABEL_TO_TRAIN, TRAIN_TO_LABEL, to_train_ids
from seglab.data.palettes import get_label_set
from seglab.errors import ConfigError

IGNORED_IDS = [i for i in range(34) if i not in LABEL_TO_TRAIN]
H, W = 64, 128


def _write_split(root, split, cities, seed):
    """Images whose colour tells the class (Cityscapes' colour of the train id, plus noise) and gtFine labelIds:
    blocks of the 19 classes and of ids that are not evaluated."""
    rng = np.random.default_rng(seed)
    colors = np.array(get_label_set("cityscapes").colors, np.float64)
    for city in cities:
        for frame in range(2):
            stem = f"{city}_000000_{frame:06d}"
            blocks = rng.integers(0, 19 + 3, (H // 8, W // 16))  # 19..21: not-evaluated ids
            train = np.kron(blocks, np.ones((8, 16), np.int64))
            ids = np.where(train < 19, np.vectorize(TRAIN_TO_LABEL.get)(np.minimum(train, 18)),
                           np.array(IGNORED_IDS)[train % len(IGNORED_IDS)])
            rgb = np.where((train < 19)[..., None], colors[np.minimum(train, 18)], 128.0)
            rgb = np.clip(rgb + rng.normal(0, 20, rgb.shape), 0, 255).astype(np.uint8)
            (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
            (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            Image.fromarray(ids.astype(np.uint8)).save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(root, config path, weights) of a U-Net trained 60 iterations on the generated set."""
    tmp = tmp_path_factory.mktemp("cs_eval")
    root = tmp / "cityscapes"
    _write_split(root, "train", ("aachen", "bochum"), 0)
    _write_split(root, "val", ("frankfurt", "lindau"), 1)
    cfg = {
        "output_dir": str(tmp / "runs"), "name": "cs",
        "model": {"name": "unet", "num_classes": 19, "kwargs": {"base_width": 8}},
        "data": {"dataset": "cityscapes", "root": str(root), "crop_size": [H, W], "scale_range": [1.0, 1.0],
                 "hflip": False, "batch_size": 2, "workers": 0},
        "optim": {"name": "adamw", "lr": 0.01}, "schedule": {"name": "poly"},
        "train": {"iters": 60, "eval_interval": 0, "checkpoint_interval": 60, "log_interval": 10, "device": "cpu"},
        "eval": {"batch_size": 2},
    }  # fmt: skip
    path = tmp / "cs.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    return root, path, tmp / "runs" / "cs" / "checkpoints" / "last.safetensors"


def _cityscapes_scripts(root, results):
    """evalPixelLevelSemanticLabeling's class IoUs of ``results`` against ``root``'s gtFine val labelIds."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    args = ev.CArgs()
    for key, value in vars(ev.args).items():
        setattr(args, key, value)
    args.cityscapesPath, args.predictionPath, args.predictionWalk = str(root), str(results), None
    args.evalInstLevelScore, args.JSONOutput, args.quiet = False, False, True
    ground_truth = sorted(str(p) for p in (root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    predictions = [ev.getPrediction(args, gt) for gt in ground_truth]
    return ev.evaluateImgLists(predictions, ground_truth, args)["classScores"]


def test_cityscapes_scripts_class_ious_equal_seglab_eval(trained, tmp_path, capsys):
    root, cfg_path, weights = trained
    results = tmp_path / "results"
    images = sorted(str(p) for p in (root / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png"))
    assert main(["predict", *images, "--weights", str(weights), "--out", str(results), "--format", "cityscapes"]) == 0
    written = sorted(p.name for p in results.iterdir())
    assert written == sorted(p.split("/")[-1].replace("_leftImg8bit", "_labelIds") for p in images)
    official = _cityscapes_scripts(root, results)

    assert main(["eval", str(cfg_path), "--weights", str(weights), "--out", str(tmp_path / "m.json")]) == 0
    import json

    ours = json.loads((tmp_path / "m.json").read_text())
    names = get_label_set("cityscapes").classes
    iou = dict(zip(names, ours["IoU"], strict=True))
    assert set(names) <= set(official)  # the others (not evaluated) are NaN there
    assert all(math.isnan(v) for k, v in official.items() if k not in names)
    compared = 0
    for name in names:
        theirs, mine = official[name], iou[name]
        if theirs is None or math.isnan(theirs):
            assert mine is None or math.isnan(mine), name
        else:
            assert abs(theirs - mine) < 1e-6, (name, theirs, mine)
            compared += 1
    assert compared >= 15 and 0.2 < ours["mIoU"] < 1.0, (compared, ours["mIoU"])  # a real, imperfect model

    # the files hold label ids: mapped back, they are the train ids seglab's own prediction gives
    assert main(["predict", images[0], "--weights", str(weights), "--out", str(tmp_path / "own")]) == 0
    stem = images[0].split("/")[-1].removesuffix(".png")
    own = np.asarray(Image.open(tmp_path / "own" / f"{stem}.png"))
    label_ids = np.asarray(Image.open(results / written[0]))
    assert Image.open(results / written[0]).mode == "L"
    np.testing.assert_array_equal(to_train_ids(results / written[0], label_ids), own)
    capsys.readouterr()


def test_cityscapes_format_refuses_a_model_of_other_classes(trained, tmp_path):
    from seglab.checkpoint import save_weights
    from seglab.models import create_model

    root, _, _ = trained
    weights = save_weights(tmp_path / "w.safetensors", create_model("unet", num_classes=5, base_width=4).state_dict(),
                           {"model": "unet", "num_classes": 5, "model_kwargs": {"base_width": 4}})
    image = next((root / "leftImg8bit" / "val").glob("*/*.png"))
    with pytest.raises(ConfigError, match="19 Cityscapes train ids"):
        from seglab.jobs import predict
        from seglab.tasks import PredictSettings

        list(predict(weights, [image], tmp_path / "out", PredictSettings(format="cityscapes"), label_set="demo_shapes"))
