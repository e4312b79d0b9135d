import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50

from seglab.model_table import count_at_paper_setting
from seglab.models import count_parameters, model_info
from seglab.models.semantic.adapnet import MultiscaleConv, adapnet


def test_paper_setting_has_the_official_analytic_parameter_count():
    info = model_info("adapnet")
    assert info.paper_kwargs == {"num_classes": 12} and info.input_size == (384, 768) and info.year == 2017
    assert count_at_paper_setting("adapnet") == 23_623_463 == info.paper_params
    with torch.device("meta"):
        model = adapnet(num_classes=12)
    # ResNet-50 without its fc, the extra stem conv + BN, then the decoder's convs + BNs.
    assert count_parameters(model.backbone) == 23_508_032 and count_parameters(model.conv0) == 81 + 6
    assert count_parameters(model.decoder) == (2048 * 12 + 24) + (16 * 12 * 24 + 48) + (512 * 24 + 48) + (
        256 * 24 * 12 + 24
    )


def test_odd_input_size_gives_logits_at_the_input_size():
    model = adapnet(num_classes=12).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 67, 93)).shape == (1, 12, 67, 93)


def test_extra_3x3_conv_bn_relu_comes_before_the_7x7_stem():
    model = adapnet()
    conv, bn, relu = model.conv0
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (3, 3, (3, 3))
    assert isinstance(bn, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)
    assert model.backbone.conv1.kernel_size == (7, 7) and model.backbone.conv1.stride == (2, 2)


def test_output_stride_is_16_with_block_4_not_downsampled():
    model = adapnet().eval()
    seen = {}
    for name in ("layer2", "layer3", "layer4"):
        getattr(model.backbone, name).register_forward_hook(lambda m, a, out, name=name: seen.update({name: out}))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert seen["layer2"].shape[-2:] == (8, 8)
    assert seen["layer3"].shape[-2:] == (4, 4)
    assert seen["layer4"].shape == (1, 2048, 4, 4)


def test_multiscale_units_concatenate_two_parallel_half_width_branches():
    backbone = adapnet().backbone
    rates = {
        name: [
            tuple(b.dilation[0] for b in unit.conv2.branches) if isinstance(unit.conv2, MultiscaleConv) else None
            for unit in getattr(backbone, name)
        ]
        for name in ("layer1", "layer2", "layer3", "layer4")
    }
    # The last unit of block 2 and units 3-6 of block 3: dilation 1 and 2; block 4: both halves at 2.
    assert rates == {
        "layer1": [None] * 3,
        "layer2": [None] * 3 + [(1, 2)],
        "layer3": [None] * 2 + [(1, 2)] * 4,
        "layer4": [(2, 2)] * 3,
    }
    conv = backbone.layer3[2].conv2
    assert [(b.in_channels, b.out_channels, b.kernel_size) for b in conv.branches] == [(256, 128, (3, 3))] * 2
    x = torch.randn(1, 256, 9, 11)
    with torch.no_grad():
        out = conv(x)
        expected = torch.cat(
            [
                F.conv2d(x, conv.branches[0].weight, padding=1),
                F.conv2d(x, conv.branches[1].weight, padding=2, dilation=2),
            ],
            dim=1,
        )
    assert out.shape == (1, 256, 9, 11)
    torch.testing.assert_close(out, expected)


def test_block_4_third_unit_drops_out_with_keep_probability_03():
    model = adapnet()
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 1 and drops[0].p == 0.7
    assert drops[0] is model.backbone.layer4[2].bn3[1]


def test_decoder_adds_the_block_2_skip_to_the_2x_upsampled_scores():
    model = adapnet(num_classes=5).eval()
    decoder = model.decoder
    assert decoder.up2[0].kernel_size == (4, 4) and decoder.up2[0].stride == (2, 2)
    assert decoder.up8[0].kernel_size == (16, 16) and decoder.up8[0].stride == (8, 8)
    seen = {}
    model.backbone.layer2.register_forward_hook(lambda m, a, out: seen.update(block2=out))
    decoder.up2.register_forward_hook(lambda m, a, out: seen.update(up2=out))
    decoder.fuse.register_forward_pre_hook(lambda m, args: seen.update(operands=args))
    decoder.fuse.register_forward_hook(lambda m, a, out: seen.update(fused=out))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 96))
        skip = decoder.skip(seen["block2"])
    upsampled, added = seen["operands"]
    assert upsampled is seen["up2"] and upsampled.shape == (1, 10, 8, 12)
    torch.testing.assert_close(added, skip)
    torch.testing.assert_close(seen["fused"], upsampled + skip)


def test_a_few_adam_steps_lower_the_loss():
    torch.manual_seed(0)
    model = adapnet(num_classes=4).train()
    x, target = torch.randn(2, 3, 48, 48), torch.randint(0, 4, (2, 48, 48))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(4):
        torch.manual_seed(1)  # the same dropout mask at every step
        loss = F.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_torchvision_resnet50_state_dict_loads_as_pretrained_backbone(tmp_path):
    state = resnet50(weights=None).state_dict()
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    backbone = adapnet(pretrained_backbone=str(path)).backbone
    torch.testing.assert_close(backbone.conv1.weight, state["conv1.weight"])
    torch.testing.assert_close(backbone.layer1[0].conv2.weight, state["layer1.0.conv2.weight"])
    torch.testing.assert_close(backbone.layer4[2].bn3[0].running_var, state["layer4.2.bn3.running_var"])
    # The multiscale units' branches start from the torchvision 3x3 conv, split along its output channels.
    for key, unit in (("layer3.5.conv2.weight", backbone.layer3[5]), ("layer4.0.conv2.weight", backbone.layer4[0])):
        first, second = state[key].chunk(2, dim=0)
        torch.testing.assert_close(unit.conv2.branches[0].weight, first)
        torch.testing.assert_close(unit.conv2.branches[1].weight, second)
