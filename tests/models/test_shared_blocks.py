"""The blocks every family shares: ConvBNAct, seg_output, and the ResNet / MobileNetV3 / Swin backbones."""

from functools import partial

import pytest
import torch
import torchvision
from torch import nn

from seglab.models.backbones.mobilenetv3 import mobilenet_v3_features
from seglab.models.backbones.resnet import deep_stem_resnet, resnet, resnet_features
from seglab.models.backbones.swin import swin_features
from seglab.models.layers import ConvBNAct, seg_output


def _rates(layer: nn.Sequential) -> list[int]:
    return [block.conv2.dilation[0] for block in layer]


# ---------------------------------------------------------------- ConvBNAct


def test_conv_bn_act_keys_are_conv_0_norm_1_and_the_conv_has_no_bias_under_a_norm():
    block = ConvBNAct(4, 8, 3)
    assert [type(m) for m in block] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert block[2].inplace
    assert list(block.state_dict()) == [
        "0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
    ]  # fmt: skip
    assert block[0].padding == (1, 1) and block[0].bias is None


def test_conv_bn_act_without_norm_has_a_biased_conv_and_without_act_no_third_module():
    plain = ConvBNAct(4, 8, 1, norm=None, act=None)
    assert len(plain) == 1 and list(plain.state_dict()) == ["0.weight", "0.bias"]
    biased = ConvBNAct(4, 8, 3, bias=True)
    assert biased[0].bias is not None and isinstance(biased[1], nn.BatchNorm2d)


def test_conv_bn_act_pads_to_keep_the_size_for_any_kernel_dilation_and_stride_one():
    x = torch.randn(1, 4, 13, 11)
    for kernel, dilation in ((1, 1), (3, 1), (3, 4), (5, 2), ((5, 1), 1), ((1, 7), 1)):
        assert ConvBNAct(4, 6, kernel, dilation=dilation)(x).shape == (1, 6, 13, 11)
    assert ConvBNAct(4, 6, 3, stride=2)(x).shape == (1, 6, 7, 6)


def test_conv_bn_act_groups_norm_and_activation_factories_and_transposed_conv():
    depthwise = ConvBNAct(8, 8, 3, groups=8, norm=partial(nn.GroupNorm, 4), act=partial(nn.LeakyReLU, 0.1))
    assert depthwise[0].groups == 8 and isinstance(depthwise[1], nn.GroupNorm) and depthwise[1].num_groups == 4
    assert isinstance(depthwise[2], nn.LeakyReLU) and depthwise[2].negative_slope == 0.1
    up = ConvBNAct(8, 4, 4, stride=2, act=nn.PReLU, transposed=True)
    assert isinstance(up[0], nn.ConvTranspose2d) and isinstance(up[2], nn.PReLU)
    assert up(torch.randn(1, 8, 5, 6)).shape == (1, 4, 10, 12)
    with pytest.raises(ValueError, match="act"):
        ConvBNAct(4, 4, act="gelu")


# ---------------------------------------------------------------- seg_output


def test_seg_output_is_the_logits_in_eval_and_the_dict_in_training():
    out, aux, edge = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    assert seg_output(out, [aux], training=False, edge=edge) is out
    assert seg_output(out, None, training=True) is out  # built without its aux head
    result = seg_output(out, (aux,), training=True, edge=edge)
    assert list(result) == ["out", "aux", "edge"]
    assert result["out"] is out and result["aux"] == [aux] and result["edge"] is edge
    assert list(seg_output(out, training=True, pose=[edge])) == ["out", "pose"]


# ---------------------------------------------------------------- ResNet


def test_resnet_output_strides_dilate_layer4_then_layer3_as_torchvision():
    with torch.device("meta"):
        os32, os16, os8 = (resnet(50, output_stride=s) for s in (32, 16, 8))
    assert _rates(os32.layer3) == [1] * 6 and _rates(os32.layer4) == [1] * 3
    assert _rates(os16.layer3) == [1] * 6 and _rates(os16.layer4) == [1, 2, 2]
    assert _rates(os8.layer3) == [1] + [2] * 5 and _rates(os8.layer4) == [2, 4, 4]
    with pytest.raises(ValueError, match="output_stride"):
        resnet(50, output_stride=4)
    with pytest.raises(ValueError, match="depth"):
        resnet(152)


def test_resnet_first_block_dilation_and_multi_grid():
    with torch.device("meta"):
        v2 = resnet(101, output_stride=8, dilate_first_block=True)
        grid = resnet(50, output_stride=16, multi_grid=(1, 2, 4))
    assert _rates(v2.layer3) == [2] * 23 and _rates(v2.layer4) == [4, 4, 4]
    assert v2.layer4[0].conv2.padding == (4, 4)
    assert _rates(grid.layer4) == [2, 4, 8]
    with pytest.raises(ValueError, match="multi_grid"):
        resnet(50, multi_grid=(1, 2))


def test_resnet_features_keep_torchvision_keys_and_return_the_named_layers_at_their_strides():
    features = resnet_features(18, {"relu": "s2", "layer2": "s8", "layer4": "s32"}).eval()
    reference = torchvision.models.resnet18(weights=None).state_dict()
    assert set(features.state_dict()) == {k for k in reference if not k.startswith("fc.")}
    with torch.no_grad():
        out = features(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "s2": (1, 64, 32, 32), "s8": (1, 128, 8, 8), "s32": (1, 512, 2, 2),
    }  # fmt: skip


def test_deep_stem_resnet_returns_four_levels_at_strides_4_8_16_16():
    backbone = deep_stem_resnet(18).eval()
    with torch.no_grad():
        levels = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(t.shape[1:]) for t in levels] == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 4, 4)]
    with pytest.raises(ValueError, match="depth"):
        deep_stem_resnet(34)


# ---------------------------------------------------------------- MobileNetV3, Swin


@pytest.mark.parametrize(
    ("variant", "channels"), [("large", {"low": 40, "high": 960}), ("small", {"low": 24, "high": 576})]
)
def test_mobilenet_v3_features_return_c2_at_stride_8_and_c5_at_stride_16(variant, channels):
    backbone, widths = mobilenet_v3_features(variant, {-4: "low", -1: "high"})
    assert widths == channels
    with torch.no_grad():
        out = backbone.eval()(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {
        "low": (channels["low"], 8, 8), "high": (channels["high"], 4, 4),
    }  # fmt: skip


def test_swin_features_are_four_nchw_levels_and_unknown_variants_are_refused():
    with torch.device("meta"):
        backbone = swin_features("t")
        levels = backbone(torch.empty(1, 3, 64, 64))
    assert backbone.out_channels == [96, 192, 384, 768]
    assert [tuple(t.shape[1:]) for t in levels] == [(96, 16, 16), (192, 8, 8), (384, 4, 4), (768, 2, 2)]
    with pytest.raises(ValueError, match="variant"):
        swin_features("l")
