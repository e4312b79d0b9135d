"""mmsegmentation's ResNetV1c models: FCN, DeepLabv3 and Semantic FPN on the deep-stem ResNet (its -d8 dilation
policy), with its heads; parameter counts from mmseg's layer list."""

import pytest
import torch
from torch import nn
from torchvision.models import resnet50

import seglab
from seglab.errors import CheckpointError
from seglab.model_table import count_at_paper_setting
from seglab.models import count_parameters, model_info
from seglab.models.backbones.resnet import V1C_STEM_KEYS, resnet_v1c

# 19 classes (Cityscapes): with the aux head (mmseg's checkpoints carry it) and without it
COUNTS = {
    "fcn_resnet50_v1c": (49_497_734, 47_133_043),
    "fcn_resnet101_v1c": (68_489_862, 66_125_171),
    "deeplabv3_resnet50_v1c": (68_113_030, 65_748_339),
    "deeplabv3_resnet101_v1c": (87_105_158, 84_740_467),
    "semantic_fpn_resnet50_v1c": (28_497_907, None),  # the reference table's mmseg fpn_r50 count, exactly
    "semantic_fpn_resnet101_v1c": (47_490_035, None),
}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_parameter_counts_at_19_classes(name):
    with_aux, without_aux = COUNTS[name]
    info = model_info(name)
    assert info.task == "semantic" and info.paper_kwargs == {"num_classes": 19} and info.input_size == (512, 1024)
    assert count_at_paper_setting(name) == with_aux == info.paper_params
    if without_aux is not None:
        with torch.device("meta"):
            assert count_parameters(seglab.create_model(name, aux_loss=False)) == without_aux


def test_closed_form_count_of_the_backbone_and_heads():
    """ResNetV1c-50 = torchvision's ResNet-50 without fc (23,508,032) - the 7x7 stem + the 32-32-64 stem; the heads
    counted from mmseg's layer list (3x3 convs without bias, BN weight and bias, conv_seg with bias)."""
    stem_7x7 = 3 * 64 * 49 + 2 * 64
    stem_v1c = 3 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9 + 2 * (32 + 32 + 64)
    backbone = 23_508_032 - stem_7x7 + stem_v1c
    with torch.device("meta"):
        assert count_parameters(resnet_v1c(50)) == backbone == 23_527_264
    cbr = lambda cin, cout, k: cin * cout * k * k + 2 * cout  # noqa: E731
    seg = 512 * 19 + 19
    fcn_head = cbr(2048, 512, 3) + cbr(512, 512, 3) + cbr(2048 + 512, 512, 3) + seg
    aspp_head = 2 * cbr(2048, 512, 1) + 3 * cbr(2048, 512, 3) + cbr(5 * 512, 512, 3) + seg
    aux_head = cbr(1024, 256, 3) + 256 * 19 + 19
    assert backbone + fcn_head + aux_head == COUNTS["fcn_resnet50_v1c"][0]
    assert backbone + aspp_head + aux_head == COUNTS["deeplabv3_resnet50_v1c"][0]


def test_deep_stem_32_32_64_and_d8_rates_with_contract_dilation():
    with torch.device("meta"):
        b = resnet_v1c(50)
        reference = resnet50(replace_stride_with_dilation=[False, True, True])
    assert [(c.in_channels, c.out_channels, c.stride) for c in (b.conv1, b.conv2, b.conv3)] == [
        (3, 32, (2, 2)), (32, 32, (1, 1)), (32, 64, (1, 1))
    ]
    assert b.layer1[0].conv1.in_channels == 64 and b.layer1[0].downsample[0].in_channels == 64
    # mmseg: strides (1, 2, 1, 1), dilations (1, 1, 2, 4), the first block of a dilated stage at half the rate
    assert [blk.conv2.dilation[0] for blk in b.layer3] == [1, 2, 2, 2, 2, 2]
    assert [blk.conv2.dilation[0] for blk in b.layer4] == [2, 4, 4]
    assert b.layer2[0].conv2.stride == (2, 2) and b.layer3[0].conv2.stride == b.layer4[0].conv2.stride == (1, 1)
    # ... which is the rate pattern of torchvision's replace_stride_with_dilation, block for block
    for name in ("layer1", "layer2", "layer3", "layer4"):
        ours, theirs = getattr(b, name), getattr(reference, name)
        assert [(m.conv2.stride, m.conv2.dilation, m.conv2.padding) for m in ours] == [
            (m.conv2.stride, m.conv2.dilation, m.conv2.padding) for m in theirs
        ]
    with torch.device("meta"):
        plain = resnet_v1c(101, output_stride=32)
    assert [plain.layer4[0].conv2.stride, plain.layer3[0].conv2.stride] == [(2, 2), (2, 2)]
    assert {m.dilation for m in plain.modules() if isinstance(m, nn.Conv2d)} == {(1, 1)}
    with pytest.raises(ValueError, match="depth"):
        resnet_v1c(34)


@pytest.fixture(scope="module")
def r50_models():
    torch.manual_seed(0)
    names = ("fcn_resnet50_v1c", "deeplabv3_resnet50_v1c", "semantic_fpn_resnet50_v1c")
    return {name: seglab.create_model(name, num_classes=5) for name in names}


