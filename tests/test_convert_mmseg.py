"""mmsegmentation checkpoints convert to seglab weights: config names give the model and the dataset, files are
read without running code (mmengine's HistoryBuffer, numpy values and bound methods become inert records; code
payloads are refused), the family key maps land every tensor of a state dict in mmseg's real key layout on its
seglab key, mmseg's unfold-ordered patch merging is reordered to torchvision's and computes the same, and the
BiSeNet variants carry mmseg's layers and parameter counts. (The comparison with mmseg itself, which needs mmcv
and mmengine, is scripts/mmseg_parity.py.)"""

import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision
from torch.nn import functional as F

import seglab
from seglab.checkpoint import load_weights, read_metadata
from seglab.checkpoint import rename_prefix as rename
from seglab.cli import main
from seglab.convert import convert_mmseg, load_mmseg
from seglab.convert.mmseg import parse_config_name
from seglab.convert.mmseg.bisenet import bisenetv1_pairs, bisenetv2_pairs
from seglab.convert.mmseg.checkpoint import InertObject, read_mmseg_checkpoint
from seglab.convert.mmseg.swin import swin_to_unfold_order, unfold_to_swin_order, upernet_swin_pairs
from seglab.errors import CheckpointError
from seglab.models import count_parameters, model_info
from seglab.models.semantic.bisenet import BilateralGuidedAggregation, FeatureFusionModule
from seglab.pretrained import load_model
from tests.payloads import RunsPython, RunsShell

SWIN_T = "swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512"
V1 = "bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024"
V2 = "bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024"

# A few keys of each model's state dict as mmseg 1.2.2 names them (mmseg/models/backbones/swin.py, bisenetv1.py,
# bisenetv2.py, decode_heads/uper_head.py, psp_head.py, fcn_head.py; mmcv's ConvModule, DepthwiseSeparableConvModule,
# FFN), and each state dict's key count (BatchNorm counters included), as mmseg's models built from its configs have.
REAL_KEYS = {
    SWIN_T: (271, [
        "backbone.patch_embed.projection.weight", "backbone.patch_embed.norm.bias",
        "backbone.stages.0.blocks.1.attn.w_msa.relative_position_bias_table",
        "backbone.stages.0.blocks.1.attn.w_msa.relative_position_index",
        "backbone.stages.2.blocks.5.attn.w_msa.qkv.weight", "backbone.stages.1.blocks.0.attn.w_msa.proj.bias",
        "backbone.stages.1.blocks.0.ffn.layers.0.0.weight", "backbone.stages.3.blocks.1.ffn.layers.1.bias",
        "backbone.stages.2.downsample.reduction.weight", "backbone.stages.0.downsample.norm.weight",
        "backbone.norm3.weight", "decode_head.psp_modules.3.1.conv.weight",
        "decode_head.psp_modules.0.1.bn.running_var", "decode_head.bottleneck.conv.weight",
        "decode_head.lateral_convs.2.bn.num_batches_tracked", "decode_head.fpn_convs.0.conv.weight",
        "decode_head.fpn_bottleneck.bn.weight", "decode_head.conv_seg.bias", "auxiliary_head.convs.0.conv.weight",
        "auxiliary_head.conv_seg.weight",
    ]),
    V1: (222, [
        "backbone.context_path.backbone.conv1.weight", "backbone.context_path.backbone.layer4.1.bn2.running_mean",
        "backbone.context_path.backbone.layer2.0.downsample.0.weight",
        "backbone.context_path.arm16.conv_layer.conv.weight",
        "backbone.context_path.arm32.atten_conv_layer.1.bn.weight", "backbone.context_path.gap_conv.1.conv.weight",
        "backbone.context_path.conv_head16.bn.bias", "backbone.spatial_path.layer1.conv.weight",
        "backbone.spatial_path.layer4.bn.running_var", "backbone.ffm.conv1.conv.weight",
        "backbone.ffm.conv_atten.0.bn.weight", "decode_head.convs.0.conv.weight", "decode_head.conv_seg.weight",
        "auxiliary_head.1.conv_seg.weight", "auxiliary_head.0.convs.0.bn.weight",
    ]),
    V2: (385, [
        "backbone.detail.detail_branch.0.1.conv.weight", "backbone.detail.detail_branch.2.2.bn.running_mean",
        "backbone.semantic.stage1.conv_first.conv.weight", "backbone.semantic.stage1.convs.1.bn.weight",
        "backbone.semantic.stage1.fuse_last.bn.running_mean", "backbone.semantic.stage2.0.dwconv.1.conv.weight",
        "backbone.semantic.stage3.1.dwconv.0.bn.weight",
        "backbone.semantic.stage4.0.shortcut.0.depthwise_conv.conv.weight",
        "backbone.semantic.stage4.0.shortcut.0.pointwise_conv.bn.weight",
        "backbone.semantic.stage4.3.conv2.0.conv.weight", "backbone.semantic.stage4_CEBlock.gap.1.running_var",
        "backbone.semantic.stage4_CEBlock.conv_last.conv.weight",
        "backbone.bga.detail_dwconv.0.pointwise_conv.conv.bias",
        "backbone.bga.semantic_dwconv.0.depthwise_conv.bn.weight", "backbone.bga.detail_down.0.bn.weight",
        "backbone.bga.semantic_conv.0.conv.weight", "backbone.bga.conv.conv.weight", "decode_head.convs.0.bn.weight",
        "auxiliary_head.3.convs.1.conv.weight", "auxiliary_head.0.conv_seg.bias",
    ]),
}
SEGLAB_MODEL = {SWIN_T: "upernet_swin_t", V1: "bisenetv1_resnet18_mmseg", V2: "bisenetv2_mmseg"}
PAIRS = {SWIN_T: lambda: upernet_swin_pairs([2, 2, 6, 2]), V1: bisenetv1_pairs, V2: bisenetv2_pairs}


