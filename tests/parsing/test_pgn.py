import math

import numpy as np
import pytest
import torch
import torchvision
from torch.nn import functional as F

from seglab.errors import CheckpointError
from seglab.models import count_parameters
from seglab.models.parsing.pgn import (
    PGNLoss,
    PyramidPooling,
    group_instances,
    instance_edges,
    pgn_resnet50,
    pgn_resnet101,
)

FACE, UPPER, PANTS = 13, 5, 9


def tiny_pgn(num_classes: int = 20):
    return pgn_resnet50(num_classes=num_classes, width=32)


# -- the network ------------------------------------------------------------------------------------------------


def test_pgn_resnet101_has_the_reference_164_839_673_parameters():
    with torch.device("meta"):
        model = pgn_resnet101()
        light = pgn_resnet50()
    assert count_parameters(model) == 164_839_673
    assert count_parameters(model.backbone) == 42_500_160  # ResNet-101 without fc
    assert count_parameters(light) == 60_347_577
    # the reference's widths: 512 parsing branches, 256 edge branches, 128 remaps, 512-ch pyramid levels
    assert model.parsing_branch.levels[2][0].out_channels == 512 and model.edge_branch.levels[2][0].out_channels == 256
    assert model.parsing_remap[0].out_channels == 128 and model.edge_head.pp.convs[0][0].out_channels == 512
    assert [c.dilation[0] for c in model.edge_supervision[0].convs] == [1, 2, 4, 8, 16]
    # DeepLab-v2 rates on every block of res4 / res5, including the first
    assert {b.conv2.dilation[0] for b in model.backbone.layer3} == {2}
    assert {b.conv2.dilation[0] for b in model.backbone.layer4} == {4}


@pytest.mark.parametrize("size", [(65, 71), (97, 80)])
def test_forward_shapes_in_eval_and_train_at_odd_sizes(size):
    model = tiny_pgn(num_classes=7)
    x = torch.randn(2, 3, *size)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 7, *size)
        edges = model.predict_edges(x)
    assert edges.shape == (2, 1, *size) and bool(((edges > 0) & (edges < 1)).all())
    model.train()
    out = model(x)
    stride8 = (math.ceil(size[0] / 8), math.ceil(size[1] / 8))
    assert out["out"].shape == (2, 7, *stride8) and [a.shape for a in out["aux"]] == [(2, 7, *stride8)]
    assert out["edge"].shape == (2, 1, *stride8)
    assert len(out["edge_aux"]) == 4 and all(e.shape == (2, 1, *stride8) for e in out["edge_aux"])


def test_pyramid_pooling_bins_are_the_reference_fractions_of_the_map():
    pp = PyramidPooling(1, 1)
    # on the 60x60 map of a 480 input: the reference's kernels 60/30/20/10 exactly (bins 1, 2, 3, 6)
    assert [pp.kernel_size(60, 60, level) for level in range(4)] == [(60, 60), (30, 30), (20, 20), (10, 10)]
    # at other sizes the same fractions, rounded up: a 9x13 map
    assert [pp.kernel_size(9, 13, level) for level in range(4)] == [(9, 13), (5, 7), (3, 5), (2, 3)]
    # the 1-bin level is the global mean, broadcast back
    with torch.no_grad():
        for conv in pp.convs:
            conv[0].weight.zero_()
            conv[0].weight[0, 0, 1, 1] = 1.0
            conv[0].bias.zero_()
        x = torch.rand(1, 1, 9, 13)
        out = pp(x)
    assert out.shape == (1, 5, 9, 13)
    torch.testing.assert_close(out[0, 1], x.mean().expand(9, 13))
    # the 3x3 level: 3x5 windows, the last column of windows holds 3 valid columns of 13 (5+5+3)
    torch.testing.assert_close(F.avg_pool2d(x, (3, 5), (3, 5), ceil_mode=True)[0, 0, 0, 2], x[0, 0, :3, 10:].mean())


