"""Convert the checkpoints released with CoinCheung/BiSeNet (BiSeNet v1 and v2) to seglab weights.

seglab's ``bisenetv1_resnet18`` and ``bisenetv2`` (:mod:`seglab.models.semantic.bisenet`) are the networks of
CoinCheung/BiSeNet's ``lib/models/bisenetv1.py`` and ``lib/models/bisenetv2.py`` (master: output heads that
end in a 1x1 conv to the classes and a bilinear upsampling). Its README links ``model_final_v1_city_new.pth``,
``model_final_v2_city.pth`` (Cityscapes, 19 classes), ``model_final_v1_coco_new.pth``, ``model_final_v2_coco.pth``
(COCO-Stuff, 171) and ``model_final_v{1,2}_ade20k.pth`` (ADE20K, 150): plain state dicts of the network as
trained, so they carry its auxiliary heads too (v1 ``conv_out16``/``conv_out32``, v2 ``aux2``/``aux3``/``aux4``/
``aux5_4``); CoinCheung's ``tools/demo.py`` builds the network with ``aux_mode='eval'`` (no aux heads) and loads
them with ``strict=False``. seglab's models always build their aux heads: they are converted when the file has
them, and when it has none of them (a file saved from an eval-mode network) they keep seglab's initialisation
(seeded, so a conversion is reproducible) and the metadata says so. A file with only some of them is refused.

Key map (CoinCheung -> seglab; CoinCheung's ``ConvBNReLU`` ``.conv``/``.bn`` are seglab's ``ConvBNAct`` ``.0``/``.1``):

- v1: ``sp.conv1|conv2|conv3|conv_out`` -> ``spatial_path.0..3``; ``cp.resnet.*`` -> ``context_path.backbone.*``
  (torchvision's names on both sides); ``cp.arm16|arm32|conv_head32|conv_head16|conv_avg`` ->
  ``context_path.<same>``; ``ffm.convblk|conv|bn`` -> ``ffm.fuse|conv_atten|bn_atten``; ``conv_out``,
  ``conv_out16``, ``conv_out32`` (``.conv``, ``.conv_out``) -> ``head``, ``aux_heads.0``, ``aux_heads.1``
  (``.0``, ``.1``).
- v2: ``detail.S1.0-1|S2.0-2|S3.0-2`` -> ``detail_branch.0..7``; ``segment.S1S2`` -> ``semantic_branch.stem``;
  ``segment.S3|S4|S5_4`` -> ``semantic_branch.stage3|stage4|stage5`` (first layer of each: ``dwconv1.0|1``,
  ``dwconv2.0|1`` -> ``dwconv.0.0|1``, ``dwconv.1.0|1``; ``shortcut.0|1|2|3`` -> ``shortcut.0.0|0.1|1.0|1.1``);
  ``segment.S5_5`` -> ``semantic_branch.context_embedding``; ``bga.left1|left2|right1|right2|conv`` ->
  ``aggregation.detail_keep|detail_down|semantic_up|semantic_keep|conv``; ``head.conv_out.1`` ->
  ``head.classifier``; ``aux2|aux3|aux4|aux5_4`` -> ``aux_heads.0..3`` (``.conv_out.0.1`` -> ``.booster_conv``,
  ``.conv_out.1`` -> ``.classifier``).

Input normalisation: CoinCheung normalises images with each dataset's own mean/std (Cityscapes
(0.3257, 0.3690, 0.3223) / (0.2112, 0.2148, 0.2115), COCO-Stuff and ADE20K their own, RGB, 0-1 scaled); seglab
feeds every model ImageNet-normalised images. By default the converter folds the difference into the two
convolutions that read the image (v1: ``spatial_path.0``, ``context_path.backbone.conv1``; v2:
``detail_branch.0``, ``semantic_branch.stem.conv``): per input channel their weights are scaled by
``std_imagenet / std_dataset`` and the BatchNorm after each takes the constant offset into its running mean, so
the converted model computes on seglab's input what CoinCheung's did on its own. Exactly so away from the image
border; in the convs' zero padding (3 pixels for the 7x7 convs of v1, 1 for v2) zero stands for the ImageNet
mean colour instead of the dataset's, a difference at the border that the global-context branches spread
faintly. ``fold_normalization=False`` keeps every tensor as it is (the model then expects CoinCheung's input).
The dataset is read from the class count (19, 171, 150) unless given; it also gives the default label set
(``cityscapes``, ``coco_stuff``, ``ade20k``: the same class orders as CoinCheung's).

Refused: the older CoinCheung layout whose heads end in a 1x1 conv to ``classes x r x r`` channels and
``nn.PixelShuffle(r)`` (v2 ``head.conv_out.0.*``; v1 aux heads of 64 and 256 x classes outputs, and a two-layer
attention MLP ``ffm.conv1``/``ffm.conv2``), which seglab's models do not build. Files are read only through
:func:`seglab.checkpoint.read_state_dict` (safetensors, or ``.pth`` with ``torch.load(weights_only=True)``;
``{"state_dict": ...}`` / ``{"model": ...}`` unwrapped, ``module.`` dropped). Missing, unexpected and mis-shaped
tensors are reported in CoinCheung's names in one :class:`~seglab.errors.CheckpointError`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from seglab.checkpoint import load_into, read_state_dict, rename_prefix, save_weights, state_dict_problems
from seglab.errors import CheckpointError
from seglab.models import create_model

__all__ = [
    "BISENET_DATASETS", "BISENET_MODELS", "bisenet_to_seglab_key", "convert_bisenet", "load_bisenet",
    "seglab_to_bisenet_key",
]

BISENET_MODELS = ("bisenetv1_resnet18", "bisenetv2")
# dataset -> (classes, seglab label set, CoinCheung's input mean and std: RGB, 0-1 scaled)
BISENET_DATASETS = {
    "cityscapes": (19, "cityscapes", (0.3257, 0.3690, 0.3223), (0.2112, 0.2148, 0.2115)),
    "coco_stuff": (171, "coco_stuff", (0.46962251, 0.4464104, 0.40718787), (0.27469736, 0.27012361, 0.28515933)),
    "ade20k": (150, "ade20k", (0.49343230, 0.46819794, 0.43106043), (0.25680755, 0.25506608, 0.27422913)),
}
_CLASSIFIER_KEY = {"bisenetv1_resnet18": "conv_out.conv_out.weight", "bisenetv2": "head.conv_out.1.weight"}
_AUX_ROOTS = {"bisenetv1_resnet18": ("conv_out16", "conv_out32"), "bisenetv2": ("aux2", "aux3", "aux4", "aux5_4")}
_DISTINCT_ROOTS = {"bisenetv1_resnet18": {"cp", "sp", "ffm"}, "bisenetv2": {"detail", "segment", "bga"}}
# the convs that read the image and the BatchNorm after each (seglab names)
_STEM_CONVS = {
    "bisenetv1_resnet18": (("spatial_path.0.0", "spatial_path.0.1"),
                           ("context_path.backbone.conv1", "context_path.backbone.bn1")),
    "bisenetv2": (("detail_branch.0.0", "detail_branch.0.1"),
                  ("semantic_branch.stem.conv.0", "semantic_branch.stem.conv.1")),
}
_AUX_SEED = 0
_COUNTER = ".num_batches_tracked"

_StateDict = dict[str, torch.Tensor]


def _cbr(theirs: str, ours: str) -> list[tuple[str, str]]:
    """CoinCheung's ``ConvBNReLU`` (``conv``, ``bn``) -> seglab's ``ConvBNAct`` (``0``, ``1``)."""
    return [(f"{theirs}.conv", f"{ours}.0"), (f"{theirs}.bn", f"{ours}.1")]


def _v1_modules() -> list[tuple[str, str]]:
    pairs = [("cp.resnet", "context_path.backbone")]
    for i, name in enumerate(("conv1", "conv2", "conv3", "conv_out")):
        pairs += _cbr(f"sp.{name}", f"spatial_path.{i}")
    for arm in ("arm16", "arm32"):
        pairs += _cbr(f"cp.{arm}.conv", f"context_path.{arm}.conv")
        pairs += [(f"cp.{arm}.{m}", f"context_path.{arm}.{m}") for m in ("conv_atten", "bn_atten")]
    for name in ("conv_head32", "conv_head16", "conv_avg"):
        pairs += _cbr(f"cp.{name}", f"context_path.{name}")
    pairs += _cbr("ffm.convblk", "ffm.fuse") + [("ffm.conv", "ffm.conv_atten"), ("ffm.bn", "ffm.bn_atten")]
    for theirs, ours in (("conv_out", "head"), ("conv_out16", "aux_heads.0"), ("conv_out32", "aux_heads.1")):
        pairs += _cbr(f"{theirs}.conv", f"{ours}.0") + [(f"{theirs}.conv_out", f"{ours}.1")]
    return pairs


def _v2_modules() -> list[tuple[str, str]]:
    pairs = []
    detail = ["S1.0", "S1.1", "S2.0", "S2.1", "S2.2", "S3.0", "S3.1", "S3.2"]
    for i, name in enumerate(detail):
        pairs += _cbr(f"detail.{name}", f"detail_branch.{i}")
    for part in ("conv", "left.0", "left.1", "fuse"):
        pairs += _cbr(f"segment.S1S2.{part}", f"semantic_branch.stem.{part}")
    for theirs, ours, layers in (("S3", "stage3", 2), ("S4", "stage4", 2), ("S5_4", "stage5", 4)):
        for j in range(layers):
            t, o = f"segment.{theirs}.{j}", f"semantic_branch.{ours}.{j}"
            pairs += _cbr(f"{t}.conv1", f"{o}.conv1") + [(f"{t}.conv2", f"{o}.conv2")]
            if j == 0:  # GELayerS2: two depthwise stages and a depthwise + 1x1 shortcut, each a plain Sequential
                pairs += [(f"{t}.dwconv{a + 1}.{b}", f"{o}.dwconv.{a}.{b}") for a in (0, 1) for b in (0, 1)]
                pairs += [(f"{t}.shortcut.{2 * a + b}", f"{o}.shortcut.{a}.{b}") for a in (0, 1) for b in (0, 1)]
            else:  # GELayerS1
                pairs += [(f"{t}.dwconv", f"{o}.dwconv")]
    ce = "semantic_branch.context_embedding"
    pairs += [("segment.S5_5.bn", f"{ce}.bn")] + _cbr("segment.S5_5.conv_gap", f"{ce}.conv_gap")
    pairs += _cbr("segment.S5_5.conv_last", f"{ce}.conv_last")
    pairs += [
        ("bga.left1.0", "aggregation.detail_keep.0.0"), ("bga.left1.1", "aggregation.detail_keep.0.1"),
        ("bga.left1.2", "aggregation.detail_keep.1"),
        ("bga.left2.0", "aggregation.detail_down.0.0"), ("bga.left2.1", "aggregation.detail_down.0.1"),
        ("bga.right1", "aggregation.semantic_up"),
        ("bga.right2.0", "aggregation.semantic_keep.0.0"), ("bga.right2.1", "aggregation.semantic_keep.0.1"),
        ("bga.right2.2", "aggregation.semantic_keep.1"),
        ("bga.conv", "aggregation.conv"),
    ]
    pairs += _cbr("head.conv", "head.conv") + [("head.conv_out.1", "head.classifier")]
    for i, name in enumerate(_AUX_ROOTS["bisenetv2"]):
        pairs += _cbr(f"{name}.conv", f"aux_heads.{i}.conv")
        pairs += _cbr(f"{name}.conv_out.0.1", f"aux_heads.{i}.booster_conv")  # conv_out.0.0: nn.Upsample
        pairs += [(f"{name}.conv_out.1", f"aux_heads.{i}.classifier")]
    return pairs


_TO_SEGLAB = {"bisenetv1_resnet18": dict(_v1_modules()), "bisenetv2": dict(_v2_modules())}
_TO_BISENET = {model: {ours: theirs for theirs, ours in table.items()} for model, table in _TO_SEGLAB.items()}




def bisenet_to_seglab_key(key: str, model: str) -> str:
    """seglab's name of CoinCheung/BiSeNet's state-dict key ``key`` for ``model`` (``bisenetv1_resnet18`` or
    ``bisenetv2``); keys seglab has no counterpart for come back as they are."""
    return rename_prefix(key, _TO_SEGLAB[model])


def seglab_to_bisenet_key(key: str, model: str) -> str:
    """CoinCheung/BiSeNet's name of seglab's ``model`` key ``key`` (inverse of :func:`bisenet_to_seglab_key`)."""
    return rename_prefix(key, _TO_BISENET[model])


def _infer_model(state: _StateDict, source: str) -> str:
    roots = {key.split(".", 1)[0] for key in state}
    found = [model for model, distinct in _DISTINCT_ROOTS.items() if roots & distinct]
    if len(found) != 1:
        raise CheckpointError(
            f"{source}: not a CoinCheung/BiSeNet v1 or v2 state dict (v1 keys start cp., sp., ffm.; v2 keys "
            f"detail., segment., bga.; this file's start {', '.join(list(state)[:5])} ...)"
        )
    return found[0]


def _refuse_pixel_shuffle_heads(state: _StateDict, model: str, source: str) -> None:
    older = "an older CoinCheung/BiSeNet layout whose heads end in nn.PixelShuffle, which seglab's"
    if model == "bisenetv2" and "head.conv_out.0.weight" in state:
        shape = tuple(state["head.conv_out.0.weight"].shape)
        raise CheckpointError(
            f"{source}: head.conv_out.0.weight {shape} (classes x 8 x 8 outputs): {older} bisenetv2 does not build "
            f"(its heads, as CoinCheung's master, are a 1x1 conv to the classes, head.conv_out.1, and a bilinear "
            f"upsampling)"
        )
    if model != "bisenetv1_resnet18":
        return
    rows = [int(state[f"{root}.conv_out.weight"].shape[0]) for root in _AUX_ROOTS[model]
            if f"{root}.conv_out.weight" in state]
    if "ffm.conv1.weight" in state or (len(rows) == 2 and rows[1] == 4 * rows[0]):
        raise CheckpointError(
            f"{source}: {older} bisenetv1_resnet18 does not build (conv_out16/conv_out32 with classes x 64 / "
            f"x 256 outputs, or an FFM attention of two 1x1 convs, ffm.conv1/ffm.conv2); convert the released "
            f"model_final_v1_*_new.pth files, saved from CoinCheung's master layout"
        )


def _dataset(dataset: str | None, num_classes: int, source: str, key: str) -> str | None:
    if dataset is None:
        return next((name for name, spec in BISENET_DATASETS.items() if spec[0] == num_classes), None)
    if dataset not in BISENET_DATASETS:
        raise CheckpointError(f"dataset {dataset!r}: one of {', '.join(BISENET_DATASETS)}")
    if BISENET_DATASETS[dataset][0] != num_classes:
        raise CheckpointError(
            f"{source}: {key} has {num_classes} classes but dataset {dataset!r} has "
            f"{BISENET_DATASETS[dataset][0]}"
        )
    return dataset


def _fold_input_normalization(state: _StateDict, model: str, dataset: str) -> None:
    """Rewrite, in ``state`` (seglab names), the convs that read the image and their BatchNorms so that
    ImageNet-normalised input gives what ``dataset``'s normalisation gave: with ``x_dataset = a * x_imagenet + b``
    per channel, ``conv(W, x_dataset) = conv(W * a, x_imagenet) + sum(W * b)``; the second term (a constant per
    output channel, away from the zero padding) moves into the BatchNorm's running mean."""
    from seglab.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    _, _, mean, std = BISENET_DATASETS[dataset]
    mean_in, std_in = torch.tensor(IMAGENET_MEAN, dtype=torch.float64), torch.tensor(IMAGENET_STD, dtype=torch.float64)
    mean_d, std_d = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    scale, shift = (std_in / std_d).view(1, 3, 1, 1), ((mean_in - mean_d) / std_d).view(1, 3, 1, 1)
    for conv, bn in _STEM_CONVS[model]:
        weight = state[f"{conv}.weight"]
        running_mean = state[f"{bn}.running_mean"]
        w = weight.double()
        state[f"{conv}.weight"] = (w * scale).to(weight.dtype)
        state[f"{bn}.running_mean"] = (running_mean.double() - (w * shift).sum(dim=(1, 2, 3))).to(running_mean.dtype)


