"""Human-parsing metrics (issue 5 item 8) against examples worked by hand, and against straight ports of the
reference scripts' loops (SCHP utils/miou.py, CIHP_PGN evaluation/test_inst_part_ap.py, Parsing R-CNN
utils/data/evaluation/parsing_eval.py) on random data."""

import math

import numpy as np
import pytest
import torch

from seglab.engine.evaluator import (
    PARSING_IOU_THRESHOLDS,
    ConfusionMatrix,
    parsing_metrics,
    part_instances_from_maps,
    person_parsing_ap,
    person_parsings_from_maps,
    region_ap,
    voc_ap,
)

# ---------------------------------------------------------------- absent-class rules

# 3 classes; class 2 appears in neither the ground truth nor the prediction
HIST_ABSENT = np.array([[3, 1, 0],
                        [1, 2, 0],
                        [0, 0, 0]])


def test_schp_rule_counts_an_absent_class_as_zero_nan_rule_drops_it():
    # tp = (3, 2, 0); gt rows = (4, 3, 0); pred columns = (4, 3, 0); union = (5, 4, 0)
    cm = ConfusionMatrix(3)
    cm.hist += torch.from_numpy(HIST_ABSENT)
    nan_rule = cm.compute()  # the default is unchanged: "nan"
    zero_rule = cm.compute(absent="zero")
    # IoU: 3/5, 2/4, and 0/0 -> NaN (nan rule) or 0/max(1, 0) = 0 (SCHP)
    np.testing.assert_allclose(nan_rule.iou[:2], [0.6, 0.5])
    assert math.isnan(nan_rule.iou[2])
    np.testing.assert_allclose(zero_rule.iou, [0.6, 0.5, 0.0])
    assert nan_rule.mIoU == pytest.approx((0.6 + 0.5) / 2)        # 0.55
    assert zero_rule.mIoU == pytest.approx((0.6 + 0.5 + 0) / 3)   # 0.366667
    # accuracy: 3/4, 2/3, and NaN / 0
    assert nan_rule.mAcc == pytest.approx((0.75 + 2 / 3) / 2)      # 0.708333
    assert zero_rule.mAcc == pytest.approx((0.75 + 2 / 3 + 0) / 3)  # 0.472222
    # pixel accuracy and fwIoU do not depend on the rule: 5 / 7 and (4*0.6 + 3*0.5) / 7
    assert nan_rule.aAcc == zero_rule.aAcc == pytest.approx(5 / 7)
    assert nan_rule.fwIoU == pytest.approx(zero_rule.fwIoU) and zero_rule.fwIoU == pytest.approx(3.9 / 7)
    with pytest.raises(ValueError, match="absent"):
        cm.compute(absent="skip")


def test_parsing_metrics_schp_and_nan_rules():
    schp = parsing_metrics(HIST_ABSENT)  # default rule: SCHP's
    assert schp["mIoU"] == pytest.approx(1.1 / 3) and schp["mean_acc"] == pytest.approx((0.75 + 2 / 3) / 3)
    assert schp["pixel_acc"] == pytest.approx(5 / 7)
    nan = parsing_metrics(torch.from_numpy(HIST_ABSENT), rule="nan")
    assert nan["mIoU"] == pytest.approx(0.55) and math.isnan(nan["IoU"][2])
    # a class predicted but absent from the gt: hist [[2, 1], [0, 0]] -> tp (2, 0), gt (3, 0), pred (2, 1)
    # IoU (2/3, 0/1) under both rules; Acc (2/3, NaN) -> 2/3 (nan rule) or (2/3, 0) -> 1/3 (SCHP)
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 0, 1]), torch.tensor([0, 0, 0]))
    for rule in ("schp", "nan"):
        assert parsing_metrics(cm, rule=rule)["mIoU"] == pytest.approx(1 / 3)
    assert parsing_metrics(cm, rule="nan")["mean_acc"] == pytest.approx(2 / 3)
    assert parsing_metrics(cm, rule="schp")["mean_acc"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="rule"):
        parsing_metrics(cm, rule="pgn")
    with pytest.raises(ValueError, match="square"):
        parsing_metrics(np.zeros((2, 3)))


