import math

import pytest
import torch
from torch import nn

from seglab.methods import enable_mc_dropout, mc_predict
from seglab.models.semantic.segnet import bayesian_segnet_vgg16

K = 4


@pytest.fixture(scope="module")
def bayesian():
    torch.manual_seed(0)
    model = bayesian_segnet_vgg16(num_classes=K)
    with torch.no_grad():  # non-trivial BN statistics, so eval-mode BN differs from train-mode BN
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_enable_mc_dropout_turns_on_only_dropout_and_restores_flags(bayesian):
    bayesian.train()
    bayesian.classifier.eval()
    before = {name: m.training for name, m in bayesian.named_modules()}
    with enable_mc_dropout(bayesian):
        for m in bayesian.modules():
            assert m.training == isinstance(m, nn.Dropout)
    assert {name: m.training for name, m in bayesian.named_modules()} == before
    bayesian.eval()
    with pytest.raises(ValueError, match="no dropout"), enable_mc_dropout(nn.Conv2d(1, 1, 1)):
        pass


def test_mc_predict_gives_uncertainty_while_eval_is_deterministic(bayesian):
    x = torch.randn(1, 3, 67, 93)
    with torch.no_grad():
        torch.testing.assert_close(bayesian(x), bayesian(x), rtol=0, atol=0)
    out = mc_predict(bayesian, x, samples=8)
    assert out["mean"].shape == (1, K, 67, 93)
    assert out["entropy"].shape == out["variance"].shape == (1, 67, 93)
    torch.testing.assert_close(out["mean"].sum(dim=1), torch.ones(1, 67, 93))
    assert out["variance"].min() >= 0 and out["variance"].max() > 0
    assert out["entropy"].min() >= 0 and out["entropy"].max() <= math.log(K) + 1e-5
    assert not bayesian.training and not any(m.training for m in bayesian.modules())


def test_mc_predict_is_the_average_of_sampled_softmaxes(bayesian):
    x = torch.randn(1, 3, 35, 29)
    torch.manual_seed(123)
    out = mc_predict(bayesian, x, samples=3)
    torch.manual_seed(123)
    with enable_mc_dropout(bayesian), torch.no_grad():
        probs = torch.stack([bayesian(x).softmax(dim=1) for _ in range(3)])
    torch.testing.assert_close(out["mean"], probs.mean(dim=0))
    torch.testing.assert_close(out["variance"], probs.var(dim=0, unbiased=False).mean(dim=1))
    mean = probs.mean(dim=0)
    torch.testing.assert_close(out["entropy"], -(mean * mean.log()).sum(dim=1))


def test_mc_predict_with_a_generator_is_reproducible_and_leaves_the_global_rng(bayesian):
    x = torch.randn(1, 3, 19, 21)
    state = torch.get_rng_state()
    a = mc_predict(bayesian, x, samples=2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)
    b = mc_predict(bayesian, x, samples=2, generator=torch.Generator().manual_seed(7))
    c = mc_predict(bayesian, x, samples=2, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a["mean"], b["mean"], rtol=0, atol=0)
    assert not torch.equal(a["mean"], c["mean"])
