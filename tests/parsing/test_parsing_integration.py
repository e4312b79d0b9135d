"""The parsing pieces wired together: synthetic people on disk -> build_dataset -> trainer (CE2P with
self-correction, Parsing R-CNN) -> evaluation -> `seglab eval` / `seglab predict` / `seglab models`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import seglab
from seglab.cli import main
from seglab.config import config_from_dict
from seglab.data.datasets.demo_people import generate_demo_people
from seglab.jobs import build_trainer


@pytest.fixture(scope="module")
def people_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("people") / "demo_people"
    return generate_demo_people(root, seed=3, num_train=8, num_val=4, size=64, num_cihp_train=4, num_cihp_val=2)


def _config(root, out, **sections):
    base = {
        "name": "parsing_test",
        "output_dir": str(out),
        "model": {"name": "schp_resnet18", "num_classes": 20, "kwargs": {"head_width": 32}},
        "data": {"dataset": "demo_people", "root": str(root), "palette": "lip", "augment": "person_affine",
                 "crop_size": [64, 64], "batch_size": 4, "workers": 0},
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine", "warmup_iters": 1},
        "train": {"iters": 3, "eval_interval": 0, "checkpoint_interval": 100, "log_interval": 1, "seed": 0,
                  "loss": "ce2p"},
        "eval": {"batch_size": 2, "absent": "zero"},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return config_from_dict(base)


def test_models_task_parsing_lists_every_parsing_model():
    names = set(seglab.list_models(task="parsing"))
    assert {"schp_resnet101", "schp_resnet50", "schp_resnet18", "jppnet", "ss_jppnet", "parsing_rcnn_resnet50_fpn",
            "pgn_resnet101"} <= names


def test_schp_self_correction_on_synthetic_people_then_predict(people_root, tmp_path, capsys):
    cfg = _config(people_root, tmp_path, self_correction={"enabled": True, "cycle_start": 2, "cycle_len": 1,
                                                           "bn_batches": 1})
    trainer = build_trainer(cfg)
    assert type(trainer).__name__ == "SelfCorrectionTrainer"
    assert trainer.train_set.layout == "official" and len(trainer.train_set) == 8 and len(trainer.val_set) == 4
    metrics = trainer.fit()
    assert trainer.cycle_n == 2  # cycles ended after iterations 2 and 3
    parts = [r for r in trainer.history if "loss_edge" in r]
    assert len(parts) == 3 and all(np.isfinite(r["loss"]) for r in parts)
    # LIP rule: the mean runs over all 20 classes, absent ones counting 0
    assert len(metrics.iou) == 20 and metrics.mIoU == pytest.approx(float(np.mean(metrics.iou)))
    weights = tmp_path / "parsing_test/checkpoints/best.safetensors"
    out = tmp_path / "pred"
    image = next((people_root / "LIP/TrainVal_images/val_images").glob("*.jpg"))
    assert main(["predict", "--weights", str(weights), str(image), "--out", str(out)]) == 0
    label = Image.open(out / f"{image.stem}.png")
    assert label.mode == "P" and label.size == (64, 64)
    assert label.getpalette()[:6] == [0, 0, 0, 128, 0, 0]  # the LIP colour map
    assert Image.open(out / "legend.png").size[1] == 20 * 20 + 4  # one row per LIP class
    assert (out / f"{image.stem}_overlay.png").is_file()


def test_parsing_rcnn_trains_and_evaluates_on_synthetic_cihp(people_root, tmp_path):
    cfg = _config(
        people_root, tmp_path,
        model={"name": "parsing_rcnn_resnet50_fpn", "kwargs": {"frozen_bn": False, "min_size": 64, "max_size": 96}},
        data={"dataset": "demo_people_cihp", "augment": "crop", "scale_range": [1.0, 1.0], "batch_size": 2},
        optim={"lr": 1e-4}, train={"iters": 2, "loss": "ce"},
    )
    trainer = build_trainer(cfg)
    assert trainer.task.detection and len(trainer.train_set) == 4
    metrics = trainer.fit()
    losses = [r for r in trainer.history if "loss_parsing" in r]
    assert len(losses) == 2 and all(np.isfinite(r["loss"]) for r in losses)
    record = metrics.to_dict()
    assert {"APp50", "APp_vol", "PCP50", "mIoU"} <= set(record)
    assert 0.0 <= metrics.mIoU <= 1.0 and len(record["APp"]) == 9


class _GroundTruthParser(torch.nn.Module):
    """Returns each image's ground-truth people as its detections (with the score given)."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset
        self.calls = 0
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        _, target = self.dataset[self.calls]
        self.calls += 1
        parsing = torch.as_tensor(target["parsing"]).as_subclass(torch.Tensor).long()
        n = len(parsing)
        return [{"boxes": torch.zeros(n, 4), "labels": torch.ones(n, dtype=torch.int64),
                 "scores": torch.ones(n), "parsing": parsing, "parsing_scores": torch.linspace(1.0, 0.5, n)}]