def schp_miou_reference(hist):
    """SCHP utils/miou.py compute_mean_ioU, from the confusion matrix on."""
    pos, res, tp = hist.sum(1), hist.sum(0), np.diag(hist)
    return (tp.sum() / pos.sum(), (tp / np.maximum(1.0, pos)).mean(), (tp / np.maximum(1.0, pos + res - tp)).mean())


def test_schp_rule_matches_schp_formula_on_random_matrices():
    rng = np.random.default_rng(0)
    for _ in range(20):
        hist = rng.integers(0, 5, (6, 6)) * (rng.random((6, 6)) < 0.5)
        hist[rng.integers(0, 6)] = 0  # one class absent from the gt (and maybe from the prediction)
        m = parsing_metrics(hist, rule="schp")
        np.testing.assert_allclose([m["pixel_acc"], m["mean_acc"], m["mIoU"]], schp_miou_reference(hist.astype(float)))


# ---------------------------------------------------------------- VOC AP


def test_voc_ap_is_the_continuous_envelope_area():
    # precision 1, 0.5, 2/3 at recall 0.5, 0.5, 1 -> envelope 1 up to recall 0.5, then 2/3: 0.5 + 0.5*2/3
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(5 / 6)
    # the 11-point VOC07 rule would give (6*1 + 5*2/3)/11 = 0.848485: not used
    assert voc_ap(np.array([]), np.array([])) == 0.0


# ---------------------------------------------------------------- PGN region AP


def row(*pixels, width=10):
    """A [1, width] bool mask with the given pixels set."""
    mask = np.zeros((1, width), dtype=bool)
    mask[0, list(pixels)] = True
    return mask


def region_example():
    # image A: class 1 GT g1 = px 0-3, class 2 GT g2 = px 6-9
    # image B: class 1 GTs g3 = px 0-4 and g4 = px 7-9 (g4 is never found)
    gts = [[(1, row(0, 1, 2, 3)), (2, row(6, 7, 8, 9))],
           [(1, row(0, 1, 2, 3, 4)), (1, row(7, 8, 9))]]
    preds = [
        [(1, 0.9, row(0, 1, 2, 3)),      # p1: IoU with g1 = 4/4 = 1.0
         (1, 0.8, row(0, 1)),            # p2: IoU with g1 = 2/4 = 0.5 exactly (g1 absorbs a second hit below 0.5)
         (2, 0.7, row(5, 6, 7, 8, 9))],  # p3: IoU with g2 = 4/5 = 0.8 exactly
        [(1, 0.85, row(5, 6)),           # p4: overlaps neither g3 nor g4 -> IoU 0
         (1, 0.6, row(0, 1, 2)),         # p5: IoU with g3 = 3/5 = 0.6 exactly
         (2, 0.95, row(0, 1))],          # p6: no class-2 GT in image B -> IoU 0
    ]
    return preds, gts


