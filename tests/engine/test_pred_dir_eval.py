"""seglab eval CONFIG --pred-dir DIR: another tool's label PNGs scored against the config's val split, with the
metrics, absent-class rule and printout of a model's evaluation, and clear errors for missing, extra, mis-sized
and out-of-range files."""

import json
import logging
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from seglab.checkpoint import save_weights
from seglab.cli import main
from seglab.config import load_config
from seglab.data.io import read_label, write_label_png
from seglab.data.palettes import get_label_set
from seglab.engine.evaluator import ConfusionMatrix, evaluate
from seglab.engine.inference import InferenceOptions, infer_probs
from seglab.errors import DatasetError
from seglab.jobs import evaluate_predictions, match_predictions
from seglab.models import create_model
from seglab.tasks import task_of

ALL = ["miou", "dice", "fscore", "boundary_iou"]
MODEL = {"name": "unet", "num_classes": 5, "kwargs": {"base_width": 4}}


@pytest.fixture
def config(demo_root, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({
        "name": "pred_dir", "output_dir": str(tmp_path / "runs"), "model": MODEL,
        "data": {"dataset": "demo", "root": str(demo_root), "workers": 0},
    }))
    return path


def val_split(config_path, *overrides):
    cfg = load_config(config_path, list(overrides))
    return cfg, task_of(cfg.model.name).build_dataset(cfg.data, cfg.data.val_split, train=False)