def test_person_parsing_evaluation_of_the_ground_truth_is_perfect(people_root):
    from seglab.data.datasets.cihp import CIHPDataset
    from seglab.engine.parsing_eval import evaluate_person_parsing

    dataset = CIHPDataset(people_root / "CIHP", "val", instance=True)
    metrics = evaluate_person_parsing(_GroundTruthParser(dataset), dataset, num_classes=20, absent="nan")
    assert metrics.APp50 == pytest.approx(1.0) and metrics.APp_vol == pytest.approx(1.0)
    assert metrics.PCP50 == pytest.approx(1.0) and metrics.mIoU == pytest.approx(1.0)


def test_multi_person_prediction_writes_parts_outlines_and_people(people_root, tmp_path):
    model = seglab.create_model("parsing_rcnn_resnet50_fpn", min_size=64, max_size=96, box_score_thresh=0.0)
    from seglab.checkpoint import save_weights

    weights = tmp_path / "prcnn.safetensors"
    save_weights(weights, model.state_dict(), {"model": "parsing_rcnn_resnet50_fpn", "num_classes": 20,
                                                "label_set": "cihp",
                                                "model_kwargs": {"min_size": 64, "max_size": 96,
                                                                 "box_score_thresh": 0.0}})
    image = next((people_root / "CIHP/instance-level_human_parsing/Validation/Images").glob("*.jpg"))
    out = tmp_path / "pred"
    assert main(["predict", "--weights", str(weights), str(image), "--out", str(out), "--score-threshold", "0"]) == 0
    people = json.loads((out / f"{image.stem}_people.json").read_text())
    ids = np.asarray(Image.open(out / f"{image.stem}_human_ids.png"))
    assert ids.shape == (64, 64) and int(ids.max()) <= len(people)
    assert Image.open(out / f"{image.stem}_people.png").size == (64, 64)
    assert (out / "legend.png").is_file()


def test_pgn_trains_on_people_with_person_ids_then_groups_people(people_root, tmp_path):
    cfg = _config(
        people_root, tmp_path,
        model={"name": "pgn_resnet50", "kwargs": {"width": 32}},
        data={"dataset": "demo_people_cihp", "with_humans": True, "batch_size": 2},
        optim={"lr": 1e-4}, train={"iters": 2, "loss": "pgn"},
    )
    trainer = build_trainer(cfg)
    metrics = trainer.fit()
    losses = [r for r in trainer.history if "loss_edge" in r]
    assert len(losses) == 2 and all(np.isfinite(r["loss"]) for r in losses)
    assert len(metrics.iou) == 20
    weights = tmp_path / "parsing_test/checkpoints/last.safetensors"
    image = next((people_root / "CIHP/instance-level_human_parsing/Validation/Images").glob("*.jpg"))
    out = tmp_path / "pred"
    assert main(["predict", "--weights", str(weights), str(image), "--out", str(out)]) == 0
    people = json.loads((out / f"{image.stem}_people.json").read_text())
    ids = np.asarray(Image.open(out / f"{image.stem}_human_ids.png"))
    parts = np.asarray(Image.open(out / f"{image.stem}.png"))
    assert set(np.unique(ids)) - {0} == {p["id"] for p in people}
    assert ((ids > 0) == (parts > 0)).all()  # PGN's grouping gives every foreground pixel a person


def test_jppnet_trains_with_pose_targets(people_root, tmp_path):
    cfg = _config(
        people_root, tmp_path,
        model={"name": "jppnet", "kwargs": {"backbone": "resnet50"}},
        data={"with_pose": True, "batch_size": 2},
        train={"iters": 1, "loss": "jppnet"}, eval={"batch_size": 4},
    )
    trainer = build_trainer(cfg)
    x, target = trainer.train_set[0]
    assert set(target) == {"mask", "joints"} and target["joints"].shape == (16, 3)
    parts = trainer.train_step([next(trainer._batches())])
    assert np.isfinite(parts["loss"]) and parts["pose"] > 0
