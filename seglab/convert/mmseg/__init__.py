"""Convert mmsegmentation (1.x, and the 0.x checkpoints it still links) checkpoints to seglab weights.

``convert_mmseg(config_name, src, dst)`` reads the mmseg config name (the name of the config file, as mmseg's
model zoo lists it, or the older name its checkpoint files carry) for the model family, its variant and the
training set, reads the checkpoint without running code from it (:mod:`.checkpoint`), renames its tensors into the
seglab model's (one key map per family) and writes a seglab weights file that records the model, the classes and
the label set. The families:

- UperNet on Swin-T/S/B, window 7 (``swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512``,
  ``upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K``, ``upernet_swin-t_...``) ->
  ``upernet_swin_t`` / ``_s`` / ``_b`` (:mod:`.swin`);
- BiSeNet v1 on ResNet-18 (``bisenetv1_r18-d32[-in1k-pre]_4xb4-160k_cityscapes-1024x1024``) and v2
  (``bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024``) -> ``bisenetv1_resnet18_mmseg`` / ``bisenetv2_mmseg``
  (:mod:`.bisenet`);
- FCN, DeepLabv3 and Semantic FPN on ResNetV1c-50/101 (``fcn_r50-d8_...``, ``deeplabv3_r101-d8_...``,
  ``fpn_r50_...``) -> the ``*_v1c`` models (:mod:`.resnet`, :data:`~.resnet.RESNET_MODELS`).

Others (Swin-L or window 12, BiSeNet v1 on ResNet-50/101, other backbones or heads) are refused by name. The
dataset in the name gives the expected class count and the default label set: Cityscapes 19 (``cityscapes``),
ADE20K 150 (``ade20k``), Pascal VOC 2012 (aug) 21 (``voc``), COCO-Stuff 164k / 10k 171 (``coco_stuff``), all in
mmseg's class order; Pascal Context (60, 59) has no seglab label set. mmseg feeds its models RGB images normalised
with ImageNet's mean and std, as seglab does, so no tensor changes for the input.

Parity with mmsegmentation 1.2.2 itself (``scripts/mmseg_parity.py``: mmseg's models built from its configs with
random weights and random norm statistics, saved as mmengine runs save them, converted here; CPU, float32):
UperNet-Swin-T logits within 4.3e-6 (3.6e-6 of their spread) at 512x512, 480x640 and 375x500, aux head likewise;
BiSeNet v1 and v2 logits and aux outputs bit-identical at 512x1024 and 384x768; FCN and Semantic FPN (ResNetV1c-50)
logits bit-identical, DeepLabv3 within 3.1e-5 (6.9e-7 of their spread), at 256x512. At sizes that are not multiples of
32 the BiSeNets differ near the borders (375x500: argmax equal on 99.1% / 97.5% of pixels): seglab pads the input
to a multiple of 32 and crops the logits, mmseg runs the odd size through and rounds each stride's map (its
Cityscapes inputs, 1024x2048 and crops of 1024 or 512, are multiples of 32).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from seglab.checkpoint import load_into, save_weights
from seglab.convert.mmseg.bisenet import AUX_SEED, BISENET_MODELS, map_bisenet
from seglab.convert.mmseg.checkpoint import read_mmseg_checkpoint
from seglab.convert.mmseg.swin import SWIN_MODELS, map_upernet_swin
from seglab.errors import CheckpointError
from seglab.models import create_model

__all__ = ["MMSEG_DATASETS", "MmsegConfig", "convert_mmseg", "load_mmseg", "parse_config_name", "read_mmseg_checkpoint"]

# dataset -> (classes, seglab label set or None); the patterns that find it in a config name, most specific first
MMSEG_DATASETS: dict[str, tuple[int, str | None]] = {
    "cityscapes": (19, "cityscapes"),
    "ade20k": (150, "ade20k"),
    "voc": (21, "voc"),
    "coco_stuff": (171, "coco_stuff"),
    "pascal_context_59": (59, None),
    "pascal_context": (60, None),
}
_DATASET_PATTERNS = (
    ("cityscapes", r"cityscapes"),
    ("ade20k", r"ade20k"),
    ("coco_stuff", r"coco[-_]?stuff(?:164k|10k)?"),
    ("pascal_context_59", r"pascal[-_]context[-_]59"),
    ("pascal_context", r"pascal[-_]context"),
    ("voc", r"(?:pascal[-_])?voc(?:12)?(?:aug)?"),
)
_CLASSIFIER_KEY = "decode_head.conv_seg.weight"
_StateDict = dict[str, Tensor]


@dataclass(frozen=True)
class MmsegConfig:
    """What an mmseg config name says: the seglab ``model`` that converts it (of ``family``: ``upernet_swin``,
    ``bisenet`` or ``resnet``) and the training ``dataset`` (a key of :data:`MMSEG_DATASETS`, or None)."""

    name: str
    family: str
    model: str
    dataset: str | None


def _resnet_models() -> dict[str, str]:
    """:data:`seglab.convert.mmseg.resnet.RESNET_MODELS` (empty while that module is absent)."""
    if importlib.util.find_spec("seglab.convert.mmseg.resnet") is None:
        return {}
    return importlib.import_module("seglab.convert.mmseg.resnet").RESNET_MODELS


def _dataset(name: str) -> str | None:
    for dataset, pattern in _DATASET_PATTERNS:
        if re.search(rf"(?:^|[-_]){pattern}(?=[-_.]|$)", name):
            return dataset
    return None


def _swin_model(name: str) -> str:
    variant = re.search(r"swin[-_](tiny|small|base|large|t|s|b|l)(?=[-_]|$)", name)
    if variant is None:
        raise CheckpointError(f"mmseg config {name!r}: UperNet on Swin, but no variant (swin-tiny|small|base or "
                              f"swin-t|s|b) in the name")
    window = re.search(r"window(\d+)", name)
    if variant.group(1) in ("large", "l") or (window and window.group(1) != "7"):
        raise CheckpointError(
            f"mmseg config {name!r}: seglab's UperNet-Swin models are Swin-T/S/B with 7x7 windows (torchvision's "
            f"swin_t/s/b); Swin-L and window-12 models have no seglab counterpart"
        )
    return SWIN_MODELS[variant.group(1)]


def parse_config_name(config_name: str) -> MmsegConfig:
    """The family, seglab model and dataset of the mmseg config ``config_name`` (a config file name with or
    without ``.py``, or a checkpoint file name: the dates and hash after it are ignored). Raises
    :class:`~seglab.errors.CheckpointError` for a model seglab does not build."""
    name = Path(config_name).name.lower()
    name = re.sub(r"\.(py|pth|pt|safetensors)$", "", name)
    dataset = _dataset(name)
    if "swin" in name and "upernet" in name:
        return MmsegConfig(config_name, "upernet_swin", _swin_model(name), dataset)
    if name.startswith("bisenetv1"):
        depth = re.match(r"bisenetv1_r(\d+)", name)
        if depth is None or depth.group(1) != "18":
            raise CheckpointError(f"mmseg config {config_name!r}: seglab builds BiSeNet v1 on ResNet-18 only "
                                  f"(bisenetv1_r18-d32...)")
        return MmsegConfig(config_name, "bisenet", BISENET_MODELS["bisenetv1"], dataset)
    if name.startswith("bisenetv2"):
        return MmsegConfig(config_name, "bisenet", BISENET_MODELS["bisenetv2"], dataset)
    resnet = _resnet_models()
    prefixes = sorted((p for p in resnet if name == p or name.startswith((f"{p}_", f"{p}-"))), key=len)
    if prefixes:
        return MmsegConfig(config_name, "resnet", resnet[prefixes[-1]], dataset)
    known = ["upernet on swin-tiny|small|base (window 7)", "bisenetv1_r18-d32", "bisenetv2_fcn", *sorted(resnet)]
    raise CheckpointError(f"mmseg config {config_name!r}: not a model seglab converts; the families it converts: "
                          f"{', '.join(known)}")


def _swin_kwargs(state: _StateDict, model: str, source: str) -> dict[str, Any]:
    return {"num_classes": int(state[_CLASSIFIER_KEY].shape[0]),
            "aux_loss": any(k.startswith("auxiliary_head.") for k in state)}


def _bisenet_kwargs(state: _StateDict, model: str, source: str) -> dict[str, Any]:
    return {"num_classes": int(state[_CLASSIFIER_KEY].shape[0])}


_Map = Callable[[_StateDict, str, str], _StateDict]


def _family(family: str) -> tuple[_Map, Callable[[_StateDict, str, str], dict[str, Any]]]:
    """The key map of ``family`` and the function giving its factory's arguments from the state dict."""
    if family == "upernet_swin":
        return map_upernet_swin, _swin_kwargs
    if family == "bisenet":
        return map_bisenet, _bisenet_kwargs
    resnet = importlib.import_module("seglab.convert.mmseg.resnet")
    return resnet.map_resnet_family, resnet.resnet_model_kwargs