def _randomized(name: str, num_classes: int, **kwargs) -> torch.nn.Module:
    """seglab ``name`` with random weights and random BatchNorm / LayerNorm statistics and affines."""
    torch.manual_seed(0)
    model = seglab.create_model(name, num_classes=num_classes, **kwargs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0, 0.2)
    return model.eval()


def _mmseg_layout(model: torch.nn.Module, config: str) -> OrderedDict:
    """``model``'s state dict in mmseg's key layout (and, for Swin, mmseg's patch-merging order and index shape)."""
    inverse = {ours: theirs for theirs, ours in PAIRS[config]()}
    state = OrderedDict()
    for key, value in model.state_dict().items():
        value = value.clone()
        if key.endswith("relative_position_index"):
            value = value.reshape(49, 49)
        elif key.split(".")[:3] in (["backbone", "features", m] for m in "246"):  # torchvision's PatchMerging
            value = swin_to_unfold_order(value)
        state[rename(key, inverse)] = value
    return state


def _checkpoint(state: dict, classes: tuple[str, ...] | None = None, **extra) -> dict:
    meta = {"mmengine_version": "0.10.7", "seed": np.int64(0), "iter": np.int64(160000)}
    if classes is not None:
        meta["dataset_meta"] = {"classes": classes, "palette": [[0, 0, 0]] * len(classes)}
    return {"meta": meta, "state_dict": state, **extra}


# ---------------------------------------------------------------- config names


