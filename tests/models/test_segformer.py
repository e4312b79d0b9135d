"""SegFormer B0-B5: the parameter counts round to the paper's Table 1 (with the decoder, 150 classes) and are the
registry's; logits come at the input size for odd sizes; stochastic depth rises linearly to 0.1 over all blocks;
the efficient attention reduces keys and values by the stage's ratio; the authors' ImageNet encoder files load
(weights-only) as ``pretrained_backbone``."""

import pickle
import re

import pytest
import torch
from torchvision.ops import StochasticDepth

import seglab
from seglab.errors import CheckpointError
from seglab.models.semantic.segformer import PARAMS, EfficientSelfAttention, segformer
from tests.payloads import RunsPython

# the paper's Table 1, "Params" with the decoder, in millions (ADE20K, 150 classes)
PAPER_MILLIONS = {"b0": 3.8, "b1": 13.7, "b2": 27.5, "b3": 47.3, "b4": 64.1, "b5": 84.7}


@pytest.mark.parametrize("variant", sorted(PAPER_MILLIONS))
def test_parameter_counts_round_to_the_papers_table_and_are_the_registrys(variant):
    name = f"segformer_{variant}"
    with torch.device("meta"):
        count = sum(p.numel() for p in seglab.create_model(name, num_classes=150).parameters())
    assert count == PARAMS[variant] == seglab.model_info(name).paper_params
    assert round(count / 1e6, 1) == PAPER_MILLIONS[variant]


@pytest.mark.parametrize(("height", "width"), [(64, 64), (97, 131), (33, 47), (20, 27)])
def test_b0_logits_at_the_input_size_in_eval_and_train(height, width):
    torch.manual_seed(0)
    model = seglab.create_model("segformer_b0", num_classes=5)
    x = torch.randn(2, 3, height, width)
    assert model.eval()(x).shape == (2, 5, height, width)
    out = model.train()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5, height, width)  # no aux head


def test_stochastic_depth_rises_linearly_to_the_rate_over_all_blocks():
    model = segformer("b2", num_classes=3, drop_path_rate=0.1)
    rates = [m.p for m in model.modules() if isinstance(m, StochasticDepth)]
    assert len(rates) == 3 + 4 + 6 + 3 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
    assert rates == pytest.approx([0.1 * i / 15 for i in range(16)])
    with pytest.raises(ValueError, match="b0, b1"):
        segformer("b6")


def test_attention_reduces_keys_and_values_by_the_stage_ratio():
    """At ratio 8 a 32x48 map gives 4x6 key/value tokens; the output equals a plain softmax attention over them."""
    torch.manual_seed(0)
    attention = EfficientSelfAttention(32, heads=1, sr=8).eval()
    x = torch.randn(1, 32 * 48, 32)
    with torch.no_grad():
        kv = attention.sr_norm(attention.sr(x.transpose(1, 2).reshape(1, 32, 32, 48)).flatten(2).transpose(1, 2))
        assert kv.shape == (1, 4 * 6, 32)
        weights = torch.softmax(attention.q(x) @ attention.k(kv).transpose(1, 2) / 32**0.5, dim=-1)
        expected = attention.proj(weights @ attention.v(kv))
        torch.testing.assert_close(attention(x, 32, 48), expected, rtol=1e-5, atol=1e-5)


def _nvlabs_layout(backbone) -> dict[str, torch.Tensor]:
    """``backbone``'s tensors under NVlabs/SegFormer's MiT names (``patch_embed1``, ``block1.0.attn.kv`` ...), with
    the ImageNet classifier its files carry."""
    state = {}
    for key, tensor in backbone.state_dict().items():
        for ours, theirs in ((r"^patch_embeds\.(\d)\.", "patch_embed{}."), (r"^blocks\.(\d)\.", "block{}."),
                             (r"^norms\.(\d)\.", "norm{}.")):
            key = re.sub(ours, lambda m, t=theirs: t.format(int(m[1]) + 1), key)
        key = key.replace(".attn.sr_norm.", ".attn.norm.").replace(".ffn.dwconv.", ".mlp.dwconv.dwconv.")
        state[key.replace(".ffn.", ".mlp.")] = tensor.clone()
    for key in [k for k in state if ".attn.k." in k]:
        state[key.replace(".attn.k.", ".attn.kv.")] = torch.cat([state.pop(key), state.pop(key.replace(".k.", ".v."))])
    state["head.weight"], state["head.bias"] = torch.randn(1000, 256), torch.randn(1000)
    return state


def test_the_authors_imagenet_encoder_file_loads_as_pretrained_backbone(tmp_path):
    torch.manual_seed(0)
    source = segformer("b0", num_classes=3).backbone
    path = tmp_path / "mit_b0.pth"
    torch.save(_nvlabs_layout(source), path)
    model = segformer("b0", num_classes=3, pretrained_backbone=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    with pytest.raises(CheckpointError, match="mit_b0.pth"):
        segformer("b0", pretrained_backbone=True)
    wrong = _nvlabs_layout(segformer("b1").backbone)
    torch.save(wrong, tmp_path / "mit_b1.pth")
    with pytest.raises(CheckpointError, match="mit_b1.pth .*expected NVlabs' mit_b0.pth"):
        segformer("b0", pretrained_backbone=str(tmp_path / "mit_b1.pth"))


def test_a_malicious_encoder_file_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "mit_b0.pth", "wb") as fh:
        pickle.dump({"patch_embed1.proj.weight": RunsPython(marker)}, fh, protocol=2)
    with pytest.raises(CheckpointError, match="refused to load"):
        segformer("b0", pretrained_backbone=str(tmp_path / "mit_b0.pth"))
    assert not marker.exists()
