import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import nn
from torchvision.models import VGG16_Weights

from seglab.errors import CheckpointError
from seglab.models.backbones import load_backbone_weights, resolve_torchvision_weights
from seglab.models.backbones.vgg import VGG16Encoder, classifier_to_conv, vgg16_stages
from seglab.models.semantic.fcn import fcn32s_vgg16


@pytest.fixture(scope="module")
def torchvision_vgg16(tmp_path_factory):
    """torchvision's VGG16 with seeded random weights, saved as .pth and .safetensors."""
    torch.manual_seed(1234)
    vgg = torchvision.models.vgg16(weights=None).eval()
    root = tmp_path_factory.mktemp("vgg16")
    state = vgg.state_dict()
    torch.save(state, root / "vgg16-397923af.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "vgg16.safetensors"))
    return vgg, root


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_stages_end_at_pool3_pool4_pool5():
    with torch.device("meta"):
        features = torchvision.models.vgg16(weights=None).features
    stages = vgg16_stages(features)
    assert [len(s) for s in stages] == [17, 7, 7]
    assert all(isinstance(s[-1], nn.MaxPool2d) for s in stages)
    assert [_convs(s)[-1].out_channels for s in stages] == [256, 512, 512]


def test_fc6_fc7_become_convolutions_with_the_linear_weights():
    # A narrow stand-in for VGG's classifier (same layout; the full-size check is in the loading test below).
    classifier = nn.Sequential(nn.Linear(8 * 49, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, 16), nn.ReLU())
    fc6, fc7 = classifier_to_conv(classifier)
    assert (fc6.kernel_size, fc6.padding, fc6.in_channels, fc6.out_channels) == ((7, 7), (0, 0), 8, 32)
    assert (fc7.kernel_size, fc7.in_channels, fc7.out_channels) == ((1, 1), 32, 16)
    assert fc6.weight.data_ptr() == classifier[0].weight.data_ptr()  # a view: no copy of the 400 MB fc6
    pool5 = torch.randn(2, 8, 7, 7)
    torch.testing.assert_close(fc6(pool5).flatten(1), classifier[0](pool5.flatten(1)))
    hidden = torch.randn(2, 32, 3, 3)
    torch.testing.assert_close(fc7(hidden).permute(0, 2, 3, 1), classifier[3](hidden.permute(0, 2, 3, 1)))


@pytest.mark.parametrize("suffix", ["pth", "safetensors"])
def test_torchvision_vgg16_weights_load_into_fcn(torchvision_vgg16, suffix):
    vgg, root = torchvision_vgg16
    path = root / ("vgg16-397923af.pth" if suffix == "pth" else "vgg16.safetensors")
    model = fcn32s_vgg16(pretrained_backbone=str(path)).eval()
    encoder = model.encoder
    for ours, theirs in zip(_convs(encoder)[:13], _convs(vgg.features), strict=True):
        assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)
    assert torch.equal(encoder.fc6.weight, vgg.classifier[0].weight.view(4096, 512, 7, 7))
    assert torch.equal(encoder.fc6.bias, vgg.classifier[0].bias)
    assert torch.equal(encoder.fc7.weight, vgg.classifier[3].weight.view(4096, 4096, 1, 1))
    assert torch.equal(encoder.fc7.bias, vgg.classifier[3].bias)
    if suffix == "safetensors":
        return  # the forward parity below does not depend on the file format

    # 26 + 2 * 100 padding - 2 = 224 (conv1_1 pads by 100): pool5 is 7x7, the classifier's window.
    x = torch.randn(1, 3, 26, 26)
    with torch.no_grad():
        pool5 = encoder.to_pool5(encoder.to_pool4(encoder.to_pool3(x)))
        expected = vgg.features(F.pad(x, (99, 99, 99, 99)))
        torch.testing.assert_close(pool5, expected)
        assert pool5.shape[-2:] == (7, 7)
        fc6 = encoder.fc6(pool5)
        torch.testing.assert_close(fc6.flatten(1), vgg.classifier[0](expected.flatten(1)), rtol=1e-4, atol=1e-4)


def test_pretrained_true_without_network_says_how_to_provide_the_file(monkeypatch):
    def offline(url, *args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with torch.device("meta"), pytest.raises(CheckpointError) as info:
        fcn32s_vgg16(pretrained_backbone=True)
    message = str(info.value)
    assert VGG16_Weights.IMAGENET1K_V1.url in message
    assert 'pretrained_backbone="/path/vgg16-397923af.pth"' in message


def test_mismatched_file_names_the_file_and_the_keys(tmp_path):
    path = tmp_path / "not_vgg16.pth"
    torch.save({"features.0.weight": torch.zeros(64, 1, 3, 3), "head.weight": torch.zeros(3)}, path)
    with torch.device("meta"), pytest.raises(CheckpointError) as info:
        fcn32s_vgg16(pretrained_backbone=str(path))
    message = str(info.value)
    assert "not_vgg16.pth" in message
    assert "features.0.weight" in message  # shape mismatch
    assert "head.weight" in message  # unexpected
    assert "missing keys: features.0.bias" in message


def test_missing_file_or_unknown_name_is_a_checkpoint_error(tmp_path):
    with torch.device("meta"), pytest.raises(CheckpointError, match="nowhere.pth.*IMAGENET1K_V1"):
        VGG16Encoder(pretrained=str(tmp_path / "nowhere.pth"))


def test_weight_names_resolve_to_the_torchvision_enum():
    assert resolve_torchvision_weights(True, VGG16_Weights) is VGG16_Weights.DEFAULT
    assert resolve_torchvision_weights("IMAGENET1K_V1", VGG16_Weights) is VGG16_Weights.IMAGENET1K_V1
    assert resolve_torchvision_weights("VGG16_Weights.IMAGENET1K_V1", VGG16_Weights) is VGG16_Weights.IMAGENET1K_V1
    assert resolve_torchvision_weights("weights/vgg.pth", VGG16_Weights) is None
    assert resolve_torchvision_weights(False, VGG16_Weights) is None


def test_false_loads_nothing():
    module = nn.Linear(2, 2)
    before = module.weight.detach().clone()
    load_backbone_weights(module, False, torchvision_weights=VGG16_Weights)
    assert torch.equal(module.weight, before)