def _check_keys(net: nn.Module, state: _StateDict, model: str, source: str, has_aux: bool) -> None:
    """One CheckpointError listing CoinCheung-named missing, unexpected and mis-shaped keys (the aux heads are
    expected only when the file has some; BatchNorm counters are left out on both sides)."""
    own = {seglab_to_bisenet_key(k, model): v for k, v in net.state_dict().items()
           if not k.endswith(_COUNTER) and (has_aux or not k.startswith("aux_heads."))}
    problems = state_dict_problems(own, {k: v for k, v in state.items() if not k.endswith(_COUNTER)})
    if problems:
        file = "bisenetv1" if model == "bisenetv1_resnet18" else "bisenetv2"
        raise CheckpointError(
            f"{source}: not a CoinCheung/BiSeNet checkpoint for seglab {model} (the network of its master's "
            f"lib/models/{file}.py expected; {' | '.join(problems)})"
        )


def _load(
    src: _StateDict | str | Path, model: str | None, dataset: str | None, fold_normalization: bool
) -> tuple[nn.Module, dict]:
    """The seglab model with ``src`` loaded, and what the metadata records about the conversion."""
    state, source = read_state_dict(src, "CoinCheung/BiSeNet")
    model = model or _infer_model(state, source)
    if model not in BISENET_MODELS:
        raise CheckpointError(f"model {model!r}: the BiSeNet converter builds one of {', '.join(BISENET_MODELS)}")
    _refuse_pixel_shuffle_heads(state, model, source)
    key = _CLASSIFIER_KEY[model]
    if key not in state:
        raise CheckpointError(
            f"{source}: no {key!r}, so not a CoinCheung/BiSeNet {model} state dict (keys start "
            f"{', '.join(list(state)[:5])} ...)"
        )
    num_classes = int(state[key].shape[0])
    dataset = _dataset(dataset, num_classes, source, key)
    if fold_normalization and dataset is None:
        raise CheckpointError(
            f"{source}: {num_classes} classes, none of CoinCheung's datasets ("
            + ", ".join(f"{name} {spec[0]}" for name, spec in BISENET_DATASETS.items())
            + "): name the dataset whose mean/std it was trained with, or keep the first convolutions as they are "
            "(fold_normalization=False, --no-fold-normalization)"
        )
    with torch.random.fork_rng(devices=[]):  # aux heads the file lacks keep this (reproducible) initialisation
        torch.manual_seed(_AUX_SEED)
        net = create_model(model, num_classes=num_classes)
    has_aux = any(k.split(".", 1)[0] in _AUX_ROOTS[model] for k in state)
    _check_keys(net, state, model, source, has_aux)
    converted = {bisenet_to_seglab_key(k, model): v.detach().clone() for k, v in state.items()}
    for name, value in net.state_dict().items():  # the aux heads a file saved without them lacks; BN counters
        if name.endswith(_COUNTER):
            converted.setdefault(name, torch.zeros_like(value))
        elif name.startswith("aux_heads."):
            converted.setdefault(name, value.clone())
    if fold_normalization:
        _fold_input_normalization(converted, model, dataset)
    load_into(net, converted, f"{source} (CoinCheung/BiSeNet -> {model})")
    record = {
        "model": model,
        "num_classes": num_classes,
        "dataset": dataset,
        "aux_heads": "converted" if has_aux else f"not in the checkpoint: initialised (seed {_AUX_SEED})",
        "input_normalization": (
            f"imagenet: {dataset}'s mean/std folded into the first convolutions" if fold_normalization
            else "CoinCheung's, not folded: the first convolutions expect the training set's mean/std"
        ),
    }
    return net, record


