"""The optional metrics of eval.metrics: mDice, mFscore, mPrecision, mRecall as mmsegmentation's IoUMetric computes
them, and Boundary IoU (Cheng et al., CVPR 2021) checked against a re-statement of the reference's cv2 erosion."""

import json
import math

import cv2
import numpy as np
import pytest
import torch

from seglab.config import load_config
from seglab.engine.boundary import (
    _boundaries_torch,
    boundary_counts,
    boundary_width,
    label_boundaries,
    mask_boundary,
)
from seglab.engine.evaluator import ConfusionMatrix, _segmetrics_from_hist, metrics_to_text
from seglab.errors import ConfigError

ALL = ("miou", "dice", "fscore", "boundary_iou")
NAN = float("nan")

# 5 classes, rows ground truth, columns prediction:
#   class 0 and 1 ordinary; class 2 in the ground truth, predicted once where it is not (TP 0);
#   class 3 predicted but absent from the ground truth; class 4 in neither.
HIST = np.array([[5, 1, 0, 0, 0],
                 [2, 3, 1, 0, 0],
                 [0, 0, 0, 4, 0],
                 [0, 0, 0, 0, 0],
                 [0, 0, 0, 0, 0]])
# TP = [5, 3, 0, 0, 0], gt (rows) = [6, 6, 4, 0, 0], pred (columns) = [7, 4, 1, 4, 0]


def test_dice_fscore_precision_recall_by_hand_nan_rule():
    m = _segmetrics_from_hist(HIST, "nan", ("miou", "dice", "fscore"))
    # Dice = 2 TP / (pred + gt): 10/13, 6/10, 0/5, 0/4, 0/0
    np.testing.assert_allclose(m.dice, [10 / 13, 3 / 5, 0.0, 0.0, NAN])
    assert m.mDice == pytest.approx((10 / 13 + 3 / 5 + 0 + 0) / 4)          # 0.342308
    # Precision = TP / pred: 5/7, 3/4, 0/1, 0/4, 0/0
    np.testing.assert_allclose(m.precision, [5 / 7, 3 / 4, 0.0, 0.0, NAN])
    assert m.mPrecision == pytest.approx((5 / 7 + 3 / 4) / 4)               # 0.366071
    # Recall = TP / gt: 5/6, 3/6, 0/4, 0/0, 0/0 (= Acc)
    np.testing.assert_allclose(m.recall, [5 / 6, 1 / 2, 0.0, NAN, NAN])
    np.testing.assert_allclose(m.recall, m.acc)
    assert m.mRecall == pytest.approx((5 / 6 + 1 / 2) / 3)                  # 0.444444
    # F = 2 P R / (P + R): class 0: 2 (5/7)(5/6) / (5/7 + 5/6) = 10/13 (= its Dice); class 1: (3/4)/(5/4) = 3/5;
    # class 2: P = R = 0 -> 0/0, NaN as in mmseg; classes 3, 4: R undefined -> NaN
    np.testing.assert_allclose(m.fscore, [10 / 13, 3 / 5, NAN, NAN, NAN])
    assert m.mFscore == pytest.approx((10 / 13 + 3 / 5) / 2)                # 0.684615
    # IoU unchanged: TP / (gt + pred - TP) = 5/8, 3/7, 0/5, 0/4, NaN
    np.testing.assert_allclose(m.iou, [5 / 8, 3 / 7, 0.0, 0.0, NAN])


def test_dice_fscore_precision_recall_by_hand_zero_rule():
    m = _segmetrics_from_hist(HIST, "zero", ("miou", "dice", "fscore"))
    # every undefined value is 0 and every class counts in the mean (SCHP's rule, as for IoU)
    np.testing.assert_allclose(m.dice, [10 / 13, 3 / 5, 0, 0, 0])
    np.testing.assert_allclose(m.precision, [5 / 7, 3 / 4, 0, 0, 0])
    np.testing.assert_allclose(m.recall, [5 / 6, 1 / 2, 0, 0, 0])
    np.testing.assert_allclose(m.fscore, [10 / 13, 3 / 5, 0, 0, 0])
    assert m.mDice == pytest.approx((10 / 13 + 3 / 5) / 5)
    assert m.mFscore == pytest.approx((10 / 13 + 3 / 5) / 5)
    assert m.mPrecision == pytest.approx((5 / 7 + 3 / 4) / 5)
    assert m.mRecall == pytest.approx((5 / 6 + 1 / 2) / 5)