@pytest.mark.parametrize(("name", "model", "dataset"), [
    (SWIN_T, "upernet_swin_t", "ade20k"),
    ("swin-small-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512", "upernet_swin_s", "ade20k"),
    ("swin-base-patch4-window7-in22k-pre_upernet_8xb2-160k_ade20k-512x512.py", "upernet_swin_b", "ade20k"),
    ("upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K_20210531_112542-e380ad3e.pth",
     "upernet_swin_t", "ade20k"),
    ("upernet_swin-t_patch4_window7_in1K-224x224-pre-3rdparty_8x2_512x1024_80k_cityscapes", "upernet_swin_t",
     "cityscapes"),
    ("upernet_swin-s_patch4_window7_512x512_160k_ade20k_in1K-224x224-pre-3rdparty", "upernet_swin_s", "ade20k"),
    (V1, "bisenetv1_resnet18_mmseg", "cityscapes"),
    ("bisenetv1_r18-d32-in1k-pre_4xb4-160k_coco-stuff164k-512x512", "bisenetv1_resnet18_mmseg", "coco_stuff"),
    ("bisenetv1_r18-d32_4x4_1024x1024_160k_cityscapes", "bisenetv1_resnet18_mmseg", "cityscapes"),
    (V2, "bisenetv2_mmseg", "cityscapes"),
    ("bisenetv2_fcn_4xb4-ohem-160k_cityscapes-1024x1024", "bisenetv2_mmseg", "cityscapes"),
    ("bisenetv2_fcn_fp16_4x4_1024x1024_160k_cityscapes_20210902_045942-b979777b.pth", "bisenetv2_mmseg",
     "cityscapes"),
])
def test_config_names_give_the_model_and_dataset(name, model, dataset):
    config = parse_config_name(name)
    assert (config.model, config.dataset) == (model, dataset)


def test_resnet_family_names_dispatch_to_the_resnet_map():
    resnet = pytest.importorskip("seglab.convert.mmseg.resnet")
    for name, prefix, dataset in [("fcn_r50-d8_4xb2-40k_cityscapes-512x1024", "fcn_r50-d8", "cityscapes"),
                                  ("deeplabv3_r101-d8_4xb4-40k_voc12aug-512x512", "deeplabv3_r101-d8", "voc"),
                                  ("deeplabv3_r101-d8_4xb4-80k_pascal-context-59-480x480", "deeplabv3_r101-d8",
                                   "pascal_context_59"),
                                  ("fpn_r50_4xb2-80k_cityscapes-512x1024", "fpn_r50", "cityscapes")]:
        config = parse_config_name(name)
        assert (config.family, config.model, config.dataset) == ("resnet", resnet.RESNET_MODELS[prefix], dataset)


@pytest.mark.parametrize(("name", "why"), [
    ("swin-large-patch4-window7-in22k-pre_upernet_8xb2-160k_ade20k-512x512", "Swin-L and window-12"),
    ("swin-base-patch4-window12-in1k-384x384-pre_upernet_8xb2-160k_ade20k-512x512", "Swin-L and window-12"),
    ("bisenetv1_r50-d32_4xb4-160k_cityscapes-1024x1024", "ResNet-18 only"),
    ("pspnet_r50-d8_4xb2-40k_cityscapes-512x1024", "not a model seglab converts"),
    ("fcn_r50b-d8_4xb2-80k_cityscapes-512x1024", "not a model seglab converts"),
])
def test_models_seglab_does_not_build_are_refused_by_name(name, why):
    with pytest.raises(CheckpointError, match=why):
        parse_config_name(name)


# ---------------------------------------------------------------- key maps against mmseg's real key layout


@pytest.mark.parametrize("config", [SWIN_T, V1, V2])
def test_key_maps_land_every_tensor_of_mmseg_layout_on_its_seglab_key(config, tmp_path):
    num_classes = 150 if config == SWIN_T else 19
    model = _randomized(SEGLAB_MODEL[config], num_classes)
    state = _mmseg_layout(model, config)
    count, real = REAL_KEYS[config]
    assert len(state) == count and set(real) <= set(state)  # the inverse map gives exactly mmseg's names
    path = tmp_path / "ckpt.pth"
    torch.save(_checkpoint(state), path)
    dst = convert_mmseg(config, path, tmp_path / "out.safetensors")
    meta = read_metadata(dst)
    assert meta["model"] == SEGLAB_MODEL[config] and meta["num_classes"] == num_classes
    assert meta["label_set"] == ("ade20k" if config == SWIN_T else "cityscapes") and meta["mmseg_config"] == config
    converted = seglab.create_model(meta["model"], num_classes=num_classes, **meta["model_kwargs"]).eval()
    load_weights(converted, dst)
    original = model.state_dict()
    assert all(torch.equal(value, original[key]) for key, value in converted.state_dict().items())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(converted(x), model(x))