def load_bisenet(
    state_dict: _StateDict | str | Path,
    model: str | None = None,
    *,
    dataset: str | None = None,
    fold_normalization: bool = True,
) -> nn.Module:
    """Build seglab's ``model`` (``bisenetv1_resnet18`` or ``bisenetv2``; default: the one the keys show) and load
    CoinCheung/BiSeNet's state dict (or file) into it, with the dataset's input normalisation folded into the first
    convolutions unless ``fold_normalization=False`` (see the module docstring). Raises
    :class:`~seglab.errors.CheckpointError` listing CoinCheung-named missing, unexpected and mismatched keys."""
    return _load(state_dict, model, dataset, fold_normalization)[0]


def convert_bisenet(
    src: _StateDict | str | Path,
    dst: str | Path,
    *,
    model: str | None = None,
    label_set: str | None = None,
    dataset: str | None = None,
    fold_normalization: bool = True,
) -> Path:
    """Convert the CoinCheung/BiSeNet checkpoint ``src`` to the seglab weights file ``dst`` (``*.safetensors``).

    ``model`` defaults to the one the keys show, the class count is the classifier's, ``dataset`` (whose mean/std
    are folded into the first convolutions, see the module docstring) defaults to the one with that many classes,
    and ``label_set`` to the dataset's. The metadata (model, num_classes, model_kwargs, label_set, source, what
    became of the aux heads and of the input normalisation) lets ``seglab predict --weights dst`` rebuild the
    model. Returns ``dst``.
    """
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"{dst}: the converted weights are written as safetensors; name it *.safetensors")
    net, record = _load(src, model, dataset, fold_normalization)
    metadata = {
        "model": record["model"],
        "num_classes": record["num_classes"],
        "model_kwargs": {},
        "source": f"CoinCheung/BiSeNet checkpoint {Path(src).name if not isinstance(src, dict) else '(mapping)'}",
        "aux_heads": record["aux_heads"],
        "input_normalization": record["input_normalization"],
    }
    label_set = label_set or (BISENET_DATASETS[record["dataset"]][1] if record["dataset"] else None)
    if label_set is not None:
        metadata["label_set"] = label_set
    return save_weights(dst, net.state_dict(), metadata)

