"""Hugging Face UperNet folders convert to seglab: transformers' ``UperNetForSemanticSegmentation`` (Swin-T and
ConvNeXt-T at their real sizes, every weight and BatchNorm statistic random and non-trivial) saved in the Hub
layout converts through ``seglab convert hf`` into a model whose logits equal transformers' at every input size
(odd sizes and those whose stages are at most one window included); the model and classes come from config.json;
S/B variants pick the right model and map strictly; pytorch_model.bin is read without unpickling code; wrong
folders are refused naming the file and field."""

import copy
import json
import pickle
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.models import swin_transformer as tv_swin
from transformers import ConvNextConfig, SwinConfig, UperNetConfig, UperNetForSemanticSegmentation

from seglab.checkpoint import load_weights, read_metadata
from seglab.cli import main
from seglab.convert import HF_MODELS, convert_hf, load_hf
from seglab.convert.hf import _to_seglab, read_hf_config
from seglab.data.palettes import ADE20K_CLASSES
from seglab.errors import CheckpointError
from seglab.models import create_model
from seglab.models.backbones.swin import ShiftedWindowAttention
from tests.payloads import RunsPython, RunsShell
from tests.random_norms import randomize_norms

STAGES = ["stage1", "stage2", "stage3", "stage4"]
# the openmmlab/upernet-* backbones: (kind, widths, depths, heads, drop path) -> seglab model
VARIANTS = {
    "upernet_swin_t": ("swin", 96, [2, 2, 6, 2], [3, 6, 12, 24], 0.3),
    "upernet_swin_s": ("swin", 96, [2, 2, 18, 2], [3, 6, 12, 24], 0.3),
    "upernet_swin_b": ("swin", 128, [2, 2, 18, 2], [4, 8, 16, 32], 0.3),
    "upernet_convnext_t": ("convnext", [96, 192, 384, 768], [3, 3, 9, 3], None, 0.4),
    "upernet_convnext_s": ("convnext", [96, 192, 384, 768], [3, 3, 27, 3], None, 0.3),
    "upernet_convnext_b": ("convnext", [128, 256, 512, 1024], [3, 3, 27, 3], None, 0.4),
}
FAST_SIZES = [(224, 224), (192, 192), (200, 296)]
SLOW_SIZES = [(512, 512), (512, 224), (500, 500)]
SIZES = FAST_SIZES + [pytest.param(*s, marks=pytest.mark.slow) for s in SLOW_SIZES]


def _config(name: str, id2label: dict[int, str] | None = None) -> UperNetConfig:
    kind, widths, depths, heads, drop_path = VARIANTS[name]
    if kind == "swin":
        backbone = SwinConfig(embed_dim=widths, depths=depths, num_heads=heads, out_features=STAGES,
                              drop_path_rate=drop_path)
        aux_in = widths * 4
    else:
        backbone = ConvNextConfig(hidden_sizes=widths, depths=depths, out_features=STAGES, drop_path_rate=drop_path)
        aux_in = widths[2]
    id2label = id2label or dict(enumerate(ADE20K_CLASSES))
    return UperNetConfig(backbone_config=backbone, num_labels=len(id2label), id2label=id2label,
                         label2id={v: k for k, v in id2label.items()}, auxiliary_in_channels=aux_in)


def _randomized(config: UperNetConfig) -> UperNetForSemanticSegmentation:
    """transformers' model with every norm, BatchNorm statistic, position bias and layer scale random (their
    initial values, 1, 0 and 1e-6, would hide a wrong mapping), in eval mode."""
    model = UperNetForSemanticSegmentation(config)
    randomize_norms(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "relative_position_bias_table" in name:
                param.normal_(0, 0.5)
            if "layer_scale" in name:
                param.uniform_(0.2, 1.0)
    return model.eval()


def _saved(tmp_path_factory, name: str, id2label: dict[int, str] | None = None):
    torch.manual_seed(0)
    model = _randomized(_config(name, id2label))
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder)  # the Hub layout: config.json + model.safetensors
    dst = folder.parent / f"{name}.safetensors"
    assert main(["convert", "hf", str(folder), str(dst)]) == 0
    meta = read_metadata(dst)
    net = create_model(meta["model"], num_classes=meta["num_classes"], **meta["model_kwargs"])
    load_weights(net, dst)
    return model, folder, dst, net.eval()


@pytest.fixture(scope="module")
def swin_t(tmp_path_factory):
    return _saved(tmp_path_factory, "upernet_swin_t")