def mmseg_total_area_to_metrics(hist):
    """mmseg's IoUMetric.total_area_to_metrics re-stated in numpy (mIoU, mDice, mFscore with beta 1)."""
    hist = hist.astype(np.float64)
    intersect = np.diag(hist)
    area_pred, area_label = hist.sum(0), hist.sum(1)
    union = area_pred + area_label - intersect
    beta = 1
    with np.errstate(divide="ignore", invalid="ignore"):
        precision, recall = intersect / area_pred, intersect / area_label
        return {
            "aAcc": intersect.sum() / area_label.sum(),
            "IoU": intersect / union,
            "Acc": intersect / area_label,
            "Dice": 2 * intersect / (area_pred + area_label),
            "Fscore": (1 + beta**2) * (precision * recall) / ((beta**2 * precision) + recall),
            "Precision": precision,
            "Recall": recall,
        }


def test_agrees_with_mmseg_formulas_on_a_random_matrix():
    rng = np.random.default_rng(0)
    for trial in range(20):
        c = int(rng.integers(2, 12))
        hist = rng.integers(0, 30, (c, c)) * (rng.random((c, c)) < 0.6)
        hist[rng.integers(0, c)] = 0        # a class absent from the ground truth
        hist[:, rng.integers(0, c)] = 0     # a class never predicted
        ref = mmseg_total_area_to_metrics(hist)
        m = _segmetrics_from_hist(hist, "nan", ("miou", "dice", "fscore"))
        ours = {"IoU": m.iou, "Acc": m.acc, "Dice": m.dice, "Fscore": m.fscore, "Precision": m.precision,
                "Recall": m.recall}
        for name, values in ours.items():
            np.testing.assert_allclose(values, ref[name], rtol=1e-12, equal_nan=True, err_msg=f"{trial} {name}")
        assert m.aAcc == pytest.approx(ref["aAcc"], nan_ok=True)
        # mmseg's summary: nanmean of each per-class array
        for mean, name in (("mIoU", "IoU"), ("mAcc", "Acc"), ("mDice", "Dice"), ("mFscore", "Fscore"),
                           ("mPrecision", "Precision"), ("mRecall", "Recall")):
            expected = np.nanmean(ref[name]) if not np.isnan(ref[name]).all() else NAN
            assert getattr(m, mean) == pytest.approx(expected, nan_ok=True), (trial, mean)


def test_default_metrics_keep_the_output_unchanged():
    m = _segmetrics_from_hist(HIST)
    assert list(m.to_dict()) == ["aAcc", "mAcc", "mIoU", "fwIoU", "IoU", "Acc", "confusion"]
    assert m.mDice is None and m.mBIoU is None
    text = metrics_to_text(m, ["a", "b", "c", "d", "e"])
    assert text.splitlines()[0].split() == ["class", "IoU", "Acc"]
    assert text.splitlines()[-1].startswith("aAcc ")


def test_extra_metrics_appear_in_dict_and_text_only_when_asked():
    m = _segmetrics_from_hist(HIST, "nan", ("miou", "dice", "fscore"))
    d = json.loads(json.dumps(m.to_dict()))  # JSON-safe: NaN is null
    assert list(d) == ["aAcc", "mAcc", "mIoU", "fwIoU", "IoU", "Acc", "mDice", "Dice", "mFscore", "Fscore",
                       "mPrecision", "Precision", "mRecall", "Recall", "confusion"]
    assert d["Dice"][4] is None and d["mDice"] == pytest.approx(m.mDice)
    lines = metrics_to_text(m, ["a", "b", "c", "d", "e"]).splitlines()
    assert lines[0].split() == ["class", "IoU", "Acc", "Dice", "Fscore", "Prec", "Recall"]
    assert lines[1 + 3].split() == ["c", "0.00", "0.00", "0.00", "-", "0.00", "0.00"]  # class 2
    assert lines[-1] == "mDice 34.23  mFscore 68.46  mPrecision 36.61  mRecall 44.44"


def test_unknown_metric_is_a_config_error_naming_the_key_and_the_names(tmp_path):
    with pytest.raises(ConfigError, match=r"eval\.metrics.*'hausdorff'.*miou, dice, fscore, boundary_iou"):
        load_config(None, ["eval.metrics=[miou,hausdorff]"])
    assert load_config(None).eval.metrics == ["miou"]
    assert load_config(None, ["eval.metrics=[boundary_iou,dice]"]).eval.metrics == ["boundary_iou", "dice"]
    with pytest.raises(ConfigError, match="metrics"):
        ConfusionMatrix(3, metrics=["miou", "dice_score"])


