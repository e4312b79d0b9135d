"""Convert Hugging Face UperNet and SegFormer checkpoints (transformers' ``UperNetForSemanticSegmentation`` and
``SegformerForSemanticSegmentation``) to seglab weights.

Input: a model folder in the Hub layout, ``config.json`` with ``model.safetensors`` or ``pytorch_model.bin`` (the
latter read only through :func:`seglab.checkpoint.read_state_dict`, i.e. ``torch.load(weights_only=True)``: a
pickle that would run code is refused, never executed). Supported: UperNet on Swin-T / S / B and on ConvNeXt-T /
S / B (openmmlab/upernet-swin-{tiny,small,base}, openmmlab/upernet-convnext-{tiny,small,base}). The seglab model
is chosen from ``backbone_config`` (``model_type``; ``embed_dim``, ``depths``, ``num_heads`` for Swin,
``hidden_sizes``, ``depths`` for ConvNeXt), the class count and names from ``id2label``; the head's settings
(``hidden_size`` 512, ``pool_scales`` 1-2-3-6, the aux FCN head's 256 channels and one conv) and the backbone's
(patch 4, window 7, GELU, no absolute position embedding, layer scale) are checked. A field missing from
config.json takes transformers' default, as ``from_pretrained`` would. The converted model computes
transformers' logits at every input size (tests/test_convert_hf.py).

Key map (the names transformers saves; those of a current in-memory state dict, ``backbone.swin.*``,
``q_proj``/``k_proj``/``v_proj``/``o_proj``, ``mlp.fc1``/``fc2``, ``relative_position_bias.*``, are read too):

- Swin: ``backbone.embeddings.patch_embeddings.projection`` / ``.norm`` -> ``backbone.features.0.0`` / ``.0.2``;
  ``backbone.encoder.layers.{i}.blocks.{j}`` -> ``backbone.features.{2i+1}.{j}`` (``layernorm_before|after`` ->
  ``norm1|2``; ``attention.self.query|key|value`` concatenated -> ``attn.qkv``; ``attention.output.dense`` ->
  ``attn.proj``; ``attention.self.relative_position_bias_table`` -> ``attn.relative_position_bias_table``;
  ``intermediate.dense|output.dense`` -> ``mlp.0|3``); ``.layers.{i}.downsample`` -> ``backbone.features.{2i+2}``.
  A saved ``relative_position_index`` must equal seglab's (a fixed function of the window; not a weight).
  ``backbone.layernorm`` / ``backbone.swin.layernorm`` (the final norm of transformers' ``SwinModel``, which
  ``SwinBackbone`` never applies) is dropped, and the metadata says so.
- ConvNeXt: ``backbone.embeddings.patch_embeddings|layernorm`` -> ``backbone.features.0.0|1``;
  ``backbone.encoder.stages.{i}.downsampling_layer.{k}`` -> ``backbone.features.{2i}.{k}``;
  ``.stages.{i}.layers.{j}.dwconv|layernorm|pwconv1|pwconv2`` -> ``backbone.features.{2i+1}.{j}.block.0|2|3|5``,
  ``layer_scale_parameter`` ``[C]`` -> ``layer_scale`` ``[C, 1, 1]``.
- Both: ``backbone.hidden_states_norms.stage{k}`` -> ``backbone.out_norms.{k-1}``;
  ``decode_head.psp_modules.{i}.1`` -> ``decode_head.ppm.{i}.1``, ``decode_head.bottleneck`` ->
  ``decode_head.ppm_bottleneck``, ``lateral_convs|fpn_convs|fpn_bottleneck`` keep their names, ``classifier`` too;
  ``auxiliary_head.convs.0`` -> ``aux_head.0``, ``auxiliary_head.classifier`` -> ``aux_head.2``; transformers'
  ``conv``/``batch_norm`` are seglab ``ConvBNAct``'s ``0``/``1``.

SegFormer (``model_type`` ``segformer``; B0-B5 from ``hidden_sizes``, ``depths``, ``decoder_hidden_size``; the
fields seglab's network fixes are checked): ``segformer.encoder.patch_embeddings.{i}.proj|layer_norm`` ->
``backbone.patch_embeds.{i}.proj|norm``; ``segformer.encoder.block.{i}.{j}`` -> ``backbone.blocks.{i}.{j}``
(``layer_norm_1|2`` -> ``norm1|2``; ``attention.self.query|key|value|sr|layer_norm`` -> ``attn.q|k|v|sr|sr_norm``;
``attention.output.dense`` -> ``attn.proj``; ``mlp.dense1|dwconv.dwconv|dense2`` -> ``ffn.fc1|dwconv|fc2``);
``segformer.encoder.layer_norm.{i}`` -> ``backbone.norms.{i}``; ``decode_head.linear_c.{i}.proj`` ->
``decode_head.linear_c.{i}``, ``decode_head.linear_fuse|batch_norm`` -> ``decode_head.fuse.0|1``. transformers'
current in-memory names (``segformer.stages.{i}.*``, ``q_proj`` ..., ``sequence_reduction.*``, ``fc1|fc2``,
``layernorm_before|after``, ``linear_projections``) are read too.

Strict: every tensor of the file is used (or is one of the two documented above) and every seglab tensor is
filled; otherwise one :class:`~seglab.errors.CheckpointError` names the weights file and lists the keys.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seglab.checkpoint import read_json_object, read_state_dict, save_weights, state_dict_problems
from seglab.errors import CheckpointError
from seglab.models import create_model
from seglab.models.semantic.segformer import VARIANTS as SEGFORMER_VARIANTS

__all__ = ["HF_MODELS", "HF_SEGFORMERS", "convert_hf", "load_hf", "read_hf_config"]

_StateDict = dict[str, torch.Tensor]

# (backbone model_type, widths, depths) -> seglab model; Swin widths are (embed_dim, num_heads)
HF_MODELS: dict[tuple[str, tuple[int, ...], tuple[int, ...]], str] = {
    ("swin", (96, 3, 6, 12, 24), (2, 2, 6, 2)): "upernet_swin_t",
    ("swin", (96, 3, 6, 12, 24), (2, 2, 18, 2)): "upernet_swin_s",
    ("swin", (128, 4, 8, 16, 32), (2, 2, 18, 2)): "upernet_swin_b",
    ("convnext", (96, 192, 384, 768), (3, 3, 9, 3)): "upernet_convnext_t",
    ("convnext", (96, 192, 384, 768), (3, 3, 27, 3)): "upernet_convnext_s",
    ("convnext", (128, 256, 512, 1024), (3, 3, 27, 3)): "upernet_convnext_b",
}
# (hidden_sizes, depths, decoder_hidden_size) -> seglab SegFormer
HF_SEGFORMERS: dict[tuple[tuple[int, ...], tuple[int, ...], int], str] = {
    (widths, depths, decoder): f"segformer_{variant}"
    for variant, (widths, depths, decoder) in SEGFORMER_VARIANTS.items()
}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_STAGES = ["stage1", "stage2", "stage3", "stage4"]
# transformers' defaults (UperNetConfig, SwinConfig, ConvNextConfig) for fields a config.json may leave out
_UPERNET_DEFAULTS = {"hidden_size": 512, "pool_scales": [1, 2, 3, 6], "use_auxiliary_head": True,
                     "auxiliary_channels": 256, "auxiliary_num_convs": 1, "auxiliary_concat_input": False}
_BACKBONE_DEFAULTS: dict[str, dict[str, Any]] = {
    "swin": {"embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24], "patch_size": 4,
             "window_size": 7, "mlp_ratio": 4.0, "hidden_act": "gelu", "qkv_bias": True,
             "use_absolute_embeddings": False, "num_channels": 3},
    "convnext": {"hidden_sizes": [96, 192, 384, 768], "depths": [3, 3, 9, 3], "patch_size": 4, "hidden_act": "gelu",
                 "layer_scale_init_value": 1e-6, "num_channels": 3},
}
# fields whose value seglab's networks fix
_FIXED: dict[str, dict[str, Any]] = {
    "upernet": {k: v for k, v in _UPERNET_DEFAULTS.items() if k != "use_auxiliary_head"},
    "swin": {k: v for k, v in _BACKBONE_DEFAULTS["swin"].items() if k not in ("embed_dim", "depths", "num_heads")},
    "convnext": {"patch_size": 4, "hidden_act": "gelu", "num_channels": 3},
}

# transformers' current in-memory names -> the names it saves (the Hub files' layout)
_SAVED_NAMES = [
    (r"^backbone\.swin\.", "backbone."),
    (r"\.attention\.relative_position_bias\.relative_position_bias_table$",
     ".attention.self.relative_position_bias_table"),
    (r"\.attention\.q_proj\.", ".attention.self.query."),
    (r"\.attention\.k_proj\.", ".attention.self.key."),
    (r"\.attention\.v_proj\.", ".attention.self.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
]
_HEAD_RULES = [
    (r"^decode_head\.psp_modules\.(\d+)\.1\.", r"decode_head.ppm.\1.1."),
    (r"^decode_head\.bottleneck\.", "decode_head.ppm_bottleneck."),
    (r"^auxiliary_head\.convs\.0\.", "aux_head.0."),
    (r"^auxiliary_head\.classifier\.", "aux_head.2."),
    (r"^backbone\.hidden_states_norms\.stage(\d)\.", lambda m: f"backbone.out_norms.{int(m[1]) - 1}."),
    (r"^(decode_head\.[\w.]+|aux_head\.0)\.conv\.", r"\1.0."),
    (r"^(decode_head\.[\w.]+|aux_head\.0)\.batch_norm\.", r"\1.1."),
]
_SWIN_RULES = [
    (r"^backbone\.embeddings\.patch_embeddings\.projection\.", "backbone.features.0.0."),
    (r"^backbone\.embeddings\.norm\.", "backbone.features.0.2."),
    (r"^backbone\.encoder\.layers\.(\d+)\.downsample\.",
     lambda m: f"backbone.features.{2 * int(m[1]) + 2}."),
    (r"^backbone\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.",
     lambda m: f"backbone.features.{2 * int(m[1]) + 1}.{m[2]}."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.self\.relative_position_(bias_table|index)$", r".attn.relative_position_\1"),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.intermediate\.dense\.", ".mlp.0."),
    (r"\.output\.dense\.", ".mlp.3."),
]
_CONVNEXT_RULES = [
    (r"^backbone\.embeddings\.patch_embeddings\.", "backbone.features.0.0."),
    (r"^backbone\.embeddings\.layernorm\.", "backbone.features.0.1."),
    (r"^backbone\.encoder\.stages\.(\d+)\.downsampling_layer\.", lambda m: f"backbone.features.{2 * int(m[1])}."),
    (r"^backbone\.encoder\.stages\.(\d+)\.layers\.(\d+)\.",
     lambda m: f"backbone.features.{2 * int(m[1]) + 1}.{m[2]}."),
    (r"\.dwconv\.", ".block.0."),
    (r"\.layernorm\.", ".block.2."),
    (r"\.pwconv1\.", ".block.3."),
    (r"\.pwconv2\.", ".block.5."),
    (r"\.layer_scale_parameter$", ".layer_scale"),
]
# SegformerConfig's defaults for the fields seglab's SegFormer fixes (SegformerConfig: every published checkpoint)
_SEGFORMER_FIXED: dict[str, Any] = {
    "num_channels": 3, "num_encoder_blocks": 4, "sr_ratios": [8, 4, 2, 1], "patch_sizes": [7, 3, 3, 3],
    "strides": [4, 2, 2, 2], "num_attention_heads": [1, 2, 5, 8], "mlp_ratios": [4, 4, 4, 4], "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "reshape_last_stage": True,
}
_SEGFORMER_DEFAULTS: dict[str, Any] = {
    **_SEGFORMER_FIXED, "hidden_sizes": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256,
    "drop_path_rate": 0.1,
}
# transformers' current in-memory SegFormer names -> the names it saves
_SEGFORMER_SAVED_NAMES = [
    (r"^segformer\.stages\.(\d+)\.patch_embeddings\.", r"segformer.encoder.patch_embeddings.\1."),
    (r"^segformer\.stages\.(\d+)\.blocks\.", r"segformer.encoder.block.\1."),
    (r"^segformer\.stages\.(\d+)\.layer_norm\.", r"segformer.encoder.layer_norm.\1."),
    (r"\.attention\.(q|k|v)_proj\.", lambda m: f".attention.self.{dict(q='query', k='key', v='value')[m[1]]}."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attention.self.sr."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attention.self.layer_norm."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc(1|2)\.", r".mlp.dense\1."),
    (r"\.layernorm_before\.", ".layer_norm_1."),
    (r"\.layernorm_after\.", ".layer_norm_2."),
    (r"^decode_head\.linear_projections\.", "decode_head.linear_c."),
]
_SEGFORMER_RULES = [
    (r"^segformer\.encoder\.patch_embeddings\.(\d+)\.proj\.", r"backbone.patch_embeds.\1.proj."),
    (r"^segformer\.encoder\.patch_embeddings\.(\d+)\.layer_norm\.", r"backbone.patch_embeds.\1.norm."),
    (r"^segformer\.encoder\.block\.(\d+)\.(\d+)\.", r"backbone.blocks.\1.\2."),
    (r"^segformer\.encoder\.layer_norm\.(\d+)\.", r"backbone.norms.\1."),
    (r"\.layer_norm_(1|2)\.", r".norm\1."),
    (r"\.attention\.self\.(query|key|value)\.", lambda m: f".attn.{m[1][0]}."),
    (r"\.attention\.self\.sr\.", ".attn.sr."),
    (r"\.attention\.self\.layer_norm\.", ".attn.sr_norm."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.mlp\.dense1\.", ".ffn.fc1."),
    (r"\.mlp\.dwconv\.dwconv\.", ".ffn.dwconv."),
    (r"\.mlp\.dense2\.", ".ffn.fc2."),
    (r"^decode_head\.linear_c\.(\d+)\.proj\.", r"decode_head.linear_c.\1."),
    (r"^decode_head\.linear_fuse\.", "decode_head.fuse.0."),
    (r"^decode_head\.batch_norm\.", "decode_head.fuse.1."),
]
_SWIN_FINAL_NORM = re.compile(r"^backbone\.layernorm\.(weight|bias)$")
_QKV = re.compile(r"^(.*)\.attention\.self\.(query|key|value)\.(weight|bias)$")


_ARCHITECTURES = {"swin": "UperNetForSemanticSegmentation", "convnext": "UperNetForSemanticSegmentation",
                  "segformer": "SegformerForSemanticSegmentation"}


def _config_error(path: Path, field: str, message: str) -> CheckpointError:
    return CheckpointError(f"{path}: field {field!r}: {message}")


def read_hf_config(src: str | Path) -> dict[str, Any]:
    """What seglab builds for the Hugging Face model folder ``src``: ``{"model", "num_classes", "classes",
    "aux_loss", "drop_path_rate", "config"}``, from its config.json. A config that is not one of the supported
    UperNets raises :class:`~seglab.errors.CheckpointError` naming the file and the field."""
    path = Path(src) / "config.json"
    if not Path(src).is_dir():
        raise CheckpointError(f"{src}: not a folder; expected a Hugging Face model folder (config.json + "
                              f"{' or '.join(WEIGHT_FILES)})")
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; a Hugging Face model folder has a config.json beside its weights")
    config = read_json_object(path)
    if config.get("model_type") == "segformer":
        return _read_segformer_config(path, config)
    if config.get("model_type") != "upernet":
        raise _config_error(path, "model_type", f"{config.get('model_type')!r}: seglab converts UperNet "
                            f"(UperNetForSemanticSegmentation, model_type 'upernet') and SegFormer "
                            f"(SegformerForSemanticSegmentation, 'segformer')")
    backbone = config.get("backbone_config")
    if not isinstance(backbone, dict):
        raise _config_error(path, "backbone_config", "missing; expected the Swin or ConvNeXt backbone's config")
    kind = backbone.get("model_type")
    if kind not in _BACKBONE_DEFAULTS:
        raise _config_error(path, "backbone_config.model_type",
                            f"{kind!r}: seglab's UperNet takes 'swin' or 'convnext' backbones")
    settings = {**_BACKBONE_DEFAULTS[kind], **backbone}
    head = {**_UPERNET_DEFAULTS, **config}
    for section, values, prefix in (("upernet", head, ""), (kind, settings, "backbone_config.")):
        for field, expected in _FIXED[section].items():
            if values[field] != expected:
                raise _config_error(path, prefix + field, f"{values[field]!r}, but seglab's network has {expected!r}")
    if kind == "convnext" and not settings["layer_scale_init_value"] > 0:
        raise _config_error(path, "backbone_config.layer_scale_init_value",
                            f"{settings['layer_scale_init_value']!r}: seglab's ConvNeXt blocks have a layer scale")
    out_features = backbone.get("out_features", _STAGES)
    if list(out_features) != _STAGES:
        raise _config_error(path, "backbone_config.out_features", f"{out_features!r}: UperNet takes {_STAGES}")
    widths = (
        (settings["embed_dim"], *settings["num_heads"]) if kind == "swin" else tuple(settings["hidden_sizes"])
    )
    key = (kind, tuple(int(w) for w in widths), tuple(int(d) for d in settings["depths"]))
    model = HF_MODELS.get(key)
    if model is None:
        fields = "embed_dim, num_heads, depths" if kind == "swin" else "hidden_sizes, depths"
        known = "; ".join(f"{name}: {k[1]} {k[2]}" for k, name in HF_MODELS.items() if k[0] == kind)
        raise _config_error(path, f"backbone_config ({fields})", f"{key[1]} {key[2]} is none of seglab's ({known})")
    classes = _classes(path, config)
    record = {
        "model": model,
        "num_classes": len(classes),
        "classes": classes,
        "aux_loss": bool(head["use_auxiliary_head"]),
        "config": config,
        "kind": kind,
    }
    if "drop_path_rate" in backbone:
        record["drop_path_rate"] = float(backbone["drop_path_rate"])
    return record


def _classes(path: Path, config: dict[str, Any]) -> list[str]:
    """The class names of config.json's ``id2label``, by index (keys 0..K-1 without gaps)."""
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        raise _config_error(path, "id2label", "missing or empty; expected the class names by index")
    try:
        order = sorted(id2label, key=int)
    except ValueError:
        raise _config_error(path, "id2label", "keys must be class indices 0..K-1") from None
    if [int(k) for k in order] != list(range(len(order))):
        raise _config_error(path, "id2label", f"keys must be 0..{len(order) - 1} without gaps")
    return [str(id2label[k]) for k in order]


