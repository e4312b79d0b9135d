"""UperNet on Swin-T / S / B and ConvNeXt-T / S / B: the reference counts, UperHead's PPM + FPN fusion, torchvision
Swin and ConvNeXt weights, any input size, and Swin's shifted windows at every feature size."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import convnext_tiny, swin_t
from torchvision.models import swin_transformer as tv_swin

from seglab.model_table import count_at_paper_setting
from seglab.models import model_info
from seglab.models.backbones.swin import ShiftedWindowAttention
from seglab.models.semantic.upernet import UperHead, upernet_convnext_t, upernet_swin_t

# mmseg's upernet_swin at 150 classes with the aux FCN head (mmsegmentation's configs/swin, counted there)
REFERENCE_PARAMS = {"upernet_swin_t": 59_941_862, "upernet_swin_s": 81_259_766, "upernet_swin_b": 121_279_716}
# transformers' UperNetForSemanticSegmentation with the openmmlab/upernet-convnext-* configs at 150 classes with the
# aux head (tests/test_convert_hf.py counts them); the ConvNeXt paper's ADE20K table: 60M / 82M / 122M
CONVNEXT_PARAMS = {"upernet_convnext_t": 60_242_636, "upernet_convnext_s": 81_877_196,
                   "upernet_convnext_b": 122_102_956}


@pytest.fixture(scope="module")
def swin_state(tmp_path_factory):
    torch.manual_seed(0)
    state = swin_t(weights=None).state_dict()
    path = tmp_path_factory.mktemp("swin") / "swin_t.pth"
    torch.save(state, path)
    return state, str(path)


@pytest.fixture(scope="module")
def model(swin_state):
    # Built once, from a torchvision swin_t state dict (as pretrained_backbone=path).
    return upernet_swin_t(num_classes=5, pretrained_backbone=swin_state[1])


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_counts_match_the_swin_segmentation_repo(name):
    info = model_info(name)
    assert info.task == "semantic" and info.year == 2021 and info.input_size == (512, 512)
    assert info.paper_kwargs == {"num_classes": 150} and info.paper_params == REFERENCE_PARAMS[name]
    count = count_at_paper_setting(name)
    assert abs(count - REFERENCE_PARAMS[name]) <= 0.01 * REFERENCE_PARAMS[name]
    assert count == REFERENCE_PARAMS[name]  # torchvision Swin (no final norm, no head) + 4 output norms = mmseg's


def test_torchvision_swin_t_weights_load_into_the_backbone(model, swin_state):
    state, _ = swin_state
    backbone = model.backbone.features.state_dict()
    assert backbone.keys() == {k.removeprefix("features.") for k in state if k.startswith("features.")}
    for key, tensor in backbone.items():
        assert torch.equal(tensor, state["features." + key]), key


def test_upernet_fuses_ppm_on_stage4_and_concatenates_4_levels_of_512(model):
    head = model.decode_head
    assert isinstance(head, UperHead)
    assert head.ppm.pool_scales == (1, 2, 3, 6)
    assert [branch[0].output_size for branch in head.ppm] == [1, 2, 3, 6]
    assert head.ppm_bottleneck[0].in_channels == 768 + 4 * 512
    assert [conv[0].in_channels for conv in head.lateral_convs] == [96, 192, 384]
    assert [conv[0].kernel_size for conv in head.lateral_convs] == [(1, 1)] * 3
    assert [conv[0].kernel_size for conv in head.fpn_convs] == [(3, 3)] * 3
    assert head.fpn_bottleneck[0].in_channels == 4 * 512 and head.fpn_bottleneck[0].out_channels == 512
    assert head.dropout.p == 0.1 and head.classifier.kernel_size == (1, 1)
    aux = model.aux_head
    assert aux[0][0].in_channels == 384 and aux[0][0].out_channels == 256 and aux[2].out_channels == 5
    assert [norm.normalized_shape for norm in model.backbone.out_norms] == [(96,), (192,), (384,), (768,)]


def test_eval_logits_have_the_input_size_for_odd_sizes(model):
    """No padding to 32 around the model: Swin pads the image to a multiple of its patch (4) and odd sides before
    each patch merging, as mmseg and transformers do."""
    model.eval()
    x = torch.randn(1, 3, 67, 93)
    with torch.no_grad():
        out = model(x)
        features = model.backbone(x)
    assert out.shape == (1, 5, 67, 93)
    assert [tuple(f.shape[1:]) for f in features] == [(96, 17, 24), (192, 9, 12), (384, 5, 6), (768, 3, 3)]


def test_shifted_blocks_shift_even_when_a_stage_is_one_window():
    """At a 7x7 map (stage 4 at 224x224) torchvision's attention drops the shift; seglab's, as mmseg's and
    transformers' SwinBackbone, keeps it. Where torchvision shifts too (14x14) both agree."""
    torch.manual_seed(0)
    ours = ShiftedWindowAttention(32, [7, 7], [3, 3], num_heads=2).eval()
    with torch.no_grad():
        ours.relative_position_bias_table.normal_()
        torchvision_attn = copy.deepcopy(ours)
        torchvision_attn.__class__ = tv_swin.ShiftedWindowAttention
        for side in (7, 14):
            x = torch.randn(2, side, side, 32)
            same = torch.allclose(ours(x), torchvision_attn(x), atol=1e-6)
            assert same == (side == 14), side