@pytest.fixture(scope="module")
def convnext_t(tmp_path_factory):
    return _saved(tmp_path_factory, "upernet_convnext_t", {i: f"thing {i}" for i in range(150)})


def _max_error(reference: nn.Module, net: nn.Module, height: int, width: int) -> tuple[float, float]:
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(height * 1000 + width))
    with torch.no_grad():
        expected = reference(pixel_values=x).logits
        out = net(x)
    assert out.shape == expected.shape == (1, 150, height, width)
    return (out - expected).abs().max().item(), expected.abs().max().item()


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_swin_t_logits_equal_transformers_at_every_size(swin_t, height, width):
    reference, _, _, net = swin_t
    error, scale = _max_error(reference, net, height, width)
    assert scale > 1.0 and error <= 1e-4 * scale, (error, scale)


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_convnext_t_logits_equal_transformers_at_every_size(convnext_t, height, width):
    reference, _, _, net = convnext_t
    error, scale = _max_error(reference, net, height, width)
    assert scale > 1.0 and error <= 1e-4 * scale, (error, scale)


def test_torchvision_shift_rule_would_not_equal_transformers_at_224(swin_t):
    """The comparison sees the window shift: with torchvision's attention (no shift where a padded stage side is at
    most one window, stage 4 at 224x224) the logits differ."""
    reference, _, _, net = swin_t
    torchvision_rule = copy.deepcopy(net)
    for module in torchvision_rule.modules():
        if isinstance(module, ShiftedWindowAttention):
            module.__class__ = tv_swin.ShiftedWindowAttention
    error, scale = _max_error(reference, torchvision_rule, 224, 224)
    assert error > 1e-2 * scale


def test_metadata_records_model_classes_and_label_set(swin_t, convnext_t):
    swin = read_metadata(swin_t[2])
    assert swin["model"] == "upernet_swin_t" and swin["num_classes"] == 150 and swin["model_kwargs"] == {
        "drop_path_rate": 0.3}
    assert swin["classes"] == list(ADE20K_CLASSES) and swin["label_set"] == "ade20k"
    assert "final LayerNorm" in swin["dropped"] and "UperNetForSemanticSegmentation" in swin["source"]
    convnext = read_metadata(convnext_t[2])
    assert convnext["model"] == "upernet_convnext_t" and convnext["model_kwargs"] == {"drop_path_rate": 0.4}
    assert convnext["classes"] == [f"thing {i}" for i in range(150)]
    assert convnext["label_set_classes"] == convnext["classes"] and "dropped" not in convnext


def test_pytorch_model_bin_converts_to_the_same_tensors(convnext_t, tmp_path):
    _, folder, dst, _ = convnext_t
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    torch.save(load_file(folder / "model.safetensors"), tmp_path / "pytorch_model.bin")
    expected = load_file(dst)
    for state in (load_hf(tmp_path).state_dict(), load_file(convert_hf(tmp_path, tmp_path / "bin.safetensors"))):
        assert state.keys() == expected.keys()
        assert all(torch.equal(value, expected[key]) for key, value in state.items())
    with pytest.raises(CheckpointError, match="name it \\*.safetensors"):
        convert_hf(tmp_path, tmp_path / "out.pth")


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
@pytest.mark.parametrize("payload", [RunsShell, RunsPython])
def test_malicious_pytorch_model_bin_is_refused_without_running_it(convnext_t, tmp_path, capsys, how, payload):
    marker = tmp_path / "pwned"
    (tmp_path / "config.json").write_text((convnext_t[1] / "config.json").read_text())
    obj = {"backbone.embeddings.patch_embeddings.weight": payload(marker)}
    with open(tmp_path / "pytorch_model.bin", "wb") as fh:
        if how == "torch.save":
            torch.save(obj, fh)
        else:
            pickle.dump(obj, fh, protocol=2)
    with pytest.raises(CheckpointError, match="pytorch_model.bin: refused to load"):
        load_hf(tmp_path)
    assert main(["convert", "hf", str(tmp_path), str(tmp_path / "out.safetensors")]) == 2
    assert "refused to load" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


# ---------------------------------------------------------------- wrong folders


def _folder_with(tmp_path, source, config: dict | None = None, tensors: dict | None = None):
    config = config if config is not None else json.loads((source / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config))
    if tensors is not None:
        save_file(tensors, tmp_path / "model.safetensors")
    return tmp_path


