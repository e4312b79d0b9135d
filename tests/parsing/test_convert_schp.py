"""Converting SCHP's released checkpoints: the output matches a functional re-statement of SCHP's AugmentCE2P
forward with InPlaceABN's ``|weight| + eps`` scaling and BGR input, read straight from SCHP's key names."""

import pytest
import torch
import torch.nn.functional as F

from seglab.checkpoint import load_weights, read_metadata
from seglab.cli import main
from seglab.convert.schp import convert_schp, load_schp, schp_to_seglab_key, seglab_to_schp_key
from seglab.errors import CheckpointError
from seglab.models.parsing.ce2p import schp_resnet18, schp_resnet50

EPS = 1e-5


# --- the reference: SCHP's forward, written from AugmentCE2P.py and the vendored inplace_abn kernels ----------


def _abn(x, sd, name, leaky):
    """InPlaceABN(Sync) in eval: (x - mean) / sqrt(var + eps) * (|w| + eps) + b, then leaky ReLU 0.01 or none."""
    shape = (1, -1, 1, 1)
    y = (x - sd[f"{name}.running_mean"].view(shape)) / torch.sqrt(sd[f"{name}.running_var"].view(shape) + EPS)
    y = y * (sd[f"{name}.weight"].abs() + EPS).view(shape) + sd[f"{name}.bias"].view(shape)
    return F.leaky_relu(y, 0.01) if leaky else y