def test_region_ap_by_hand():
    preds, gts = region_example()
    out = region_ap(preds, gts, num_classes=3)
    # class 1, 3 GT, ranked p1 (1.0), p4 (0), p2 (0.5), p5 (0.6):
    #  t <= 0.4: hits T F T T -> precision 1, 1/2, 2/3, 3/4 at recall 1/3, 1/3, 2/3, 1 (p2 counts although g1 was
    #            already found: no one-to-one) -> AP = 1/3*1 + 1/3*3/4 + 1/3*3/4 = 5/6
    #  t = 0.5:  p2's 0.5 is not > 0.5: T F F T -> precision 1, 1/2, 1/3, 1/2 at recall 1/3, 1/3, 1/3, 2/3
    #            -> envelope 1 then 1/2: AP = 1/3 + 1/3*1/2 = 1/2
    #  t >= 0.6: p5's 0.6 is not > 0.6: only p1 -> AP = 1/3
    # class 2, 1 GT, ranked p6 (0), p3 (0.8):
    #  t <= 0.7: F T -> precision 0, 1/2 at recall 0, 1 -> AP = 1/2;  t >= 0.8: AP 0
    c1 = [5 / 6] * 4 + [1 / 2] + [1 / 3] * 4
    c2 = [1 / 2] * 7 + [0.0] * 2
    np.testing.assert_allclose(out["per_class"][1], c1)
    np.testing.assert_allclose(out["per_class"][2], c2)
    assert np.isnan(out["per_class"][0]).all()  # background is not a part class
    np.testing.assert_allclose(out["APr"], [2 / 3] * 4 + [1 / 2] + [5 / 12] * 2 + [1 / 6] * 2)
    assert out["thresholds"] == list(PARSING_IOU_THRESHOLDS)
    assert out["APr50"] == pytest.approx(0.5)
    # (4 * 2/3 + 1/2 + 2 * 5/12 + 2 * 1/6) / 9 = (26/6) / 9 = 13/27
    assert out["APr_vol"] == pytest.approx(13 / 27)


def test_region_ap_threshold_is_strict_and_one_gt_can_absorb_several_hits():
    # one GT (px 0-3) split into two predicted halves, IoU 2/4 = 0.5 each
    gts = [[(1, row(0, 1, 2, 3))]]
    preds = [[(1, 0.9, row(0, 1)), (1, 0.8, row(2, 3))]]
    out = region_ap(preds, gts, num_classes=2, thresholds=(0.4, 0.5))
    # t = 0.5: 0.5 is not > 0.5 -> no hit -> AP 0
    assert out["APr"][1] == 0.0
    # t = 0.4: both hit the same GT: recall 1 then 2 (the reference does not clip it), precision 1, 1
    # -> area 1*1 + 1*1 = 2: AP above 1, as CIHP_PGN's script computes it
    assert out["APr"][0] == pytest.approx(2.0)


def test_region_ap_edge_cases():
    preds, gts = region_example()
    # no predictions at all: every class with GT has AP 0
    empty = region_ap([[], []], gts, num_classes=3)
    assert empty["APr_vol"] == 0.0 and (empty["per_class"][1:] == 0).all()
    # class 3 has no GT anywhere (but a prediction): AP NaN, left out of the class mean
    preds_extra = [list(preds[0]) + [(3, 0.99, row(9))], list(preds[1])]
    out = region_ap(preds_extra, gts, num_classes=4)
    assert np.isnan(out["per_class"][3]).all()
    assert out["APr_vol"] == pytest.approx(13 / 27)
    # torch masks work like numpy ones
    as_torch = [[(c, s, torch.from_numpy(m)) for c, s, m in image] for image in preds]
    assert region_ap(as_torch, gts, num_classes=3)["APr_vol"] == pytest.approx(13 / 27)
    with pytest.raises(ValueError, match="images"):
        region_ap(preds[:1], gts, num_classes=3)
    with pytest.raises(ValueError, match="thresholds"):
        region_ap(preds, gts, num_classes=3, thresholds=(0.5, 1.0))


def test_part_instances_and_person_parsings_from_cihp_maps():
    category = np.array([[0, 2, 2, 5], [0, 14, 15, 5]])
    instance = np.array([[0, 1, 1, 2], [0, 3, 4, 5]])
    human = np.array([[0, 1, 1, 2], [0, 1, 1, 2]])
    parts = part_instances_from_maps(category, instance)
    assert [c for c, _ in parts] == [2, 5, 14, 15, 5]
    assert parts[0][1].tolist() == [[False, True, True, False], [False, False, False, False]]
    persons = person_parsings_from_maps(category, human)
    assert [p.tolist() for p in persons] == [[[0, 2, 2, 0], [0, 14, 15, 0]], [[0, 0, 0, 5], [0, 0, 0, 5]]]


