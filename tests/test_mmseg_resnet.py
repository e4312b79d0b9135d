"""mmsegmentation's FCN / DeepLabv3 / Semantic FPN (ResNetV1c) state dicts -> seglab's *_v1c models: the key map
round-trips, the converted model computes what the original did, and a file that does not fit is refused by name."""

import pytest
import torch

import seglab
from seglab.convert.mmseg.resnet import (
    RESNET_MODELS,
    map_resnet_family,
    mmseg_to_seglab_key,
    resnet_model_kwargs,
    seglab_to_mmseg_key,
)
from seglab.errors import CheckpointError

# Real mmseg key names and shapes (mmseg's ResNetV1c, ConvModule conv/bn, FCNHead, ASPPHead, FPN, FPNHead), at 19
# classes; mmsegmentation 1.2.2's models built from the Cityscapes configs have exactly the keys the map gives.
BACKBONE_KEYS = {
    "backbone.stem.0.weight": (32, 3, 3, 3),
    "backbone.stem.1.running_var": (32,),
    "backbone.stem.3.weight": (32, 32, 3, 3),
    "backbone.stem.4.bias": (32,),
    "backbone.stem.6.weight": (64, 32, 3, 3),
    "backbone.stem.7.num_batches_tracked": (),
    "backbone.layer1.0.conv1.weight": (64, 64, 1, 1),
    "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "backbone.layer1.0.downsample.1.running_mean": (256,),
    "backbone.layer3.0.conv2.weight": (256, 256, 3, 3),
    "backbone.layer4.2.bn3.weight": (2048,),
}
AUX_KEYS = {
    "auxiliary_head.convs.0.conv.weight": (256, 1024, 3, 3),
    "auxiliary_head.convs.0.bn.running_mean": (256,),
    "auxiliary_head.conv_seg.weight": (19, 256, 1, 1),
    "auxiliary_head.conv_seg.bias": (19,),
}
MMSEG_KEYS = {
    "fcn_resnet50_v1c": {
        **BACKBONE_KEYS, **AUX_KEYS,
        "backbone.layer3.5.bn2.weight": (256,),
        "decode_head.convs.0.conv.weight": (512, 2048, 3, 3),
        "decode_head.convs.0.bn.weight": (512,),
        "decode_head.convs.1.conv.weight": (512, 512, 3, 3),
        "decode_head.convs.1.bn.num_batches_tracked": (),
        "decode_head.conv_cat.conv.weight": (512, 2560, 3, 3),
        "decode_head.conv_cat.bn.running_var": (512,),
        "decode_head.conv_seg.weight": (19, 512, 1, 1),
        "decode_head.conv_seg.bias": (19,),
    },
    "deeplabv3_resnet50_v1c": {
        **BACKBONE_KEYS, **AUX_KEYS,
        "decode_head.image_pool.1.conv.weight": (512, 2048, 1, 1),
        "decode_head.image_pool.1.bn.running_mean": (512,),
        "decode_head.aspp_modules.0.conv.weight": (512, 2048, 1, 1),
        "decode_head.aspp_modules.3.conv.weight": (512, 2048, 3, 3),
        "decode_head.aspp_modules.3.bn.bias": (512,),
        "decode_head.bottleneck.conv.weight": (512, 2560, 3, 3),
        "decode_head.bottleneck.bn.weight": (512,),
        "decode_head.conv_seg.weight": (19, 512, 1, 1),
    },
    "semantic_fpn_resnet50_v1c": {
        **BACKBONE_KEYS,
        "neck.lateral_convs.0.conv.weight": (256, 256, 1, 1),
        "neck.lateral_convs.3.conv.weight": (256, 2048, 1, 1),
        "neck.lateral_convs.3.conv.bias": (256,),
        "neck.fpn_convs.0.conv.weight": (256, 256, 3, 3),
        "neck.fpn_convs.2.conv.bias": (256,),
        "decode_head.scale_heads.0.0.conv.weight": (128, 256, 3, 3),
        "decode_head.scale_heads.0.0.bn.running_var": (128,),
        "decode_head.scale_heads.1.0.conv.weight": (128, 256, 3, 3),
        "decode_head.scale_heads.2.2.conv.weight": (128, 128, 3, 3),
        "decode_head.scale_heads.3.4.conv.weight": (128, 128, 3, 3),
        "decode_head.scale_heads.3.4.bn.weight": (128,),
        "decode_head.conv_seg.weight": (19, 128, 1, 1),
        "decode_head.conv_seg.bias": (19,),
    },
}
MMSEG_KEYS["fcn_resnet101_v1c"] = {
    **MMSEG_KEYS["fcn_resnet50_v1c"], "backbone.layer3.22.conv3.weight": (1024, 256, 1, 1),
}
MMSEG_KEYS["deeplabv3_resnet101_v1c"] = {**MMSEG_KEYS["deeplabv3_resnet50_v1c"], "backbone.layer3.22.bn1.bias": (256,)}
MMSEG_KEYS["semantic_fpn_resnet101_v1c"] = {
    **MMSEG_KEYS["semantic_fpn_resnet50_v1c"], "backbone.layer3.22.conv2.weight": (256, 256, 3, 3),
}


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine, so a mis-mapped BN would show in the outputs."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def _as_mmseg(model: torch.nn.Module, name: str) -> dict[str, torch.Tensor]:
    return {seglab_to_mmseg_key(k, name): v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def fcn_r50():
    torch.manual_seed(0)
    model = _randomised(seglab.create_model("fcn_resnet50_v1c"))
    return model, _as_mmseg(model, "fcn_resnet50_v1c")


def test_prefixes_name_the_mmseg_configs_and_registered_models():
    assert set(RESNET_MODELS.values()) <= set(seglab.list_models(task="semantic"))
    configs = {
        "fcn_r50-d8_4xb2-40k_cityscapes-512x1024": "fcn_resnet50_v1c",
        "fcn_r50-d8_512x1024_40k_cityscapes": "fcn_resnet50_v1c",  # mmseg 0.x naming
        "fcn_r101-d8_4xb4-160k_ade20k-512x512": "fcn_resnet101_v1c",
        "deeplabv3_r50-d8_4xb4-20k_voc12aug-512x512": "deeplabv3_resnet50_v1c",
        "deeplabv3_r101-d8_4xb2-80k_cityscapes-512x1024": "deeplabv3_resnet101_v1c",
        "fpn_r50_4xb2-80k_cityscapes-512x1024": "semantic_fpn_resnet50_v1c",
        "fpn_r101_4xb4-160k_ade20k-512x512": "semantic_fpn_resnet101_v1c",
        # other networks: ResNetV1b (7x7 stem), output stride 16 with multi-grid, dilation-6 FCN
        "fcn_r50b-d8_4xb2-80k_cityscapes-512x1024": None,
        "deeplabv3_r101-d16-mg124_4xb2-40k_cityscapes-512x1024": None,
        "fcn-d6_r50-d16_4xb2-40k_cityscapes-512x1024": None,
    }
    for config, model in configs.items():
        found = [name for prefix, name in RESNET_MODELS.items() if config.startswith(prefix + "_")]
        assert found == ([model] if model else []), config


@pytest.mark.parametrize("name", sorted(MMSEG_KEYS))
def test_real_mmseg_keys_map_to_the_model_and_round_trip_exactly(name):
    torch.manual_seed(0)
    with torch.device("meta"):
        model = seglab.create_model(name)
    own = model.state_dict()
    mmseg = {seglab_to_mmseg_key(k, name): v for k, v in own.items()}
    assert len(mmseg) == len(own)  # the map is one-to-one
    for key, shape in MMSEG_KEYS[name].items():
        assert key in mmseg and tuple(mmseg[key].shape) == shape, key
    assert {mmseg_to_seglab_key(k, name) for k in mmseg} == set(own)


@pytest.mark.parametrize("name", sorted(MMSEG_KEYS))
def test_converted_model_gives_identical_outputs(name):
    torch.manual_seed(1)
    source = _randomised(seglab.create_model(name, num_classes=7))
    mmseg = _as_mmseg(source, name)
    converted = map_resnet_family(mmseg, name, "test.pth")
    assert converted.keys() == source.state_dict().keys()
    assert all(torch.equal(converted[k], v) for k, v in source.state_dict().items())
    kwargs = resnet_model_kwargs(mmseg, name, "test.pth")
    assert kwargs == ({"num_classes": 7} if "fpn" in name else {"num_classes": 7, "aux_loss": True})
    torch.manual_seed(2)
    target = seglab.create_model(name, **kwargs).eval()
    target.load_state_dict(converted)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


def test_batchnorm_counters_may_be_absent_and_a_file_without_aux_head_builds_without_it(fcn_r50):
    _, mmseg = fcn_r50
    lean = {k: v for k, v in mmseg.items() if not k.endswith("num_batches_tracked")}
    converted = map_resnet_family(lean, "fcn_resnet50_v1c", "lean.pth")
    assert torch.equal(converted["backbone.bn1.num_batches_tracked"], torch.tensor(0))
    no_aux = {k: v for k, v in mmseg.items() if not k.startswith("auxiliary_head.")}
    assert resnet_model_kwargs(no_aux, "fcn_resnet50_v1c", "x") == {"num_classes": 19, "aux_loss": False}
    converted = map_resnet_family(no_aux, "fcn_resnet50_v1c", "no_aux.pth")
    with torch.device("meta"):
        model = seglab.create_model("fcn_resnet50_v1c", aux_loss=False)
    assert converted.keys() == model.state_dict().keys()


def test_missing_unexpected_and_misshaped_keys_are_named_in_mmsegs_terms(fcn_r50):
    _, mmseg = fcn_r50
    broken = dict(mmseg)
    del broken["decode_head.conv_cat.conv.weight"]
    broken["decode_head.extra.weight"] = torch.zeros(3)
    broken["backbone.stem.0.weight"] = torch.zeros(64, 3, 3, 3)  # a 64-64-128 stem (CSAIL's), not ResNetV1c's
    with pytest.raises(CheckpointError) as info:
        map_resnet_family(broken, "fcn_resnet50_v1c", "fcn_r50.pth")
    message = str(info.value)
    assert message.startswith("fcn_r50.pth: not an mmsegmentation fcn_r50-d8 checkpoint for seglab fcn_resnet50_v1c")
    assert "missing keys: decode_head.conv_cat.conv.weight" in message
    assert "unexpected keys: decode_head.extra.weight" in message
    assert "backbone.stem.0.weight: file (64, 3, 3, 3) vs model (32, 3, 3, 3)" in message


def test_another_familys_file_and_a_file_without_decode_head_are_refused(fcn_r50):
    _, mmseg = fcn_r50
    with pytest.raises(CheckpointError, match=r"fcn\.pth: not an mmsegmentation deeplabv3_r50-d8 .*"
                       r"missing keys: decode_head\.image_pool\.1\.conv\.weight.*unexpected keys: decode_head\.convs"):
        map_resnet_family(mmseg, "deeplabv3_resnet50_v1c", "fcn.pth")
    backbone_only = {k: v for k, v in mmseg.items() if k.startswith("backbone.")}
    with pytest.raises(CheckpointError, match=r"r50\.pth: no 'decode_head\.conv_seg\.weight'"):
        map_resnet_family(backbone_only, "fcn_resnet50_v1c", "r50.pth")
    with pytest.raises(CheckpointError, match="fcn_resnet50_v1c, fcn_resnet101_v1c"):
        map_resnet_family(mmseg, "fcn_resnet50", "fcn.pth")