def _conv(x, sd, name, stride=1, dilation=1):
    w = sd[f"{name}.weight"]
    pad = dilation * (w.shape[-1] // 2)
    return F.conv2d(x, w, sd.get(f"{name}.bias"), stride=stride, padding=pad, dilation=dilation)


def _up(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _block(x, sd, p, stride, dilation):
    bottleneck = f"{p}.conv3.weight" in sd
    out = F.relu(_abn(_conv(x, sd, f"{p}.conv1", 1 if bottleneck else stride, 1 if bottleneck else dilation),
                      sd, f"{p}.bn1", False))
    if bottleneck:
        out = F.relu(_abn(_conv(out, sd, f"{p}.conv2", stride, dilation), sd, f"{p}.bn2", False))
        out = _abn(_conv(out, sd, f"{p}.conv3"), sd, f"{p}.bn3", False)
    else:
        out = _abn(_conv(out, sd, f"{p}.conv2", 1, dilation), sd, f"{p}.bn2", False)
    residual = _abn(_conv(x, sd, f"{p}.downsample.0", stride), sd, f"{p}.downsample.1", False) \
        if f"{p}.downsample.0.weight" in sd else x
    return F.relu(out + residual)


def schp_reference_forward(sd, x_bgr):
    """The fusion logits at 1/4 that SCHP's network computes in eval mode from its state dict ``sd``."""
    x = x_bgr
    for i in (1, 2, 3):
        x = F.relu(_abn(_conv(x, sd, f"conv{i}", 2 if i == 1 else 1), sd, f"bn{i}", False))
    x = F.max_pool2d(x, 3, 2, 1)
    feats = []
    for layer, (stride, dilation) in enumerate(((1, 1), (2, 1), (2, 1), (1, 2)), start=1):
        n = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith(f"layer{layer}."))
        for j in range(n):
            x = _block(x, sd, f"layer{layer}.{j}", stride if j == 0 else 1, dilation)
        feats.append(x)
    c2, c3, c4, c5 = feats
    h, w = c5.shape[-2:]
    priors = []
    for s, size in enumerate((1, 2, 3, 6)):
        pooled = F.adaptive_avg_pool2d(c5, size)
        priors.append(_up(_abn(_conv(pooled, sd, f"context_encoding.stages.{s}.1"), sd,
                               f"context_encoding.stages.{s}.2", True), (h, w)))
    ctx = _abn(_conv(torch.cat([*priors, c5], 1), sd, "context_encoding.bottleneck.0"), sd,
               "context_encoding.bottleneck.1", True)
    size = c2.shape[-2:]
    xt = _up(_abn(_conv(ctx, sd, "decoder.conv1.0"), sd, "decoder.conv1.1", True), size)
    xl = _abn(_conv(c2, sd, "decoder.conv2.0"), sd, "decoder.conv2.1", True)
    dec = _abn(_conv(torch.cat([xt, xl], 1), sd, "decoder.conv3.0"), sd, "decoder.conv3.1", True)
    dec = _abn(_conv(dec, sd, "decoder.conv3.2"), sd, "decoder.conv3.3", True)
    edge_feas = [_abn(_conv(c, sd, f"edge.conv{i}.0"), sd, f"edge.conv{i}.1", True)
                 for i, c in ((1, c2), (2, c3), (3, c4))]
    edge_feas = [_up(f, size) for f in edge_feas]  # conv4 is applied below to the un-resized levels
    fused = _abn(_conv(torch.cat([dec, *edge_feas], 1), sd, "fushion.0"), sd, "fushion.1", True)
    return _conv(fused, sd, "fushion.3")


def _schp_checkpoint(model, *, negative_bn=True):
    """``model``'s weights under SCHP's key names with ``module.``, random BN stats and some negative BN weights."""
    g = torch.Generator().manual_seed(1)
    sd = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        value = value.clone()
        if key.endswith("running_mean"):
            value = torch.randn(value.shape, generator=g) * 0.1
        elif key.endswith("running_var"):
            value = torch.rand(value.shape, generator=g) + 0.5
        elif key.endswith(".weight") and value.ndim == 1:
            value = torch.rand(value.shape, generator=g) + 0.5
            if negative_bn:
                value[::3] *= -1
        elif key.endswith(".bias") and value.ndim == 1:
            value = torch.randn(value.shape, generator=g) * 0.1
        sd[seglab_to_schp_key(key)] = value
    return sd


def test_key_map_is_schp_names_round_trip():
    assert schp_to_seglab_key("layer3.22.bn2.running_var") == "backbone.layer3.22.bn2.running_var"
    assert schp_to_seglab_key("bn1.weight") == "backbone.bn1.weight"
    assert schp_to_seglab_key("fushion.3.weight") == "fusion.3.weight"
    assert schp_to_seglab_key("decoder.conv3.3.bias") == "decoder.conv3.3.bias"
    assert schp_to_seglab_key("context_encoding.stages.3.2.weight") == "context_encoding.stages.3.2.weight"
    keys = schp_resnet18().state_dict()
    assert all(schp_to_seglab_key(seglab_to_schp_key(k)) == k for k in keys)


def test_reference_forward_agrees_with_the_model_when_abn_is_plain_bn():
    # Checks the reference itself: with |w| + eps folded into the weights and the colour order given as the
    # model's, the reference and seglab's module graph compute the same logits (Bottleneck, as SCHP).
    model = schp_resnet50(num_classes=7).eval()
    schp = _schp_checkpoint(model, negative_bn=False)
    converted = load_schp({"state_dict": {f"module.{k}": v for k, v in schp.items()}}, model="schp_resnet50",
                          bgr_to_rgb=False)
    x = torch.randn(1, 3, 67, 75)
    with torch.no_grad():
        converted.train()
        for m in converted.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Dropout2d)):
                m.eval()
        ours = converted(x)["out"]
        ref = schp_reference_forward(schp, x)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def _edge_reference(sd, c2, c3, c4):
    size = c2.shape[-2:]
    feas = [_abn(_conv(c, sd, f"edge.conv{i}.0"), sd, f"edge.conv{i}.1", True) for i, c in ((1, c2), (2, c3), (3, c4))]
    edges = [_up(_conv(f, sd, "edge.conv4"), size) for f in feas]
    return _conv(torch.cat(edges, 1), sd, "edge.conv5")


def test_converted_file_gives_schp_outputs_with_abs_weight_and_bgr(tmp_path):
    source = schp_resnet18(num_classes=20)
    schp = _schp_checkpoint(source)  # a third of the BN weights negative: |w| + eps matters
    src = tmp_path / "exp-schp-201908261155-lip.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in schp.items()}, "epoch": 150}, src)
    dst = convert_schp(src, tmp_path / "schp_lip.safetensors")

    model = schp_resnet18(num_classes=20)
    meta = load_weights(model, dst)
    assert meta["model"] == "schp_resnet18"  # inferred from the keys (2 BasicBlocks in layer3)
    assert meta["num_classes"] == 20 and meta["label_set"] == "lip" and meta["input"] == "RGB"
    model.eval()
    x = torch.randn(1, 3, 71, 59)  # RGB, ImageNet-normalised
    with torch.no_grad():
        logits = model(x)
        expected = _up(schp_reference_forward(schp, x.flip(1)), (71, 59))  # SCHP sees BGR
    assert (logits - expected).abs().max().item() <= 1e-4
    # and the converter really changed the weights: raw weights as plain BN would not match
    assert (model.backbone.bn1.weight - schp["bn1.weight"]).abs().max() > 0.4