# ---------------------------------------------------------------- Parsing R-CNN person AP and PCP

# 3 classes (0 background, parts 1 and 2), one image of 1 x 8 pixels, two people side by side
GT_A = np.array([[1, 1, 2, 2, 0, 0, 0, 0]])
GT_B = np.array([[0, 0, 0, 0, 1, 1, 2, 2]])
P1 = np.array([[1, 1, 2, 2, 0, 0, 0, 0]])  # = A: IoU (bg, 1, 2) = (1, 1, 1) -> 1.0; with B: (0, 0, 0) -> 0
P2 = np.array([[1, 1, 2, 0, 0, 0, 0, 0]])  # A again: bg 4/5, part 1 2/2, part 2 1/2 -> 2.3/3 = 0.766667;
#                                            with B: bg 1/8, 0, 0 -> 0.041667 -> a duplicate of A
P3 = np.array([[0, 0, 0, 0, 1, 2, 2, 0]])  # B: bg 4/5, part 1 1/2, part 2 1/3 -> (0.8 + 0.5 + 1/3)/3 = 0.544444;
#                                            with A: bg 1/8, 0, 0 -> 0.041667


def test_person_parsing_ap_and_pcp_by_hand():
    preds = [[(0.8, P2), (0.9, P1), (0.7, P3)]]
    out = person_parsing_ap(preds, [[GT_A, GT_B]], num_classes=3)
    # ranked P1 (1.0 -> A), P2 (0.767 -> A), P3 (0.544 -> B); 2 GT persons
    #  t <= 0.5: P1 TP, P2 FP (A already matched: one-to-one), P3 TP
    #            -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP = 1/2 + 1/2*2/3 = 5/6
    #  t = 0.6, 0.7: P2 is still a duplicate, P3's 0.544 is too low -> only P1: AP = 1/2
    #  t = 0.8, 0.9: P2 0.767 too low anyway -> AP = 1/2
    np.testing.assert_allclose(out["APp"], [5 / 6] * 5 + [1 / 2] * 4)
    assert out["APp50"] == pytest.approx(5 / 6)
    assert out["APp_vol"] == pytest.approx((5 * 5 / 6 + 4 / 2) / 9)  # 37/54 = 0.685185
    # PCP: A and B each have 2 parts. P1's part IoUs (1, 1): 2/2 at every t.
    # P3's part IoUs (1/2, 1/3): t <= 0.3 -> 2/2; t = 0.4 -> 1/2; t = 0.5 -> 0/2 (0.5 is not > 0.5);
    # t >= 0.6 P3 is no TP, B is unmatched -> 0.  PCP = mean over the 2 GT persons.
    np.testing.assert_allclose(out["PCP"], [1, 1, 1, 0.75, 0.5, 0.5, 0.5, 0.5, 0.5])
    assert out["PCP50"] == pytest.approx(0.5)


