"""Models rebuilt from weights files (:func:`load_model`) and self-describing model folders (:func:`save_pretrained`,
:func:`from_pretrained`).

seglab's weights files (safetensors) record the model's name, class count, factory options and label set in
their metadata (:func:`seglab.checkpoint.save_weights`), so a file alone rebuilds its model. ``seglab predict``,
``seglab eval``, ``seglab export`` and ``seglab pseudo-label`` all go through :func:`load_model`.

A model folder is what one shares: ``config.json`` (the model's name and factory options, its task, class names
and colours, the input preprocessing and resize policy, for detectors the transform sizes and score threshold),
``model.safetensors`` (the weights with the same metadata, so the file alone also works) and ``README.md`` (a
model card: data set, metrics, how to load it). :func:`from_pretrained` rebuilds the model from the folder alone,
or from a Hugging Face Hub id ``org/name[@revision]`` (downloaded or read from the Hub cache by
``huggingface_hub``, the ``seglab[hub]`` extra). Nothing in a folder is unpickled: JSON and safetensors only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seglab.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from torch import nn

    from seglab.config import Config
    from seglab.data.palettes import LabelSet

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
FOLDER_FORMAT = 1  # config.json's "seglab_format": raised when a change would mislead an older reader
DEFAULT_SCORE_THRESHOLD = 0.5  # detections and people below it are not drawn or written (seglab predict)
HUB_FILES = [CONFIG_FILE, WEIGHTS_FILE, CARD_FILE]
# org/name or org/name@revision (a branch, tag or commit)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")
# weights-file metadata a folder carries over verbatim (what converters record about where the weights came from)
_PROVENANCE = ("source", "input_normalization", "aux_heads")


def model_spec(
    weights: str | Path, *, name: str | None = None, num_classes: int | None = None, config: Config | None = None
) -> tuple[str, dict[str, Any]]:
    """The model name and factory options that rebuild the model of ``weights``.

    From ``config`` (its model section) when given, else from the file's metadata; ``name`` and ``num_classes``
    override either. The recorded factory options apply only to the recorded model (another ``name`` starts
    from its defaults).
    """
    from seglab.checkpoint import read_metadata

    if config is not None:
        name = name or config.model.name
        kwargs = {"num_classes": config.model.num_classes, **config.model.kwargs}
    else:
        meta = read_metadata(weights)
        recorded = meta.get("model")
        if not (name or recorded):
            raise CheckpointError(f"{weights}: the file names no model (metadata 'model'); pass the model name "
                                  "(--model NAME) or a config")
        kwargs = dict(meta.get("model_kwargs") or {}) if name in (None, recorded) else {}
        name = name or recorded
        if meta.get("num_classes"):
            kwargs["num_classes"] = int(meta["num_classes"])
    if num_classes:
        kwargs["num_classes"] = int(num_classes)
    return name, kwargs


def load_model(
    weights: str | Path, *, name: str | None = None, num_classes: int | None = None, config: Config | None = None,
    verify: bool = True,
) -> nn.Module:
    """The model of ``weights``, built as :func:`model_spec` says and loaded strictly (eval mode not set); the
    file's SHA-256 is checked unless ``verify=False``.

    Raises :class:`~seglab.errors.CheckpointError` when the file is missing, unsafe, names no model, or does not
    match the model (missing, unexpected or mis-shaped tensors are listed).
    """
    from seglab.checkpoint import load_weights
    from seglab.models import create_model

    name, kwargs = model_spec(weights, name=name, num_classes=num_classes, config=config)
    model = create_model(name, **kwargs)
    load_weights(model, weights, verify=verify)
    return model



# -- model folders ---------------------------------------------------------------------------------------------


def transform_sizes(model: nn.Module) -> dict[str, Any]:
    """A detector's resize policy as factory options: ``min_size`` (an int, or a list for multi-scale) and
    ``max_size`` of its ``GeneralizedRCNNTransform``; empty for a model without one. What weights files and model
    folders record, so a rebuilt detector resizes its input as the saved one did."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    transform = getattr(model, "transform", None)
    if not isinstance(transform, GeneralizedRCNNTransform):
        return {}
    sizes = [int(s) for s in transform.min_size]
    return {"min_size": sizes[0] if len(sizes) == 1 else sizes, "max_size": int(transform.max_size)}