def test_patch_merging_converted_from_unfold_order_computes_mmsegs_merge():
    # mmseg's PatchMerging: nn.Unfold(2, stride 2) gathers 2x2 neighbourhoods channel-major (c * 4 + 2 * dy + dx),
    # then LayerNorm(4C) and Linear(4C -> 2C); torchvision's concatenates x0..x3 = offsets (0,0), (1,0), (0,1), (1,1).
    torch.manual_seed(0)
    c, x = 8, torch.randn(2, 6, 10, 8)
    norm_w, norm_b, reduction = torch.randn(4 * c), torch.randn(4 * c), torch.randn(2 * c, 4 * c)
    gathered = F.unfold(x.permute(0, 3, 1, 2), kernel_size=2, stride=2).transpose(1, 2)
    mmseg = F.linear(F.layer_norm(gathered, (4 * c,), norm_w, norm_b), reduction).reshape(2, 3, 5, 2 * c)
    merge = torchvision.models.swin_transformer.PatchMerging(c)
    with torch.no_grad():
        merge.norm.weight.copy_(norm_w)
        merge.norm.bias.copy_(norm_b)
        merge.reduction.weight.copy_(reduction)
        unconverted = merge(x)
        merge.norm.weight.copy_(unfold_to_swin_order(norm_w))
        merge.norm.bias.copy_(unfold_to_swin_order(norm_b))
        merge.reduction.weight.copy_(unfold_to_swin_order(reduction))
        converted = merge(x)
    torch.testing.assert_close(converted, mmseg, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(unconverted, mmseg, atol=1e-2)  # the reordering is needed
    assert torch.equal(swin_to_unfold_order(unfold_to_swin_order(reduction)), reduction)


def test_mmsegs_relative_position_index_is_torchvisions():
    # mmseg's WindowMSA builds it as double_step_seq(2 * Ww - 1, Wh, 1, Ww), plus its transpose, flipped.
    window = 7
    rows = torch.arange(0, (2 * window - 1) * window, 2 * window - 1)
    seq = (rows[:, None] + torch.arange(window)[None]).reshape(1, -1)
    mmseg = (seq + seq.T).flip(1)
    attention = torchvision.models.swin_transformer.ShiftedWindowAttention(96, [7, 7], [3, 3], 3)
    assert torch.equal(attention.relative_position_index.view(49, 49), mmseg)


# ---------------------------------------------------------------- reading files without running code


class _HistoryBuffer:
    """mmengine's HistoryBuffer as it pickles: numpy histories and bound statistics methods (getattr(self, 'min'))."""

    def __init__(self):
        self.max_length = 1000000
        self._log_history = np.array([1.0, 0.5], dtype=np.float64)
        self._count_history = np.array([1, 1])
        self._statistics_methods = {"min": self.min, "mean": self.mean}

    def min(self):
        return self._log_history.min()

    def mean(self):
        return self._log_history.mean()


@pytest.fixture
def mmengine_module(monkeypatch):
    """Import names for the stand-in HistoryBuffer, so it pickles as mmengine.logging.history_buffer.HistoryBuffer."""
    module = types.ModuleType("mmengine.logging.history_buffer")
    _HistoryBuffer.__module__, _HistoryBuffer.__qualname__ = module.__name__, "HistoryBuffer"
    module.HistoryBuffer = _HistoryBuffer
    for name in ("mmengine", "mmengine.logging"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


def _mmengine_checkpoint(state: dict, **meta_extra) -> dict:
    checkpoint = _checkpoint(state, ("road", "sidewalk"), **{
        "message_hub": {"log_scalars": {"train/loss": _HistoryBuffer()},
                        "runtime_info": {"best_score": np.float64(0.5), "iter": 3}},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0]}]},
    })
    checkpoint["meta"].update(meta_extra)
    return checkpoint