def _check_classes(config: MmsegConfig, state: _StateDict, source: str) -> int:
    if _CLASSIFIER_KEY not in state:
        raise CheckpointError(f"{source}: no {_CLASSIFIER_KEY!r}, so not an mmsegmentation segmentor's state dict "
                              f"(keys start {', '.join(list(state)[:5])} ...)")
    num_classes = int(state[_CLASSIFIER_KEY].shape[0])
    expected = MMSEG_DATASETS[config.dataset][0] if config.dataset else None
    if expected is not None and expected != num_classes:
        raise CheckpointError(f"{source}: {_CLASSIFIER_KEY} has {num_classes} classes but the config name says "
                              f"{config.dataset} ({expected}): check the config name")
    return num_classes


def _load(config_name: str, src: _StateDict | str | Path) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """The converted model, its factory arguments, and what the file says beyond its tensors (the class names its
    metadata records, whether it has the auxiliary heads)."""
    config = parse_config_name(config_name)
    state, classes, source = read_mmseg_checkpoint(src)
    _check_classes(config, state, source)
    key_map, model_kwargs = _family(config.family)
    kwargs = model_kwargs(state, config.model, source)
    converted = key_map(state, config.model, source)
    net = create_model(config.model, **kwargs)
    load_into(net, converted, f"{source} (mmsegmentation {config_name} -> {config.model})")
    return net, kwargs, {"classes": classes, "aux": any(k.startswith("auxiliary_head.") for k in state)}


