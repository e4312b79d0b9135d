"""A label set without code: `data.classes` / `data.colors` in a config, or a folder's classes.txt (what
`seglab convert-data` writes). The class list reaches the dataset, check-dataset, the weights' metadata and
`seglab predict`, and malformed ones are errors naming the field or the file and line."""

import numpy as np
import pytest
from PIL import Image

from seglab.config import config_from_dict
from seglab.data import build_dataset, label_set_for
from seglab.data.check import check_dataset
from seglab.data.palettes import (
    custom_label_set,
    label_set_from_metadata,
    label_set_metadata,
    read_classes_file,
)
from seglab.errors import ConfigError

COLORS = [[10, 20, 30], [200, 0, 0], [0, 200, 0]]


@pytest.fixture
def folder(tmp_path):
    """Four 16x16 images with masks of classes 0-2, and a classes.txt with colours."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(rng.integers(0, 3, (16, 16), dtype=np.uint8)).save(tmp_path / "masks" / f"{i}.png")
    (tmp_path / "classes.txt").write_text("background #0a141e\nroad sign #c80000\ntree #00c800\n")
    return tmp_path


def _data(root, **data):
    return config_from_dict({"data": {"dataset": "folder", "root": str(root), "crop_size": [16, 16], **data}}).data


def test_a_folder_s_classes_file_is_its_label_set(folder):
    labels = label_set_for(_data(folder))
    assert labels.classes == ("background", "road sign", "tree") and [list(c) for c in labels.colors] == COLORS
    assert build_dataset(_data(folder), "train", train=False).label_set == labels
    report = check_dataset(folder)
    assert report.ok and report.label_set == "custom" and list(report.class_pixel_share) == list(labels.classes)
    Image.fromarray(np.full((16, 16), 3, np.uint8)).save(folder / "masks" / "0.png")  # no class 3 in the file
    assert check_dataset(folder).errors == {"label_out_of_range": [str(folder / "masks" / "0.png")]}


def test_config_classes_and_colors_define_the_label_set(folder):
    labels = label_set_for(_data(folder, classes=["bg", "a", "b"], colors=COLORS))
    assert labels.classes == ("bg", "a", "b") and [list(c) for c in labels.colors] == COLORS
    plain = label_set_for(_data(folder, dataset="voc", classes=["bg", "cat"]))  # VOC layout too; VOC colour map
    assert plain.classes == ("bg", "cat") and plain.colors[1] == (128, 0, 0)
    for data, message in (
        ({"colors": COLORS}, "data.colors: given without data.classes"),
        ({"classes": ["bg", "a"], "colors": COLORS}, "2 classes but 3 colours"),
        ({"classes": ["bg", "a", "b"], "colors": [[0, 0, 0], [1, 2], [3, 4, 5]]}, r"colour 1 \(a\) must be"),
        ({"classes": ["bg", "a", "a"]}, "repeated: a"),
        ({"classes": ["bg"], "palette": "cityscapes"}, "both define the label set"),
    ):
        with pytest.raises(ConfigError, match=message):
            label_set_for(_data(folder, **data))


def test_a_malformed_classes_file_names_the_file_and_line(folder):
    (folder / "classes.txt").write_text("background\n\ntree\n")
    with pytest.raises(ConfigError, match=r"classes.txt: line 2 is empty"):
        label_set_for(_data(folder))
    (folder / "classes.txt").write_text("background #010203\ntree\n\n")  # trailing blank lines are fine
    assert check_dataset(folder).label_set == "custom"
    labels = label_set_for(_data(folder))
    assert labels.colors == ((1, 2, 3), (128, 0, 0))  # a class without a colour: the VOC map's for its index


def test_classes_file_and_metadata_round_trip():
    labels = custom_label_set(["background", "traffic light", "x"], COLORS)
    assert label_set_from_metadata(label_set_metadata(labels)) == labels
    assert label_set_metadata(label_set_from_metadata({"label_set": "cityscapes"})) == {"label_set": "cityscapes"}


def test_weights_of_a_custom_label_set_predict_with_its_names_and_colours(folder, tmp_path):
    from seglab.checkpoint import read_metadata
    from seglab.engine.trainer import Trainer
    from seglab.jobs import predict
    from seglab.tasks import PredictSettings

    cfg = config_from_dict({
        "output_dir": str(tmp_path / "runs"), "model": {"name": "unet", "num_classes": 3, "kwargs": {"base_width": 4}},
        "data": {"dataset": "folder", "root": str(folder), "crop_size": [16, 16], "batch_size": 2, "workers": 0},
        "train": {"iters": 1, "eval_interval": 0, "checkpoint_interval": 1, "log_interval": 1, "device": "cpu"},
    })  # fmt: skip
    trainer = Trainer(cfg)
    trainer.fit()
    weights = trainer.ckpt_dir / "last.safetensors"
    meta = read_metadata(weights)
    assert meta["label_set_classes"] == ["background", "road sign", "tree"] and meta["label_set_colors"] == COLORS
    lines = list(predict(weights, [folder / "images" / "1.png"], tmp_path / "pred", PredictSettings()))
    assert len(lines) == 1
    written = Image.open(tmp_path / "pred" / "1.png")
    assert written.getpalette()[:9] == [v for rgb in COLORS for v in rgb]
    cfg.model.num_classes, cfg.output_dir = 4, str(tmp_path / "runs2")
    with pytest.raises(ConfigError, match="model.num_classes=4 but the label set 'custom'"):
        Trainer(cfg)


def test_read_classes_file_reads_names_with_spaces(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("background\ntraffic light\n#hashtag name\n")
    assert read_classes_file(path).classes == ("background", "traffic light", "#hashtag name")
