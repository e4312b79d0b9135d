"""UperNet on Swin-T / S / B: the paper's counts, UperHead's PPM + FPN fusion, torchvision Swin weights."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import swin_t

from seglab.model_table import count_at_paper_setting
from seglab.models import model_info
from seglab.models.semantic.upernet import UperHead, upernet_swin_t

# mmseg's upernet_swin at 150 classes with the aux FCN head (mmsegmentation's configs/swin, counted there)
REFERENCE_PARAMS = {"upernet_swin_t": 59_941_862, "upernet_swin_s": 81_259_766, "upernet_swin_b": 121_279_716}


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
    model.eval()
    x = torch.randn(1, 3, 67, 93)
    with torch.no_grad():
        out = model(x)
        features = model.backbone(F.pad(x, (0, 3, 0, 29)))  # padded to 96 x 96 inside
    assert out.shape == (1, 5, 67, 93)
    assert [tuple(f.shape[1:]) for f in features] == [(96, 24, 24), (192, 12, 12), (384, 6, 6), (768, 3, 3)]


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