# ---- Boundary IoU ----

def reference_mask_to_boundary(mask, dilation_ratio=0.02):
    """boundary-iou-api's mask_to_boundary (boundary_iou/utils/boundary_utils.py) re-stated: pad one zero pixel,
    cv2.erode with a 3x3 kernel d times, mask minus the erosion."""
    h, w = mask.shape
    img_diag = np.sqrt(h**2 + w**2)
    dilation = int(round(dilation_ratio * img_diag))
    if dilation < 1:
        dilation = 1
    new_mask = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    kernel = np.ones((3, 3), dtype=np.uint8)
    new_mask_erode = cv2.erode(new_mask, kernel, iterations=dilation)
    mask_erode = new_mask_erode[1: h + 1, 1: w + 1]
    return mask - mask_erode


def random_label_map(rng, h, w, num_classes):
    """Blocks of classes with noise and a few ignore pixels: boundaries of every shape and at the border."""
    block = int(rng.integers(2, 12))
    coarse = rng.integers(0, num_classes, (h // block + 1, w // block + 1))
    labels = np.kron(coarse, np.ones((block, block), dtype=np.int64))[:h, :w]
    noise = rng.random((h, w)) < 0.03
    labels[noise] = rng.integers(0, num_classes, int(noise.sum()))
    labels[rng.random((h, w)) < 0.02] = 255
    return labels.astype(np.uint8)


def test_boundaries_equal_the_reference_cv2_erosion_on_random_masks():
    rng = np.random.default_rng(0)
    # d = 1, 2, 3, 4, 6 and odd shapes, a 1-pixel row included; 75 x 100: 0.02 * 125 = 2.5 exactly, which
    # Python's round (as the reference's) takes to 2
    sizes = [(1, 40), (7, 5), (50, 50), (53, 53), (75, 100), (88, 89), (123, 61), (160, 90), (200, 200)]
    for h, w in sizes:
        labels = random_label_map(rng, h, w, 4)
        width = boundary_width(h, w)
        ours = label_boundaries(labels, width)
        ours_torch = _boundaries_torch(torch.from_numpy(labels), width).numpy()  # the GPU path, run on the CPU
        for c in (0, 1, 2, 3, 255):
            mask = (labels == c).astype(np.uint8)
            ref = reference_mask_to_boundary(mask).astype(bool)
            np.testing.assert_array_equal(ours & (labels == c), ref, err_msg=f"{h}x{w} class {c}")
            np.testing.assert_array_equal(ours_torch & (labels == c), ref, err_msg=f"{h}x{w} class {c} (torch)")
            np.testing.assert_array_equal(mask_boundary(mask), ref)


def test_boundary_width_is_two_percent_of_the_diagonal_rounded_at_least_one():
    assert boundary_width(6, 6) == 1            # 0.02 * 8.49 = 0.17 -> 0 -> at least 1
    assert boundary_width(512, 512) == 14       # 0.02 * 724.08 = 14.48
    assert boundary_width(1024, 2048) == 46     # 0.02 * 2289.73 = 45.79
    assert boundary_width(473, 473, 0.05) == 33  # 0.05 * 668.92 = 33.45


def reference_boundary_counts(pred, gt, num_classes):
    """Per class over one image: the cv2 boundaries of pred == c and gt == c, counted where gt is not ignored."""
    valid = gt != 255
    inter, union = np.zeros(num_classes, np.int64), np.zeros(num_classes, np.int64)
    for c in range(num_classes):
        bp = reference_mask_to_boundary((pred == c).astype(np.uint8)).astype(bool) & valid
        bg = reference_mask_to_boundary((gt == c).astype(np.uint8)).astype(bool) & valid
        inter[c], union[c] = (bp & bg).sum(), (bp | bg).sum()
    return inter, union


def test_boundary_iou_over_images_equals_the_reference():
    rng = np.random.default_rng(1)
    c = 4
    cm = ConfusionMatrix(c, metrics=["boundary_iou"])
    inter, union = np.zeros(c, np.int64), np.zeros(c, np.int64)
    for h, w in [(60, 80), (61, 80), (90, 45), (128, 128)]:
        gt = random_label_map(rng, h, w, c)
        pred = random_label_map(rng, h, w, c)
        pred[pred == 255] = 0
        cm.update(torch.from_numpy(pred), torch.from_numpy(gt))
        i, u = reference_boundary_counts(pred, gt, c)
        inter, union = inter + i, union + u
    assert cm.boundary.tolist() == [inter.tolist(), union.tolist()]
    m = cm.compute()
    np.testing.assert_allclose(m.boundary_iou, inter / union)
    assert m.mBIoU == pytest.approx(np.mean(inter / union))
    assert m.iou is not None and m.dice is None  # only what was asked


def test_boundary_iou_by_hand():
    # 6x6 image: d = 1 (0.02 * 8.49 rounds to 0). Ground truth: class 1 on the 4x4 square rows 1-4, cols 1-4,
    # class 0 around it, the corner (0, 0) ignored. Prediction: the square moved one column right (cols 2-5).
    gt = np.zeros((6, 6), np.uint8)
    gt[1:5, 1:5] = 1
    gt[0, 0] = 255
    pred = np.zeros((6, 6), np.uint8)
    pred[1:5, 2:6] = 1
    # class 1, gt: the square minus its 2x2 core (rows 2-3, cols 2-3): 12 pixels.
    # class 1, pred: the square touches the right border, so its core is rows 2-3, cols 3-4: 12 pixels
    # (rows 1 and 4 at cols 2-5, and cols 2 and 5 at rows 2-3). Common: rows 1, 4 at cols 2-4 = 6 (at rows 2-3
    # the ground truth's boundary is cols 1 and 4, the prediction's cols 2 and 5); union 12 + 12 - 6 = 18.
    # class 0, gt: the ring, every pixel at the border or next to the square: 20, less the ignored corner = 19.
    # class 0, pred: rows 0 and 5, cols 0-1 of rows 1-4: 20 pixels, all at the border or next to the square;
    # 19 counted. Common: rows 0 and 5 and col 0 of rows 1-4 = 16 - the corner = 15; union 19 + 19 - 15 = 23.
    inter, union = boundary_counts(torch.from_numpy(pred), torch.from_numpy(gt), 2)
    assert inter.tolist() == [15, 6] and union.tolist() == [23, 18]
    cm = ConfusionMatrix(2, metrics=ALL)
    cm.update(torch.from_numpy(pred), torch.from_numpy(gt))
    m = cm.compute()
    np.testing.assert_allclose(m.boundary_iou, [15 / 23, 6 / 18])
    assert m.mBIoU == pytest.approx((15 / 23 + 1 / 3) / 2)  # 0.492754
    d = m.to_dict()
    assert d["BIoU"] == pytest.approx([15 / 23, 1 / 3]) and list(d)[-3:] == ["mBIoU", "BIoU", "confusion"]
    assert metrics_to_text(m, ["bg", "square"]).splitlines()[-1].endswith("mBIoU 49.28")


def test_boundary_counts_merge_and_stay_out_of_compute_when_not_counted():
    rng = np.random.default_rng(2)
    maps = [(random_label_map(rng, 40, 40, 3), random_label_map(rng, 40, 40, 3)) for _ in range(4)]
    whole, a, b = (ConfusionMatrix(3, metrics=ALL) for _ in range(3))
    for i, (gt, pred) in enumerate(maps):
        pred[pred == 255] = 1
        whole.update(torch.from_numpy(pred), torch.from_numpy(gt))
        (a if i % 2 else b).update(torch.from_numpy(pred), torch.from_numpy(gt))
    assert a.merge(b).boundary.tolist() == whole.boundary.tolist()
    batch = ConfusionMatrix(3, metrics=ALL)  # a [B, H, W] batch counts as its images one by one
    batch.update(torch.from_numpy(np.stack([p for _, p in maps])), torch.from_numpy(np.stack([g for g, _ in maps])))
    assert batch.boundary.tolist() == whole.boundary.tolist() and batch.hist.tolist() == whole.hist.tolist()
    with pytest.raises(ValueError, match="boundary_iou"):
        ConfusionMatrix(3).compute(metrics=ALL)
    with pytest.raises(ValueError, match="Boundary IoU"):
        a.merge(ConfusionMatrix(3))
    m = whole.compute(metrics=["miou", "dice"])
    assert m.boundary_iou is None and not math.isnan(m.mDice)
