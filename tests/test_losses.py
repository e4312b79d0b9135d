import pytest
import torch
import torch.nn.functional as F

from seglab.losses import SegmentationLoss, class_pixel_counts, median_frequency_weights


def test_cross_entropy_equals_torch_on_a_hand_case():
    # one image, 3 classes, 2x2 pixels, one pixel ignored
    logits = torch.tensor([[[[2.0, 0.0], [1.0, 0.5]],
                            [[0.0, 1.0], [1.0, 0.5]],
                            [[0.0, 0.0], [3.0, 0.5]]]], requires_grad=True)
    target = torch.tensor([[[0, 1], [255, 2]]])
    loss, parts = SegmentationLoss()(logits, target)
    expected = F.cross_entropy(logits, target, ignore_index=255)
    # by hand: pixel (0,0): -log(e^2 / (e^2 + 2)); (0,1): -log(e / (e + 2)); (1,1): -log(1/3)
    import math

    by_hand = (-math.log(math.e**2 / (math.e**2 + 2)) - math.log(math.e / (math.e + 2)) + math.log(3)) / 3
    assert loss.item() == pytest.approx(expected.item()) == pytest.approx(by_hand)
    assert parts == {"loss": pytest.approx(by_hand), "loss_out": pytest.approx(by_hand)}
    loss.backward()
    assert logits.grad is not None and logits.grad[0, :, 1, 0].abs().sum() == 0  # ignored pixel

    weights = torch.tensor([0.5, 2.0, 1.0])
    weighted, _ = SegmentationLoss(class_weights=weights)(logits, target)
    assert weighted.item() == pytest.approx(F.cross_entropy(logits, target, weight=weights, ignore_index=255).item())


def test_aux_outputs_combine_with_their_weights():
    g = torch.Generator().manual_seed(0)
    out, aux0, aux1 = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    target = torch.randint(0, 4, (2, 8, 8), generator=g)
    loss, parts = SegmentationLoss(aux_weights=[0.4, 0.1])({"out": out, "aux": [aux0, aux1]}, target)
    ce = [F.cross_entropy(x, target).item() for x in (out, aux0, aux1)]
    assert loss.item() == pytest.approx(ce[0] + 0.4 * ce[1] + 0.1 * ce[2])
    assert set(parts) == {"loss", "loss_out", "loss_aux0", "loss_aux1"}
    assert parts["loss_aux1"] == pytest.approx(ce[2]) and isinstance(parts["loss"], float)
    with pytest.raises(ValueError, match="train.aux_weights"):
        SegmentationLoss()({"out": out, "aux": [aux0]}, target)


def test_logits_are_resized_to_the_target():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, 6, generator=g)
    target = torch.randint(0, 3, (2, 20, 24), generator=g)
    loss, _ = SegmentationLoss()(logits, target)
    up = F.interpolate(logits, size=(20, 24), mode="bilinear", align_corners=False)
    assert loss.item() == pytest.approx(F.cross_entropy(up, target).item())


def test_all_ignored_gives_zero_with_gradient():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), 255)
    for criterion in (SegmentationLoss(), SegmentationLoss(class_weights=torch.ones(3))):
        loss, parts = criterion(logits, target)
        assert torch.isfinite(loss) and loss.item() == 0.0 and parts["loss"] == 0.0
        loss.backward()
        assert logits.grad is not None and torch.all(logits.grad == 0)


def test_labels_outside_the_classes_are_rejected():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        SegmentationLoss()(torch.randn(1, 3, 2, 2), torch.tensor([[[0, 1], [2, 7]]]))


def test_median_frequency_weights_on_hand_counts():
    # plain frequencies: 60/100, 30/100, 10/100 -> median 0.3 -> weights 0.5, 1, 3; absent class -> 0
    torch.testing.assert_close(median_frequency_weights([60, 30, 10, 0]), torch.tensor([0.5, 1.0, 3.0, 0.0]))
    # SegNet's variant: class c's pixels over the pixels of the images containing c
    # freq = 60/100, 30/50, 10/50 = 0.6, 0.6, 0.2 -> median 0.6 -> weights 1, 1, 3
    torch.testing.assert_close(median_frequency_weights([60, 30, 10], [100, 50, 50]), torch.tensor([1.0, 1.0, 3.0]))
    # even number of classes: mean of the two middle frequencies (0.2 + 0.3) / 2 = 0.25
    torch.testing.assert_close(median_frequency_weights([40, 30, 20, 10]), torch.tensor([0.625, 0.8333333, 1.25, 2.5]))


def test_class_pixel_counts():
    masks = [torch.tensor([[0, 0], [1, 255]]), torch.tensor([[2, 2], [2, 0]])]
    counts, image_pixels = class_pixel_counts([(None, m) for m in masks], 4)
    assert counts.tolist() == [3, 1, 3, 0]
    assert image_pixels.tolist() == [3 + 4, 3, 4, 0]  # labelled pixels of the images containing the class
    # freq = 3/7, 1/3, 3/4 -> median 3/7 -> weights 1, 9/7, 4/7; class 3 absent -> 0
    torch.testing.assert_close(median_frequency_weights(counts, image_pixels),
                               torch.tensor([1.0, 9 / 7, 4 / 7, 0.0]))


# -- BiSeNet's OHEM cross-entropy and ENet's class weights ------------------------------------------------------


