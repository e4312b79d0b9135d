import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage

from seglab.config import DataConfig
from seglab.data import build_dataset
from seglab.data.datasets import generate_demo_data
from seglab.engine.coco_eval import (
    InstanceMetrics,
    coco_evaluate,
    evaluate_instances,
    instance_metrics_to_text,
    instances_to_coco_results,
)


@pytest.fixture(scope="module")
def demo_val(tmp_path_factory):
    root = generate_demo_data(tmp_path_factory.mktemp("demo"), seed=0, num_train=1, num_val=5, size=64)
    return build_dataset(DataConfig(dataset="demo", root=str(root)), "val", train=False, task="instance")


def pycocotools_stats(gt_file, results_file, iou_type):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        ev = COCOeval(gt, gt.loadRes(str(results_file)), iouType=iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats[:6]]


def gt_outputs(dataset, i, score=1.0):
    """The ground truth of sample ``i`` as a model output (scores ``score``)."""
    _, target = dataset[i]
    n = len(target["labels"])
    return {"boxes": target["boxes"].as_subclass(torch.Tensor).clone(), "labels": target["labels"].clone(),
            "scores": torch.full((n,), score), "masks": target["masks"].as_subclass(torch.Tensor)[:, None].float()}


def test_results_format_by_hand():
    masks = torch.zeros(2, 1, 6, 8)
    masks[0, 0, 1:3, 2:5] = 0.9
    masks[0, 0, 4, 4] = 0.4  # below the threshold
    masks[1, 0, 5, 7] = 0.6
    out = {"boxes": torch.tensor([[2.0, 1.0, 5.0, 3.0], [7.0, 5.0, 8.0, 6.0]]), "labels": torch.tensor([1, 2]),
           "scores": torch.tensor([0.75, 0.5]), "masks": masks, "mask_scores": torch.tensor([0.25, 0.125])}
    res = instances_to_coco_results([out, {k: v[:0] for k, v in out.items()}], [7, 8], {1: 10, 2: 20})
    assert res["bbox"] == [{"image_id": 7, "category_id": 10, "bbox": [2.0, 1.0, 3.0, 2.0], "score": 0.75},
                           {"image_id": 7, "category_id": 20, "bbox": [7.0, 5.0, 1.0, 1.0], "score": 0.5}]
    assert [(r["image_id"], r["category_id"], r["score"]) for r in res["segm"]] == [(7, 10, 0.25), (7, 20, 0.125)]
    assert all("bbox" not in r and isinstance(r["segmentation"]["counts"], str) for r in res["segm"])
    json.dumps(res)
    decoded = mask_utils.decode(res["segm"][0]["segmentation"])
    expected = np.zeros((6, 8), np.uint8)
    expected[1:3, 2:5] = 1
    assert np.array_equal(decoded, expected)
    with pytest.raises(ValueError, match=r"labels \[3\] have no category id"):
        instances_to_coco_results([{**out, "labels": torch.tensor([1, 3])}], [7], {1: 10, 2: 20})


def test_coco_evaluate_equals_pycocotools_run_directly(demo_val, tmp_path):
    rng = np.random.default_rng(0)
    outputs = []
    for i in range(len(demo_val)):
        out = gt_outputs(demo_val, i)
        masks = out["masks"][:, 0].numpy() > 0.5
        perturbed = np.stack([ndimage.binary_dilation(m, iterations=int(rng.integers(0, 4))) if k % 2 else
                              np.roll(m, int(rng.integers(-6, 7)), axis=1) for k, m in enumerate(masks)])
        out["masks"] = torch.from_numpy(perturbed)[:, None].float()
        out["boxes"] = out["boxes"] + torch.from_numpy(rng.uniform(-4, 4, out["boxes"].shape)).float()
        out["scores"] = torch.from_numpy(rng.uniform(0.3, 1.0, len(masks))).float()
        fp = torch.zeros(2, 1, *masks.shape[1:])  # false positives: two random squares, wrong or right class
        fp[0, 0, 0:20, 0:20] = 1
        fp[1, 0, 40:60, 30:50] = 1
        out = {"boxes": torch.cat([out["boxes"], torch.tensor([[0.0, 0, 20, 20], [30, 40, 50, 60]])]),
               "labels": torch.cat([out["labels"], torch.tensor([1, 4])]),
               "scores": torch.cat([out["scores"], torch.tensor([0.9, 0.35])]),
               "masks": torch.cat([out["masks"], fp])}
        outputs.append(out)
    results = instances_to_coco_results(outputs, demo_val.image_ids, demo_val.label_to_cat_id)
    before = json.dumps(results)
    metrics = coco_evaluate(demo_val.coco, results)
    assert json.dumps(results) == before  # the caller's results are not modified
    for iou_type in ("bbox", "segm"):
        results_file = tmp_path / f"{iou_type}.json"
        results_file.write_text(json.dumps(results[iou_type]))
        expected = pycocotools_stats(demo_val.ann_file, results_file, iou_type)
        assert list(metrics[iou_type].values()) == expected
        assert list(metrics[iou_type]) == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
        assert 0.05 < metrics[iou_type]["AP"] < 0.95