def save_pretrained(
    model: nn.Module,
    directory: str | Path,
    *,
    name: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    label_set: str | LabelSet | None = None,
    metadata: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    inference: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as the model folder ``directory``: config.json, model.safetensors and a README.md card.

    The model is named by ``name`` and ``model_kwargs`` (its factory options, ``num_classes`` included), else by
    ``metadata``, a weights file's metadata (:func:`seglab.checkpoint.read_metadata`: model, num_classes,
    model_kwargs, label set, and for instance models ``classes`` and ``label_to_cat_id``), which is how a trained
    or converted file becomes a folder (:func:`save_pretrained_from_weights`). ``label_set`` (a name or a
    :class:`~seglab.data.palettes.LabelSet`) defaults to the metadata's, else generic names ``class_<i>``.
    A detector's ``min_size``/``max_size`` are read from the model itself. ``metrics`` (scalars are kept) and
    ``dataset`` go into the card; ``score_threshold`` is the one ``seglab predict`` uses for the folder's
    detections or people unless given another; ``inference`` (dense models: ``mode``, ``crop_size``, ``stride``)
    records the inference a run was evaluated with.

    The state dict must rebuild: the named model is built (on the meta device: no memory, no time) and its keys
    and shapes compared, so a folder that would not load is never written. The folder is written whole
    (:func:`seglab.utils.atomic_write_folder`): an existing model folder there is replaced, anything else is
    refused. Returns the folder.
    """
    from seglab import __version__
    from seglab.checkpoint import read_checksum, save_weights
    from seglab.data.palettes import get_label_set, label_set_from_metadata, label_set_metadata
    from seglab.models import model_info
    from seglab.utils import atomic_write_folder, atomic_write_text

    directory = Path(directory)
    meta = dict(metadata or {})
    name = name or meta.get("model")
    if not name:
        raise ConfigError(f"save_pretrained({directory}): name the model (name=...) or pass a weights file's metadata")
    info = model_info(name)
    sizes = transform_sizes(model)
    detector = bool(sizes)  # takes whole images and resizes them itself, labels indexing its own label space
    if model_kwargs is None:
        model_kwargs = dict(meta.get("model_kwargs") or {}) if meta.get("model") in (None, name) else {}
        if meta.get("num_classes"):
            model_kwargs["num_classes"] = int(meta["num_classes"])
    kwargs = {k: v for k, v in model_kwargs.items() if k != "pretrained_backbone"}  # the weights are whole
    kwargs.update(sizes)
    if "num_classes" not in kwargs:
        raise ConfigError(f"save_pretrained({directory}): model_kwargs has no num_classes (the factory's "
                          "num_classes the model was built with)")
    _check_json(kwargs, directory)
    num_classes = int(kwargs["num_classes"])
    state = model.state_dict()
    _check_rebuilds(name, kwargs, state, directory)

    if isinstance(label_set, str):
        labels = get_label_set(label_set)
    elif label_set is not None:
        labels = label_set
    elif meta.get("label_set") or meta.get("label_set_classes"):
        labels = label_set_from_metadata(meta)
    else:
        labels = _generic_label_set(num_classes)
    if not detector and labels.num_classes != num_classes:
        raise ConfigError(f"save_pretrained({directory}): the label set {labels.name!r} has {labels.num_classes} "
                          f"classes but the model {num_classes}; pass the model's label set (label_set=...)")

    weights_meta: dict[str, Any] = {
        "model": name, "num_classes": num_classes,
        "model_kwargs": {k: v for k, v in kwargs.items() if k != "num_classes"}, **label_set_metadata(labels),
    }
    for key in ("classes", "label_to_cat_id", *_PROVENANCE):
        if meta.get(key) is not None:
            weights_meta[key] = meta[key]
    scalars = {k: float(v) for k, v in (metrics or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}
    config = {
        "seglab_format": FOLDER_FORMAT,
        "seglab_version": __version__,
        "model": name,
        "task": info.task,
        "num_classes": num_classes,
        "model_kwargs": kwargs,
        "label_set": {"name": labels.name, "classes": list(labels.classes),
                      "colors": [list(c) for c in labels.colors], "flip_pairs": [list(p) for p in labels.flip_pairs]},
        "preprocessing": _preprocessing(model, info, kwargs, inference),
    }
    if detector or info.people:
        config["score_threshold"] = float(score_threshold)
        if meta.get("classes"):
            config["detection_classes"] = list(meta["classes"])
        if meta.get("label_to_cat_id"):
            config["label_to_cat_id"] = {str(k): int(v) for k, v in meta["label_to_cat_id"].items()}
    for key in _PROVENANCE:
        if meta.get(key) is not None:
            config[key] = meta[key]
    if dataset:
        config["dataset"] = dataset
    if scalars:
        config["metrics"] = scalars

    def write(folder: Path) -> None:
        save_weights(folder / WEIGHTS_FILE, state, weights_meta)
        config["weights"] = {"file": WEIGHTS_FILE, "sha256": read_checksum(folder / WEIGHTS_FILE)}
        atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
        atomic_write_text(folder / CARD_FILE, model_card(config))

    return atomic_write_folder(directory, write, replaceable=lambda p: (p / CONFIG_FILE).is_file())


def save_pretrained_from_weights(weights: str | Path, directory: str | Path, **card: Any) -> Path:
    """The model folder of a seglab weights file (a run's best.safetensors, a converter's output): the model is
    rebuilt from the file's metadata (:func:`load_model`, checksum checked) and written by
    :func:`save_pretrained` with that metadata; ``card`` (``metrics``, ``dataset``, ``score_threshold``,
    ``inference``, ``label_set``) goes to it. Returns the folder."""
    from seglab.checkpoint import read_metadata

    return save_pretrained(load_model(weights), directory, metadata=read_metadata(weights), **card)


@dataclass(frozen=True)
class ModelFolder:
    """A model folder read: its ``path`` and ``config`` (config.json, checked). :meth:`load` builds the model;
    the properties give what ``seglab predict`` needs beside it."""

    path: Path
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return self.config["model"]

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return dict(self.config["model_kwargs"])

    @property
    def label_set(self) -> LabelSet:
        from seglab.data.palettes import LabelSet

        labels = self.config["label_set"]
        return LabelSet(labels["name"], tuple(labels["classes"]), tuple(tuple(c) for c in labels["colors"]),
                        tuple(tuple(p) for p in labels.get("flip_pairs") or ()))

    @property
    def score_threshold(self) -> float:
        return float(self.config.get("score_threshold", DEFAULT_SCORE_THRESHOLD))

    @property
    def metadata(self) -> dict[str, Any]:
        """The folder's facts in the form of a weights file's metadata (what the tasks' predict reads)."""
        from seglab.data.palettes import label_set_metadata

        meta: dict[str, Any] = {"model": self.name, "num_classes": self.config["num_classes"],
                                "model_kwargs": self.model_kwargs, **label_set_metadata(self.label_set)}
        if self.config.get("detection_classes"):
            meta["classes"] = list(self.config["detection_classes"])
        if self.config.get("label_to_cat_id"):
            meta["label_to_cat_id"] = dict(self.config["label_to_cat_id"])
        return meta

    def load(self, *, verify: bool = True) -> nn.Module:
        """The model, built from config.json and loaded strictly from model.safetensors (checksum checked unless
        ``verify=False``, and matched with the one config.json records); in eval mode."""
        from seglab.checkpoint import load_weights, read_checksum
        from seglab.models import create_model

        weights = self.path / self.config.get("weights", {}).get("file", WEIGHTS_FILE)
        if not weights.is_file():
            raise CheckpointError(f"{weights}: the model folder's weights file is missing")
        expected = self.config.get("weights", {}).get("sha256")
        if verify and expected and read_checksum(weights) != expected:
            raise CheckpointError(f"{weights}: not the weights {self.path / CONFIG_FILE} was written with (its "
                                  "sha256 differs); save the folder again")
        model = create_model(self.name, **self.model_kwargs)
        load_weights(model, weights, verify=verify)
        return model.eval()


def open_pretrained(name_or_path: str | Path, *, revision: str | None = None) -> ModelFolder:
    """The model folder at ``name_or_path``: a local folder holding config.json, or a Hugging Face Hub id
    ``org/name`` (``org/name@revision``, or ``revision=``) fetched with ``huggingface_hub.snapshot_download``
    (read from its cache when present; offline with ``HF_HUB_OFFLINE=1``). Raises CheckpointError naming what is
    missing or malformed."""
    path = Path(name_or_path)
    if path.is_dir():
        folder = path
    elif _HUB_ID.fullmatch(str(name_or_path)):
        folder = _hub_snapshot(str(name_or_path), revision)
    else:
        raise CheckpointError(f"{name_or_path}: neither a model folder (a directory holding {CONFIG_FILE}) nor a "
                              "Hugging Face Hub id (org/name or org/name@revision)")
    return ModelFolder(folder, read_pretrained_config(folder))


def from_pretrained(name_or_path: str | Path, *, revision: str | None = None, verify: bool = True) -> nn.Module:
    """The model of a model folder or Hub id (:func:`open_pretrained`), rebuilt from config.json alone and loaded
    strictly from model.safetensors with its SHA-256 checked (``verify=False`` skips that), **in eval mode** and on
    the CPU (move it with ``.to(device)``; call ``.train()`` to fine-tune)."""
    return open_pretrained(name_or_path, revision=revision).load(verify=verify)


def read_pretrained_config(folder: str | Path) -> dict[str, Any]:
    """A model folder's config.json, checked for what rebuilding the model needs; CheckpointError naming the file
    and the field otherwise."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; a seglab model folder holds {', '.join(HUB_FILES)} "
                              "(written by seglab.save_pretrained)")
    from seglab.checkpoint import read_json_object

    config = read_json_object(path)
    version = config.get("seglab_format")
    if not isinstance(version, int) or version > FOLDER_FORMAT:
        raise CheckpointError(f"{path}: seglab_format {version!r}; this seglab reads folders of format "
                              f"{FOLDER_FORMAT} or below (a newer seglab wrote it? upgrade seglab)")
    checks = {
        "model": lambda v: isinstance(v, str) and v,
        "num_classes": lambda v: isinstance(v, int) and v > 0,
        "model_kwargs": lambda v: isinstance(v, dict) and v.get("num_classes") == config.get("num_classes"),
        "label_set": lambda v: isinstance(v, dict) and isinstance(v.get("classes"), list)
        and isinstance(v.get("colors"), list) and len(v["classes"]) == len(v["colors"]),
    }
    for key, ok in checks.items():
        if not ok(config.get(key)):
            raise CheckpointError(f"{path}: field {key!r} is missing or malformed (got {config.get(key)!r})")
    return config


def model_reference(value: str) -> str:
    """What a ``--model`` value names: ``"name"`` (a registered model, used with a weights file), ``"folder"`` (a
    directory holding config.json) or ``"hub"`` (a Hugging Face Hub id ``org/name[@revision]``). A registered
    name stays a name even if a folder of that name exists. Anything else is a ConfigError listing the three."""
    from seglab.models import list_models

    if value in list_models():
        return "name"
    path = Path(value)
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise ConfigError(f"--model {value}: the folder holds no {CONFIG_FILE}, so it is not a seglab model "
                              "folder (seglab.save_pretrained, or seglab convert ... --out-dir, writes one)")
        return "folder"
    if _HUB_ID.fullmatch(value):
        return "hub"
    raise ConfigError(f"--model {value!r}: expected a registered model name (seglab models lists them; used with "
                      f"--weights), a model folder (a directory holding {CONFIG_FILE}), or a Hugging Face Hub id "
                      "(org/name or org/name@revision)")


@dataclass(frozen=True)
class LoadedModel:
    """A model with what predicting and exporting need beside it: its registered name and factory options, the
    facts in weights-metadata form (label set, instance classes and category ids) and, for a model folder, the
    score threshold it recommends (None: the caller's default)."""

    model: nn.Module
    name: str
    kwargs: dict[str, Any]
    metadata: dict[str, Any]
    score_threshold: float | None = None


def load_any(
    model: str | None = None, weights: str | Path | None = None, *, num_classes: int | None = None,
    config: Config | None = None,
) -> LoadedModel:
    """What ``seglab predict|eval|export --model M [--weights W]`` loads: a model folder or Hub id ``model``
    (:func:`open_pretrained`, no ``weights``), else the weights file ``weights`` with ``model`` as the registered
    name overriding the recorded one (:func:`load_model`). Eval mode is not set."""
    from seglab.checkpoint import read_metadata

    if model is not None and model_reference(model) != "name":
        if weights is not None or num_classes:
            raise ConfigError(f"--model {model}: a model folder holds its weights and classes; drop --weights and "
                              "--num-classes (they go with a registered model name)")
        folder = open_pretrained(model)
        return LoadedModel(folder.load(), folder.name, folder.model_kwargs, folder.metadata, folder.score_threshold)
    if weights is None:
        raise ConfigError("no weights: pass --weights W (a weights file), or --model with a model folder or Hub id")
    name, kwargs = model_spec(weights, name=model, num_classes=num_classes, config=config)
    loaded = load_model(weights, name=model, num_classes=num_classes, config=config)
    return LoadedModel(loaded, name, kwargs, read_metadata(weights))


def model_card(config: Mapping[str, Any]) -> str:
    """The README.md of a model folder: what the model is, its classes, data and metrics, and how to load it."""
    name, task = config["model"], config["task"]
    labels = config["label_set"]
    lines = [
        "---", "library_name: seglab", f"tags: [seglab, image-segmentation, {task}]",
        "---", "", f"# {name}", "",
        f"A seglab `{name}` ({task} segmentation) with {config['num_classes']} classes "
        f"(label set `{labels['name']}`)" + (f", trained on `{config['dataset']}`." if config.get("dataset") else "."),
        "",
    ]
    if config.get("source"):
        lines += [f"Converted from: {config['source']}.", ""]
    if config.get("metrics"):
        lines += ["## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4f} |" for k, v in config["metrics"].items()]
        lines.append("")
    pre = config["preprocessing"]
    lines += ["## Input", "", f"{pre['input']}. Mean {pre['mean']}, std {pre['std']}; {pre['resize']}.", ""]
    if "score_threshold" in config:
        lines += [f"`seglab predict` keeps detections scoring at least {config['score_threshold']} "
                  "(`--score-threshold` sets another).", ""]
    lines += [
        "## Use", "", "In Python (the folder, or its Hugging Face Hub id `org/name`; the model comes in eval mode):",
        "", "```python", "import seglab", "", 'model = seglab.from_pretrained("path/to/this/folder")', "```", "",
        "With the command line:", "", "```", "seglab predict images/ --model path/to/this/folder --out out/", "```",
        "", "## Classes", "", ", ".join(f"{i} {c}" for i, c in enumerate(labels["classes"])), "",
        f"Factory options: `{json.dumps(config['model_kwargs'])}`. Written by seglab {config['seglab_version']}.", "",
    ]
    return "\n".join(lines)


def _preprocessing(model: nn.Module, info: Any, kwargs: Mapping[str, Any],
                   inference: Mapping[str, Any] | None) -> dict[str, Any]:
    """How images enter the model: channel order, scaling, mean/std and the resize policy."""
    from seglab.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    transform = getattr(model, "transform", None)
    if "min_size" in kwargs and transform is not None:
        return {
            "input": "RGB, scaled to 0-1; the model normalises and resizes it itself",
            "mean": [float(v) for v in transform.image_mean], "std": [float(v) for v in transform.image_std],
            "resize": f"shorter side to min_size {kwargs['min_size']}, longer side at most max_size "
                      f"{kwargs['max_size']}, outputs at the input's size",
            "min_size": kwargs["min_size"], "max_size": kwargs["max_size"],
        }
    policy = {"mode": "whole", "crop_size": list(info.input_size)}
    policy.update({k: list(v) if isinstance(v, (list, tuple)) else v for k, v in (inference or {}).items()})
    return {
        "input": "RGB, scaled to 0-1 and normalised with ImageNet's mean/std (seglab's Predictor does both)",
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "resize": f"none: any height and width, logits at the input's size; evaluated in {policy['mode']} mode "
                  f"(crop {policy['crop_size']})",
        **policy,
    }


def _check_rebuilds(name: str, kwargs: Mapping[str, Any], state: Mapping[str, Any], directory: Path) -> None:
    """The state dict must load into ``create_model(name, **kwargs)`` (built on the meta device)."""
    import torch

    from seglab.checkpoint import state_dict_problems
    from seglab.models import create_model

    with torch.device("meta"):
        built = create_model(name, **kwargs)
    problems = state_dict_problems(built.state_dict(), state)
    if problems:
        raise CheckpointError(f"save_pretrained({directory}): the model's weights do not fit {name} built with "
                              f"{dict(kwargs)} ({' | '.join(problems)}); pass the name and factory options it was "
                              "built with")


def _check_json(kwargs: Mapping[str, Any], directory: Path) -> None:
    for key, value in kwargs.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise ConfigError(f"save_pretrained({directory}): model_kwargs[{key!r}] = {value!r} is not a JSON value; "
                              "a model folder rebuilds its model from JSON factory options") from None


def _generic_label_set(num_classes: int) -> LabelSet:
    from seglab.data.palettes import LabelSet, voc_colormap

    return LabelSet("classes", tuple(f"class_{i}" for i in range(num_classes)), tuple(voc_colormap(num_classes)))


def _hub_snapshot(hub_id: str, revision: str | None) -> Path:
    """The local folder of Hub repository ``hub_id`` (``org/name[@revision]``) at ``revision``."""
    repo_id, _, at = hub_id.partition("@")
    revision = revision or at or None
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise CheckpointError(f"{hub_id}: loading from the Hugging Face Hub needs huggingface_hub: "
                              'pip install "seglab[hub]"') from None
    where = f"{repo_id}" + (f" at revision {revision}" if revision else "")
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES, library_name="seglab")
    except LocalEntryNotFoundError:
        raise CheckpointError(f"{where}: not in the Hugging Face cache and the Hub cannot be reached (offline, "
                              "HF_HUB_OFFLINE=1, or no network); download it once online, or pass a local model "
                              "folder") from None
    except (HfHubHTTPError, OSError) as exc:
        raise CheckpointError(f"{where}: could not be fetched from the Hugging Face Hub ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return Path(folder)


__all__ = [
    "CARD_FILE", "CONFIG_FILE", "DEFAULT_SCORE_THRESHOLD", "WEIGHTS_FILE", "LoadedModel", "ModelFolder",
    "from_pretrained", "load_any", "load_model", "model_card", "model_reference", "model_spec", "open_pretrained",
    "read_pretrained_config", "save_pretrained", "save_pretrained_from_weights", "transform_sizes",
]
