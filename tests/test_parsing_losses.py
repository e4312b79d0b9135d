"""CE2P / SCHP losses: Lovasz-softmax, edge targets and edge loss, consistency, and the combined CE2PLoss."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seglab.losses import (
    CE2PLoss,
    LovaszSoftmaxLoss,
    consistency_loss,
    edge_loss,
    edge_targets,
    lovasz_softmax,
    soft_target_kl,
)


def brute_force_lovasz(probs: np.ndarray, labels: np.ndarray, classes: str, ignore: int = 255) -> float:
    """The Lovasz extension of the Jaccard loss as the integral over thresholds t of Delta({i: m_i > t}),
    with Delta(M) = 1 - |F minus M| / |F union M| evaluated on explicit sets (independent of Alg. 1)."""
    c_count = probs.shape[1]
    p = probs.transpose(0, 2, 3, 1).reshape(-1, c_count)
    y = labels.reshape(-1)
    keep = y != ignore
    p, y = p[keep], y[keep]
    wanted = sorted(set(y.tolist())) if classes == "present" else range(c_count)
    losses = []
    for c in wanted:
        fg = set(np.flatnonzero(y == c).tolist())
        m = np.abs((y == c).astype(float) - p[:, c])
        levels = sorted(set(m.tolist()), reverse=True) + [0.0]
        total = 0.0
        for hi, lo in zip(levels[:-1], levels[1:], strict=True):
            chosen = set(np.flatnonzero(m >= hi).tolist())
            union = fg | chosen
            delta = 0.0 if not union else 1.0 - len(fg - chosen) / len(union)
            total += (hi - lo) * delta
        losses.append(total)
    return float(np.mean(losses)) if losses else 0.0


def test_lovasz_softmax_hand_worked_four_pixels_two_classes():
    # labels 0,0,1,1; p(class 0) = 0.9, 0.4, 0.3, 0.2. Both classes have errors 0.1, 0.6, 0.3, 0.2.
    # class 0: sorted errors 0.6 0.3 0.2 0.1 with fg 1 0 0 1 -> Jaccard 1/2, 2/3, 3/4, 1 -> grad 1/2, 1/6, 1/12, 1/4
    # class 1: fg 0 1 1 0 -> Jaccard 1/3, 2/3, 1, 1 -> grad 1/3, 1/3, 1/3, 0
    p0 = torch.tensor([[0.9, 0.4], [0.3, 0.2]])
    probs = torch.stack([p0, 1 - p0])[None]
    labels = torch.tensor([[[0, 0], [1, 1]]])
    class0 = 0.6 / 2 + 0.3 / 6 + 0.2 / 12 + 0.1 / 4
    class1 = (0.6 + 0.3 + 0.2) / 3
    assert lovasz_softmax(probs, labels).item() == pytest.approx((class0 + class1) / 2, abs=1e-6)
    # an ignored pixel changes nothing, whatever its probabilities
    probs_ign = torch.cat([probs, torch.tensor([[[[0.5], [0.5]]]]).expand(1, 2, 2, 1)], dim=3)
    labels_ign = torch.cat([labels, torch.full((1, 2, 1), 255)], dim=2)
    assert lovasz_softmax(probs_ign, labels_ign).item() == pytest.approx((class0 + class1) / 2, abs=1e-6)
    # "all" adds an absent class' term: for 3 classes with p2 = 0 the absent class contributes 0
    probs3 = torch.cat([probs, torch.zeros(1, 1, 2, 2)], dim=1)
    assert lovasz_softmax(probs3, labels, classes="all").item() == pytest.approx((class0 + class1) / 3, abs=1e-6)


@pytest.mark.parametrize("classes", ["present", "all"])
def test_lovasz_softmax_matches_the_threshold_integral_brute_force(classes):
    g = torch.Generator().manual_seed(1)
    probs = torch.randn(2, 4, 3, 5, generator=g).softmax(1)
    labels = torch.randint(0, 3, (2, 3, 5), generator=g)  # class 3 absent
    labels[0, 0, :2] = 255
    expected = brute_force_lovasz(probs.numpy().astype(np.float64), labels.numpy(), classes)
    assert lovasz_softmax(probs.double(), labels, classes=classes).item() == pytest.approx(expected, abs=1e-9)


def test_lovasz_loss_module_takes_softmax_and_upsamples_and_has_gradient():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (1, 8, 8))
    loss = LovaszSoftmaxLoss()(logits, labels)
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=True)
    assert loss.item() == pytest.approx(lovasz_softmax(up.softmax(1), labels).item(), abs=1e-6)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    assert lovasz_softmax(torch.rand(1, 3, 2, 2), torch.full((1, 2, 2), 255)).item() == 0.0


def test_edge_targets_follow_schps_neighbour_rule_and_dilation():
    labels = torch.zeros(5, 6, dtype=torch.long)
    labels[:, 3:] = 1
    raw = edge_targets(labels, width=1)
    expected_raw = torch.zeros(5, 6, dtype=torch.long)
    expected_raw[:, 2] = 1  # left pixel of each horizontal pair, and upper-left of each down-right pair
    expected_raw[:4, 3] = 1  # upper-right pixel of each down-left pair (rows 0-3: the pair needs a row below)
    assert torch.equal(raw, expected_raw)
    dilated = edge_targets(labels)  # SCHP: 3x3
    expected = torch.zeros(5, 6, dtype=torch.long)
    expected[:, 1:5] = 1
    assert torch.equal(dilated, expected)
    assert dilated.dtype == torch.int64
    # a batch gives the same per image
    assert torch.equal(edge_targets(torch.stack([labels, labels.flip(1)]))[0], expected)


def test_edge_targets_do_not_mark_pairs_with_an_ignored_pixel():
    labels = torch.tensor([[0, 0, 255, 1]] * 3)
    assert edge_targets(labels).sum().item() == 0
    labels = torch.tensor([[0, 1], [255, 255]])
    assert edge_targets(labels, width=1).tolist() == [[1, 0], [0, 0]]
    with pytest.raises(ValueError, match="odd"):
        edge_targets(labels, width=2)


def test_edge_loss_weights_edges_by_the_negative_fraction():
    # 1 edge and 3 non-edge pixels: w_edge = 3/4, w_non_edge = 1/4; the mean is weighted
    target = torch.tensor([[[1, 0, 0, 0]]])
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 1, 0, 0] = 1.0
    edge_ce = math.log(1 + math.exp(-1.0))
    plain_ce = math.log(2.0)
    expected = (0.75 * edge_ce + 0.25 * 3 * plain_ce) / (0.75 + 3 * 0.25)
    assert edge_loss(logits, target).item() == pytest.approx(expected, abs=1e-6)
    # no edge in the batch: 0, not the reference's NaN
    zero = edge_loss(torch.randn(1, 2, 2, 2, requires_grad=True), torch.zeros(1, 2, 2, dtype=torch.long))
    assert zero.item() == 0.0


def test_consistency_loss_is_zero_when_edges_agree_and_positive_otherwise():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[:, :, 4:] = 1
    parsing = 10.0 * F.one_hot(labels, 2).permute(0, 3, 1, 2).float()
    edges = edge_targets(labels)
    agree = torch.stack([-20.0 * edges, 20.0 * edges], 1).float()
    assert consistency_loss(parsing, agree, labels).item() == pytest.approx(0.0, abs=1e-8)
    # the edge branch says "edge" with logits (0, 0.2) everywhere: on the parsing edges (the positives),
    # smooth-L1(p, 1) = 0.5 * (1 - p)^2 with p = sigmoid(0.2)
    weak = torch.zeros(1, 2, 8, 8)
    weak[:, 1] = 0.2
    weak.requires_grad_(True)
    loss = consistency_loss(parsing, weak, labels)
    p = 1 / (1 + math.exp(-0.2))
    assert loss.item() == pytest.approx(0.5 * (1 - p) ** 2, abs=1e-6)
    loss.backward()
    assert weak.grad[:, 1][edges.bool()].lt(0).all()  # pushes the edge probability up on the parsing edges
    # ignored pixels are not counted: all ignored gives 0
    assert consistency_loss(parsing, weak, torch.full_like(labels, 255)).item() == 0.0


def _outputs(labels, num_classes=3, scale=2, requires_grad=True):
    b, h, w = labels.shape
    g = torch.Generator().manual_seed(2)
    out = torch.randn(b, num_classes, h // scale, w // scale, generator=g, requires_grad=requires_grad)
    aux = torch.randn(b, num_classes, h // scale, w // scale, generator=g, requires_grad=requires_grad)
    edge = torch.randn(b, 2, h // scale, w // scale, generator=g, requires_grad=requires_grad)
    return {"out": out, "aux": [aux], "edge": edge}


def test_ce2p_loss_without_soft_targets_is_lovasz_plus_ce_plus_edge_plus_consistency():
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (2, 8, 8), generator=g)
    labels[0, :2, :2] = 255
    outputs = _outputs(labels)
    total, parts = CE2PLoss(3, lambda_s=1.0, lambda_e=2.0, lambda_c=0.1)(outputs, labels)
    parsing = 0.0
    for logits in (outputs["out"], outputs["aux"][0]):
        up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=True).detach()
        lovasz = brute_force_lovasz(up.softmax(1).double().numpy(), labels.numpy(), "present")
        parsing += 0.5 * lovasz + 0.5 * F.cross_entropy(up, labels, ignore_index=255).item()
    assert parts["loss_parsing"] == pytest.approx(parsing, abs=1e-5)
    edge_up = F.interpolate(outputs["edge"], size=(8, 8), mode="bilinear", align_corners=True)
    assert parts["loss_edge"] == pytest.approx(2.0 * edge_loss(edge_up, edge_targets(labels)).item(), abs=1e-6)
    assert parts["loss"] == pytest.approx(parts["loss_parsing"] + parts["loss_edge"] + parts["loss_consistency"])
    assert total.item() == pytest.approx(parts["loss"])
    total.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (outputs["out"], outputs["aux"][0],
                                                                       outputs["edge"]))


def test_soft_target_kl_hand_worked_pixel():
    # logits (0, 0), SCHP logits (0, 2), label 0, cycle 1 (a = 1/2): mixed = (0.5, 1.0), q = softmax(mixed)
    logits = torch.zeros(1, 2, 1, 1)
    soft = torch.tensor([0.0, 2.0]).view(1, 2, 1, 1)
    labels = torch.zeros(1, 1, 1, dtype=torch.long)
    q1 = math.exp(0.5) / (1 + math.exp(0.5))
    q0 = 1 - q1
    expected = q0 * math.log(q0 / 0.5) + q1 * math.log(q1 / 0.5)
    assert soft_target_kl(logits, soft, labels, 1, labels).item() == pytest.approx(expected, abs=1e-6)
    assert soft_target_kl(logits, soft, labels, 1, labels, reduction="mean").item() == pytest.approx(expected / 2)
    # cycle 3: a = 1/4, mixed = (0.25, 1.5)
    q1 = math.exp(1.25) / (1 + math.exp(1.25))
    q0 = 1 - q1
    expected3 = q0 * math.log(q0 / 0.5) + q1 * math.log(q1 / 0.5)
    assert soft_target_kl(logits, soft, labels, 3, labels).item() == pytest.approx(expected3, abs=1e-6)


def test_ce2p_loss_with_one_hot_soft_targets_reduces_to_the_hard_loss():
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 3, (2, 8, 8), generator=g)
    labels[1, -2:, :] = 255
    outputs = _outputs(labels)
    criterion = CE2PLoss(3)
    _, hard = criterion(outputs, labels)
    # SCHP logits that are (very confident) one-hot labels: the mixed target is the one-hot label, so KL = CE
    edges = edge_targets(labels)
    soft_edge = 200.0 * F.one_hot(edges, 2).permute(0, 3, 1, 2).float()
    exact = 200.0 * F.one_hot(torch.where(labels == 255, 0, labels), 3).permute(0, 3, 1, 2).float()
    _, soft = criterion(outputs, labels, soft_parsing=exact, soft_edge=None, cycle_n=1)
    assert soft["loss_parsing"] == pytest.approx(hard["loss_parsing"], abs=1e-5)
    assert soft["loss_edge"] == pytest.approx(hard["loss_edge"])
    # the soft edge target drops the class weights: it equals the unweighted edge CE
    _, soft = criterion(outputs, labels, soft_parsing=exact, soft_edge=soft_edge, cycle_n=2)
    edge_up = F.interpolate(outputs["edge"], size=(8, 8), mode="bilinear", align_corners=True)
    valid = labels != 255
    plain = F.cross_entropy(edge_up, torch.where(valid, edges, 255), ignore_index=255).item()
    assert soft["loss_edge"] == pytest.approx(plain, abs=1e-5)
    with pytest.raises(ValueError, match="cycle_n"):
        criterion(outputs, labels, soft_parsing=exact, cycle_n=0)


def test_ce2p_loss_soft_targets_weigh_the_schp_prediction_more_each_cycle():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[:, :, 2:] = 1
    small = labels[:, ::2, ::2]
    confident = 5.0 * F.one_hot(small, 2).permute(0, 3, 1, 2).float()  # the model predicts the labels
    outputs = {"out": confident, "aux": [confident], "edge": torch.zeros(1, 2, 2, 2)}
    schp_agrees = confident
    schp_disagrees = confident.flip(1)
    criterion = CE2PLoss(2)
    _, agree = criterion(outputs, labels, soft_parsing=schp_agrees, cycle_n=1)
    _, disagree = criterion(outputs, labels, soft_parsing=schp_disagrees, cycle_n=1)
    _, later = criterion(outputs, labels, soft_parsing=schp_disagrees, cycle_n=5)  # a = 1/6: SCHP weighs 5/6
    assert agree["loss_parsing"] < disagree["loss_parsing"] < later["loss_parsing"]
    with pytest.raises(ValueError, match="CE2P"):
        criterion(outputs["out"], labels)