def _read_segformer_config(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """read_hf_config's record for a SegformerForSemanticSegmentation config.json."""
    settings = {**_SEGFORMER_DEFAULTS, **config}
    for field, expected in _SEGFORMER_FIXED.items():
        if settings[field] != expected:
            raise _config_error(path, field, f"{settings[field]!r}, but seglab's SegFormer has {expected!r}")
    key = (tuple(int(w) for w in settings["hidden_sizes"]), tuple(int(d) for d in settings["depths"]),
           int(settings["decoder_hidden_size"]))
    model = HF_SEGFORMERS.get(key)
    if model is None:
        known = "; ".join(f"{name}: {k[0]} {k[1]} {k[2]}" for k, name in HF_SEGFORMERS.items())
        raise _config_error(path, "hidden_sizes, depths, decoder_hidden_size",
                            f"{key[0]} {key[1]} {key[2]} is none of seglab's ({known})")
    classes = _classes(path, config)
    return {"model": model, "num_classes": len(classes), "classes": classes, "aux_loss": None, "config": config,
            "kind": "segformer", "drop_path_rate": float(settings["drop_path_rate"])}


def _weights_file(src: Path) -> Path:
    for name in WEIGHT_FILES:
        if (src / name).is_file():
            return src / name
    sharded = [p.name for p in src.glob("*.index.json")]
    more = f" (sharded checkpoints, {', '.join(sharded)}, are not supported)" if sharded else ""
    raise CheckpointError(f"{src}: no {' or '.join(WEIGHT_FILES)} in this Hugging Face model folder{more}")


def _apply(key: str, rules: list) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def _to_seglab(state: _StateDict, kind: str, net: nn.Module, source: str) -> tuple[_StateDict, list[str]]:
    """seglab's state dict from transformers' ``state`` (strictly: one CheckpointError listing unused, missing
    and mis-shaped keys), and the source keys dropped on purpose."""
    own = net.state_dict()
    if kind == "segformer":
        saved_names, rules = _SEGFORMER_SAVED_NAMES, _SEGFORMER_RULES
    else:
        saved_names, rules = _SAVED_NAMES, (_SWIN_RULES if kind == "swin" else _CONVNEXT_RULES) + _HEAD_RULES
    converted: _StateDict = {}
    dropped: list[str] = []
    unused: list[str] = []
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for original, tensor in state.items():
        key = _apply(original, saved_names)
        if kind == "swin" and _SWIN_FINAL_NORM.match(key):
            dropped.append(original)
            continue
        match = _QKV.match(key) if kind == "swin" else None
        if match:
            target = _apply(f"{match[1]}.attn.qkv.{match[3]}", rules)
            qkv.setdefault(target, {})[match[2]] = tensor
            continue
        target = _apply(key, rules)
        if target.endswith(".layer_scale") and target in own:
            tensor = tensor.reshape(own[target].shape) if tensor.numel() == own[target].numel() else tensor
        if target.endswith(".relative_position_index") and target in own:
            if tensor.numel() != own[target].numel() or not torch.equal(tensor.reshape(-1), own[target].reshape(-1)):
                raise CheckpointError(f"{source}: {original} differs from the window's relative position index")
            dropped.append(original)
            continue
        if target not in own:
            unused.append(original)
            continue
        converted[target] = tensor
    for target, parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            unused.extend(f"{target} ({name})" for name in parts)
            continue
        converted[target] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    for name, value in own.items():  # derived buffers: BN counters (older files lack them), position indices
        if name.endswith((".num_batches_tracked", ".relative_position_index")):
            converted.setdefault(name, value.clone())
    problems = state_dict_problems(own, converted, strict=True)
    if unused:
        more = f" ... ({len(unused)} in all)" if len(unused) > 20 else ""
        problems.insert(0, "tensors of the file seglab has no place for: " + ", ".join(unused[:20]) + more)
    if problems:
        raise CheckpointError(
            f"{source}: not a transformers {_ARCHITECTURES[kind]} checkpoint for seglab {type(net).__name__} "
            f"(keys: seglab names for missing and mis-shaped ones; {' | '.join(problems)})"
        )
    return converted, dropped


def _load(src: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    src = Path(src)
    record = read_hf_config(src)
    weights = _weights_file(src)
    state, source = read_state_dict(weights, "Hugging Face")
    kwargs: dict[str, Any] = {"aux_loss": False} if record["aux_loss"] is False else {}
    if "drop_path_rate" in record:
        kwargs["drop_path_rate"] = record["drop_path_rate"]
    net = create_model(record["model"], num_classes=record["num_classes"], **kwargs)
    converted, dropped = _to_seglab(state, record["kind"], net, source)
    net.load_state_dict(converted, strict=True)
    record.update(model_kwargs=kwargs, weights=weights.name, dropped=dropped)
    return net.eval(), record


def load_hf(src: str | Path) -> nn.Module:
    """seglab's UperNet with the Hugging Face model folder ``src`` loaded (eval mode); see the module docstring
    for what is supported. Raises :class:`~seglab.errors.CheckpointError` naming the file at fault."""
    return _load(src)[0]


def _label_metadata(classes: list[str], label_set: str | None) -> dict[str, Any]:
    from seglab.data.palettes import (
        ADE20K_CLASSES,
        custom_label_set,
        get_label_set,
        label_set_metadata,
    )

    if label_set is not None:
        return label_set_metadata(get_label_set(label_set))
    if [c.strip() for c in classes] == list(ADE20K_CLASSES):
        return {"label_set": "ade20k"}
    try:
        return label_set_metadata(custom_label_set(classes, name="custom", where="config.json id2label"))
    except ValueError:  # repeated or empty names: the names travel in "classes" only
        return {}


def convert_hf(src: str | Path, dst: str | Path, *, label_set: str | None = None) -> Path:
    """Convert the Hugging Face UperNet model folder ``src`` to the seglab weights file ``dst`` (``*.safetensors``).

    The metadata records the model, ``num_classes``, ``model_kwargs``, the class names (``classes``, from
    config.json's ``id2label``), the label set (``label_set``; default ``ade20k`` when the names are ADE20K's
    150, else the names as a custom label set), the source and the tensors dropped on purpose. Returns ``dst``.
    """
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"{dst}: the converted weights are written as safetensors; name it *.safetensors")
    net, record = _load(src)
    metadata = {
        "model": record["model"],
        "num_classes": record["num_classes"],
        "model_kwargs": record["model_kwargs"],
        "classes": record["classes"],
        "source": f"Hugging Face model folder {Path(src).name} ({record['weights']}, transformers "
                  f"{_ARCHITECTURES[record['kind']]})",
        **_label_metadata(record["classes"], label_set),
    }
    if record["dropped"]:
        metadata["dropped"] = (
            "unused by the network: the Swin final LayerNorm of transformers' SwinModel and the saved "
            "relative position indices (equal to seglab's)"
            if record["kind"] == "swin" else ", ".join(record["dropped"])
        )
    return save_weights(dst, net.state_dict(), metadata)
