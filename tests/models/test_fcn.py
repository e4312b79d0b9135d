import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab.model_table import count_at_paper_setting
from seglab.models import count_parameters
from seglab.models.layers import BilinearDeconv2d, bilinear_kernel
from seglab.models.semantic.fcn import FCN, fcn8s_vgg16, fcn16s_vgg16, fcn32s_vgg16

# name: (factory, learnable params at 21 classes, fixed bilinear weights, {deconv: (kernel, stride)})
VARIANTS = {
    "fcn32s_vgg16": (fcn32s_vgg16, 134_346_581, 1_806_336, {"upscore": (64, 32)}),
    "fcn16s_vgg16": (fcn16s_vgg16, 134_357_354, 458_640, {"upscore2": (4, 2), "upscore16": (32, 16)}),
    "fcn8s_vgg16": (
        fcn8s_vgg16, 134_362_751, 127_008, {"upscore2": (4, 2), "upscore_pool4": (4, 2), "upscore8": (16, 8)}
    ),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_paper_parameter_counts_and_fixed_deconvolutions(name):
    factory, params, fixed, deconvs = VARIANTS[name]
    assert count_at_paper_setting(name) == params
    with torch.device("meta"):
        model = factory(num_classes=21)
        learnable = factory(num_classes=21, learnable_upsampling=True)
    buffers = dict(model.named_buffers())
    assert sorted(buffers) == sorted(f"{d}.weight" for d in deconvs)
    assert sum(b.numel() for b in buffers.values()) == fixed
    for deconv, (kernel, stride) in deconvs.items():
        layer = getattr(model, deconv)
        assert (layer.weight.shape, layer.stride) == ((21, 21, kernel, kernel), stride)
        assert f"{deconv}.weight" not in dict(model.named_parameters())
        assert f"{deconv}.weight" in dict(learnable.named_parameters())
    assert count_parameters(learnable) == params + fixed
    assert model.state_dict().keys() == learnable.state_dict().keys()  # same checkpoint layout


def test_caffe_crop_offsets():
    with torch.device("meta"):
        offsets = [f(num_classes=2).crop_offsets for f in (fcn32s_vgg16, fcn16s_vgg16, fcn8s_vgg16)]
    assert offsets == [
        {"final": 19},
        {"score_pool4c": 5, "final": 27},
        {"score_pool4c": 5, "score_pool3c": 9, "final": 31},
    ]


def test_fixed_upsampling_is_bilinear():
    up = BilinearDeconv2d(3, 16, 8)
    constant = torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1).expand(1, 3, 6, 7)
    out = up(constant)
    assert out.shape[-2:] == ((6 - 1) * 8 + 16, (7 - 1) * 8 + 16)
    torch.testing.assert_close(out[..., 8:-8, 8:-8], constant[..., :1, :1].expand_as(out[..., 8:-8, 8:-8]))
    # A ramp stays a ramp (slope divided by the stride): interpolation is linear along each axis.
    ramp = torch.arange(6.0).view(1, 1, 6, 1).expand(1, 1, 6, 5)
    rows = BilinearDeconv2d(1, 16, 8)(ramp)[0, 0, 8:-8, 20]
    torch.testing.assert_close(rows.diff(), torch.full_like(rows.diff(), 1 / 8))
    # Channels do not mix, and a learnable deconv starts from the same kernel.
    assert torch.equal(bilinear_kernel(3, 4)[0, 1], torch.zeros(4, 4))
    learnable = BilinearDeconv2d(3, 16, 8, learnable=True)
    assert isinstance(learnable.weight, nn.Parameter) and torch.equal(learnable.weight, up.weight)


def _bilinear(channels: int, kernel: int) -> torch.Tensor:
    """Caffe surgery.upsample_filt on the channel diagonal, written out independently of seglab."""
    factor = (kernel + 1) // 2
    center = factor - 0.5  # the kernels here are even
    filt = 1 - (torch.arange(kernel) - center).abs() / factor
    weight = torch.zeros(channels, channels, kernel, kernel)
    for c in range(channels):
        weight[c, c] = filt[:, None] * filt[None, :]
    return weight


def _reference_logits(model: FCN, features: dict, size: tuple[int, int], skips: list[str]) -> torch.Tensor:
    """voc-fcn{32,16,8}s/net.py from score_fr on: sum with crop(score_pool4), then crop(score_pool3)."""
    k = model.score_fr.out_channels
    score = model.score_fr(features["fc7"])
    for skip, offset in zip(skips, (5, 9), strict=False):
        up = F.conv_transpose2d(score, _bilinear(k, 4), stride=2)
        side = getattr(model, f"score_{skip}")(features[skip])
        score = up + side[:, :, offset : offset + up.shape[2], offset : offset + up.shape[3]]
    stride = 32 // 2 ** len(skips)
    out = F.conv_transpose2d(score, _bilinear(k, 2 * stride), stride=stride)
    offset = {32: 19, 16: 27, 8: 31}[stride]
    return out[:, :, offset : offset + size[0], offset : offset + size[1]]


def _randomise_scores(model: FCN) -> None:
    for name in ("score_fr", "score_pool4", "score_pool3"):
        layer = getattr(model, name, None)
        if layer is not None:
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.normal_(layer.bias, std=1.0)


# How this was checked: the FCN-8s test fails when fcn.py (temporarily) drops the pool3 fusion, drops the
# pool4 fusion, swaps the order (pool3 fused first), swaps the pool features (score_pool3 on pool4 and vice
# versa, with channel counts adjusted) or uses a wrong crop offset; the FCN-16s test fails when the pool4
# fusion is dropped.
@pytest.mark.parametrize(
    "factory, size, skips",
    [
        (fcn8s_vgg16, (67, 93), ["pool4", "pool3"]),  # odd sizes; fuses pool4 then pool3
        (fcn16s_vgg16, (29, 35), ["pool4"]),  # fuses pool4 only
        (fcn32s_vgg16, (26, 31), []),  # no fusion
    ],
)
def test_skip_fusion_matches_the_reference_wiring(factory, size, skips):
    torch.manual_seed(0)
    model = factory(num_classes=3).eval()
    for name in ("score_fr", "score_pool4", "score_pool3"):  # zero-initialised as in the reference
        layer = getattr(model, name, None)
        if layer is not None:
            assert not layer.weight.any() and not layer.bias.any()
    assert hasattr(model, "score_pool4") == ("pool4" in skips)
    assert hasattr(model, "score_pool3") == ("pool3" in skips)
    _randomise_scores(model)
    captured = {}
    model.encoder.register_forward_hook(lambda module, args, output: captured.update(output))
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        out = model(x)
        expected = _reference_logits(model, captured, size, skips)
    assert out.shape == (1, 3, *size)
    torch.testing.assert_close(out, expected)
