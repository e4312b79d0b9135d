"""SCHP's CE2P network: parameter counts, the deep stem and dilations, output contract, a few training steps."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import seglab
from seglab.errors import CheckpointError
from seglab.models import count_parameters, model_info
from seglab.models.parsing.ce2p import BatchNormAct2d, schp_resnet18, schp_resnet50, schp_resnet101


@pytest.mark.parametrize(("num_classes", "expected"), [(20, 66_723_928), (18, 66_722_900), (7, 66_717_246)])
def test_resnet101_has_schp_parameter_count(num_classes, expected):
    with torch.device("meta"):
        model = schp_resnet101(num_classes=num_classes)
    assert count_parameters(model) == expected


def test_registry_facts():
    info = model_info("schp_resnet101")
    assert info.task == "parsing" and info.paper_params == 66_723_928 and info.input_size == (473, 473)
    assert info.paper_kwargs == {"num_classes": 20}
    assert {model_info(n).task for n in ("schp_resnet50", "schp_resnet18")} == {"parsing"}


def test_deep_stem_and_layer4_dilated_in_every_block():
    with torch.device("meta"):
        model = schp_resnet101()
    b = model.backbone
    assert [(c.in_channels, c.out_channels, c.stride) for c in (b.conv1, b.conv2, b.conv3)] == [
        (3, 64, (2, 2)), (64, 64, (1, 1)), (64, 128, (1, 1))
    ]
    assert b.layer1[0].conv1.in_channels == 128 and b.layer1[0].downsample[0].in_channels == 128
    assert len(b.layer3) == 23
    # SCHP: stride 1 and dilation 2 in all three layer4 blocks (multi-grid (1, 1, 1)), the first included
    assert [blk.conv2.dilation for blk in b.layer4] == [(2, 2)] * 3
    assert [blk.conv2.stride for blk in b.layer4] == [(1, 1)] * 3
    assert b.layer3[0].conv2.stride == (2, 2) and b.layer3[0].conv2.dilation == (1, 1)


def test_head_activations_are_leaky_relu_001_and_backbone_bn_plain():
    model = schp_resnet18()
    head_bns = [m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and not n.startswith("backbone")]
    assert head_bns and all(isinstance(m, BatchNormAct2d) and m.negative_slope == 0.01 for m in head_bns)
    assert not any(isinstance(m, BatchNormAct2d) for m in model.backbone.modules())
    bn = head_bns[0].eval()
    x = torch.tensor([-2.0, 3.0]).view(1, 1, 2, 1).expand(1, bn.num_features, 2, 1)
    y = bn(x)  # fresh stats: (x - 0) / sqrt(1 + 1e-5) * 1 + 0, then leaky ReLU
    scale = 1 / (1 + 1e-5) ** 0.5
    torch.testing.assert_close(y[0, 0, :, 0], torch.tensor([-0.02 * scale, 3.0 * scale]))


@pytest.mark.parametrize("size", [(97, 131), (64, 64), (33, 47)])
def test_eval_logits_at_input_size(size):
    model = schp_resnet18(num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 7, *size)


def test_eval_output_is_fusion_upsampled_with_align_corners():
    model = schp_resnet18().eval()
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        logits = model(x)
        model.train()
        for m in model.modules():  # train-mode outputs with eval statistics and no dropout
            if isinstance(m, (nn.BatchNorm2d, nn.Dropout2d)):
                m.eval()
        fusion = model(x)["out"]
    assert fusion.shape[-2:] == (25, 33)  # 97 -> 49 -> 25 (stride 4)
    torch.testing.assert_close(logits, F.interpolate(fusion, (97, 131), mode="bilinear", align_corners=True))


def test_train_outputs_out_aux_edge_at_quarter_resolution():
    model = schp_resnet50(num_classes=20).train()
    out = model(torch.randn(2, 3, 97, 131))
    assert set(out) == {"out", "aux", "edge"}
    assert out["out"].shape == (2, 20, 25, 33)
    assert [a.shape for a in out["aux"]] == [(2, 20, 25, 33)]
    assert out["edge"].shape == (2, 2, 25, 33)


def test_a_few_sgd_steps_lower_the_ce_on_out():
    model = schp_resnet18(num_classes=4).train()
    x = torch.randn(2, 3, 64, 64)
    target = torch.zeros(2, 64, 64, dtype=torch.long)
    target[:, :32] = 1
    target[:, 32:, 32:] = 2
    target[0, 40:, :10] = 255
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def loss_now() -> torch.Tensor:
        out = F.interpolate(model(x)["out"], size=(64, 64), mode="bilinear", align_corners=True)
        return F.cross_entropy(out, target, ignore_index=255)

    losses = []
    for _ in range(6):
        loss = loss_now()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_pretrained_true_says_where_the_deep_stem_file_is_and_how_to_pass_it():
    with torch.device("meta"), pytest.raises(CheckpointError) as info:
        schp_resnet101(pretrained_backbone=True)
    message = str(info.value)
    assert "resnet101-imagenet.pth" in message and 'pretrained_backbone="/path/resnet101-imagenet.pth"' in message


def test_csail_deep_stem_file_loads_into_the_backbone(tmp_path):
    source = schp_resnet18().backbone
    state = {k: v + 0.5 if v.is_floating_point() else v for k, v in source.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)  # dropped on load
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(state, path)
    model = schp_resnet18(pretrained_backbone=str(path))
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, source.layer4[1].conv2.weight + 0.5)
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"bad\.pth.*missing keys: bn1\.weight"):
        schp_resnet18(pretrained_backbone=str(tmp_path / "bad.pth"))


def test_light_head_width_scales_every_head_layer():
    """head_width=64: PSP 128, decoder/edge/fusion 64, layer1 reduced to 12 channels; 256 is SCHP's head."""
    model = seglab.create_model("schp_resnet18", head_width=64)
    assert sum(p.numel() for p in model.parameters()) == 12_835_728
    assert model.context_encoding.bottleneck[0].out_channels == 128
    assert model.decoder.conv2[0].out_channels == 12
    assert model.fusion[0].in_channels == 4 * 64
    assert sum(p.numel() for p in seglab.create_model("schp_resnet18").parameters()) == 24_848_088
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 61, 75)).shape == (1, 20, 61, 75)
    with pytest.raises(ValueError, match="multiple of 16"):
        seglab.create_model("schp_resnet18", head_width=40)
