"""smp Unet checkpoints load into seglab's unet_resnet*: the converted model gives smp's logits, the weights file
round-trips through .pth/.safetensors and the CLI, and a checkpoint of another network is refused naming its
keys."""

import pickle

import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import save_file

import seglab
from seglab.checkpoint import load_weights, read_metadata
from seglab.cli import main
from seglab.convert import convert_smp, load_smp_unet
from seglab.convert.smp import seglab_to_smp_key, smp_to_seglab_key
from seglab.errors import CheckpointError


def _smp_unet(encoder: str = "resnet34", classes: int = 5, **kwargs) -> torch.nn.Module:
    """smp.Unet with seeded random weights and random BN statistics (so BN is not the identity), eval mode."""
    torch.manual_seed(0)
    model = smp.Unet(encoder, encoder_weights=None, classes=classes, **kwargs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(7)
        model.segmentation_head[0].bias.uniform_(-1, 1)
    return model.eval()


@pytest.fixture(scope="module")
def smp_r18():
    return _smp_unet("resnet18", classes=4)


def _close(seglab_model, reference, size=(64, 96)):
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected, got = reference(x), seglab_model.eval()(x)
    assert expected.abs().max() > 0.1  # a real comparison, not two zero maps
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_key_mapping_by_hand():
    assert smp_to_seglab_key("decoder.blocks.3.conv2.1.running_var") == "decoder.3.conv2.1.running_var"
    assert smp_to_seglab_key("decoder.blocks.0.conv1.0.weight") == "decoder.0.conv1.0.weight"
    assert smp_to_seglab_key("segmentation_head.0.bias") == "classifier.bias"
    assert smp_to_seglab_key("encoder.layer4.2.bn2.weight") == "encoder.layer4.2.bn2.weight"
    assert smp_to_seglab_key("decoder.center.0.0.weight") == "decoder.center.0.0.weight"  # no counterpart
    own = seglab.create_model("unet_resnet18", num_classes=3).state_dict()
    assert {smp_to_seglab_key(seglab_to_smp_key(k)) for k in own} == set(own)


@pytest.mark.parametrize("encoder", ["resnet18", "resnet34", "resnet50"])
def test_converted_model_gives_smp_logits_at_64x96(encoder):
    reference = _smp_unet(encoder, classes=5)
    model = load_smp_unet(reference.state_dict(), model=f"unet_{encoder}")
    assert model.classifier.out_channels == 5  # read from segmentation_head.0.weight
    assert int(model.decoder[2].conv1[1].num_batches_tracked) == 7
    _close(model, reference)


def test_wrapped_and_data_parallel_mappings_load(smp_r18):
    state = smp_r18.state_dict()
    for wrapped in ({"state_dict": state}, {"model": state}, {f"module.{k}": v for k, v in state.items()}):
        _close(load_smp_unet(wrapped, "unet_resnet18"), smp_r18)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_convert_smp_round_trip_through_a_file(smp_r18, tmp_path, suffix):
    src = tmp_path / f"smp{suffix}"
    state = {k: v.contiguous() for k, v in smp_r18.state_dict().items()}
    if suffix == ".pth":
        torch.save({"state_dict": state, "epoch": 3}, src)  # a training checkpoint's wrapper
    else:
        save_file(state, str(src))  # as smp's save_pretrained writes model.safetensors
    dst = convert_smp(src, tmp_path / "unet.safetensors", model="unet_resnet18", label_set="voc")
    meta = read_metadata(dst)
    assert meta == {"model": "unet_resnet18", "num_classes": 4, "model_kwargs": {},
                    "source": f"smp Unet checkpoint smp{suffix}", "label_set": "voc"}
    model = seglab.create_model(meta["model"], num_classes=meta["num_classes"])
    load_weights(model, dst)
    _close(model, smp_r18)


def test_cli_convert_smp(smp_r18, tmp_path, capsys):
    src, dst = tmp_path / "unet_r18.pth", tmp_path / "out" / "unet.safetensors"
    dst.parent.mkdir()
    torch.save(smp_r18.state_dict(), src)
    assert main(["convert", "smp", str(src), str(dst), "--model", "unet_resnet18"]) == 0
    assert "unet_resnet18" in capsys.readouterr().out
    assert read_metadata(dst)["model"] == "unet_resnet18" and "label_set" not in read_metadata(dst)
    model = seglab.create_model("unet_resnet18", num_classes=4)
    load_weights(model, dst)
    _close(model, smp_r18)
    # errors are reported, not raised: a resnet18 file converted as the default unet_resnet34
    assert main(["convert", "smp", str(src), str(tmp_path / "bad.safetensors")]) != 0
    assert "layer1.2" in capsys.readouterr().err  # resnet34 has 3 blocks in layer1, resnet18 2
    assert not (tmp_path / "bad.safetensors").exists()


def test_unexpected_key_is_named(smp_r18):
    state = dict(smp_r18.state_dict())
    state["decoder.center.0.0.weight"] = torch.zeros(512, 512, 3, 3)
    with pytest.raises(CheckpointError, match=r"unexpected keys: decoder\.center\.0\.0\.weight"):
        load_smp_unet(state, "unet_resnet18")


def test_missing_key_is_named_in_smp_terms(smp_r18):
    state = dict(smp_r18.state_dict())
    del state["decoder.blocks.2.conv1.1.running_mean"]
    with pytest.raises(CheckpointError, match=r"missing keys: decoder\.blocks\.2\.conv1\.1\.running_mean"):
        load_smp_unet(state, "unet_resnet18")


def test_attention_decoder_is_refused_naming_its_keys():
    state = smp.Unet("resnet18", encoder_weights=None, classes=2, decoder_attention_type="scse").state_dict()
    with pytest.raises(CheckpointError, match=r"unexpected keys: .*decoder\.blocks\.0\.attention1\.attention\.cSE"):
        load_smp_unet(state, "unet_resnet18")


def test_wrong_encoder_depth_gives_shape_mismatch():
    state = _smp_unet("resnet50", classes=2).state_dict()
    with pytest.raises(CheckpointError) as info:
        load_smp_unet(state, "unet_resnet18")
    message = str(info.value)
    assert "encoder.layer1.0.conv3.weight" in message  # bottleneck keys resnet18 lacks
    assert "shape mismatch: " in message
    assert "encoder.layer4.0.downsample.1.bias: file (2048,) vs model (512,)" in message  # 4x wider bottlenecks


def test_class_count_and_names_checked(smp_r18, tmp_path):
    with pytest.raises(CheckpointError, match="segmentation_head.0.weight has 4 classes but num_classes=21"):
        load_smp_unet(smp_r18.state_dict(), "unet_resnet18", num_classes=21)
    with pytest.raises(CheckpointError, match="one of unet_resnet18, unet_resnet34, unet_resnet50"):
        load_smp_unet(smp_r18.state_dict(), "unet")
    with pytest.raises(CheckpointError, match="name it \\*.safetensors"):
        convert_smp(smp_r18.state_dict(), tmp_path / "x.pth", model="unet_resnet18")
    no_head = {k: v for k, v in smp_r18.state_dict().items() if not k.startswith("segmentation_head")}
    with pytest.raises(CheckpointError, match="no 'segmentation_head.0.weight'"):
        load_smp_unet(no_head, "unet_resnet18")


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": _Payload()}, fh, protocol=2)
    with pytest.raises(CheckpointError, match="evil.pth: refused to load"):
        convert_smp(path, tmp_path / "x.safetensors")