def test_person_parsing_ap_score_threshold_ignore_and_edge_cases():
    gts = [[GT_A, GT_B]]
    perfect_b = (0.0005, GT_B.copy())  # below the default score threshold 0.001: dropped
    preds = [[(0.9, P1), (0.8, P2), (0.7, P3), perfect_b]]
    assert person_parsing_ap(preds, gts, num_classes=3)["APp"][-1] == pytest.approx(0.5)
    # kept: at t = 0.9 it finds B last: precision 1, 1/2, 1/3, 1/2 at recall 1/2, 1/2, 1/2, 1 -> 1/2 + 1/2*1/2
    assert person_parsing_ap(preds, gts, num_classes=3, score_threshold=0.0)["APp"][-1] == pytest.approx(0.75)
    # ignored GT pixels (255) are left out of the person IoU: P1 stays a perfect match of A
    a_ignore = GT_A.copy()
    a_ignore[0, 2] = 255
    p1_wrong_there = P1.copy()
    p1_wrong_there[0, 2] = 0
    out = person_parsing_ap([[(0.9, p1_wrong_there)]], [[a_ignore, GT_B]], num_classes=3, thresholds=(0.9,))
    assert out["APp"] == [pytest.approx(0.5)] and out["PCP"] == [pytest.approx(0.5)]  # A found, B missed
    # no predictions: AP 0 and PCP 0; a prediction in an image without GT is a false positive
    assert person_parsing_ap([[]], gts, num_classes=3)["APp_vol"] == 0.0
    assert person_parsing_ap([[]], gts, num_classes=3)["PCP50"] == 0.0
    two = person_parsing_ap([[(0.9, P1)], [(0.95, P1)]], [gts[0], []], num_classes=3, thresholds=(0.5,))
    assert two["APp"] == [pytest.approx(0.5 * 0.5)]  # FP first: precision 0 then 1/2 at recall 1/2
    # no GT person at all: undefined -> NaN
    assert math.isnan(person_parsing_ap([[(0.9, P1)]], [[]], num_classes=3)["APp50"])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        person_parsing_ap([[(0.9, P1 + 5)]], gts, num_classes=3)
    with pytest.raises(ValueError, match="shape"):
        person_parsing_ap([[(0.9, np.zeros((2, 8), dtype=np.int64))]], gts, num_classes=3)


# ---------------------------------------------------------------- ports of the reference loops, random data


def reference_region_ap(preds, gts, num_classes, thresholds):
    """CIHP_PGN compute_class_ap, per class, restated on in-memory instances."""
    aps = np.zeros((num_classes - 1, len(thresholds)))
    for cls in range(1, num_classes):
        num_gt, scores, tp, fp = 0, [], [[] for _ in thresholds], [[] for _ in thresholds]
        for image_preds, image_gts in zip(preds, gts, strict=True):
            gt_masks = [m for c, m in image_gts if c == cls]
            pred = [(s, m) for c, s, m in image_preds if c == cls]
            num_gt += len(gt_masks)
            if not pred:
                continue
            scores += [s for s, _ in pred]
            for _, m in pred:
                best = max((np.logical_and(m, g).sum() / np.logical_or(m, g).sum() for g in gt_masks), default=0.0)
                for k, t in enumerate(thresholds):
                    tp[k].append(1 if best > t else 0)
                    fp[k].append(0 if best > t else 1)
        ind = np.argsort(scores, kind="stable")[::-1]
        for k in range(len(thresholds)):
            m_tp, m_fp = np.cumsum(np.array(tp[k])[ind]), np.cumsum(np.array(fp[k])[ind])
            aps[cls - 1, k] = voc_ap(m_tp / float(num_gt), m_tp / np.maximum(m_tp + m_fp, np.finfo(np.float64).eps))
    return aps


