"""Hugging Face SegFormer folders convert to seglab: transformers' ``SegformerForSemanticSegmentation`` (B0 at its
real size, every weight, norm and BatchNorm statistic random and non-trivial) saved in the Hub layout converts
through ``seglab convert hf`` into a model whose logits equal transformers' (upsampled to the input as its
``post_process_semantic_segmentation`` does) at square, odd and small sizes; B1-B5 are picked from config.json
and map one to one with transformers' parameter counts; a state dict in transformers' in-memory names converts
too; pytorch_model.bin is read without unpickling code; configurations seglab's network cannot express are
refused naming the field."""

import json
import pickle
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from seglab.checkpoint import load_weights, read_metadata
from seglab.cli import main
from seglab.convert import HF_SEGFORMERS, load_hf
from seglab.convert.hf import _to_seglab, read_hf_config
from seglab.data.palettes import ADE20K_CLASSES
from seglab.errors import CheckpointError
from seglab.models import create_model
from seglab.models.semantic.segformer import PARAMS, VARIANTS
from tests.payloads import RunsPython
from tests.random_norms import randomize_norms

SIZES = [(512, 512), (224, 224), (193, 257), (500, 375), (64, 96), (37, 45)]


def _config(variant: str, num_labels: int = 150) -> SegformerConfig:
    widths, depths, decoder = VARIANTS[variant]
    id2label = dict(enumerate(ADE20K_CLASSES)) if num_labels == 150 else {i: f"part {i}" for i in range(num_labels)}
    return SegformerConfig(hidden_sizes=list(widths), depths=list(depths), decoder_hidden_size=decoder,
                           num_labels=num_labels, id2label=id2label, label2id={v: k for k, v in id2label.items()})


def _randomized(config: SegformerConfig) -> SegformerForSemanticSegmentation:
    """transformers' model with every LayerNorm, BatchNorm statistic and the classifier random (their initial
    values would hide a wrong mapping and leave logits of 0.2), in eval mode."""
    model = SegformerForSemanticSegmentation(config)
    randomize_norms(model)
    with torch.no_grad():
        model.decode_head.classifier.weight.normal_(0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def b0(tmp_path_factory):
    torch.manual_seed(0)
    model = _randomized(_config("b0"))
    folder = tmp_path_factory.mktemp("segformer_b0")
    model.save_pretrained(folder)  # the Hub layout: config.json + model.safetensors
    dst = folder.parent / "segformer_b0.safetensors"
    assert main(["convert", "hf", str(folder), str(dst)]) == 0
    meta = read_metadata(dst)
    net = create_model(meta["model"], num_classes=meta["num_classes"], **meta["model_kwargs"])
    load_weights(net, dst)
    return model, folder, dst, net.eval()


def _max_error(reference: nn.Module, net: nn.Module, height: int, width: int) -> tuple[float, float]:
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(height * 1000 + width))
    with torch.no_grad():
        expected = F.interpolate(reference(pixel_values=x).logits, size=(height, width), mode="bilinear",
                                 align_corners=False)
        out = net(x)
    assert out.shape == expected.shape == (1, reference.config.num_labels, height, width)
    return (out - expected).abs().max().item(), expected.abs().max().item()


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_b0_logits_equal_transformers_at_every_size(b0, height, width):
    reference, _, _, net = b0
    error, scale = _max_error(reference, net, height, width)
    assert scale > 1.0 and error <= 1e-4 * scale, (error, scale)


def test_metadata_records_model_classes_and_label_set(b0):
    meta = read_metadata(b0[2])
    assert meta["model"] == "segformer_b0" and meta["num_classes"] == 150
    assert meta["classes"] == list(ADE20K_CLASSES) and meta["label_set"] == "ade20k"
    assert meta["model_kwargs"] == {"drop_path_rate": 0.1}
    assert "SegformerForSemanticSegmentation" in meta["source"]


