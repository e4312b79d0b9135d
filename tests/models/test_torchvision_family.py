"""FCN-ResNet, DeepLabv3 and LR-ASPP: torchvision's definitions, so torchvision's weights give its outputs."""

import pytest
import torch
import torchvision.models.segmentation as tvseg
from torch import nn

from seglab.checkpoint import load_weights
from seglab.convert import convert_torchvision
from seglab.model_table import count_at_paper_setting
from seglab.models import create_model, model_info
from seglab.models.semantic.deeplabv3 import deeplabv3_mobilenet_v3_large, deeplabv3_resnet50
from seglab.models.semantic.lraspp import lraspp_mobilenet_v3_small

# torchvision's num_params of its published weights (21 classes; FCN and DeepLabv3 with the aux head)
REFERENCE_PARAMS = {
    "fcn_resnet50": 35_322_218,
    "fcn_resnet101": 54_314_346,
    "deeplabv3_resnet50": 42_004_074,
    "deeplabv3_resnet101": 60_996_202,
    "deeplabv3_mobilenet_v3_large": 11_029_328,
    "lraspp_mobilenet_v3_large": 3_221_538,
}
SIZES = [(1, 3, 67, 93), (1, 3, 129, 97)]


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_parameter_counts_equal_torchvision(name):
    assert model_info(name).paper_params == REFERENCE_PARAMS[name]
    assert count_at_paper_setting(name) == REFERENCE_PARAMS[name]


def test_lraspp_small_count_has_no_reference():
    assert model_info("lraspp_mobilenet_v3_small").paper_params is None
    assert count_at_paper_setting("lraspp_mobilenet_v3_small") == 1_077_954


def _randomise_batchnorm(model: nn.Module) -> None:
    # Fresh BN statistics (mean 0, var 1) would hide a misplaced BN; give each its own.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)


def _check_parity(name, tmp_path):
    torch.manual_seed(0)
    kwargs = {} if name.startswith("lraspp") else {"aux_loss": True}
    reference = getattr(tvseg, name)(weights=None, weights_backbone=None, num_classes=21, **kwargs)
    _randomise_batchnorm(reference)
    reference.eval()
    src = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), src)
    dst = convert_torchvision(name, src, tmp_path / f"{name}.safetensors")
    model = create_model(name)
    meta = load_weights(model, dst)
    assert meta["model"] == name and meta["num_classes"] == 21 and meta["label_set"] == "voc"
    model.eval()
    for size in SIZES:
        x = torch.randn(size)
        with torch.no_grad():
            expected, out = reference(x)["out"], model(x)
        assert isinstance(out, torch.Tensor) and out.shape == (1, 21, *size[-2:])
        assert (out - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    "name", ["deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "fcn_resnet50", "deeplabv3_resnet50"]
)
def test_converted_torchvision_weights_give_torchvision_logits(name, tmp_path):
    _check_parity(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fcn_resnet101", "deeplabv3_resnet101"])
def test_converted_torchvision_weights_give_torchvision_logits_resnet101(name, tmp_path):
    _check_parity(name, tmp_path)


def _aspp_rates(model):
    aspp = model.classifier[0]
    return tuple(branch[0].dilation[0] for branch in list(aspp.convs)[1:4])


def _layer4_rates(model):
    return tuple(block.conv2.dilation[0] for block in model.backbone.layer4)


def test_output_stride_16_dilates_only_layer4_and_halves_the_atrous_rates():
    with torch.device("meta"):
        os8 = deeplabv3_resnet50(aux_loss=False)
    assert _aspp_rates(os8) == (12, 24, 36)
    assert _layer4_rates(os8) == (2, 4, 4)  # torchvision's: layer3 dilated 2, layer4 4
    assert os8.backbone.layer3[0].downsample[0].stride == (1, 1)

    os16 = deeplabv3_resnet50(aux_loss=False, output_stride=16).eval()
    assert _aspp_rates(os16) == (6, 12, 18)
    assert _layer4_rates(os16) == (1, 2, 2)
    assert os16.backbone.layer3[0].downsample[0].stride == (2, 2)
    assert os16.backbone.layer4[0].downsample[0].stride == (1, 1)
    with torch.no_grad():
        assert os16(torch.randn(1, 3, 67, 93)).shape == (1, 21, 67, 93)


def test_multi_grid_sets_layer4_rates_to_unit_rate_times_grid():
    with torch.device("meta"):
        os16 = deeplabv3_resnet50(aux_loss=False, output_stride=16, multi_grid=(1, 2, 4))
        os8 = deeplabv3_resnet50(aux_loss=False, multi_grid=(1, 2, 4))
    assert _layer4_rates(os16) == (2, 4, 8)
    assert _layer4_rates(os8) == (4, 8, 16)
    assert os16.backbone.layer4[2].conv2.padding == (8, 8)
    with pytest.raises(ValueError, match="output_stride"):
        deeplabv3_resnet50(output_stride=32)


def test_train_mode_returns_out_and_aux_logits_at_input_size():
    model = deeplabv3_mobilenet_v3_large(num_classes=5).train()
    result = model(torch.randn(2, 3, 67, 93))
    assert set(result) == {"out", "aux"}
    assert result["out"].shape == (2, 5, 67, 93)
    assert [a.shape for a in result["aux"]] == [(2, 5, 67, 93)]
    without_aux = deeplabv3_mobilenet_v3_large(num_classes=5, aux_loss=False).train()
    assert without_aux.aux_classifier is None
    assert isinstance(without_aux(torch.randn(2, 3, 35, 41)), torch.Tensor)


def test_lraspp_small_gives_logits_at_input_size():
    model = lraspp_mobilenet_v3_small(num_classes=3)
    assert model.classifier.low_classifier.in_channels == 24  # the stride-8 stage
    assert model.classifier.cbr[0].in_channels == 576  # the dilated last stage (stride 16)
    assert model(torch.randn(2, 3, 67, 93)).shape == (2, 3, 67, 93)  # no aux head: a Tensor in train mode
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 129, 97)).shape == (1, 3, 129, 97)
