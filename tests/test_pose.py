"""Pose targets: JPPNet's joint heatmaps, SS-JPPNet's pseudo-joints and structure-sensitive loss, worked by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from seglab.errors import ConfigError
from seglab.models.parsing.pose import (
    PSEUDO_JOINT_GROUPS,
    JPPNetLoss,
    SSJPPNetLoss,
    heatmap_peaks,
    joint_heatmaps,
    pseudo_joint_heatmaps,
    pseudo_joints,
    sample_labels,
    structure_sensitive_loss,
    structure_weights,
)

PEAK = 10 / (6 * math.sqrt(2 * math.pi))  # PoseCreate's 10 * N(0; sigma = 6)


def _gauss_sq_sum(centre_a, centre_b, h, w, sigma=6.0):
    """sum over the grid of (G_a - G_b)^2, with G = PEAK * exp(-d^2 / (2 sigma^2)), None meaning a zero map."""
    total = 0.0
    for y in range(h):
        for x in range(w):
            a = PEAK * math.exp(-((x - centre_a[0]) ** 2 + (y - centre_a[1]) ** 2) / (2 * sigma**2)) if centre_a else 0
            b = PEAK * math.exp(-((x - centre_b[0]) ** 2 + (y - centre_b[1]) ** 2) / (2 * sigma**2)) if centre_b else 0
            total += (a - b) ** 2
    return total


# -- pseudo-joints ------------------------------------------------------------------------------------------------


def test_the_nine_groups_are_head_upper_lower_and_the_six_limbs():
    assert PSEUDO_JOINT_GROUPS[:3] == ((1, 2, 4, 13), (5, 7, 11), (9, 12))
    assert PSEUDO_JOINT_GROUPS[3:] == ((14,), (15,), (16,), (17,), (18,), (19,))
    used = {c for group in PSEUDO_JOINT_GROUPS for c in group}
    assert used.isdisjoint({0, 3, 6, 8, 10})  # background, glove, dress, socks, jumpsuits


def test_centroids_are_truncated_means_and_a_missing_group_is_zero_and_absent():
    labels = torch.zeros(1, 5, 6, dtype=torch.long)
    labels[0, 1, 2] = 13  # face at (x=2, y=1)
    labels[0, 1, 3] = 2  # hair at (x=3, y=1): head centroid (2.5, 1) -> (2, 1)
    labels[0, 2, 0] = labels[0, 2, 1] = 5  # upper clothes at (0, 2), (1, 2)
    labels[0, 3, 1] = 7  # coat at (1, 3): upper body centroid (2/3, 7/3) -> (0, 2)
    labels[0, 4, 5] = 19  # right shoe at (5, 4)
    labels[0, 0, 0] = 3  # glove: not a pseudo-joint
    labels[0, 4, 0] = 255  # ignore
    joints, present = pseudo_joints(labels)
    assert joints.dtype == torch.int64 and joints.shape == (1, 9, 2)
    assert joints[0, 0].tolist() == [2, 1] and joints[0, 1].tolist() == [0, 2] and joints[0, 8].tolist() == [5, 4]
    assert present[0].tolist() == [True, True, False, False, False, False, False, False, True]
    assert joints[0, 2].tolist() == [0, 0] and joints[0, 3].tolist() == [0, 0]  # lower body, left arm: missing


def test_pseudo_joints_are_per_image_in_a_batch():
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[0, 3, 3] = 14
    labels[1, 1, 1] = 14
    joints, present = pseudo_joints(labels)
    assert joints[:, 3].tolist() == [[3, 3], [1, 1]] and present[:, 3].all()


def test_pose_create_maps_peak_at_the_joint_and_are_zero_for_a_missing_joint():
    joints = torch.tensor([[[2, 1], [0, 0]]])
    maps = pseudo_joint_heatmaps(joints, (4, 5))
    assert maps[0, 0, 1, 2].item() == pytest.approx(PEAK, rel=1e-6)
    assert maps[0, 0, 3, 4].item() == pytest.approx(PEAK * math.exp(-(4 + 4) / 72), rel=1e-6)
    assert maps[0, 1].abs().sum() == 0


# -- structure-sensitive loss -------------------------------------------------------------------------------------


def _logits_for(prediction, num_classes=20, strength=2.0):
    """Logits with ``strength`` at the predicted class and 0 elsewhere."""
    return F.one_hot(prediction, num_classes).permute(0, 3, 1, 2).float() * strength


def test_structure_sensitive_loss_matches_the_hand_worked_example():
    h, w, strength = 3, 4, 2.0
    labels = torch.zeros(2, h, w, dtype=torch.long)
    labels[0, 0, 1] = 13  # image 0: head at (1, 0)
    labels[1, 2, 2] = 14  # image 1: left arm at (2, 2)
    labels[1, 0, 3] = 255  # one ignored pixel
    prediction = torch.zeros(2, h, w, dtype=torch.long)
    prediction[0, 2, 3] = 13  # image 0 predicts the head at (3, 2)
    # image 1 predicts no arm at all
    logits = _logits_for(prediction, strength=strength).requires_grad_()
    total, parts = structure_sensitive_loss(logits, labels, stride=None)

    w0 = 0.5 * 0.05 * _gauss_sq_sum((3, 2), (1, 0), h, w)
    w1 = 0.5 * 0.05 * _gauss_sq_sum(None, (2, 2), h, w)
    right = -math.log(math.exp(strength) / (math.exp(strength) + 19))
    wrong = -math.log(1 / (math.exp(strength) + 19))
    ce0 = 10 * right + 2 * wrong  # 12 pixels, the head pixel and the predicted-head pixel wrong
    ce1 = 10 * right + 1 * wrong  # 11 valid pixels, the arm pixel wrong
    expected = (w0 * ce0 + w1 * ce1) / 23
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert parts["loss"] == pytest.approx(expected, rel=1e-5)
    assert parts["joint_error"] == pytest.approx((w0 + w1) / 2, rel=1e-5)
    assert parts["ce"] == pytest.approx((ce0 + ce1) / 23, rel=1e-5)


def test_the_joint_error_weight_is_not_back_propagated():
    labels = torch.zeros(2, 3, 4, dtype=torch.long)
    labels[0, 0, 1] = 13
    labels[1, 2, 2] = 14
    labels[1, 0, 3] = 255
    prediction = torch.zeros(2, 3, 4, dtype=torch.long)
    prediction[0, 2, 3] = 13
    logits = (0.1 * torch.randn(2, 20, 3, 4) + _logits_for(prediction)).requires_grad_()
    total, _ = structure_sensitive_loss(logits, labels, stride=None)
    (grad,) = torch.autograd.grad(total, logits)
    weights = structure_weights(logits, labels, stride=None)
    assert weights.requires_grad is False and (weights > 0).all()
    reference = logits.detach().clone().requires_grad_()
    ce = F.cross_entropy(reference, labels, ignore_index=255, reduction="none").flatten(1).sum(1)
    ((ce * weights).sum() / 23).backward()
    assert torch.allclose(grad, reference.grad, atol=1e-7)


def test_a_perfect_prediction_has_zero_joint_error_and_zero_loss():
    labels = torch.zeros(1, 9, 9, dtype=torch.long)
    labels[0, 2:4, 3:5] = 13
    labels[0, 5:8, 2:6] = 9
    total, parts = structure_sensitive_loss(_logits_for(labels), labels, stride=None)
    assert parts["joint_error"] == 0 and total.item() == 0 and parts["ce"] > 0


def test_stride_8_samples_the_label_every_8_pixels_on_8k_plus_1_crops():
    labels = torch.randint(0, 20, (1, 17, 25))
    assert torch.equal(sample_labels(labels, (3, 4)), labels[:, ::8, ::8])
    # logits already at 1/8 are used as they are: a grid of (17 - 1) // 8 + 1 = 3 by 4 cells
    logits = torch.randn(1, 20, 3, 4)
    total, _ = structure_sensitive_loss(logits, labels)
    total_grid, _ = structure_sensitive_loss(logits, labels[:, ::8, ::8], stride=None)
    assert total.item() == pytest.approx(total_grid.item(), rel=1e-6)


def test_ss_jppnet_loss_weights_every_output_with_the_merged_outputs_error():
    labels = torch.zeros(1, 9, 9, dtype=torch.long)
    labels[0, 0:2, 0:3] = 13
    prediction = torch.zeros(1, 5, 5, dtype=torch.long)
    prediction[0, 4, 4] = 13
    out = _logits_for(prediction)
    aux = torch.zeros(1, 20, 3, 3)  # uniform logits: CE = log 20 everywhere
    total, parts = SSJPPNetLoss()({"out": out, "aux": [aux]}, labels)
    grid = sample_labels(labels, (5, 5))
    assert grid[0].tolist()[0][:2] == [13, 13]  # rows 0, 2, 4, ... of the label
    expected_w, _ = structure_sensitive_loss(out, labels, stride=None)
    assert parts["parsing"] == pytest.approx(expected_w.item(), rel=1e-6)
    assert parts["aux"] == pytest.approx(parts["joint_error"] * 9 * math.log(20) / 9, rel=1e-5)
    assert total.item() == pytest.approx(parts["parsing"] + parts["aux"], rel=1e-6)


# -- JPPNet heatmaps ----------------------------------------------------------------------------------------------


def test_joint_heatmaps_peak_at_the_joint_with_sigma_8_and_zero_for_missing_joints():
    joints = torch.tensor([[[17.9, 9.0, 1.0], [-1.0, -1.0, -1.0], [40.0, 0.0, 0.0]]])
    maps = joint_heatmaps(joints, (4, 8), stride=8)
    assert maps.shape == (1, 3, 4, 8)
    # cell (i, j) samples pixel (8i, 8j); joint (17, 9) after truncation
    assert maps[0, 0, 1, 2].item() == pytest.approx(math.exp(-(1 + 1) / 128), rel=1e-6)
    assert maps[0, 0, 1, 5].item() == pytest.approx(math.exp(-(23**2 + 1) / 128), rel=1e-6)
    assert maps[0, 0, 1, 6].item() == 0  # offset 31: outside the -25..24 window
    assert maps[0, 1].abs().sum() == 0  # missing
    assert maps[0, 2, 0, 5].item() == pytest.approx(1.0)  # occluded (v = 0) joints still get a map
    peaks = heatmap_peaks(maps, stride=8)
    assert peaks[0, 0].tolist() == [16.0, 8.0, 1.0] and peaks[0, 1].tolist() == [-1.0, -1.0, -1.0]
    assert peaks[0, 2].tolist() == [40.0, 0.0, 1.0]


def test_jppnet_loss_sums_ce_and_per_image_l2_norms_over_all_outputs():
    mask = torch.randint(0, 20, (2, 16, 16))
    joints = torch.full((2, 16, 3), -1.0)  # no joint: zero ground truth
    outputs = {
        "parsing": [torch.zeros(2, 20, 2, 2), torch.zeros(2, 20, 1, 1)],  # uniform: CE = log 20 each
        "pose": [torch.full((2, 16, 2, 2), 0.5), torch.full((2, 16, 1, 1), 0.25)],
    }
    total, parts = JPPNetLoss()(outputs, {"mask": mask, "joints": joints})
    assert parts["parsing"] == pytest.approx(2 * math.log(20), rel=1e-6)
    pose = math.sqrt(16 * 4 * 0.25) + math.sqrt(16 * 0.0625)
    assert parts["pose"] == pytest.approx(pose, rel=1e-6)
    assert total.item() == pytest.approx(2 * math.log(20) + pose, rel=1e-6)


def test_jppnet_loss_pose_ground_truth_is_on_the_first_pose_grid():
    joints = torch.full((1, 16, 3), -1.0)
    joints[0, 9] = torch.tensor([8.0, 16.0, 1.0])  # head at cell (y=2, x=1) of a stride-8 grid
    gt = joint_heatmaps(joints, (4, 4), stride=8)
    outputs = {"parsing": [torch.zeros(1, 20, 4, 4)], "pose": [gt.clone()]}
    mask = torch.zeros(1, 32, 32, dtype=torch.long)
    _, parts = JPPNetLoss()(outputs, {"mask": mask, "joints": joints})
    assert parts["pose"] == pytest.approx(0.0, abs=1e-6) and gt[0, 9, 2, 1] == 1


def test_jppnet_loss_needs_joints():
    with pytest.raises(ConfigError, match="with_pose=True"):
        JPPNetLoss()({"parsing": [], "pose": []}, torch.zeros(1, 4, 4, dtype=torch.long))