def test_mmengine_checkpoint_reads_with_its_objects_inert(tmp_path, mmengine_module):
    state = OrderedDict(w=torch.randn(3, 2), b=torch.arange(3))
    path = tmp_path / "ckpt.pth"
    torch.save(_mmengine_checkpoint(state), path)
    with pytest.raises(pickle.UnpicklingError):  # what plain weights_only makes of it
        torch.load(path, weights_only=True)
    read, classes, source = read_mmseg_checkpoint(path)
    assert set(read) == {"w", "b"} and all(torch.equal(read[k], state[k]) for k in state)
    assert classes == ["road", "sidewalk"] and source == str(path)
    from seglab.convert.mmseg.checkpoint import _load

    buffer = _load(path)["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(buffer, InertObject) and not isinstance(buffer, _HistoryBuffer)
    assert buffer.global_name == "mmengine.logging.history_buffer.HistoryBuffer"
    assert buffer.state["_statistics_methods"]["min"].global_name == "builtins.getattr"  # a bound method, not called


@pytest.mark.parametrize("payload", [RunsShell, RunsPython])
@pytest.mark.parametrize("where", ["file", "meta", "history_buffer"])
def test_code_in_a_checkpoint_is_refused_and_never_runs(tmp_path, mmengine_module, payload, where):
    marker = tmp_path / "pwned"
    state = OrderedDict(w=torch.randn(2))
    if where == "file":
        checkpoint = payload(marker)
    elif where == "meta":
        checkpoint = _mmengine_checkpoint(state, note=payload(marker))
    else:
        checkpoint = _mmengine_checkpoint(state)
        checkpoint["message_hub"]["log_scalars"]["train/loss"]._statistics_methods["max"] = payload(marker)
    path = tmp_path / "evil.pth"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="refused"):
        read_mmseg_checkpoint(path)
    with pytest.raises(CheckpointError, match="refused"):
        convert_mmseg(V2, path, tmp_path / "out.safetensors")
    assert main(["convert", "mmseg", V2, str(path), str(tmp_path / "cli.safetensors")]) == 2
    assert not marker.exists()


def test_a_code_running_function_of_an_allowed_package_is_neutralised(tmp_path):
    # numpy.testing's runstring exec()s its argument: named in a file, it becomes an inert record, never called.
    from numpy.testing._private.utils import runstring

    marker = tmp_path / "pwned"

    class Sneaky:
        def __reduce__(self):
            return runstring, (f"open({str(marker)!r}, 'w').write('pwned')", {})

    path = tmp_path / "sneaky.pth"
    torch.save({"meta": {"note": Sneaky()}, "state_dict": {"w": torch.ones(1)}}, path)
    state, _, _ = read_mmseg_checkpoint(path)
    assert torch.equal(state["w"], torch.ones(1)) and not marker.exists()


# ---------------------------------------------------------------- the converter's choices and its errors


def test_files_without_aux_heads_convert(tmp_path):
    swin = _mmseg_layout(_randomized("upernet_swin_t", 150), SWIN_T)
    for key in [k for k in swin if k.startswith("auxiliary_head.")]:
        del swin[key]
    dst = convert_mmseg(SWIN_T, _checkpoint(swin), tmp_path / "swin.safetensors")
    assert read_metadata(dst)["model_kwargs"] == {"aux_loss": False}
    v2 = _mmseg_layout(_randomized("bisenetv2_mmseg", 19), V2)
    for key in [k for k in v2 if k.startswith("auxiliary_head.")]:
        del v2[key]
    dst = convert_mmseg(V2, _checkpoint(v2), tmp_path / "v2.safetensors")
    assert read_metadata(dst)["aux_heads"] == "not in the checkpoint: initialised (seed 0)"