def test_pretrained_true_without_network_says_how_to_provide_the_file(monkeypatch):
    def offline(url, *args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with torch.device("meta"), pytest.raises(CheckpointError, match=r'pretrained_backbone="/path/resnet101-'):
        pgn_resnet101(pretrained_backbone=True)


# -- edge ground truth ------------------------------------------------------------------------------------------


def test_instance_edges_mark_pixels_next_to_another_person_or_background():
    human_ids = torch.zeros(6, 8, dtype=torch.long)
    human_ids[1:5, 1:4] = 1
    human_ids[1:5, 4:7] = 2
    expected = torch.tensor(
        [
            [1, 1, 1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 1, 1],
            [1, 1, 0, 1, 1, 0, 1, 1],
            [1, 1, 0, 1, 1, 0, 1, 1],
            [1, 1, 1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 1, 1],
        ]
    )
    assert torch.equal(instance_edges(human_ids), expected)
    assert torch.equal(instance_edges(human_ids[None].repeat(2, 1, 1)), expected[None].repeat(2, 1, 1))
    # one person filling the image: no edge (replicated borders)
    assert instance_edges(torch.ones(4, 5, dtype=torch.long)).sum() == 0


# -- grouping ---------------------------------------------------------------------------------------------------


def one_hot_probs(parsing: np.ndarray, peak: np.ndarray | float, num_classes: int = 20) -> np.ndarray:
    """Probabilities whose argmax is ``parsing`` with max probability ``peak``; the rest spread evenly."""
    peak = np.broadcast_to(np.asarray(peak, dtype=np.float64), parsing.shape)
    probs = np.repeat(((1 - peak) / (num_classes - 1))[None], num_classes, axis=0)
    np.put_along_axis(probs, parsing[None], peak[None], axis=0)
    return probs


def two_people():
    parsing = np.zeros((20, 30), np.int64)
    for left, right in ((3, 15), (15, 27)):  # person A: columns 3-14, person B: columns 15-26
        parsing[2:6, left:right] = FACE
        parsing[6:12, left:right] = UPPER
        parsing[12:18, left:right] = PANTS
    return parsing


def test_two_people_separated_by_an_edge_line_give_two_humans_and_their_parts():
    parsing = two_people()
    edges = np.full(parsing.shape, 0.05)
    edges[:, 14:16] = 0.9  # the instance edge between the two people
    result = group_instances(one_hot_probs(parsing, 0.8), edges)
    assert np.array_equal(result["parsing"], parsing)
    person_a = np.zeros_like(parsing)
    person_a[2:18, 3:15] = 1
    person_b = np.zeros_like(parsing)
    person_b[2:18, 15:27] = 1
    # equal areas: the first region in raster order is person 1; the edge columns go to the nearest person
    assert np.array_equal(result["human_ids"], person_a + 2 * person_b)
    assert [h["id"] for h in result["humans"]] == [1, 2]
    assert [h["score"] for h in result["humans"]] == [192.0, 192.0]  # the area, as the reference
    assert [h["box"] for h in result["humans"]] == [(3.0, 2.0, 14.0, 17.0), (15.0, 2.0, 26.0, 17.0)]
    parts = [(p["class"], p["human_id"]) for p in result["parts"]]
    assert parts == [(UPPER, 1), (UPPER, 2), (PANTS, 1), (PANTS, 2), (FACE, 1), (FACE, 2)]
    for part in result["parts"]:
        expected = (parsing == part["class"]) & (result["human_ids"] == part["human_id"])
        assert np.array_equal(part["mask"], expected)


def test_small_region_cut_off_by_an_edge_is_merged_into_the_person_it_touches_most():
    parsing = two_people()
    edges = np.full(parsing.shape, 0.05)
    edges[:, 14:16] = 0.9
    edges[15, 3:14] = 0.9  # cuts 2 x 11 = 22 pixels of pants (one label, < 30 px) off person A
    result = group_instances(one_hot_probs(parsing, 0.8), edges)
    assert len(result["humans"]) == 2
    assert set(np.unique(result["human_ids"][16:18, 3:14])) == {1}
    assert (result["human_ids"] == 1).sum() == 192
    # a cut-off region with two labels and more than min_area pixels stays a person of its own
    edges[15, 3:14] = 0.05
    edges[10, 3:14] = 0.9  # rows 11-17 of person A: upper clothes and pants, 77 px
    split = group_instances(one_hot_probs(parsing, 0.8), edges)
    assert len(split["humans"]) == 3
    assert len(np.unique(split["human_ids"][11:18, 3:14])) == 1
    assert split["human_ids"][11, 3] != split["human_ids"][9, 3]


def test_one_person_without_edges_is_one_human():
    parsing = two_people()
    result = group_instances(one_hot_probs(parsing, 0.8), np.full(parsing.shape, 0.05))
    assert len(result["humans"]) == 1 and result["humans"][0]["score"] == 384.0
    assert np.array_equal(result["human_ids"], (parsing > 0).astype(np.int64))
    assert [(p["class"], p["human_id"]) for p in result["parts"]] == [(UPPER, 1), (PANTS, 1), (FACE, 1)]


def test_part_scores_follow_area_times_mean_probability_times_edge_score():
    # a 6x6 person: upper clothes in columns 0-2, pants in columns 3-5; imgradient(parsing) > 0 on columns 2-3
    parsing = np.zeros((6, 6), np.int64)
    parsing[:, :3] = UPPER
    parsing[:, 3:] = PANTS
    peak = np.full((6, 6), 0.7)
    peak[:, :2] = 0.8
    peak[:, 2] = 0.6
    edges = np.zeros((6, 6))
    edges[0, 0] = 0.1  # below the grouping threshold; counts in the edge score
    result = group_instances(one_hot_probs(parsing, peak), edges)
    assert len(result["humans"]) == 1 and result["humans"][0]["box"] == (0.0, 0.0, 5.0, 5.0)
    upper, pants = result["parts"]
    # upper: area 18, mean prob (12 x 0.8 + 6 x 0.6) / 18, E = 1 on column 2 (6 px) + 0.1 at (0, 0): 6.1 / 7
    assert upper["class"] == UPPER and upper["score"] == pytest.approx(18 * (13.2 / 18) * (6.1 / 7))
    # pants: area 18, prob 0.7, E = 1 on column 3 only: 6 / 6
    assert pants["class"] == PANTS and pants["score"] == pytest.approx(18 * 0.7 * 1.0)


def test_predict_instances_partitions_the_foreground_into_people_and_parts():
    model = tiny_pgn().eval()
    results = model.predict_instances(torch.randn(2, 3, 65, 75))
    assert len(results) == 2
    for result in results:
        parsing, human_ids = result["parsing"], result["human_ids"]
        assert parsing.shape == human_ids.shape == (65, 75)
        assert np.array_equal(human_ids > 0, parsing > 0)
        union = np.zeros_like(parsing, dtype=bool)
        for part in result["parts"]:
            assert np.array_equal(part["mask"], (parsing == part["class"]) & (human_ids == part["human_id"]))
            union |= part["mask"]
        assert np.array_equal(union, parsing > 0)


# -- loss -------------------------------------------------------------------------------------------------------


def constant_outputs(batch: int, classes: int, size: tuple[int, int]) -> dict:
    zeros = torch.zeros(batch, classes, *size)
    edge = torch.zeros(batch, 1, *size)
    return {"out": zeros, "aux": [zeros.clone()], "edge": edge, "edge_aux": [edge.clone() for _ in range(4)]}


def test_pgn_loss_on_zero_logits_matches_the_hand_computed_value():
    human_ids = torch.zeros(1, 6, 8, dtype=torch.long)
    human_ids[0, 1:5, 1:4] = 1
    human_ids[0, 1:5, 4:7] = 2
    mask = (human_ids > 0).long() * 5
    mask[0, 0, 0] = 255  # one ignored pixel: an edge pixel outside the people
    loss = PGNLoss(edge_weight=0.5)
    total, parts = loss(constant_outputs(1, 20, (3, 4)), {"mask": mask, "human_ids": human_ids})
    # parsing: CE = ln 20 everywhere; sigmoid(0) = 0.5 > 0.1, so the local CE covers every valid pixel too
    assert parts["loss_out"] == pytest.approx(2 * math.log(20))
    assert parts["loss_aux0"] == pytest.approx(2 * math.log(20))
    # edges: t = ln 2; 47 valid pixels, 43 edge pixels (all but the 4 interior ones), 24 person pixels, of
    # which 20 are edge pixels: (2 x 4/47 x ln2 x (43 + 20) + 43/47 x ln2 x (4 + 4)) / 47
    edge = (2 * 4 / 47 * math.log(2) * 63 + 43 / 47 * math.log(2) * 8) / 47
    for name in ("loss_edge", "loss_edge_aux0", "loss_edge_aux3"):
        assert parts[name] == pytest.approx(edge)
    assert total.item() == pytest.approx(4 * 2 * math.log(20) / 2 + 0.5 * 5 * edge)
    assert parts["loss"] == pytest.approx(total.item())
    # the reference's weighting: summed edge terms, 50 and 0.005
    reference = PGNLoss(parsing_weight=50, edge_weight=0.005, edge_reduction="sum")
    total, _ = reference(constant_outputs(1, 20, (6, 8)), {"mask": mask, "human_ids": human_ids})
    assert total.item() == pytest.approx(50 * 4 * math.log(20) + 0.005 * 5 * edge * 47)


def test_local_parsing_term_only_counts_pixels_with_a_predicted_edge():
    mask = torch.tensor([[[0, 5], [5, 5]]])
    outputs = constant_outputs(1, 20, (2, 2))
    outputs["out"][0, 5] = 2.0  # class 5 favoured: low CE on the three person pixels, high on the background
    outputs["edge"][0, 0] = torch.tensor([[5.0, -5.0], [-5.0, -5.0]])  # an edge only on pixel (0, 0)
    _, parts = PGNLoss()(outputs, {"mask": mask, "human_ids": (mask > 0).long()})
    log_z = math.log(19 + math.exp(2.0))
    ce_background, ce_person = log_z, log_z - 2.0
    assert parts["loss_out"] == pytest.approx((ce_background + 3 * ce_person) / 4 + ce_background)


def test_a_few_training_steps_lower_the_loss():
    # the backbone frozen (the reference freezes its BN too) keeps the test fast; Adam at 1e-4 on the heads
    model = tiny_pgn(num_classes=6).train()
    model.backbone.eval().requires_grad_(False)
    x = torch.randn(2, 3, 49, 49)
    human_ids = torch.zeros(2, 49, 49, dtype=torch.long)
    human_ids[:, 6:45, 6:24] = 1
    human_ids[:, 6:45, 24:43] = 2
    mask = torch.zeros(2, 49, 49, dtype=torch.long)
    for rows, label in ((slice(6, 18), 1), (slice(18, 32), 3), (slice(32, 45), 5)):
        mask[:, rows][human_ids[:, rows] > 0] = label
    target = {"mask": mask, "human_ids": human_ids}
    criterion = PGNLoss()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    losses = []
    for _ in range(6):
        total, parts = criterion(model(x), target)
        assert math.isfinite(parts["loss"])
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(parts["loss"])
    assert all(b < a for a, b in zip(losses[:-1], losses[1:], strict=True)), losses
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize("size", [(60, 60), (9, 13), (61, 47), (7, 5), (1, 3)])
def test_window_pooling_equals_avg_pool2d_with_the_size_dependent_kernel(size):
    from seglab.models.parsing.pgn import PYRAMID_KERNELS, PYRAMID_REFERENCE_SIZE, window_avg_pool2d

    x = torch.randn(2, 3, *size)
    pp = PyramidPooling(1, 1)
    for level, k in enumerate(PYRAMID_KERNELS):
        kernel = pp.kernel_size(*size, level)
        expected = F.avg_pool2d(x, kernel, stride=kernel, ceil_mode=True, count_include_pad=False)
        torch.testing.assert_close(window_avg_pool2d(x, k, PYRAMID_REFERENCE_SIZE), expected, atol=1e-6, rtol=1e-5)
