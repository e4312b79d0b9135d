"""Convert the checkpoints released with SCHP (Self-Correction for Human Parsing) to seglab weights.

SCHP's files (``exp-schp-201908261155-lip.pth``, ``...-atr.pth``, ``...-pascal-person-part.pth``) hold
``{"state_dict": {"module.<key>": tensor, ...}, ...}`` as saved from ``DataParallel``; SCHP's own scripts load
them with ``torch.load(path)["state_dict"]`` and strip ``module.``. Here they are read only with
``torch.load(weights_only=True)`` (:func:`seglab.checkpoint.load_state_dict`); a bare state dict is accepted too.

Key mapping (SCHP ``networks/AugmentCE2P.py`` -> :mod:`seglab.models.parsing.ce2p`):

- ``conv1|bn1|conv2|bn2|conv3|bn3|layer1..layer4.*`` -> ``backbone.<same>``;
- ``fushion.*`` -> ``fusion.*``;
- ``context_encoding.*``, ``decoder.*``, ``edge.*``: unchanged;
- ``num_batches_tracked`` (absent from InPlaceABN layers) is added as 0.

Weight changes, so that seglab's plain ``BatchNorm2d`` reproduces SCHP's outputs:

- InPlaceABN: every BN of the released network (backbone and head) is ``InPlaceABNSync`` from the mapillary
  ``inplace_abn`` code vendored in SCHP's ``modules/``, whose CPU and CUDA kernels scale by
  ``gamma = |weight| + eps`` (eps = 1e-5) rather than ``weight``. The converter writes ``|weight| + 1e-5`` into
  BatchNorm's weight. A file whose BatchNorm weights are already plain must not be folded twice: one trained
  with ``nn.BatchNorm2d`` in place of ``InPlaceABNSync``, or one that a conversion script for plain-BN or ONNX
  deployment has already passed through ``|weight| + eps``. For such a file pass ``inplace_abn=False``
  (``seglab convert schp --no-inplace-abn``). The activations are the model's: leaky ReLU 0.01 after the head's
  BNs, ReLU after the backbone's, as in SCHP.
- Colour order: SCHP feeds BGR images (read with OpenCV) normalised with the ImageNet mean/std in BGR order;
  seglab feeds RGB with the same statistics, so the input channels of the first conv are reversed
  (``bgr_to_rgb=True``). The converted model thus gives SCHP's logits for the same picture.

``num_classes`` is read from ``fushion.3.weight`` (20 LIP, 18 ATR, 7 Pascal-Person-Part) and recorded with the
label set in the safetensors metadata, so ``seglab predict --weights DST`` rebuilds the model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from seglab.checkpoint import foreign_key_problems, load_into, read_state_dict, save_weights
from seglab.errors import CheckpointError
from seglab.models import create_model

__all__ = ["SCHP_DATASETS", "convert_schp", "load_schp", "schp_to_seglab_key", "seglab_to_schp_key"]

# dataset -> (num_classes, seglab label set); "pascal" is SCHP's own name for Pascal-Person-Part
SCHP_DATASETS = {"lip": (20, "lip"), "atr": (18, "atr"), "pascal_person_part": (7, "pascal_person_part")}
_DATASET_ALIASES = {"pascal": "pascal_person_part"}
SCHP_MODELS = ("schp_resnet101", "schp_resnet50", "schp_resnet18")
INPLACE_ABN_EPS = 1e-5
_CLASSIFIER_KEY = "fushion.3.weight"
_BACKBONE_ROOTS = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "layer1", "layer2", "layer3", "layer4")
_RENAMED_ROOTS = {"fushion": "fusion"}

_StateDict = dict[str, torch.Tensor]


def schp_to_seglab_key(key: str) -> str:
    """seglab's name of SCHP's state-dict key ``key`` (without ``module.``)."""
    root, _, rest = key.partition(".")
    if root in _BACKBONE_ROOTS:
        return f"backbone.{key}"
    return f"{_RENAMED_ROOTS.get(root, root)}.{rest}" if rest else key


def seglab_to_schp_key(key: str) -> str:
    """SCHP's name of seglab's state-dict key ``key`` (the inverse of :func:`schp_to_seglab_key`)."""
    if key.startswith("backbone."):
        return key.removeprefix("backbone.")
    root, _, rest = key.partition(".")
    inverse = {v: k for k, v in _RENAMED_ROOTS.items()}
    return f"{inverse.get(root, root)}.{rest}" if rest else key


def _dataset(dataset: str | None) -> str | None:
    if dataset is None:
        return None
    name = _DATASET_ALIASES.get(dataset, dataset)
    if name not in SCHP_DATASETS:
        raise CheckpointError(f"dataset {dataset!r}: expected one of {', '.join(SCHP_DATASETS)} (or None to infer)")
    return name


def _check_keys(model: nn.Module, schp: _StateDict, source: str, name: str) -> None:
    """One CheckpointError listing SCHP-named missing, unexpected and mismatched keys."""
    problems = foreign_key_problems(model, schp, seglab_to_schp_key)
    if problems:
        raise CheckpointError(
            f"{source}: not an SCHP {name} checkpoint (AugmentCE2P key names expected; {' | '.join(problems)})"
        )


def _to_seglab(model: nn.Module, schp: _StateDict, *, inplace_abn: bool, bgr_to_rgb: bool) -> _StateDict:
    batch_norms = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    out: _StateDict = {}
    for key, value in schp.items():
        new_key = schp_to_seglab_key(key)
        module, _, param = new_key.rpartition(".")
        value = value.detach().clone().float() if value.is_floating_point() else value.detach().clone()
        if inplace_abn and module in batch_norms and param == "weight":
            value = value.abs() + INPLACE_ABN_EPS
        if bgr_to_rgb and new_key == "backbone.conv1.weight":
            value = value.flip(1)
        out[new_key] = value
    for name in batch_norms:
        out.setdefault(f"{name}.num_batches_tracked", torch.tensor(0, dtype=torch.long))
    return out


def _infer_model(schp: _StateDict) -> str:
    """The seglab model whose backbone depth the keys show (layer3 blocks: 23 -> resnet101, 6 -> resnet50, ...)."""
    blocks = {k.split(".")[1] for k in schp if k.startswith("layer3.")}
    bottleneck = any(k.startswith("layer1.0.conv3.") for k in schp)
    return {(23, True): "schp_resnet101", (6, True): "schp_resnet50", (2, False): "schp_resnet18"}.get(
        (len(blocks), bottleneck), "schp_resnet101"  # anything else: the key check names what differs
    )


def _load(
    src: _StateDict | str | Path, model: str | None, dataset: str | None, inplace_abn: bool, bgr_to_rgb: bool
):
    dataset = _dataset(dataset)
    schp, source = read_state_dict(src, "SCHP")
    model = model or _infer_model(schp)
    if model not in SCHP_MODELS:
        raise CheckpointError(f"model {model!r}: the SCHP converter builds one of {', '.join(SCHP_MODELS)}")
    import seglab.models.parsing.ce2p  # noqa: F401  (registers the schp_* factories)

    if _CLASSIFIER_KEY in schp:
        num_classes = int(schp[_CLASSIFIER_KEY].shape[0])
    else:  # the key check below reports the missing classifier with the rest
        num_classes = SCHP_DATASETS[dataset or "lip"][0]
    if dataset is not None and SCHP_DATASETS[dataset][0] != num_classes:
        raise CheckpointError(
            f"{source}: {_CLASSIFIER_KEY} has {num_classes} classes but dataset {dataset!r} has "
            f"{SCHP_DATASETS[dataset][0]}"
        )
    if dataset is None:
        dataset = next((d for d, (n, _) in SCHP_DATASETS.items() if n == num_classes), None)
    net = create_model(model, num_classes=num_classes)
    _check_keys(net, schp, source, model)
    load_into(net, _to_seglab(net, schp, inplace_abn=inplace_abn, bgr_to_rgb=bgr_to_rgb), f"{source} (SCHP {model})")
    return net, model, num_classes, dataset


def load_schp(
    src: _StateDict | str | Path,
    *,
    model: str | None = None,
    dataset: str | None = None,
    inplace_abn: bool = True,
    bgr_to_rgb: bool = True,
) -> nn.Module:
    """Build seglab's ``model`` and load SCHP's checkpoint ``src`` (a file, or the loaded mapping) into it.

    ``model`` defaults to the schp_resnet* whose depth the keys show (schp_resnet101 for SCHP's released files).

    ``dataset`` ("lip", "atr", "pascal_person_part"), if given, must agree with the file's class count.
    Raises :class:`~seglab.errors.CheckpointError` listing missing, unexpected and mismatched SCHP keys.
    """
    return _load(src, model, dataset, inplace_abn, bgr_to_rgb)[0]


def convert_schp(
    src: _StateDict | str | Path,
    dst: str | Path,
    *,
    dataset: str | None = None,
    model: str | None = None,
    inplace_abn: bool = True,
    bgr_to_rgb: bool = True,
) -> Path:
    """Convert SCHP's released checkpoint ``src`` to the seglab weights file ``dst`` (``*.safetensors``).

    The metadata (model, num_classes, label_set, input) lets ``seglab predict --weights dst`` rebuild the model.
    ``dataset`` defaults to the one the class count implies (20 lip, 18 atr, 7 pascal_person_part). Returns ``dst``.
    """
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"{dst}: the converted weights are written as safetensors; name it *.safetensors")
    net, model, num_classes, dataset = _load(src, model, dataset, inplace_abn, bgr_to_rgb)
    metadata = {
        "model": model,
        "num_classes": num_classes,
        "model_kwargs": {},
        "source": f"SCHP checkpoint {Path(src).name if not isinstance(src, dict) else '(mapping)'}",
        "input": "RGB" if bgr_to_rgb else "BGR",
    }
    if dataset is not None:  # else predict falls back to its default palette (or --label-set)
        metadata["label_set"] = SCHP_DATASETS[dataset][1]
    return save_weights(dst, net.state_dict(), metadata)