def test_in_memory_names_and_pytorch_model_bin_convert_to_the_same_tensors(b0, tmp_path):
    """A state dict saved with transformers' current module names (``stages.*``, ``q_proj``, ``fc1`` ...) and a
    pytorch_model.bin (read weights-only) give the tensors of the Hub file's conversion."""
    reference, folder, dst, _ = b0
    expected = load_file(dst)
    in_memory = {k: v.contiguous() for k, v in reference.state_dict().items()}
    assert any(".q_proj." in k for k in in_memory) and any(k.startswith("segformer.stages.") for k in in_memory)
    for write in (lambda: save_file(in_memory, tmp_path / "model.safetensors"),
                  lambda: torch.save(load_file(folder / "model.safetensors"), tmp_path / "pytorch_model.bin")):
        for name in ("model.safetensors", "pytorch_model.bin"):
            (tmp_path / name).unlink(missing_ok=True)
        (tmp_path / "config.json").write_text((folder / "config.json").read_text())
        write()
        state = load_hf(tmp_path).state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(value, expected[key]) for key, value in state.items())


def test_malicious_pytorch_model_bin_is_refused_without_running_it(b0, tmp_path, capsys):
    marker = tmp_path / "pwned"
    (tmp_path / "config.json").write_text((b0[1] / "config.json").read_text())
    with open(tmp_path / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"decode_head.classifier.weight": RunsPython(marker)}, fh, protocol=2)
    with pytest.raises(CheckpointError, match="pytorch_model.bin: refused to load"):
        load_hf(tmp_path)
    assert main(["convert", "hf", str(tmp_path), str(tmp_path / "out.safetensors")]) == 2
    assert "refused to load" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize(("edit", "field"), [
    (lambda c: c.update(sr_ratios=[4, 2, 1, 1]), "'sr_ratios'"),
    (lambda c: c.update(num_attention_heads=[1, 2, 4, 8]), "'num_attention_heads'"),
    (lambda c: c.update(hidden_act="relu"), "'hidden_act'"),
    (lambda c: c.update(hidden_sizes=[48, 96, 240, 384]), "'hidden_sizes, depths, decoder_hidden_size'"),
    (lambda c: c.update(decoder_hidden_size=512), "'hidden_sizes, depths, decoder_hidden_size'"),
    (lambda c: c.pop("id2label"), "'id2label'"),
])
def test_configs_seglab_cannot_build_are_refused_naming_the_field(b0, tmp_path, edit, field):
    config = json.loads((b0[1] / "config.json").read_text())
    edit(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json: field " + re.escape(field)):
        load_hf(tmp_path)


def test_keys_are_matched_strictly(b0, tmp_path):
    _, folder, _, _ = b0
    tensors = load_file(folder / "model.safetensors")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    save_file({k: v for k, v in tensors.items() if "linear_fuse" not in k}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"SegformerForSemanticSegmentation .*missing keys: decode_head.fuse.0"):
        load_hf(tmp_path)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_is_chosen_from_config_and_maps_one_to_one(variant, tmp_path):
    """config.json picks the model; transformers' tensors (on the meta device: names and shapes) map one to one onto
    seglab's; the parameter counts are equal and are the ones documented (PARAMS, the registry's)."""
    config = _config(variant)
    config.save_pretrained(tmp_path)
    name = f"segformer_{variant}"
    assert read_hf_config(tmp_path)["model"] == name and name in HF_SEGFORMERS.values()
    with torch.device("meta"):
        reference = SegformerForSemanticSegmentation(config)
        net = create_model(name, num_classes=150)
    converted, dropped = _to_seglab(reference.state_dict(), "segformer", net, "meta")
    assert converted.keys() == net.state_dict().keys() and dropped == []
    count = sum(p.numel() for p in net.parameters())
    assert count == sum(p.numel() for p in reference.parameters()) == PARAMS[variant]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["b1", "b2"])
def test_b1_and_b2_convert_and_equal_transformers(tmp_path, variant):
    torch.manual_seed(0)
    reference = _randomized(_config(variant, num_labels=19))
    reference.save_pretrained(tmp_path / "hf")
    net = load_hf(tmp_path / "hf")
    for height, width in ((128, 160), (97, 131)):
        error, scale = _max_error(reference, net, height, width)
        assert error <= 1e-4 * max(scale, 1.0), (variant, height, width, error, scale)