@pytest.fixture
def resnet18_schp_file(tmp_path):
    schp = _schp_checkpoint(schp_resnet18(num_classes=18))
    src = tmp_path / "atr.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in schp.items()}}, src)
    return src, schp


def test_metadata_and_edge_branch(tmp_path, resnet18_schp_file):
    # the edge logits (not part of the fusion output) also match SCHP's edge branch on the raw weights
    src, schp = resnet18_schp_file
    dst = convert_schp(src, tmp_path / "atr.safetensors", model="schp_resnet18")
    meta = read_metadata(dst)
    assert meta["model"] == "schp_resnet18" and meta["num_classes"] == 18 and meta["label_set"] == "atr"
    model = schp_resnet18(num_classes=18)
    load_weights(model, dst)
    model.train()
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Dropout2d)):
            m.eval()
    x = torch.randn(1, 3, 49, 63)
    with torch.no_grad():
        edge = model(x)["edge"]
        c2, c3, c4, _ = model.backbone(x)
    torch.testing.assert_close(edge, _edge_reference(schp, c2, c3, c4), rtol=1e-4, atol=1e-4)


def test_dataset_disagreeing_with_the_file_is_refused(tmp_path, resnet18_schp_file):
    src, _ = resnet18_schp_file
    with pytest.raises(CheckpointError, match=r"atr\.pth.*18 classes.*'lip' has 20"):
        convert_schp(src, tmp_path / "x.safetensors", model="schp_resnet18", dataset="lip")


def test_wrong_key_set_lists_missing_unexpected_and_mismatched_keys(tmp_path):
    schp = _schp_checkpoint(schp_resnet18(num_classes=20))
    del schp["edge.conv5.bias"]
    schp["aux_head.weight"] = torch.zeros(3)
    schp["decoder.conv2.0.weight"] = torch.zeros(48, 100, 1, 1)
    src = tmp_path / "broken.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in schp.items()}}, src)
    with pytest.raises(CheckpointError) as info:
        convert_schp(src, tmp_path / "x.safetensors", model="schp_resnet18")
    message = str(info.value)
    assert "broken.pth" in message
    assert "missing keys: edge.conv5.bias" in message
    assert "unexpected keys: aux_head.weight" in message
    assert "decoder.conv2.0.weight: file (48, 100, 1, 1) vs model (48, 64, 1, 1)" in message
    assert not (tmp_path / "x.safetensors").exists()


def test_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    src = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, src)
    with pytest.raises(CheckpointError, match=r"evil\.pth.*weights_only=True"):
        convert_schp(src, tmp_path / "x.safetensors")


def test_cli_convert_schp(tmp_path, resnet18_schp_file, capsys):
    src, _ = resnet18_schp_file
    dst = tmp_path / "cli.safetensors"
    assert main(["convert", "schp", str(src), str(dst), "--model", "schp_resnet18", "--dataset", "atr"]) == 0
    assert read_metadata(dst)["label_set"] == "atr"
    assert "cli.safetensors" in capsys.readouterr().out


def test_cli_convert_schp_names_the_resolved_model_and_exposes_no_inplace_abn(tmp_path, resnet18_schp_file, capsys):
    src, schp = resnet18_schp_file
    folded, plain = tmp_path / "folded.safetensors", tmp_path / "plain.safetensors"
    assert main(["convert", "schp", str(src), str(folded)]) == 0  # no --model: resolved from the keys
    out = capsys.readouterr().out
    assert "(seglab schp_resnet18)" in out, out
    assert main(["convert", "schp", str(src), str(plain), "--no-inplace-abn"]) == 0
    plain_model, folded_model = schp_resnet18(num_classes=18), schp_resnet18(num_classes=18)
    load_weights(plain_model, plain)
    load_weights(folded_model, folded)
    plain_sd, folded_sd = plain_model.state_dict(), folded_model.state_dict()
    # a BN weight: |w| + 1e-5 by default, the file's own value with --no-inplace-abn; other tensors alike
    assert torch.equal(plain_sd["backbone.bn1.weight"], schp["bn1.weight"])
    torch.testing.assert_close(folded_sd["backbone.bn1.weight"], schp["bn1.weight"].abs() + EPS, rtol=0, atol=0)
    assert torch.equal(plain_sd["backbone.bn1.bias"], folded_sd["backbone.bn1.bias"])