def test_label_set_from_the_dataset_the_option_or_the_recorded_classes(tmp_path):
    state = _mmseg_layout(_randomized("bisenetv2_mmseg", 19), V2)
    assert read_metadata(convert_mmseg(V2, _checkpoint(state), tmp_path / "a.safetensors"))["label_set"] == "cityscapes"
    with pytest.raises(CheckpointError, match="'voc' has 21 classes, the checkpoint 19"):
        convert_mmseg(V2, _checkpoint(state), tmp_path / "b.safetensors", label_set="voc")
    two = _mmseg_layout(_randomized("bisenetv2_mmseg", 2), V2)
    dst = convert_mmseg("bisenetv2_fcn_4xb4-20k_mydata-512x512", _checkpoint(two, ("road", "sky")),
                        tmp_path / "c.safetensors")
    meta = read_metadata(dst)
    assert meta["dataset"] is None and meta["label_set_classes"] == ["road", "sky"]


def test_mismatches_are_reported_in_mmsegs_names(tmp_path):
    swin = _mmseg_layout(_randomized("upernet_swin_t", 150), SWIN_T)
    with pytest.raises(CheckpointError, match=r"missing keys: backbone\.stages\.2\.blocks\.6\.norm1\.weight"):
        load_mmseg("swin-small-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512", _checkpoint(swin))
    with pytest.raises(CheckpointError, match="96 channels, not 128"):
        load_mmseg("swin-base-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512", _checkpoint(swin))
    with pytest.raises(CheckpointError, match="150 classes but the config name says cityscapes"):
        load_mmseg("upernet_swin-t_patch4_window7_in1K-224x224-pre-3rdparty_8x2_512x1024_80k_cityscapes", swin)
    v1 = _mmseg_layout(_randomized("bisenetv1_resnet18_mmseg", 19), V1)
    v1["backbone.ffm.conv2.conv.weight"] = v1.pop("backbone.ffm.conv_atten.0.conv.weight")
    with pytest.raises(CheckpointError, match=r"missing keys: backbone\.ffm\.conv_atten\.0\.conv\.weight.*"
                                              r"unexpected keys: backbone\.ffm\.conv2\.conv\.weight"):
        load_mmseg(V1, v1)
    with pytest.raises(CheckpointError, match="found"):
        load_mmseg(V1, tmp_path / "missing.pth")


def test_cli_writes_the_weights_and_says_what(tmp_path, capsys):
    state = _mmseg_layout(_randomized("bisenetv2_mmseg", 19), V2)
    src, dst = tmp_path / f"{V2}_20210902_015551-bcf10f09.pth", tmp_path / "v2.safetensors"
    torch.save(_checkpoint(state), src)
    assert main(["convert", "mmseg", V2, str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert f"mmseg {V2}: seglab bisenetv2_mmseg, 19 classes (dataset cityscapes), label set cityscapes" in out
    assert f"{src} -> {dst} (seglab bisenetv2_mmseg)" in out
    model = load_model(dst).eval()  # rebuilt from the metadata alone, loaded strictly
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 19, 64, 64)
    assert main(["convert", "mmseg", V2, str(src), str(tmp_path / "voc.safetensors"), "--label-set", "voc"]) == 2


# ---------------------------------------------------------------- the BiSeNet variants in mmseg's layout


@pytest.mark.parametrize(("name", "with_aux", "eval_only"), [
    ("bisenetv1_resnet18_mmseg", 13_425_721, 13_275_539),  # mmseg's bisenetv1_r18-d32 model: 13,425,721
    ("bisenetv2_mmseg", 14_804_255, 3_358_883),  # mmseg's bisenetv2_fcn model: 14,804,255
])
def test_mmseg_variants_have_mmsegs_parameter_counts(name, with_aux, eval_only):
    with torch.device("meta"):
        model = seglab.create_model(name, num_classes=19)
    assert count_parameters(model) == with_aux == model_info(name).paper_params
    assert count_parameters(model) - count_parameters(model.aux_heads) == eval_only


@pytest.mark.parametrize(("name", "num_aux"), [("bisenetv1_resnet18_mmseg", 2), ("bisenetv2_mmseg", 4)])
def test_mmseg_variants_follow_the_model_contract(name, num_aux):
    torch.manual_seed(0)
    model = seglab.create_model(name, num_classes=5)
    out = model.train()(torch.randn(2, 3, 64, 64))
    assert len(out["aux"]) == num_aux and all(a.shape == (2, 5, 64, 64) for a in out["aux"])
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 67, 93)).shape == (1, 5, 67, 93)


