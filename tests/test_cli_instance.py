"""The command line with an instance model: train, eval (COCO AP + results JSON) and predict."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from seglab.checkpoint import read_metadata
from seglab.cli import main
from seglab.data.datasets.demo import generate_demo_data


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-iteration run of the light Mask R-CNN on a tiny demo set (COCO layout)."""
    tmp = tmp_path_factory.mktemp("instance_cli")
    root = generate_demo_data(tmp / "demo", num_train=4, num_val=2, size=96)
    config = tmp / "config.yaml"
    config.write_text(
        "name: tiny\n"
        f"output_dir: {tmp / 'runs'}\n"
        "model: {name: mask_rcnn_mobilenet_v3_fpn, num_classes: 5,\n"
        "        kwargs: {min_size: 96, max_size: 96, frozen_bn: false, rpn_pre_nms_top_n_train: 200,\n"
        "                 rpn_post_nms_top_n_train: 100, rpn_pre_nms_top_n_test: 100, rpn_post_nms_top_n_test: 50,\n"
        "                 box_batch_size_per_image: 32, box_score_thresh: 0.0, box_detections_per_img: 10}}\n"
        f"data: {{dataset: demo, root: {root}, palette: demo_shapes, batch_size: 2, workers: 0}}\n"
        "optim: {name: adamw, lr: 0.0005}\n"
        "train: {iters: 3, eval_interval: 0, checkpoint_interval: 3, log_interval: 1, seed: 0}\n"
    )
    assert main(["train", str(config)]) == 0
    return tmp, config, root


def test_train_logs_each_loss_and_records_the_categories(run):
    tmp, _, _ = run
    run_dir = tmp / "runs" / "tiny"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["iter"] for r in train] == [1, 2, 3]
    for name in ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"):
        assert all(np.isfinite(r[name]) for r in train), name
    for r in train:  # the logged total is the sum of the parts
        parts = sum(v for k, v in r.items() if k.startswith("loss_"))
        assert r["loss"] == pytest.approx(parts, rel=1e-5)
    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert {"segm_AP", "segm_AP50", "bbox_AP", "bbox_APl"} <= set(final)
    meta = read_metadata(run_dir / "checkpoints" / "last.safetensors")
    assert meta["classes"] == ["background", "circle", "square", "triangle", "star"]
    assert meta["label_to_cat_id"] == {"1": 1, "2": 2, "3": 3, "4": 4}


def test_eval_prints_coco_ap_and_writes_loadable_results(run, tmp_path, capsys):
    tmp, config, root = run
    weights = tmp / "runs" / "tiny" / "checkpoints" / "last.safetensors"
    out = tmp_path / "metrics.json"
    args = ["eval", str(config), "--weights", str(weights), "--results-dir", str(tmp_path), "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    for column in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert column in text
    assert "segm" in text and "bbox" in text
    metrics = json.loads(out.read_text())
    gt = COCO(str(root / "annotations" / "instances_val.json"))
    segm = json.loads((tmp_path / "segm_results.json").read_text())
    assert segm, "box_score_thresh=0 keeps detections"
    assert {r["image_id"] for r in segm} <= set(gt.getImgIds())
    gt.loadRes(str(tmp_path / "segm_results.json"))  # valid COCO results
    assert 0.0 <= metrics["segm_AP"] <= 1.0


def test_predict_draws_instances_and_writes_coco_results(run, tmp_path):
    tmp, _, root = run
    weights = tmp / "runs" / "tiny" / "checkpoints" / "last.safetensors"
    images = sorted((root / "JPEGImages").glob("val_*.jpg"))
    assert main(["predict", *map(str, images), "--weights", str(weights), "--out", str(tmp_path),
                 "--score-threshold", "0.0"]) == 0
    for path in images:
        picture = np.asarray(Image.open(tmp_path / f"{path.stem}_instances.png"))
        assert picture.shape == (96, 96, 3)
        assert not np.array_equal(picture, np.asarray(Image.open(path).convert("RGB")))  # something drawn
    segm = json.loads((tmp_path / "segm_results.json").read_text())
    bbox = json.loads((tmp_path / "bbox_results.json").read_text())
    assert len(segm) == len(bbox) > 0
    assert {r["file_name"] for r in segm} == {p.name for p in images}
    assert {r["image_id"] for r in segm} <= {1, 2}
    assert all(r["category_id"] in (1, 2, 3, 4) and 0.0 <= r["score"] <= 1.0 for r in segm)


def test_train_writes_a_detector_model_folder_that_predict_takes(run, tmp_path):
    """The run's model folder records the detector's transform sizes, score threshold and category ids, and
    seglab predict --model FOLDER rebuilds it with them (no --weights)."""
    tmp, _, root = run
    folder = tmp / "runs" / "tiny" / "model"
    config = json.loads((folder / "config.json").read_text())
    assert config["task"] == "instance" and config["model_kwargs"]["min_size"] == 96
    assert config["preprocessing"]["min_size"] == 96 and config["preprocessing"]["max_size"] == 96
    assert config["score_threshold"] == 0.5
    assert config["detection_classes"] == ["background", "circle", "square", "triangle", "star"]
    assert config["label_to_cat_id"] == {"1": 1, "2": 2, "3": 3, "4": 4}
    from seglab import from_pretrained

    assert from_pretrained(folder).transform.min_size == (96,)
    images = sorted((root / "JPEGImages").glob("val_*.jpg"))
    assert main(["predict", *map(str, images), "--model", str(folder), "--out", str(tmp_path),
                 "--score-threshold", "0.0"]) == 0
    assert json.loads((tmp_path / "segm_results.json").read_text())


def test_predict_results_take_the_annotation_files_image_ids_and_go_to_cocoeval(run, tmp_path, capsys):
    from pycocotools.cocoeval import COCOeval

    tmp, _, root = run
    weights = tmp / "runs" / "tiny" / "checkpoints" / "last.safetensors"
    annotations = root / "annotations" / "instances_val.json"
    gt = COCO(str(annotations))
    images = sorted((root / "JPEGImages").glob("val_*.jpg"), reverse=True)  # not the annotation file's order
    assert main(["predict", *map(str, images), "--weights", str(weights), "--out", str(tmp_path),
                 "--score-threshold", "0.0", "--annotations", str(annotations)]) == 0
    ids = {img["file_name"]: img["id"] for img in gt.loadImgs(gt.getImgIds())}
    for kind in ("segm", "bbox"):
        results = json.loads((tmp_path / f"{kind}_results.json").read_text())
        assert results and all(r["image_id"] == ids[r["file_name"]] for r in results)
        evaluation = COCOeval(gt, gt.loadRes(str(tmp_path / f"{kind}_results.json")), kind)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        assert -1.0 <= evaluation.stats[0] <= 1.0
    capsys.readouterr()

    stray = tmp_path / "stray.jpg"
    Image.open(images[0]).save(stray)
    assert main(["predict", str(stray), "--weights", str(weights), "--out", str(tmp_path / "x"),
                 "--annotations", str(annotations)]) == 2
    err = capsys.readouterr().err
    assert "lists no image named stray.jpg" in err and str(annotations) in err
    assert not (tmp_path / "x").exists()  # refused before anything ran