def copy_ground_truth(dataset, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for sample_id, label in zip(dataset.ids, dataset.label_paths, strict=True):
        shutil.copy(label, folder / f"{sample_id}.png")
    return folder


def test_ground_truth_as_predictions_scores_one(config, tmp_path):
    cfg, dataset = val_split(config, f"eval.metrics={ALL}")
    folder = copy_ground_truth(dataset, tmp_path / "pred")  # 255 where the ground truth is ignored: allowed
    _, m = evaluate_predictions(cfg, folder)
    assert m.aAcc == 1.0 and m.mIoU == 1.0 and m.mAcc == 1.0
    assert m.mDice == 1.0 and m.mFscore == 1.0 and m.mPrecision == 1.0 and m.mRecall == 1.0 and m.mBIoU == 1.0


def test_perturbed_predictions_score_as_the_confusion_matrix_says(config, tmp_path):
    cfg, dataset = val_split(config, f"eval.metrics={ALL}")
    folder = tmp_path / "pred"
    folder.mkdir()
    cm = ConfusionMatrix(5, metrics=ALL)
    hist = np.zeros((5, 5), np.int64)
    for i, (sample_id, label) in enumerate(zip(dataset.ids, dataset.label_paths, strict=True)):
        gt = read_label(label)
        pred = np.where(gt == 255, 0, gt).astype(np.uint8)
        pred[: 10 + 5 * i, :30] = (i + 1) % 5  # a block of a wrong class, a different one per image
        write_label_png(folder / f"{sample_id}.png", pred, get_label_set("demo_shapes"))
        cm.update(torch.from_numpy(pred), torch.from_numpy(gt))
        keep = gt != 255
        hist += np.bincount(5 * gt[keep].astype(np.int64) + pred[keep], minlength=25).reshape(5, 5)
    _, m = evaluate_predictions(cfg, folder)
    assert m.confusion.tolist() == hist.tolist()
    tp = np.diag(hist)
    np.testing.assert_allclose(m.iou, tp / (hist.sum(0) + hist.sum(1) - tp))
    np.testing.assert_allclose(m.dice, 2 * tp / (hist.sum(0) + hist.sum(1)))
    assert m.to_dict() == cm.compute().to_dict()
    assert 0 < m.mIoU < 1 and 0 < m.mBIoU < 1


def test_files_match_by_id_then_label_name_then_image_name(tmp_path):
    dataset = SimpleNamespace(
        ids=["a", "b", "c"],
        label_paths=[tmp_path / "gt" / f"{s}_gtFine_labelIds.png" for s in "abc"],
        image_paths=[tmp_path / "img" / f"{s}_leftImg8bit.jpg" for s in "abc"],
    )
    folder = tmp_path / "pred"
    folder.mkdir()
    for name in ("a.png", "b_gtFine_labelIds.png", "c_leftImg8bit.PNG", "a_overlay.png", "a_legend.png",
                 "legend.png", ".a.png.tmp", "notes.txt"):
        (folder / name).write_bytes(b"")
    assert [p.name for p in match_predictions(dataset, folder)] == ["a.png", "b_gtFine_labelIds.png",
                                                                     "c_leftImg8bit.PNG"]


def test_missing_predictions_are_listed_with_their_count(config, tmp_path):
    cfg, dataset = val_split(config)
    folder = copy_ground_truth(dataset, tmp_path / "pred")
    for sample_id in dataset.ids[1:3]:
        (folder / f"{sample_id}.png").unlink()
    with pytest.raises(DatasetError, match=rf"no prediction for 2 of the {len(dataset.ids)} samples, e\.g\. "
                                           rf"{dataset.ids[1]}, {dataset.ids[2]}; expected <id>\.png"):
        evaluate_predictions(cfg, folder)
    with pytest.raises(DatasetError, match="prediction folder not found"):
        evaluate_predictions(cfg, tmp_path / "nowhere")


def test_extra_files_stop_unless_allowed(config, tmp_path, caplog):
    cfg, dataset = val_split(config)
    folder = copy_ground_truth(dataset, tmp_path / "pred")
    shutil.copy(folder / f"{dataset.ids[0]}.png", folder / "val_99999.png")
    shutil.copy(folder / f"{dataset.ids[0]}.png", folder / f"{dataset.ids[0]}_overlay.png")  # seglab predict's
    with pytest.raises(DatasetError, match=r"1 PNG files match no sample of the split, e\.g\. val_99999\.png.*"
                                           r"--allow-extra"):
        evaluate_predictions(cfg, folder)
    with caplog.at_level(logging.WARNING, logger="seglab.jobs"):
        _, m = evaluate_predictions(cfg, folder, allow_extra=True)
    assert "val_99999.png" in caplog.text and m.mIoU == 1.0


def test_a_prediction_of_another_size_names_both_files(config, tmp_path):
    cfg, dataset = val_split(config)
    folder = copy_ground_truth(dataset, tmp_path / "pred")
    bad = folder / f"{dataset.ids[2]}.png"
    Image.fromarray(np.zeros((96, 95), np.uint8)).save(bad)
    with pytest.raises(DatasetError) as err:
        evaluate_predictions(cfg, folder)
    assert str(bad) in str(err.value) and str(dataset.label_paths[2]) in str(err.value)
    assert "95x96 (WxH)" in str(err.value) and "size 96x96" in str(err.value)


def test_values_outside_the_classes_are_named(config, tmp_path):
    cfg, dataset = val_split(config)
    folder = copy_ground_truth(dataset, tmp_path / "pred")
    bad = folder / f"{dataset.ids[0]}.png"
    pred = np.zeros((96, 96), np.uint8)
    pred[0, :3] = [7, 9, 255]
    Image.fromarray(pred).save(bad)
    with pytest.raises(DatasetError, match=r"prediction values \[7, 9\] are not among the 5 classes"):
        evaluate_predictions(cfg, folder)
    # 255 where the ground truth has a class is not a prediction
    label = read_label(dataset.label_paths[0])
    Image.fromarray(np.where(label == 0, 255, label).astype(np.uint8)).save(bad)
    with pytest.raises(DatasetError, match=r"pixels are 255 \(no class\) where the ground truth .* has a class"):
        evaluate_predictions(cfg, folder)


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(3)
    model = create_model(MODEL["name"], num_classes=MODEL["num_classes"], **MODEL["kwargs"])
    with torch.no_grad():
        model.classifier.bias.zero_()  # untrained, but predicting every class somewhere rather than one everywhere
    meta = {"model": MODEL["name"], "num_classes": MODEL["num_classes"], "model_kwargs": MODEL["kwargs"]}
    return model.eval(), save_weights(tmp_path / "w.safetensors", model.state_dict(), meta)


def write_model_predictions(model, dataset, folder):
    """Each val image's argmax as evaluate() computes it (whole image, batch of one), as a palette PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for index, sample_id in enumerate(dataset.ids):
            image, _ = dataset[index]
            label = infer_probs(model, image[None], InferenceOptions()).argmax(1)[0]
            write_label_png(folder / f"{sample_id}.png", label.numpy().astype(np.uint8), get_label_set("demo_shapes"))
    return folder


def test_pred_dir_prints_what_the_model_path_prints(config, weights, tmp_path, capsys):
    model, path = weights
    _, dataset = val_split(config)
    folder = write_model_predictions(model, dataset, tmp_path / "pred")
    out = tmp_path / "m.json"
    assert main(["eval", str(config), "--weights", str(path), "--out", str(out)]) == 0
    printed, from_model = capsys.readouterr().out, json.loads(out.read_text())
    assert main(["eval", str(config), "--pred-dir", str(folder), "--out", str(out)]) == 0
    assert capsys.readouterr().out == printed
    assert json.loads(out.read_text()) == from_model
    assert "mIoU" in printed and "mDice" not in printed


def test_extra_metrics_of_the_model_equal_those_of_its_predictions(config, weights, tmp_path):
    model, _ = weights
    cfg, dataset = val_split(config, f"eval.metrics={ALL}", "eval.absent=zero")
    folder = write_model_predictions(model, dataset, tmp_path / "pred")
    from_model = evaluate(model, dataset, num_classes=5, absent="zero", metrics=ALL)
    _, from_files = evaluate_predictions(cfg, folder)
    assert from_files.to_dict() == from_model.to_dict()
    assert "mBIoU" in from_files.to_dict() and "mFscore" in from_files.to_dict()


def test_eval_metrics_reach_the_model_path(config, weights, tmp_path, capsys):
    model, path = weights
    _, dataset = val_split(config)
    folder = write_model_predictions(model, dataset, tmp_path / "pred")
    option = f"eval.metrics={ALL}"
    assert main(["eval", str(config), "--pred-dir", str(folder), option]) == 0
    printed = capsys.readouterr().out
    assert "mDice" in printed and "mBIoU" in printed
    assert main(["eval", str(config), "--weights", str(path), option]) == 0
    assert capsys.readouterr().out == printed


def test_seglab_predict_output_folder_is_scored(config, weights, tmp_path, capsys):
    _, path = weights
    _, dataset = val_split(config)
    folder = tmp_path / "predicted"
    assert main(["predict", *map(str, dataset.image_paths), "--weights", str(path), "--out", str(folder)]) == 0
    assert any(folder.glob("*_overlay.png"))  # written beside the label maps, not counted as extra
    capsys.readouterr()
    assert main(["eval", str(config), "--pred-dir", str(folder)]) == 0
    assert "mIoU" in capsys.readouterr().out


def test_cli_errors(config, weights, tmp_path, capsys):
    _, path = weights
    _, dataset = val_split(config)
    folder = copy_ground_truth(dataset, tmp_path / "pred")
    (folder / f"{dataset.ids[0]}.png").unlink()
    assert main(["eval", str(config), "--pred-dir", str(folder)]) == 2
    assert "seglab eval: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--model, --mode, --tta and --results-dir apply to a model"):
        main(["eval", str(config), "--pred-dir", str(folder), "--mode", "slide"])
    with pytest.raises(SystemExit, match="--allow-extra applies to --pred-dir"):
        main(["eval", str(config), "--weights", str(path), "--allow-extra"])
    with pytest.raises(SystemExit):  # one of --weights and --pred-dir
        main(["eval", str(config), "--weights", str(path), "--pred-dir", str(folder)])
    assert "not allowed with argument" in capsys.readouterr().err
