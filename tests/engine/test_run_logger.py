"""RunLogger: metrics.jsonl lines exactly as json.dumps writes them, TensorBoard scalars read back."""

import json

import pytest

from seglab.engine.run_logger import RunLogger, tensorboard_scalars
from seglab.errors import ConfigError

TRAIN_1 = {"iter": 10, "lr": 0.01, "loss": 1.5, "loss_aux": 0.25, "it_per_s": 3.0}
TRAIN_2 = {"iter": 20, "lr": 0.005, "loss": 0.75, "loss_aux": 0.125, "it_per_s": 3.5}
VAL = {
    "iter": 20, "split": "val", "aAcc": 0.9, "mIoU": 0.5, "fwIoU": None,
    "IoU": [0.75, None, 0.25], "confusion": [[3, 1, 0], [0, 2, 1], [1, 0, 1]],
}


def test_jsonl_appends_one_json_line_per_record(tmp_path):
    run = tmp_path / "runs" / "a"  # created by the logger
    with RunLogger(run) as logger:
        logger.log(TRAIN_1)
        # each line is on disk as soon as it is logged, before close
        assert (run / "metrics.jsonl").read_text() == json.dumps(TRAIN_1) + "\n"
        logger.log(VAL)
    with RunLogger(run) as logger:  # a resumed run appends
        logger.log(TRAIN_2)
    text = (run / "metrics.jsonl").read_text()
    assert text == json.dumps(TRAIN_1) + "\n" + json.dumps(VAL) + "\n" + json.dumps(TRAIN_2) + "\n"
    assert [json.loads(line) for line in text.splitlines()] == [TRAIN_1, VAL, TRAIN_2]
    assert not (run / "tensorboard").exists()
    with pytest.raises(RuntimeError, match="after close"):
        logger.log(TRAIN_1)


def test_unknown_backend_names_the_config_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.logger.*'wandb'.*jsonl, tensorboard"):
        RunLogger(tmp_path, backend="wandb")


def test_scalar_tags_split_train_and_val_and_expand_lists():
    assert tensorboard_scalars(TRAIN_1) == {
        "train/lr": 0.01, "train/loss": 1.5, "train/loss_aux": 0.25, "train/it_per_s": 3.0,
    }
    # None (NaN in JSON) and the nested confusion matrix are not scalars
    assert tensorboard_scalars(VAL) == {
        "val/aAcc": 0.9, "val/mIoU": 0.5, "val/IoU/0": 0.75, "val/IoU/2": 0.25,
    }


def test_tensorboard_event_file_holds_the_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with RunLogger(tmp_path, backend="tensorboard") as logger:
        for record in (TRAIN_1, TRAIN_2, VAL):
            logger.log(record)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags == {"train/lr", "train/loss", "train/loss_aux", "train/it_per_s",
                    "val/aAcc", "val/mIoU", "val/IoU/0", "val/IoU/2"}

    def read(tag):
        return [(e.step, e.value) for e in events.Scalars(tag)]

    assert read("train/loss") == [(10, 1.5), (20, 0.75)]
    assert read("train/lr") == [(10, pytest.approx(0.01)), (20, pytest.approx(0.005))]
    assert read("val/mIoU") == [(20, 0.5)]
    assert read("val/IoU/0") == [(20, 0.75)] and read("val/IoU/2") == [(20, 0.25)]


def test_tensorboard_missing_is_a_clear_config_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        RunLogger(tmp_path, backend="tensorboard")
    assert not (tmp_path / "metrics.jsonl").exists()
