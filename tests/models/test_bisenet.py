"""BiSeNet v1 (ResNet-18) and v2: CoinCheung's layouts, so CoinCheung's parameter counts."""

import pytest
import torch
import torchvision
from torch.nn import functional as F

from seglab.model_table import count_at_paper_setting
from seglab.models import count_parameters, model_info
from seglab.models.semantic.bisenet import bisenetv1_resnet18, bisenetv2

FACTORIES = {"bisenetv1_resnet18": bisenetv1_resnet18, "bisenetv2": bisenetv2}
# CoinCheung/BiSeNet at 19 classes: (with aux heads / boosters, eval-only)
REFERENCE_PARAMS = {"bisenetv1_resnet18": (13_425_721, 13_275_539), "bisenetv2": (5_231_487, 3_358_627)}
NUM_AUX = {"bisenetv1_resnet18": 2, "bisenetv2": 4}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_parameter_counts_equal_coincheung(name):
    with_aux, eval_only = REFERENCE_PARAMS[name]
    info = model_info(name)
    assert info.task == "semantic" and info.paper_kwargs == {"num_classes": 19}
    assert info.paper_params == with_aux
    assert count_at_paper_setting(name) == with_aux
    with torch.device("meta"):
        model = FACTORIES[name](num_classes=19)
    assert count_parameters(model) - count_parameters(model.aux_heads) == eval_only


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_eval_returns_logits_at_any_input_size(name):
    torch.manual_seed(0)
    model = FACTORIES[name](num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 67, 93))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 5, 67, 93)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_training_adds_the_aux_heads(name):
    # v1: two aux heads on the context path; v2: boosters on the stem and GE stages 3, 4, 5.
    torch.manual_seed(0)
    model = FACTORIES[name](num_classes=5).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == (2, 5, 64, 64)
    assert len(out["aux"]) == NUM_AUX[name]
    assert all(a.shape == (2, 5, 64, 64) for a in out["aux"])


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_a_few_adam_steps_lower_the_loss(name):
    torch.manual_seed(0)
    model = FACTORIES[name](num_classes=3).train()
    images = torch.randn(2, 3, 64, 64)
    # A learnable target (left/right halves, swapped in the second image), not per-pixel noise.
    target = torch.zeros(2, 64, 64, dtype=torch.long)
    target[:, :, 32:] = 1
    target[1] = 2 - target[1]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)

    def loss_fn():
        out = model(images)
        return F.cross_entropy(out["out"], target) + sum(F.cross_entropy(a, target) for a in out["aux"])

    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_v1_context_path_loads_a_torchvision_resnet18_file(tmp_path):
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    model = bisenetv1_resnet18(num_classes=19, pretrained_backbone=str(path))
    backbone = model.context_path.backbone
    assert torch.equal(backbone.conv1.weight, resnet.conv1.weight)
    assert torch.equal(backbone.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)
    assert "fc" not in dict(backbone.named_children())
