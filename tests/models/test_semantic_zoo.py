"""Claims every semantic model shares: it learns the demo data, and torchvision backbone weights load."""

import pytest
import torch
import torchvision

import seglab
from seglab.config import DataConfig
from seglab.data import build_dataset
from seglab.model_table import count_at_paper_setting

# Above ~50M parameters a few CPU training steps take long: those run with `make test-slow`.
HEAVY = 50_000_000
SEMANTIC = seglab.list_models(task="semantic")


@pytest.fixture(scope="module")
def demo_batch(demo_root):
    cfg = DataConfig(dataset="demo", root=str(demo_root), palette="demo_shapes", crop_size=[64, 64], workers=0)
    dataset = build_dataset(cfg, "train", train=True)
    torch.manual_seed(0)
    images, masks = zip(*(dataset[i] for i in range(4)), strict=True)
    return torch.stack(images), torch.stack(masks)


def _out(outputs):
    return outputs["out"] if isinstance(outputs, dict) else outputs


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if count_at_paper_setting(n) > HEAVY else n for n in SEMANTIC],
)
def test_a_few_steps_on_demo_data_lower_the_loss(name, demo_batch):
    images, masks = demo_batch
    torch.manual_seed(0)
    model = seglab.create_model(name, num_classes=5).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def loss_now():
        torch.manual_seed(1)  # the same dropout masks at every measurement
        return torch.nn.functional.cross_entropy(_out(model(images)), masks, ignore_index=255)

    with torch.no_grad():
        before = loss_now().item()
    for _ in range(4):
        optimizer.zero_grad()
        loss_now().backward()
        optimizer.step()
    with torch.no_grad():
        after = loss_now().item()
    assert after < before, (name, before, after)


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"])
def test_torchvision_mobilenet_v3_weights_load_as_backbone(name, tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v3_large(weights=None, dilated=True).state_dict()
    path = tmp_path / "mobilenet_v3_large.pth"
    torch.save(reference, path)
    backbone = seglab.create_model(name, num_classes=5, pretrained_backbone=str(path)).backbone.state_dict()
    assert len(backbone) > 100
    for key, value in backbone.items():
        assert torch.equal(value, reference[f"features.{key}"]), key