def test_missing_config_json_weights_or_folder_are_named(convnext_t, tmp_path):
    with pytest.raises(CheckpointError, match="config.json: not found"):
        load_hf(tmp_path)
    with pytest.raises(CheckpointError, match="not a folder"):
        load_hf(tmp_path / "nothing")
    _folder_with(tmp_path, convnext_t[1])
    with pytest.raises(CheckpointError, match=r"no model.safetensors or pytorch_model.bin"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not readable JSON"):
        load_hf(tmp_path)


@pytest.mark.parametrize(("edit", "field"), [
    (lambda c: c.update(model_type="mask2former"), "'model_type': 'mask2former'"),
    (lambda c: c["backbone_config"].update(model_type="resnet"), "'backbone_config.model_type': 'resnet'"),
    (lambda c: c["backbone_config"].update(hidden_sizes=[64, 128, 256, 512]),
     "'backbone_config (hidden_sizes, depths)'"),
    (lambda c: c.update(hidden_size=256), "'hidden_size': 256"),
    (lambda c: c.update(pool_scales=[1, 2, 4]), "'pool_scales'"),
    (lambda c: c["backbone_config"].update(out_features=["stage4"]), "'backbone_config.out_features'"),
    (lambda c: c.pop("id2label"), "'id2label'"),
])
def test_unsupported_config_is_refused_naming_file_and_field(convnext_t, tmp_path, capsys, edit, field):
    config = json.loads((convnext_t[1] / "config.json").read_text())
    edit(config)
    _folder_with(tmp_path, convnext_t[1], config)
    with pytest.raises(CheckpointError, match="config.json: field " + re.escape(field)):
        load_hf(tmp_path)
    assert main(["convert", "hf", str(tmp_path), str(tmp_path / "out.safetensors")]) == 2
    assert "config.json: field" in capsys.readouterr().err


def test_keys_are_matched_strictly(convnext_t, tmp_path):
    _, folder, _, _ = convnext_t
    tensors = load_file(folder / "model.safetensors")
    extra = {**tensors, "decode_head.extra.weight": torch.zeros(3)}
    _folder_with(tmp_path, folder, tensors=extra)
    with pytest.raises(CheckpointError, match=r"model.safetensors: .*no place for: decode_head.extra.weight"):
        load_hf(tmp_path)
    missing = {k: v for k, v in tensors.items() if k != "decode_head.classifier.weight"}
    _folder_with(tmp_path, folder, tensors=missing)
    with pytest.raises(CheckpointError, match=r"model.safetensors: .*missing keys: decode_head.classifier.weight"):
        load_hf(tmp_path)
    wrong = {**tensors, "backbone.encoder.stages.0.layers.0.dwconv.weight": torch.zeros(96, 1, 5, 5)}
    _folder_with(tmp_path, folder, tensors=wrong)
    with pytest.raises(CheckpointError, match=r"shape mismatch: backbone.features.1.0.block.0.weight"):
        load_hf(tmp_path)


# ---------------------------------------------------------------- Swin-S/B, ConvNeXt-S/B


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_each_variant_is_chosen_from_config_and_maps_strictly(name, tmp_path):
    """config.json picks the model; transformers' tensors (on the meta device: names and shapes) map one to one onto
    seglab's, and the counts agree (transformers' Swin has one more LayerNorm, the unused final one)."""
    config = _config(name)
    config.save_pretrained(tmp_path)
    record = read_hf_config(tmp_path)
    assert record["model"] == name and record["num_classes"] == 150 and record["aux_loss"]
    assert name in HF_MODELS.values()
    with torch.device("meta"):
        reference = UperNetForSemanticSegmentation(config)
        net = create_model(name, num_classes=150)
    kind = VARIANTS[name][0]
    converted, dropped = _to_seglab(reference.state_dict(), kind, net, "meta")
    assert converted.keys() == net.state_dict().keys()
    count = sum(p.numel() for p in net.parameters())
    final_norm = sum(p.numel() for n, p in reference.named_parameters() if n.startswith("backbone.swin.layernorm."))
    assert count == sum(p.numel() for p in reference.parameters()) - final_norm
    assert dropped == (["backbone.swin.layernorm.weight", "backbone.swin.layernorm.bias"] if kind == "swin" else [])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["upernet_swin_s", "upernet_swin_b", "upernet_convnext_s", "upernet_convnext_b"])
def test_small_and_base_convert_and_equal_transformers(tmp_path_factory, name):
    reference, _, dst, net = _saved(tmp_path_factory, name)
    assert read_metadata(dst)["model"] == name
    error, scale = _max_error(reference, net, 96, 160)
    assert error <= 1e-4 * max(scale, 1.0), (error, scale)