@pytest.mark.parametrize("name", ["fcn_resnet50_v1c", "deeplabv3_resnet50_v1c", "semantic_fpn_resnet50_v1c"])
def test_eval_logits_at_odd_input_sizes(r50_models, name):
    model = r50_models[name].eval()
    with torch.no_grad():
        for size in ((67, 45), (33, 97)):
            out = model(torch.randn(1, 3, *size))
            assert isinstance(out, torch.Tensor) and out.shape == (1, 5, *size)


@pytest.mark.parametrize("name", ["fcn_resnet50_v1c", "deeplabv3_resnet50_v1c"])
def test_train_mode_returns_out_and_the_layer3_aux_logits(r50_models, name):
    model = r50_models[name].train()
    out = model(torch.randn(2, 3, 41, 53))
    assert set(out) == {"out", "aux"} and out["out"].shape == (2, 5, 41, 53)
    assert len(out["aux"]) == 1 and out["aux"][0].shape == (2, 5, 41, 53)
    out["out"].mean().backward()
    assert model.classifier.conv_seg.weight.grad is not None
    with torch.device("meta"):
        assert seglab.create_model(name, aux_loss=False).aux_classifier is None


def test_semantic_fpn_v1c_has_no_aux_head_and_trains_to_a_tensor(r50_models):
    out = r50_models["semantic_fpn_resnet50_v1c"].train()(torch.randn(2, 3, 41, 53))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5, 41, 53)


def test_fcn_head_concatenates_its_input_and_the_aux_head_does_not():
    with torch.device("meta"):
        model = seglab.create_model("fcn_resnet50_v1c")
    head, aux = model.classifier, model.aux_classifier
    assert [c[0].in_channels for c in head.convs] == [2048, 512] and head.conv_cat[0].in_channels == 2048 + 512
    assert all(isinstance(c[1], nn.BatchNorm2d) and c[0].bias is None for c in [*head.convs, head.conv_cat])
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1 and head.conv_seg.out_channels == 19
    assert len(aux.convs) == 1 and aux.convs[0][0].in_channels == 1024 and aux.conv_seg.in_channels == 256
    assert aux.conv_cat is None


def test_aspp_concatenates_the_pooled_branch_first_then_rates_1_12_24_36():
    torch.manual_seed(0)
    model = seglab.create_model("deeplabv3_resnet50_v1c", num_classes=3, aux_loss=False).eval()
    head = model.classifier
    assert [(m[0].kernel_size, m[0].dilation) for m in head.aspp_modules] == [
        ((1, 1), (1, 1)), ((3, 3), (12, 12)), ((3, 3), (24, 24)), ((3, 3), (36, 36))
    ]
    seen = {}
    hook = head.bottleneck.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 48))
    hook.remove()
    x = seen["x"]
    assert x.shape == (1, 5 * 512, 8, 6)  # output stride 8
    pooled = x[:, :512]
    torch.testing.assert_close(pooled, pooled[..., :1, :1].expand_as(pooled))  # image pooling: constant
    assert head.bottleneck[0].kernel_size == (3, 3)


def test_fpn_head_uses_batchnorm_dropout_and_resizes_each_level_to_p2():
    torch.manual_seed(0)
    model = seglab.create_model("semantic_fpn_resnet50_v1c", num_classes=4).eval()
    head = model.head
    assert not any(isinstance(m, nn.GroupNorm) for m in head.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in head.modules()) == 1 + 1 + 2 + 3
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1
    assert head.resize_levels and model.size_divisor == 1  # mmseg resizes each level to P2; no padding
    seen = {}
    hook = head.predictor.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    with torch.no_grad():
        model(torch.randn(1, 3, 70, 50))  # not a multiple of 32: P2 18x13, P5 3x2 upsampled 8x is 24x16
    hook.remove()
    assert seen["x"].shape == (1, 128, 18, 13)


def test_pretrained_true_names_open_mmlab_file_and_a_local_file_loads(tmp_path):
    with torch.device("meta"), pytest.raises(CheckpointError) as info:
        seglab.create_model("fcn_resnet101_v1c", pretrained_backbone=True)
    assert "resnet101_v1c-e67eebb6.pth" in str(info.value) and "pretrained_backbone=" in str(info.value)
    source = resnet_v1c(50)
    inverse = {ours: theirs for theirs, ours in V1C_STEM_KEYS.items()}
    state = {}
    for key, value in source.state_dict().items():
        module, _, rest = key.partition(".")
        name = f"{inverse[module]}.{rest}" if module in inverse else key
        state[name] = value + 0.5 if value.is_floating_point() else value
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)  # dropped on load
    assert "stem.6.weight" in state
    path = tmp_path / "resnet50_v1c-2cccc1ad.pth"
    torch.save(state, path)
    model = seglab.create_model("semantic_fpn_resnet50_v1c", pretrained_backbone=str(path))
    torch.testing.assert_close(model.backbone.conv3.weight, source.conv3.weight + 0.5)
    torch.testing.assert_close(model.backbone.layer4[2].bn3.running_var, source.layer4[2].bn3.running_var + 0.5)