def _ohem_case():
    """One image, two classes, four pixels: the true class's probability is 0.9, 0.5 and 0.2, the fourth is ignored.

    Logits (class 0, class 1): (ln 9, 0) -> p0 = 0.9; (0, 0) -> 0.5; (ln 4, 0) with target 1 -> p1 = 1/5.
    Losses: ln(10/9), ln 2, ln 5.
    """
    import math

    logits = torch.tensor([[[[math.log(9), 0.0, math.log(4), 1.0]], [[0.0, 0.0, 0.0, 0.0]]]], requires_grad=True)
    target = torch.tensor([[[0, 0, 1, 255]]])
    return logits, target


def test_ohem_averages_the_pixels_below_the_probability_threshold():
    import math

    from seglab.losses import OhemCrossEntropy

    logits, target = _ohem_case()
    # thresh 0.7 (loss > -ln 0.7 = 0.357): the pixels at p = 0.5 and 0.2 -> (ln 2 + ln 5) / 2
    loss = OhemCrossEntropy(0.7)(logits, target)
    assert loss.item() == pytest.approx(math.log(10) / 2)
    loss.backward()
    assert logits.grad[0, :, 0, 0].abs().sum() == 0 and logits.grad[0, :, 0, 3].abs().sum() == 0  # easy, ignored
    assert logits.grad[0, :, 0, 1].abs().sum() > 0 and logits.grad[0, :, 0, 2].abs().sum() > 0
    # at least 3 kept: only 2 are hard, so the 3 largest losses, i.e. every labelled pixel
    assert OhemCrossEntropy(0.7, 3)(logits, target).item() == pytest.approx(math.log(100 / 9) / 3)
    # a fraction of the labelled pixels, rounded down as the reference's n_labelled // 16: 0.5 * 3 -> 1 <= 2 hard
    assert OhemCrossEntropy(0.7, 0.5)(logits, target).item() == pytest.approx(math.log(10) / 2)
    # thresh 0.1 (loss > ln 10): none hard; at least 1 kept -> the hardest, ln 5
    assert OhemCrossEntropy(0.1, 1)(logits, target).item() == pytest.approx(math.log(5))
    # nothing hard and nothing to keep: 0 with a gradient (the reference's mean of nothing is NaN)
    empty = OhemCrossEntropy(0.1)(logits, target)
    assert empty.item() == 0.0 and empty.requires_grad


def test_ohem_matches_the_reference_formula_on_random_logits():
    """CoinCheung/BiSeNet lib/ohem_ce_loss.py, written out: loss > -ln(thresh), else the top n_labelled // 16."""
    from seglab.losses import OhemCrossEntropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 16, 16, generator=g) * 3
    target = torch.randint(0, 5, (2, 16, 16), generator=g)
    target[0, :4] = 255
    per_pixel = F.cross_entropy(logits, target, ignore_index=255, reduction="none").view(-1)
    n_min = int((target != 255).sum()) // 16
    hard = per_pixel[per_pixel > -torch.log(torch.tensor(0.7))]
    expected = (hard if hard.numel() >= n_min else per_pixel.topk(n_min).values).mean()
    assert OhemCrossEntropy(0.7, 0.0625)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    # nearly everything easy: the minimum count decides
    confident = F.one_hot(target.clamp(max=4), 5).permute(0, 3, 1, 2).float() * 20
    per_pixel = F.cross_entropy(confident, target, ignore_index=255, reduction="none").view(-1)
    expected = per_pixel.topk(n_min).values.mean()
    assert OhemCrossEntropy(0.7, 0.0625)(confident, target).item() == pytest.approx(expected.item(), abs=1e-12)


def test_ohem_through_segmentation_loss_and_the_config():
    import math

    from seglab.config import config_from_dict
    from seglab.errors import ConfigError
    from seglab.tasks import task_of

    logits, target = _ohem_case()
    loss, parts = SegmentationLoss(aux_weights=[1.0], ohem=(0.7, 0))({"out": logits, "aux": [logits]}, target)
    assert parts["loss_out"] == pytest.approx(math.log(10) / 2) and loss.item() == pytest.approx(math.log(10))
    cfg = config_from_dict({"model": {"name": "bisenetv2", "num_classes": 19},
                            "train": {"ohem_thresh": 0.7, "ohem_min_kept": 0.0625, "aux_weights": [1, 1, 1, 1]}})
    criterion = task_of("bisenetv2").build_criterion(cfg, None)
    assert criterion.ohem.thresh == 0.7 and criterion.ohem.min_kept == 0.0625
    cfg.train.ohem_min_kept = 4096.0  # a pixel count
    assert task_of("bisenetv2").build_criterion(cfg, None).ohem.min_kept == 4096
    cfg.train.bootstrap_top_k = 512
    with pytest.raises(ConfigError, match="bootstrap_top_k"):
        task_of("bisenetv2").build_criterion(cfg, None)
    cfg.train.bootstrap_top_k, cfg.train.ohem_thresh = 0.0, 1.5
    with pytest.raises(ConfigError, match="ohem_thresh"):
        task_of("bisenetv2").build_criterion(cfg, None)


def test_enet_weights_on_hand_counts():
    import math

    from seglab.losses import enet_weights

    # shares 0.75 and 0.25 -> 1 / ln(1.77), 1 / ln(1.27); an absent class -> 1 / ln(1.02)
    torch.testing.assert_close(enet_weights([3, 1, 0]),
                               torch.tensor([1 / math.log(1.77), 1 / math.log(1.27), 1 / math.log(1.02)]))
    with pytest.raises(ValueError):
        enet_weights([0, 0])
