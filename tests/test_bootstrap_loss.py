import math

import pytest
import torch
import torch.nn.functional as F

from seglab.losses import BootstrappedCrossEntropy, SegmentationLoss


def _example():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 5)
    target = torch.randint(0, 4, (2, 3, 5))
    target[0, 0, :3] = 255
    target[1, 2, 4] = 255
    return logits, target


def _hand_computed(logits, target, k):
    means = []
    for i in range(logits.shape[0]):
        values = []
        for y in range(target.shape[1]):
            for x in range(target.shape[2]):
                label = int(target[i, y, x])
                if label == 255:
                    continue
                values.append(-float(torch.log_softmax(logits[i, :, y, x], dim=0)[label]))
        hardest = sorted(values, reverse=True)[: min(k, len(values))]
        means.append(sum(hardest) / len(hardest))
    return sum(means) / len(means)


@pytest.mark.parametrize("k", [1, 4, 7])
def test_mean_over_the_k_largest_per_pixel_losses_of_each_image(k):
    logits, target = _example()
    loss = BootstrappedCrossEntropy(top_k=k)(logits, target)
    assert loss.item() == pytest.approx(_hand_computed(logits, target, k), rel=1e-5)


def test_a_fraction_keeps_that_share_of_each_images_labelled_pixels():
    logits, target = _example()
    # image 0 has 12 labelled pixels (ceil(0.25 * 12) = 3), image 1 has 14 (ceil(3.5) = 4)
    per_image = [
        _hand_computed(logits[:1], target[:1], math.ceil(0.25 * 12)),
        _hand_computed(logits[1:], target[1:], math.ceil(0.25 * 14)),
    ]
    loss = BootstrappedCrossEntropy(top_k=0.25)(logits, target)
    assert loss.item() == pytest.approx(sum(per_image) / 2, rel=1e-5)


def test_ignored_pixels_never_count_even_with_a_huge_loss():
    logits, target = _example()
    spiked = logits.clone()
    spiked[0, :, 0, :3] = torch.tensor([100.0, -100.0, -100.0, -100.0])[:, None]
    target = target.clone()
    target[0, 0, :3] = 255
    criterion = BootstrappedCrossEntropy(top_k=2)
    assert criterion(spiked, target).item() == pytest.approx(criterion(logits, target).item(), rel=1e-6)


def test_k_larger_than_the_labelled_pixels_falls_back_to_all_of_them():
    logits, target = _example()
    loss = BootstrappedCrossEntropy(top_k=512 * 64)(logits, target)
    per_image = [F.cross_entropy(logits[i : i + 1], target[i : i + 1], ignore_index=255) for i in range(2)]
    assert loss.item() == pytest.approx(float(sum(per_image) / 2), rel=1e-5)


def test_all_ignored_gives_zero_with_a_gradient():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = BootstrappedCrossEntropy(top_k=4)(logits, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_gradient_flows_only_to_the_hardest_pixels():
    logits, target = _example()
    logits.requires_grad_(True)
    BootstrappedCrossEntropy(top_k=3)(logits, target).backward()
    touched = logits.grad.abs().sum(dim=1) > 0
    assert touched.flatten(1).sum(dim=1).tolist() == [3, 3]


@pytest.mark.parametrize("top_k", [0, -1, 0.0, 1.5, True])
def test_bad_top_k_is_refused(top_k):
    with pytest.raises(ValueError, match="top_k"):
        BootstrappedCrossEntropy(top_k=top_k)


def test_segmentation_loss_uses_bootstrap_when_configured():
    torch.manual_seed(0)
    logits, aux = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 4, (2, 8, 8))
    target[0, :2] = 255
    loss, parts = SegmentationLoss(aux_weights=[0.5], bootstrap_top_k=10)({"out": logits, "aux": [aux]}, target)
    boot = BootstrappedCrossEntropy(10)
    expected = boot(logits, target) + 0.5 * boot(aux, target)
    assert torch.allclose(loss, expected)
    assert parts["loss_out"] == pytest.approx(boot(logits, target).item())


def test_trainer_reads_bootstrap_top_k_from_the_config():
    from seglab.errors import ConfigError
    from seglab.tasks import _top_k

    assert _top_k(0.0) is None
    assert _top_k(32768.0) == 32768 and isinstance(_top_k(32768.0), int)
    assert _top_k(0.25) == 0.25
    with pytest.raises(ConfigError, match="bootstrap_top_k"):
        _top_k(-1.0)