def load_mmseg(config_name: str, src: _StateDict | str | Path) -> nn.Module:
    """Build the seglab model for the mmseg config ``config_name`` and load the mmseg checkpoint ``src`` (a file,
    or its loaded mapping) into it. Raises :class:`~seglab.errors.CheckpointError` for a config seglab does not
    build, a file refused or damaged, or tensors that do not match (listed in mmseg's names)."""
    return _load(config_name, src)[0]


def _label_set_metadata(
    label_set: str | None, config: MmsegConfig, classes: list[str] | None, n: int
) -> dict[str, Any]:
    """The label-set metadata of the converted weights: ``label_set``, else the dataset's, else the recorded names."""
    from seglab.data.palettes import custom_label_set, get_label_set, label_set_metadata

    if label_set is not None:
        try:
            labels = get_label_set(label_set)
        except KeyError as exc:
            raise CheckpointError(str(exc.args[0])) from None
    elif config.dataset and MMSEG_DATASETS[config.dataset][1]:
        labels = get_label_set(MMSEG_DATASETS[config.dataset][1])
    elif classes and len(classes) == n:  # a dataset seglab has no label set of: the names mmseg recorded
        labels = custom_label_set(classes, name=config.dataset or "mmseg")
    else:
        return {}
    if labels.num_classes != n:
        raise CheckpointError(f"label set {labels.name!r} has {labels.num_classes} classes, the checkpoint {n}")
    return label_set_metadata(labels)


def convert_mmseg(
    config_name: str,
    src: _StateDict | str | Path,
    dst: str | Path,
    *,
    label_set: str | None = None,
) -> Path:
    """Convert the mmseg checkpoint ``src`` of the config ``config_name`` to the seglab weights file ``dst``
    (``*.safetensors``).

    The model and its variant come from the config name, the class count from the decode head (checked against
    the dataset the name gives), and ``label_set`` defaults to that dataset's (else to the class names the
    checkpoint records). The metadata (model, num_classes, model_kwargs, label set, source, mmseg_config,
    dataset) lets ``seglab predict --weights dst`` rebuild the model. Returns ``dst``.
    """
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"{dst}: the converted weights are written as safetensors; name it *.safetensors")
    config = parse_config_name(config_name)
    net, kwargs, found = _load(config_name, src)
    num_classes = kwargs.pop("num_classes")
    metadata: dict[str, Any] = {
        "model": config.model,
        "num_classes": num_classes,
        "model_kwargs": kwargs,
        "source": f"mmsegmentation checkpoint {Path(src).name if not isinstance(src, dict) else '(mapping)'}",
        "mmseg_config": config_name,
        "dataset": config.dataset,
    }
    if config.family == "bisenet" and not found["aux"]:  # seglab's BiSeNets always build their aux heads
        metadata["aux_heads"] = f"not in the checkpoint: initialised (seed {AUX_SEED})"
    metadata.update(_label_set_metadata(label_set, config, found["classes"], num_classes))
    return save_weights(dst, net.state_dict(), metadata)
