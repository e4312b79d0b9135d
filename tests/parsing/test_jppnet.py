"""JPPNet and SS-JPPNet: the reference's structure, multi-scale fusion, parameter counts, a few training steps."""

import pytest
import torch
import torchvision
from torch import nn

from seglab.errors import CheckpointError
from seglab.models import count_parameters, model_info
from seglab.models.parsing.jppnet import JPPNet, SSJPPNet, jppnet, ss_jppnet
from seglab.models.parsing.pose import JPPNetLoss, SSJPPNetLoss


class TinyBackbone(nn.Module):
    """A stride-8 stand-in for the dilated ResNet: ``{"aux": res4-like, "out": res5-like}`` features."""

    def __init__(self) -> None:
        super().__init__()
        self.res4 = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, 2, 1)
        )
        self.res5 = nn.Sequential(nn.ReLU(), nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU())

    def forward(self, x):
        res4 = self.res4(x)
        return {"aux": torch.relu(res4), "out": self.res5(res4)}


def test_paper_setting_has_122_049_120_parameters():
    with torch.device("meta"):
        model = jppnet()
        ssl = ss_jppnet()
    assert count_parameters(model) == 122_049_120  # reference table: 122,049,120 (closed-form count of the TF code)
    assert count_parameters(model.backbone) == 42_500_160  # torchvision ResNet-101 without fc
    assert count_parameters(ssl) == 34_662_231  # VGG16 conv 14,714,688 + LargeFOV + attention
    assert model_info("jppnet").input_size == (384, 384) and model_info("ss_jppnet").input_size == (321, 321)


def test_refinement_stages_follow_the_reference_layers():
    with torch.device("meta"):
        model = jppnet()
    pose_convs = [m for m in model.fc1_pose.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0]) for c in pose_convs] == [
        (512, 3), (512, 3), (256, 3), (256, 3), (256, 3), (256, 3), (512, 1), (16, 1)
    ]  # fmt: skip
    refine = model.fc2_parsing
    convs = [m for m in refine.convs.modules() if isinstance(m, nn.Conv2d)]
    assert refine.first_remap[0].out_channels == refine.second_remap[0].out_channels == 128
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [
        (512, 512, 3), (512, 256, 5), (256, 256, 7), (256, 256, 9)
    ]  # fmt: skip
    assert [b.dilation[0] for b in refine.out.branches] == [6, 12, 18, 24]
    assert [b.dilation[0] for b in model.fc1_human.branches] == [6, 12, 18, 24]
    assert model.fc3_pose.out[0].out_channels == 16 and model.fc3_pose.first_remap[0].in_channels == 16


@pytest.mark.parametrize("size", [(67, 75), (41, 33)])
def test_jppnet_eval_gives_input_size_logits_and_train_gives_all_stages_and_scales(size):
    model = jppnet(backbone="resnet50").eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert model(x).shape == (1, 20, *size)
        model.train()
        out = model(x)
    assert len(out["parsing"]) == len(out["pose"]) == 3 * (1 + 3)
    full = ((size[0] + 7) // 8, (size[1] + 7) // 8)
    assert out["out"] is out["parsing"][8] and out["out"].shape == (1, 20, *full)
    assert out["parsing"][2].shape[-2:] == out["pose"][2].shape[-2:]  # scale 0.75 at its own 1/8 grid
    assert out["pose"][4].shape == (1, 16, *full)


def test_fused_outputs_average_the_scales_parsing_bilinear_and_pose_nearest():
    model = JPPNet(TinyBackbone(), 32, 64, 20, 16, scales=(1.0, 0.5)).train()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 33, 33))
    resize = nn.functional.interpolate
    for stage in range(3):
        fused, full, half = out["parsing"][3 * stage : 3 * stage + 3]
        assert full.shape[-2:] == (5, 5) and half.shape[-2:] == (2, 2)  # 33 and int(33 * 0.5) = 16 pixels
        assert torch.allclose(fused, (full + resize(half, size=(5, 5), mode="bilinear")) / 2, atol=1e-6)
        fused, full, half = out["pose"][3 * stage : 3 * stage + 3]
        assert torch.allclose(fused, (full + resize(half, size=(5, 5), mode="nearest")) / 2, atol=1e-6)


def test_eval_averages_the_three_stages():
    model = JPPNet(TinyBackbone(), 32, 64, 20, 16, eval_scales=(1.0,)).eval()
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        parsings, _ = model.single_scale(x)
        expected = torch.stack([nn.functional.interpolate(p, size=(24, 24), mode="bilinear") for p in parsings])
        assert torch.allclose(model(x), expected.mean(dim=0), atol=1e-6)


def test_a_few_jppnet_steps_lower_both_losses_on_a_fixed_batch():
    model = JPPNet(TinyBackbone(), 32, 64, 20, 16, scales=(1.0,)).train()
    x = torch.randn(1, 3, 33, 33)
    joints = torch.rand(1, 16, 3) * 32
    joints[0, 3] = -1  # one missing joint
    target = {"mask": torch.randint(0, 20, (1, 33, 33)), "joints": joints}
    criterion = JPPNetLoss()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    history = []
    for _ in range(4):
        total, parts = criterion(model(x), target)
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(parts)
    assert history[-1]["loss"] < 0.95 * history[0]["loss"], history
    assert history[-1]["parsing"] < history[0]["parsing"] and history[-1]["pose"] < history[0]["pose"]


@pytest.mark.parametrize("backbone", ["vgg16", "resnet50"])
def test_ss_jppnet_eval_and_train_outputs_at_odd_sizes(backbone):
    model = ss_jppnet(backbone=backbone).eval()
    x = torch.randn(1, 3, 49, 57)
    with torch.no_grad():
        assert model(x).shape == (1, 20, 49, 57)
        model.train()
        out = model(x)
    assert len(out["aux"]) == 3 and out["aux"][0].shape == out["out"].shape
    total, parts = SSJPPNetLoss()(out, torch.randint(0, 20, (1, 49, 57)))
    assert total.item() == pytest.approx(parts["parsing"] + parts["aux"], rel=1e-6)


def test_attention_weights_sum_to_one_over_scales():
    # every scale gives the same constant logits: the attention-weighted sum must give them back
    features = nn.Conv2d(3, 8, 3, stride=8, padding=1)
    classifier = nn.Conv2d(8, 5, 1)
    model = SSJPPNet(features, classifier, 8).train()
    with torch.no_grad():
        classifier.weight.zero_()
        classifier.bias.copy_(torch.arange(5.0))
        out = model(torch.randn(2, 3, 41, 41))
    assert torch.allclose(out["out"], torch.arange(5.0)[None, :, None, None].expand_as(out["out"]), atol=1e-5)
    assert [a.shape[-1] for a in out["aux"]] == [6, 4, 3]  # 41, 31 = 40 * 0.75 + 1, 21 pixels at stride 8


def test_unknown_backbone_and_offline_pretrained_weights_fail_clearly(monkeypatch):
    with pytest.raises(ValueError, match="resnet50, resnet101"):
        jppnet(backbone="resnet18")

    def offline(url, *args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with torch.device("meta"), pytest.raises(CheckpointError, match=r'pretrained_backbone="/path/resnet101-'):
        jppnet(pretrained_backbone=True)
    with torch.device("meta"), pytest.raises(CheckpointError, match=r'pretrained_backbone="/path/vgg16-'):
        ss_jppnet(pretrained_backbone=True)