def test_empty_results_score_zero(demo_val):
    metrics = coco_evaluate(demo_val.coco, {"bbox": [], "segm": []})
    assert metrics == {t: dict.fromkeys(["AP", "AP50", "AP75", "APs", "APm", "APl"], 0.0) for t in ("bbox", "segm")}


class GroundTruthModel(torch.nn.Module):
    """A test double: returns each image's ground truth, in the order the evaluation reads the dataset."""

    def __init__(self, dataset):
        super().__init__()
        self.outputs = [gt_outputs(dataset, i) for i in range(len(dataset))]
        self.calls = 0
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, images):
        assert not self.training and not torch.is_grad_enabled()
        outs = self.outputs[self.calls : self.calls + len(images)]
        for image, out in zip(images, outs, strict=True):
            assert image.dtype == torch.float32 and image.shape[-2:] == out["masks"].shape[-2:]
        self.calls += len(images)
        return outs


def test_ground_truth_predictions_score_ap_one_and_write_loadable_json(demo_val, tmp_path):
    model = GroundTruthModel(demo_val).train()
    metrics = evaluate_instances(model, demo_val, batch_size=4, results_dir=tmp_path / "res")
    assert model.training and model.calls == len(demo_val)
    assert metrics.segm_AP == 1.0 and metrics.bbox["AP"] == 1.0 and metrics.segm["AP75"] == 1.0
    assert metrics.to_dict()["segm_AP"] == 1.0 and "bbox_APl" in metrics.to_dict()
    for iou_type in ("bbox", "segm"):
        path = tmp_path / "res" / f"{iou_type}_results.json"
        n_gt = len(demo_val.coco.getAnnIds())
        assert len(json.loads(path.read_text())) == n_gt
        assert pycocotools_stats(demo_val.ann_file, path, iou_type)[0] == 1.0
    text = instance_metrics_to_text(metrics)
    assert text.splitlines()[1].startswith("bbox") and "1.000" in text.splitlines()[2]


def test_segm_is_ranked_by_mask_scores(tmp_path):
    """One object; detection A has the right box and mask but a low box score, B is wrong everywhere with a
    high box score. Ranked by box score, B (a false positive) comes first: AP 0.5. Mask scores put A first."""
    gt_mask = np.zeros((32, 32), np.uint8)
    gt_mask[4:14, 4:14] = 1
    rle = mask_utils.encode(np.asfortranarray(gt_mask))
    gt = {"images": [{"id": 1, "file_name": "x.png", "width": 32, "height": 32}],
          "categories": [{"id": 3, "name": "thing"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": 100.0,
                           "bbox": [4.0, 4.0, 10.0, 10.0],
                           "segmentation": {"size": [32, 32], "counts": rle["counts"].decode()}}]}  # fmt: skip
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_file))
    masks = torch.zeros(2, 1, 32, 32)
    masks[0, 0, 4:14, 4:14] = 1
    masks[1, 0, 20:30, 20:30] = 1
    out = {"boxes": torch.tensor([[4.0, 4, 14, 14], [20, 20, 30, 30]]), "labels": torch.tensor([1, 1]),
           "scores": torch.tensor([0.1, 0.9]), "masks": masks}
    plain = coco_evaluate(coco, instances_to_coco_results([out], [1], {1: 3}))
    assert plain["bbox"]["AP"] == pytest.approx(0.5) and plain["segm"]["AP"] == pytest.approx(0.5)
    scored = coco_evaluate(coco, instances_to_coco_results([{**out, "mask_scores": torch.tensor([0.9, 0.1])}], [1],
                                                           {1: 3}))
    assert scored["bbox"]["AP"] == pytest.approx(0.5) and scored["segm"]["AP"] == pytest.approx(1.0)
    assert InstanceMetrics(bbox=scored["bbox"], segm=scored["segm"]).segm_AP == pytest.approx(1.0)
