"""Semantic FPN (Panoptic FPN's semantic branch) on torchvision's ResNet and FPN."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50
from torchvision.ops import FeaturePyramidNetwork

from seglab.model_table import count_at_paper_setting
from seglab.models import model_info
from seglab.models.semantic.semantic_fpn import SemanticFPNHead, semantic_fpn_resnet50


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return semantic_fpn_resnet50(num_classes=5).eval()


@pytest.mark.parametrize(
    ("name", "params"), [("semantic_fpn_resnet50", 28_478_675), ("semantic_fpn_resnet101", 47_470_803)]
)
def test_parameter_counts_at_19_classes(name, params):
    info = model_info(name)
    assert (info.task, info.year, info.input_size, info.paper_kwargs) == (
        "semantic",
        2019,
        (512, 1024),
        {"num_classes": 19},
    )
    assert info.paper_params is None  # mmseg's 28,497,907 is ResNetV1c (deep stem) with a BN head
    assert count_at_paper_setting(name) == params


def test_odd_input_gives_logits_at_the_input_size(model):
    with torch.no_grad():
        out = model(torch.randn(1, 3, 67, 93))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 5, 67, 93)


def test_each_level_is_upsampled_to_one_quarter_with_groupnorm_stages():
    head = SemanticFPNHead(256, 19)
    upsamples = {level: sum(isinstance(m, nn.Upsample) for m in h.modules()) for level, h in head.scale_heads.items()}
    assert upsamples == {"p2": 0, "p3": 1, "p4": 2, "p5": 3}
    assert [len(h) for h in head.scale_heads.values()] == [1, 1, 2, 3]  # P2 one conv stage, no upsampling
    for h in head.scale_heads.values():
        convs = [m for m in h.modules() if isinstance(m, nn.Conv2d)]
        norms = [m for m in h.modules() if isinstance(m, nn.GroupNorm)]
        assert all(c.kernel_size == (3, 3) and c.out_channels == 128 for c in convs)
        assert len(norms) == len(convs) and all(n.num_groups == 32 for n in norms)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in h.modules())
    assert head.predictor.kernel_size == (1, 1) and head.predictor.in_channels == 128


def test_levels_are_summed_not_concatenated(model):
    assert isinstance(model.fpn, FeaturePyramidNetwork)
    seen = {}
    hooks = [model.head.predictor.register_forward_hook(lambda m, i, o: seen.update(predictor=i[0]))]
    for level, h in model.head.scale_heads.items():
        hooks.append(h.register_forward_hook(lambda m, i, o, level=level: seen.update({level: o})))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    for hook in hooks:
        hook.remove()
    assert seen["predictor"].shape == (1, 128, 16, 24)  # 1/4 scale, 128 channels
    assert all(seen[level].shape == (1, 128, 16, 24) for level in ("p2", "p3", "p4", "p5"))
    torch.testing.assert_close(seen["predictor"], seen["p2"] + seen["p3"] + seen["p4"] + seen["p5"])
    assert out.shape == (1, 5, 64, 96)


def test_a_few_adam_steps_lower_the_loss():
    torch.manual_seed(0)
    model = semantic_fpn_resnet50(num_classes=3).train()
    x, target = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_torchvision_resnet50_weights_load_into_the_backbone(tmp_path):
    torch.manual_seed(1)
    state = resnet50(weights=None).state_dict()
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    model = semantic_fpn_resnet50(pretrained_backbone=str(path))
    backbone = model.backbone.state_dict()
    assert len(backbone) == len([k for k in state if not k.startswith("fc.")])
    for key, value in backbone.items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