def reference_person_ap(preds, gts, num_classes, thresholds, score_thresh):
    """Parsing R-CNN eval_parsing_ap, restated on in-memory person maps."""
    conf, image_ids, ptr = [], [], []
    for i, image in enumerate(preds):
        for j, (score, _) in enumerate(image):
            conf.append(score), image_ids.append(i), ptr.append(j)
    order = np.argsort(-np.array(conf), kind="stable")
    npos = sum(len(g) for g in gts)
    det = [[[False] * len(g) for g in gts] for _ in thresholds]
    tp, fp = np.zeros((len(thresholds), len(conf))), np.zeros((len(thresholds), len(conf)))
    pcp = [[] for _ in thresholds]
    for d, idx in enumerate(order):
        if conf[idx] < score_thresh:
            continue
        mask_pred = preds[image_ids[idx]][ptr[idx]][1]
        ovmax, jmax = -np.inf, -1
        for i, mask_gt in enumerate(gts[image_ids[idx]]):
            k = (mask_gt >= 0) & (mask_gt < num_classes)
            hist = np.bincount(num_classes * mask_gt[k] + mask_pred[k], minlength=num_classes ** 2)
            hist = hist.reshape(num_classes, num_classes).astype(float)
            with np.errstate(divide="ignore", invalid="ignore"):
                iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
            if np.nanmean(iu) > ovmax:
                ovmax, seg_iou_max, jmax, mask_gt_u = np.nanmean(iu), iu, i, np.unique(mask_gt)
        for j, t in enumerate(thresholds):
            if ovmax > t and not det[j][image_ids[idx]][jmax]:
                tp[j, d] = 1
                det[j][image_ids[idx]][jmax] = True
                pcp_d = len(mask_gt_u[(mask_gt_u > 0) & (mask_gt_u < num_classes)])
                pcp[j].append(np.sum(seg_iou_max[1:] > t) / pcp_d if pcp_d > 0 else 0.0)
            else:
                fp[j, d] = 1
    aps, pcps = [], []
    for j in range(len(thresholds)):
        c_tp, c_fp = np.cumsum(tp[j]), np.cumsum(fp[j])
        aps.append(voc_ap(c_tp / npos, c_tp / np.maximum(c_tp + c_fp, np.finfo(np.float64).eps)))
        pcps.append(np.mean(pcp[j] + [0.0] * (npos - len(pcp[j]))))
    return aps, pcps


def random_people(rng, num_images, num_classes, size=(12, 16)):
    """Per image: GT persons (part maps on disjoint bands) and noisy predicted persons with scores."""
    gts, preds = [], []
    for _ in range(num_images):
        n = int(rng.integers(1, 4))
        human = np.zeros(size, dtype=np.int64)
        for h in range(n):
            human[:, h * 5:h * 5 + 4] = h + 1
        category = np.where(human > 0, rng.integers(1, num_classes, size), 0)
        category[rng.random(size) < 0.05] = 255
        people = person_parsings_from_maps(category, human)
        gts.append(people)
        image_preds = []
        for person in people + people[: int(rng.integers(0, 2))]:  # sometimes a duplicate
            noisy = np.where(person == 255, 0, person)
            flip = rng.random(size) < rng.uniform(0.0, 0.6)
            noisy = np.where(flip, rng.integers(0, num_classes, size), noisy)
            image_preds.append((float(rng.choice([0.3, 0.5, 0.9, rng.random()])), noisy))
        preds.append(image_preds)
    return preds, gts


def test_person_parsing_ap_matches_the_reference_loop_on_random_people():
    rng = np.random.default_rng(0)
    for _ in range(5):
        preds, gts = random_people(rng, num_images=4, num_classes=4)
        out = person_parsing_ap(preds, gts, num_classes=4, score_threshold=0.001)
        aps, pcps = reference_person_ap(preds, gts, 4, PARSING_IOU_THRESHOLDS, 0.001)
        np.testing.assert_allclose(out["APp"], aps)
        np.testing.assert_allclose(out["PCP"], pcps)


def test_region_ap_matches_the_reference_loop_on_random_parts():
    rng = np.random.default_rng(1)
    for _ in range(5):
        preds, gts = random_people(rng, num_images=4, num_classes=4)
        # part instances: each (person, class) region; predictions score each predicted part by a random number
        gt_parts = [[(c, (g == c)) for g in image for c in range(1, 4) if (g == c).any()] for image in gts]
        pred_parts = [[(c, float(rng.choice([0.5, rng.random()])), (p == c)) for _, p in image for c in range(1, 4)
                       if (p == c).any()] for image in preds]
        out = region_ap(pred_parts, gt_parts, num_classes=4)
        np.testing.assert_allclose(out["per_class"][1:], reference_region_ap(pred_parts, gt_parts, 4,
                                                                             PARSING_IOU_THRESHOLDS))
