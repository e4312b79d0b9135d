"""SCHP self-correction: the SGDR schedule, model aggregation, BN re-estimation, soft targets and the trainer."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab import registry
from seglab.checkpoint import load_state_dict, read_metadata
from seglab.config import config_from_dict
from seglab.methods.self_correction import (
    SelfCorrectionOptions,
    SelfCorrectionTrainer,
    aggregate_,
    reestimate_bn,
    schp_lr_factor,
    soft_targets,
)


def test_schp_lr_factor_warmup_cosine_then_restarts():
    kw = dict(total_iters=100, warmup_iters=10, cycle_start=60, cycle_len=10)
    assert schp_lr_factor(0, **kw) == pytest.approx(0.01)  # warm-up starts at eta_min = lr / 100
    assert schp_lr_factor(5, **kw) == pytest.approx(0.01 + 0.99 * 0.5)
    assert schp_lr_factor(10, **kw) == pytest.approx(1.0)
    assert schp_lr_factor(35, **kw) == pytest.approx(0.01 + 0.99 * 0.5)  # cosine midpoint
    assert schp_lr_factor(59, **kw) == pytest.approx(0.01 + 0.99 * (1 + math.cos(math.pi * 49 / 50)) / 2)
    assert schp_lr_factor(60, **kw) == pytest.approx(0.5)  # first cycle restarts at lr / 2
    assert schp_lr_factor(65, **kw) == pytest.approx(0.01 + 0.49 * 0.5)  # mid-cycle
    assert schp_lr_factor(69, **kw) == pytest.approx(0.01 + 0.49 * (1 + math.cos(math.pi * 0.9)) / 2)
    assert schp_lr_factor(70, **kw) == pytest.approx(0.5)  # restart
    assert schp_lr_factor(95, **kw) == pytest.approx(0.255)
    # no warm-up, other eta_min and restart base
    assert schp_lr_factor(0, total_iters=20, warmup_iters=0, cycle_start=10, cycle_len=4, min_ratio=0.1,
                          cycle_base=0.3) == pytest.approx(1.0)
    assert schp_lr_factor(12, total_iters=20, warmup_iters=0, cycle_start=10, cycle_len=4, min_ratio=0.1,
                          cycle_base=0.3) == pytest.approx(0.2)


def test_aggregate_is_a_running_average_of_the_parameters():
    def linear(w: float) -> nn.Module:
        m = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
        m[0].weight.data.fill_(w)
        m[1].running_mean.fill_(w)
        return m

    schp = linear(1.0)
    aggregate_(schp, linear(7.0), cycle_n=0)  # the first cycle copies the model
    assert schp[0].weight.item() == 7.0
    schp[0].weight.data.fill_(1.0)
    aggregate_(schp, linear(3.0), cycle_n=1)
    assert schp[0].weight.item() == pytest.approx(2.0)
    aggregate_(schp, linear(5.0), cycle_n=2)
    assert schp[0].weight.item() == pytest.approx((2 * 2.0 + 5.0) / 3)
    assert schp[1].running_mean.item() == 1.0  # buffers are not averaged (BN is re-estimated)
    with pytest.raises(ValueError, match="different parameters"):
        aggregate_(schp, nn.Linear(2, 1), cycle_n=1)


def _conv_bn() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2, momentum=0.3))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
        model[0].bias.copy_(torch.tensor([0.5, 1.0]))
    return model


def _expected_stats(batches):
    """Per channel: per-batch mean and unbiased variance of the conv output, averaged with weights = batch size."""
    means, variances, sizes = [], [], []
    for x in batches:
        y = np.stack([2.0 * x[:, 0] + 0.5, -1.0 * x[:, 0] + 1.0], axis=1).astype(np.float64)
        flat = y.transpose(1, 0, 2, 3).reshape(2, -1)
        means.append(flat.mean(1))
        variances.append(flat.var(1, ddof=1))
        sizes.append(x.shape[0])
    w = np.array(sizes, dtype=np.float64) / sum(sizes)
    return (w[:, None] * np.array(means)).sum(0), (w[:, None] * np.array(variances)).sum(0)


def test_reestimate_bn_gives_the_cumulative_average_of_batch_statistics():
    g = torch.Generator().manual_seed(5)
    batches = [torch.randn(2, 1, 3, 3, generator=g) * (i + 1) + i for i in range(3)]
    model = _conv_bn().eval()
    model[1].running_mean.fill_(100.0)
    reestimate_bn(model, [(x, None) for x in batches], "cpu")
    mean, var = _expected_stats([x.numpy() for x in batches])
    assert np.allclose(model[1].running_mean.numpy(), mean, atol=1e-5)
    assert np.allclose(model[1].running_var.numpy(), var, atol=1e-4)
    assert model[1].momentum == 0.3 and not model.training  # momentum and mode restored
    # unequal batch sizes: weighted by images (the reference's momentum b / (n + b)); max_batches bounds the loop
    uneven = [batches[0], torch.cat([batches[1], batches[2][:1]]), batches[2]]
    reestimate_bn(model, uneven, "cpu", max_batches=2)
    mean, var = _expected_stats([x.numpy() for x in uneven[:2]])
    assert np.allclose(model[1].running_mean.numpy(), mean, atol=1e-5)
    assert np.allclose(model[1].running_var.numpy(), var, atol=1e-4)


class TinyCE2P(nn.Module):
    """A stride-4 stand-in for the CE2P network: train mode returns {"out", "aux", "edge"} at 1/4 resolution."""

    def __init__(self, num_classes: int = 5, **_) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.decoder = nn.Conv2d(8, num_classes, 1)
        self.edge = nn.Conv2d(8, 2, 1)
        self.fusion = nn.Sequential(nn.Dropout2d(0.5), nn.Conv2d(8 + 2, num_classes, 1))

    def forward(self, x):
        f = self.stem(x)
        edge = self.edge(f)
        out = self.fusion(torch.cat([f, edge], 1))
        if self.training:
            return {"out": out, "aux": [self.decoder(f)], "edge": edge}
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


def test_soft_targets_use_running_statistics_without_dropout_at_train_resolution():
    model = TinyCE2P(5)
    model.stem[1].running_mean.uniform_(-1, 1)
    model.train()
    x = torch.randn(2, 3, 32, 32)
    parsing, edge = soft_targets(model, x)
    assert parsing.shape == (2, 5, 8, 8) and edge.shape == (2, 2, 8, 8)
    model.eval()
    with torch.no_grad():  # the eval forward's features with running statistics, no dropout
        f = model.stem(x)
        expected_edge = model.edge(f)
        expected = model.fusion(torch.cat([f, expected_edge], 1))
    assert torch.allclose(parsing, expected, atol=1e-6) and torch.allclose(edge, expected_edge, atol=1e-6)
    before = model.stem[1].running_mean.clone()
    model.train()
    soft_targets(model, x)
    assert model.training and torch.equal(model.stem[1].running_mean, before)


def _config(demo_root, out, iters=18):
    return config_from_dict(
        {
            "name": "schp",
            "output_dir": str(out),
            "model": {"name": "tiny_ce2p_test", "num_classes": 5},
            "data": {
                "dataset": "demo", "root": str(demo_root), "palette": "demo_shapes", "crop_size": [64, 64],
                "scale_range": [0.75, 1.25], "batch_size": 4, "workers": 0,
            },
            "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
            "schedule": {"name": "cosine", "warmup_iters": 4},
            "train": {"iters": iters, "eval_interval": 0, "checkpoint_interval": 100, "log_interval": 1, "seed": 0},
            "eval": {"batch_size": 2},
        }
    )


@pytest.fixture
def tiny_ce2p(monkeypatch):
    import seglab.models  # noqa: F401  (every model registered before one is added)

    info = registry.ModelInfo(name="tiny_ce2p_test", task="semantic", paper="test", year=2020, input_size=(64, 64),
                              factory=TinyCE2P)
    monkeypatch.setitem(registry._REGISTRY, "tiny_ce2p_test", info)


def test_self_correction_trainer_runs_two_cycles(demo_root, tmp_path, tiny_ce2p):
    options = SelfCorrectionOptions(cycle_start=10, cycle_len=5, bn_batches=2)
    trainer = SelfCorrectionTrainer(_config(demo_root, tmp_path), options)
    trainer.fit(stop_at=10)
    assert trainer.cycle_n == 1  # aggregated at the end of iteration 10: a copy of the model, BN re-estimated
    for (name, p_schp), (_, p) in zip(trainer.schp_model.named_parameters(), trainer.model.named_parameters(),
                                      strict=True):
        assert torch.equal(p_schp, p), name
    assert not torch.equal(trainer.schp_model.stem[1].running_mean, trainer.model.stem[1].running_mean)
    metrics = trainer.fit()
    assert trainer.iteration == 18 and trainer.cycle_n == 2  # cycle ends at 10 and 15; the next would be 20
    ckpt = tmp_path / "schp/checkpoints"
    assert read_metadata(ckpt / "schp_cycle1.safetensors")["iteration"] == 10
    assert read_metadata(ckpt / "schp_cycle2.safetensors")["iteration"] == 15
    meta = read_metadata(ckpt / "schp.safetensors")
    assert meta["cycle_n"] == 2 and meta["model"] == "tiny_ce2p_test"
    assert not (ckpt / "schp_cycle3.safetensors").exists()
    saved = load_state_dict(ckpt / "schp.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in trainer.schp_model.state_dict().items())
    train_lines = [r for r in trainer.history if "loss" in r]
    assert all(math.isfinite(r["loss"]) for r in train_lines)
    assert {"loss_parsing", "loss_edge", "loss_consistency"} <= set(train_lines[0])
    lrs = {r["iter"]: r["lr"] for r in train_lines}  # the lr after step i is the one iteration i (0-based) uses
    for it in (2, 7, 10, 12, 15):
        expected = 0.05 * schp_lr_factor(it, total_iters=18, warmup_iters=4, cycle_start=10, cycle_len=5)
        assert lrs[it] == pytest.approx(expected), it
    assert 0.0 <= metrics.mIoU <= 1.0
    # the SCHP model is evaluated from cycle 1 on: the final evaluation (iteration 18) scored it, and
    # best.safetensors holds either its weights or an earlier raw model's, never a mix
    best = load_state_dict(ckpt / "best.safetensors")
    best_iter = read_metadata(ckpt / "best.safetensors")["iteration"]
    if best_iter == 18:
        assert all(torch.equal(best[k], v) for k, v in trainer.schp_model.state_dict().items())
    assert trainer.eval_model() is trainer.schp_model


def test_self_correction_resume_reloads_the_schp_model(demo_root, tmp_path, tiny_ce2p):
    options = SelfCorrectionOptions(cycle_start=6, cycle_len=4, bn_batches=1)
    full = SelfCorrectionTrainer(_config(demo_root, tmp_path / "a", iters=12), options)
    full.fit()
    part = SelfCorrectionTrainer(_config(demo_root, tmp_path / "b", iters=12), options)
    part.fit(stop_at=8)
    resumed = SelfCorrectionTrainer(_config(demo_root, tmp_path / "b", iters=12), options, resume=True)
    assert resumed.iteration == 8 and resumed.cycle_n == 1
    resumed.fit()
    assert resumed.cycle_n == full.cycle_n == 2
    for name in ("last.safetensors", "schp.safetensors"):
        a = load_state_dict(tmp_path / "a/schp/checkpoints" / name)
        b = load_state_dict(tmp_path / "b/schp/checkpoints" / name)
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