def test_convnext_logits_have_the_input_size_also_below_32_pixels():
    with torch.device("meta"):
        net = upernet_convnext_t(num_classes=5).eval()
        outputs = {size: net(torch.empty(1, 3, *size)).shape for size in [(67, 93), (17, 23), (500, 500)]}
        levels = net.backbone(torch.empty(1, 3, 500, 500))
    assert outputs == {size: (1, 5, *size) for size in outputs}
    # the strided convs floor as in mmseg's and transformers' ConvNeXt: 500 -> 125, 62, 31, 15
    assert [tuple(f.shape[1:]) for f in levels] == [(96, 125, 125), (192, 62, 62), (384, 31, 31), (768, 15, 15)]


@pytest.mark.parametrize("name", sorted(CONVNEXT_PARAMS))
def test_convnext_counts_match_transformers_upernet(name):
    info = model_info(name)
    assert info.task == "semantic" and info.year == 2022 and info.paper == "A ConvNet for the 2020s"
    assert info.paper_kwargs == {"num_classes": 150} and info.paper_params == CONVNEXT_PARAMS[name]
    assert count_at_paper_setting(name) == CONVNEXT_PARAMS[name]


def test_torchvision_convnext_tiny_weights_load_with_output_norms_and_segmentation_defaults(tmp_path):
    torch.manual_seed(0)
    state = convnext_tiny(weights=None).state_dict()
    torch.save(state, tmp_path / "convnext_tiny.pth")
    net = upernet_convnext_t(num_classes=5, pretrained_backbone=str(tmp_path / "convnext_tiny.pth"))
    backbone = net.backbone.features.state_dict()
    assert backbone.keys() == {k.removeprefix("features.") for k in state if k.startswith("features.")}
    assert all(torch.equal(tensor, state["features." + key]) for key, tensor in backbone.items())
    assert [(n.normalized_shape, n.eps) for n in net.backbone.out_norms] == [((c,), 1e-6) for c in (96, 192, 384, 768)]
    fresh = upernet_convnext_t(num_classes=5)
    blocks = [m for m in fresh.backbone.modules() if hasattr(m, "layer_scale")]
    assert all(torch.equal(b.layer_scale, torch.ones_like(b.layer_scale)) for b in blocks)  # mmseg's 1.0
    assert blocks[-1].stochastic_depth.p == pytest.approx(0.4)  # mmseg's drop_path_rate for T


def test_training_returns_aux_logits_and_two_adam_steps_lower_the_loss(model):
    net = copy.deepcopy(model).train()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 35, 41)
    target = torch.randint(0, 5, (2, 35, 41))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-5)  # the paper's AdamW uses 6e-5

    def loss_fn() -> torch.Tensor:
        torch.manual_seed(1)  # same dropout and drop-path draws every time
        outputs = net(x)
        assert outputs["out"].shape == (2, 5, 35, 41) and [a.shape for a in outputs["aux"]] == [(2, 5, 35, 41)]
        return F.cross_entropy(outputs["out"], target) + 0.4 * F.cross_entropy(outputs["aux"][0], target)

    losses = []
    for _ in range(2):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        assert loss_fn().item() < losses[0]


def test_without_aux_loss_there_is_no_aux_head():
    with torch.device("meta"):
        net = upernet_swin_t(num_classes=3, aux_loss=False)
    assert net.aux_head is None
    assert not any(isinstance(m, nn.Dropout2d) and m is not net.decode_head.dropout for m in net.modules())
