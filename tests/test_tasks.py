"""Task objects and the library under the CLI: each model's task, the class-count check, ground truth outside the
classes, the trainer with objects, InferenceOptions, load_model, save_prediction and the multi-person predictor."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

import seglab
from seglab.checkpoint import save_weights
from seglab.config import config_from_dict
from seglab.data.palettes import get_label_set
from seglab.engine.evaluator import evaluate
from seglab.engine.inference import InferenceOptions, Predictor
from seglab.engine.people import PeopleParser, semantic_from_instances
from seglab.engine.trainer import Trainer
from seglab.errors import CheckpointError, ConfigError, DatasetError
from seglab.models import create_model, list_models, model_info
from seglab.tasks import TASKS, task_of
from seglab.visualize import save_prediction


def _config(root, tmp_path, **model):
    return config_from_dict({
        "name": "t", "output_dir": str(tmp_path),
        "model": {"name": "unet", "num_classes": 5, "kwargs": {"base_width": 4}, **model},
        "data": {"dataset": "demo", "root": str(root), "palette": "demo_shapes", "crop_size": [64, 64],
                 "batch_size": 2, "workers": 0},
        "optim": {"name": "adamw", "lr": 0.01},
        "train": {"iters": 2, "eval_interval": 0, "checkpoint_interval": 2, "log_interval": 1, "device": "cpu"},
        "eval": {"batch_size": 2},
    })


def test_every_registered_model_has_its_task():
    for name in list_models():
        task = task_of(name)
        assert task is TASKS[task.name]
        assert task.detection == (model_info(name).task == "instance" or model_info(name).detector), name
    assert task_of("unet").name == "semantic" and task_of("schp_resnet101").name == "parsing"
    assert task_of("mask_rcnn_resnet50_fpn").score_name == "segm_AP"
    assert task_of("parsing_rcnn_resnet50_fpn").name == "person_parsing"
    assert model_info("pgn_resnet101").people and model_info("parsing_rcnn_resnet50_fpn").people
    assert not model_info("schp_resnet101").people


def test_a_class_count_other_than_the_label_sets_is_a_config_error(demo_root, tmp_path):
    with pytest.raises(ConfigError, match=r"model.num_classes=3 .*'demo_shapes'.* has 5 classes"):
        Trainer(_config(demo_root, tmp_path, num_classes=3))


def test_every_shipped_config_names_as_many_classes_as_its_label_set():
    from pathlib import Path

    from seglab.config import load_config
    from seglab.data import label_set_for

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
    assert len(configs) >= 16
    for path in configs:
        cfg = load_config(path)
        task_of(cfg.model.name).check_classes(cfg, label_set_for(cfg.data))


def test_ground_truth_outside_the_classes_is_an_error_naming_the_file(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem, value in (("a", 1), ("b", 7)):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / f"{stem}.png")
        label = np.zeros((8, 8), np.uint8)
        label[:2] = value
        label[-1] = 255  # ignored: never an error
        Image.fromarray(label).save(root / "masks" / f"{stem}.png")
    from seglab.data.datasets import FolderSegmentation
    from seglab.data.transforms import SegmentationTransform

    dataset = FolderSegmentation(root, None, SegmentationTransform(), label_set=get_label_set("voc"))
    model = nn.Conv2d(3, 3, 1)
    with pytest.raises(DatasetError, match=r"b\.png: ground-truth values \[7\] are outside the model's 3 classes"):
        evaluate(model, dataset, num_classes=3)
    assert evaluate(model, dataset, num_classes=8).aAcc >= 0  # 7 is a class of an 8-class model


def test_the_trainer_takes_a_model_and_datasets_as_objects(demo_root, tmp_path):
    from seglab.data import build_dataset

    cfg = _config(demo_root, tmp_path)
    model = create_model("unet", num_classes=5, base_width=4)
    train_set = build_dataset(cfg.data, "train", train=True)
    val_set = torch.utils.data.Subset(build_dataset(cfg.data, "val", train=False), [0, 1])
    trainer = Trainer(cfg, model=model, train_set=train_set, val_set=val_set)
    assert trainer.model is model and trainer.val_set is val_set
    metrics = trainer.fit()
    assert trainer.iteration == 2 and 0 <= metrics.mIoU <= 1


def test_inference_options_are_one_checked_value():
    e = config_from_dict({"eval": {"mode": "slide", "crop_size": [32, 48], "stride": [16, 24], "flip": True}}).eval
    options = InferenceOptions.from_config(e, [(1, 2)])
    assert (options.mode, options.crop_size, options.stride, options.flip, options.flip_pairs) == (
        "slide", (32, 48), (16, 24), True, ((1, 2),))
    assert options.with_tta("scales=0.5,1").scales == (0.5, 1.0) and options.with_tta("scales=0.5,1").flip
    for bad in ({"mode": "tiles"}, {"crop_size": (0, 4)}, {"scales": ()}, {"max_whole_pixels": -1}):
        with pytest.raises(ValueError):
            InferenceOptions(**bad)
    model = nn.Conv2d(3, 4, 3, padding=1).eval()
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    by_value = Predictor(model, InferenceOptions(mode="slide", crop_size=(32, 32), stride=(16, 16), flip=True))
    by_keywords = Predictor(model, mode="slide", crop_size=(32, 32), stride=(16, 16), tta="flip")
    assert by_value.options.replace(max_whole_pixels=by_keywords.max_whole_pixels) == by_keywords.options
    np.testing.assert_array_equal(by_value(image), by_keywords(image))


def test_load_model_rebuilds_the_model_of_a_weights_file(tmp_path, demo_root):
    model = create_model("unet", num_classes=5, base_width=4).eval()
    path = save_weights(tmp_path / "w.safetensors", model.state_dict(),
                        {"model": "unet", "num_classes": 5, "model_kwargs": {"base_width": 4}})
    loaded = seglab.load_model(path).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert seglab.load_model(path, config=_config(demo_root, tmp_path)).training  # from a config's model section
    bare = save_weights(tmp_path / "bare.safetensors", model.state_dict())
    with pytest.raises(CheckpointError, match="names no model"):
        seglab.load_model(bare)
    with pytest.raises(CheckpointError, match="do not match"):
        seglab.load_model(path, num_classes=3)


def test_save_prediction_writes_the_label_overlay_and_a_legend_of_the_classes_present(tmp_path):
    label_set = get_label_set("demo_shapes")
    label = np.zeros((20, 30), np.int64)
    label[5:10, 5:10] = 3
    image = np.full((20, 30, 3), 200, np.uint8)
    paths = save_prediction(tmp_path, "img", image, label, label_set)
    assert [p.name for p in paths] == ["img.png", "img_overlay.png", "img_legend.png"]
    assert np.array_equal(np.asarray(Image.open(paths[0])), label) and Image.open(paths[0]).mode == "P"
    assert Image.open(paths[1]).size == (30, 20)
    assert Image.open(paths[2]).size[1] == 2 * 20 + 4  # background and triangle: two rows


class _FixedPeople(GeneralizedRCNN):
    """A 'detector' returning three people with fixed scores and overlapping part maps."""

    def __init__(self):
        nn.Module.__init__(self)
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, images, targets=None):
        h, w = images[0].shape[-2:]
        parsing = torch.zeros(3, h, w, dtype=torch.int64)
        parsing[0, :, :4] = 2  # the best person, left
        parsing[1, :, 2:6] = 5  # overlaps the best one on columns 2-3
        parsing[2, :, 6:] = 7  # below the threshold
        return [{"boxes": torch.tensor([[0.0, 0, 4, h], [2, 0, 6, h], [6, 0, w, h]]),
                 "scores": torch.tensor([0.9, 0.6, 0.3]), "labels": torch.ones(3, dtype=torch.int64),
                 "parsing": parsing, "parsing_scores": torch.tensor([0.9, 0.6, 0.3])}]


def test_people_parser_paints_the_best_person_on_top_and_numbers_people_by_score(tmp_path):
    result = PeopleParser(_FixedPeople(), score_threshold=0.5)(np.zeros((4, 8, 3), np.uint8))
    assert result["parsing"][0].tolist() == [2, 2, 2, 2, 5, 5, 0, 0]
    assert result["human_ids"][0].tolist() == [1, 1, 1, 1, 2, 2, 0, 0]
    assert [p["id"] for p in result["people"]] == [1, 2] and result["people"][0]["score"] == pytest.approx(0.9)
    # the evaluation's merge (Parsing R-CNN's parsing_png rule, threshold 0.3) keeps the third person
    merged = semantic_from_instances(_FixedPeople()([torch.zeros(3, 4, 8)])[0], (4, 8))
    assert merged[0].tolist() == [2, 2, 2, 2, 5, 5, 7, 7]
    with pytest.raises(ValueError, match="does not parse people"):
        PeopleParser(nn.Conv2d(3, 2, 1))


def test_predict_writes_what_the_task_says(tmp_path):
    model = create_model("unet", num_classes=5, base_width=4)
    weights = save_weights(tmp_path / "w.safetensors", model.state_dict(), {
        "model": "unet", "num_classes": 5, "model_kwargs": {"base_width": 4}, "label_set": "demo_shapes"})
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    from seglab.jobs import predict
    from seglab.tasks import PredictSettings

    lines = list(predict(weights, [tmp_path / "x.png"], tmp_path / "out", PredictSettings()))
    assert len(lines) == 1 and "x.png" in lines[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.png", "x_legend.png", "x_overlay.png"]