def test_v1_mmseg_fusion_attention_passes_a_relu_before_its_sigmoid():
    torch.manual_seed(0)
    coincheung, mmseg = FeatureFusionModule(8, 8).eval(), FeatureFusionModule(8, 8, atten_relu=True).eval()
    mmseg.load_state_dict(coincheung.state_dict())
    with torch.no_grad():
        for ffm in (coincheung, mmseg):
            ffm.bn_atten.bias.fill_(-20.0)  # attention logits far below 0
        spatial, context = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
        feat = coincheung.fuse(torch.cat([spatial, context], dim=1))
        torch.testing.assert_close(coincheung(spatial, context), feat, atol=1e-6, rtol=0)  # sigmoid(-20) ~ 0
        torch.testing.assert_close(mmseg(spatial, context), 1.5 * feat)  # sigmoid(relu(-20)) = 0.5


def test_v2_mmseg_aggregation_upsamples_bilinearly_with_pointwise_biases():
    # mmseg's BGALayer.forward: both stride-32 gates resized to the detail's size, bilinear, align_corners=False
    torch.manual_seed(0)
    bga = BilateralGuidedAggregation(16, upsample="bilinear", pointwise_bias=True).eval()
    assert bga.detail_keep[1].bias is not None and bga.semantic_keep[1].bias is not None
    detail, semantic = torch.randn(1, 16, 16, 16), torch.randn(1, 16, 4, 4)
    with torch.no_grad():
        up = F.interpolate(bga.semantic_up(semantic), size=(16, 16), mode="bilinear", align_corners=False)
        right = bga.detail_down(detail) * torch.sigmoid(bga.semantic_keep(semantic))
        right = F.interpolate(right, size=(16, 16), mode="bilinear", align_corners=False)
        expected = bga.conv(bga.detail_keep(detail) * torch.sigmoid(up) + right)
        torch.testing.assert_close(bga(detail, semantic), expected)


def test_resnet_family_checkpoints_convert_through_the_resnet_map(tmp_path):
    resnet = pytest.importorskip("seglab.convert.mmseg.resnet")
    model = _randomized("semantic_fpn_resnet50_v1c", 19)
    state = OrderedDict((resnet.seglab_to_mmseg_key(k, "semantic_fpn_resnet50_v1c"), v)
                        for k, v in model.state_dict().items())
    dst = convert_mmseg("fpn_r50_4xb2-80k_cityscapes-512x1024", _checkpoint(state), tmp_path / "fpn.safetensors")
    meta = read_metadata(dst)
    assert (meta["model"], meta["num_classes"], meta["label_set"]) == ("semantic_fpn_resnet50_v1c", 19, "cityscapes")
    converted = seglab.create_model(meta["model"], num_classes=19, **meta["model_kwargs"])
    load_weights(converted, dst)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in converted.state_dict().items())
