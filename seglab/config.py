"""Run configuration: YAML files loaded into typed dataclasses, with ``key.sub=value`` overrides.

A config file is small and flat: one section per concern (model, data, optim, schedule, train, eval).
Unknown keys and wrong types raise :class:`~seglab.errors.ConfigError` naming the file and the key,
so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from seglab.errors import ConfigError


@dataclass
class ModelConfig:
    name: str = "unet"
    num_classes: int = 21
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra factory options


@dataclass
class DataConfig:
    dataset: str = "voc"  # a registered dataset: seglab.data.datasets.list_datasets(), the table in docs/datasets.md
    root: str = ""  # dataset root; for "demo" empty means the demo cache folder
    train_split: str = "train"
    val_split: str = "val"
    sbd_root: str = ""  # optional SBD benchmark_RELEASE folder merged into the VOC train split
    crop_size: list[int] = field(default_factory=lambda: [512, 512])  # [H, W]
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    base_size: int = 0  # if > 0, images are resized so the longer side is base_size before scaling
    hflip: bool = True
    label_swap: list[list[int]] = field(default_factory=list)  # pairs swapped by a horizontal flip
    color_jitter: float = 0.0  # brightness/contrast/saturation strength; 0 disables
    batch_size: int = 8
    workers: int = 2
    palette: str = "voc"  # label set name (seglab.data.palettes); left at "voc", the dataset's own is used
    classes: list[str] = field(default_factory=list)  # class names in index order: a label set of one's own
    colors: list[list[int]] = field(default_factory=list)  # [R, G, B] per class of data.classes; empty: VOC's map
    # Human parsing (lip, cihp, atr, pascal_person_part, demo_people): "crop" = the scale/crop/flip pipeline above,
    # "person_affine" = SCHP's person-centric affine warp to crop_size (scale, rotation, flip with left/right swap)
    augment: str = "crop"
    rotation: float = 30.0  # person_affine: rotation factor in degrees (drawn as clip(N(0,1)*r, -2r, 2r))
    rotation_p: float = 0.6  # person_affine: probability of rotating
    scale_factor: float = 0.25  # person_affine: scale drawn as clip(1 + N(0,1)*sf, 1-sf, 1+sf)
    with_pose: bool = False  # lip / demo_people: targets are {"mask", "joints"} (training needs person_affine)
    with_humans: bool = False  # cihp / demo_people_cihp: targets are {"mask", "human_ids"} (same)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class ScheduleConfig:
    name: str = "poly"  # poly | cosine
    power: float = 0.9
    min_lr: float = 0.0
    warmup_iters: int = 0
    warmup_ratio: float = 0.1  # lr at iteration 0 = warmup_ratio * lr


@dataclass
class TrainConfig:
    iters: int = 1000
    eval_interval: int = 500  # 0: evaluate only at the end
    checkpoint_interval: int = 500
    log_interval: int = 10
    aux_weights: list[float] = field(default_factory=list)  # weights of the model's "aux" outputs
    class_weights: list[float] = field(default_factory=list)  # per-class CE weights; empty = uniform
    # FRRN's bootstrapped CE: 0 = plain CE; >= 1 = the K hardest pixels per image; in (0, 1) = that fraction
    bootstrap_top_k: float = 0.0
    # none | median_frequency (SegNet's weights from the training labels, used when class_weights is empty)
    # | enet (ENet's 1 / ln(1.02 + p_c), p_c the class's share of the training labels' pixels)
    class_weighting: str = "none"
    # BiSeNet's OHEM cross-entropy (seglab.losses.OhemCrossEntropy): 0 = off; in (0, 1) = the probability of
    # the true class below which a pixel is hard; only the hard pixels are averaged, but at least
    # ohem_min_kept of them (>= 1: a pixel count per batch; in (0, 1): that fraction of the labelled pixels)
    ohem_thresh: float = 0.0
    ohem_min_kept: float = 0.0
    amp: bool = False  # deprecated alias of precision: bf16
    precision: str = "fp32"  # fp32 | bf16 (autocast, CPU and GPU) | fp16 (autocast + GradScaler, GPU only)
    accumulate_steps: int = 1  # micro-batches of data.batch_size per optimiser step
    channels_last: bool = False  # model and input images in channels-last memory format
    sync_bn: bool = False  # BatchNorm -> SyncBatchNorm in distributed runs (CUDA only)
    find_unused_parameters: bool = False  # DDP option, for models with parameters unused in a step
    dist_timeout_s: float = 600.0  # distributed: a collective waiting longer for a hung process is an error
    logger: str = "jsonl"  # jsonl | tensorboard (metrics.jsonl is always written)
    grad_clip: float = 0.0  # max gradient norm; 0 disables
    loss: str = "ce"  # ce (SegmentationLoss) | ce2p | jppnet | ss_jppnet | pgn (the parsing models' losses)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class EvalConfig:
    mode: str = "whole"  # whole | slide | affine (SCHP's warp to crop_size, seglab.engine.affine)
    crop_size: list[int] = field(default_factory=lambda: [512, 512])
    stride: list[int] = field(default_factory=lambda: [341, 341])
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    batch_size: int = 1
    # classes absent from ground truth and prediction: "nan" leaves them out of the mean (most toolkits),
    # "zero" counts them as IoU 0 (SCHP's LIP rule: the mean is over all classes)
    absent: str = "nan"
    # what is reported besides aAcc, mAcc, mIoU and fwIoU (always there): any of EVAL_METRICS
    metrics: list[str] = field(default_factory=lambda: ["miou"])

    def __post_init__(self) -> None:
        check_eval_metrics(self.metrics)


# the names eval.metrics accepts: mIoU (with aAcc, mAcc, fwIoU), mDice, mFscore (with mPrecision and mRecall) as
# mmsegmentation's IoUMetric computes them, and Boundary IoU (seglab.engine.evaluator, seglab.engine.boundary)
EVAL_METRICS = ("miou", "dice", "fscore", "boundary_iou")


def check_eval_metrics(names: Any, key: str = "eval.metrics") -> tuple[str, ...]:
    """``names`` checked against :data:`EVAL_METRICS`, in that order, each once ("miou" is always among them);
    an unknown name is a ConfigError naming ``key`` and the accepted names."""
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{key}: expected a list of metric names from {', '.join(EVAL_METRICS)}, got {names!r}")
    unknown = [n for n in names if n not in EVAL_METRICS]
    if unknown:
        raise ConfigError(f"{key}: unknown metric {', '.join(map(repr, unknown))}; expected names from: "
                          f"{', '.join(EVAL_METRICS)}")
    return tuple(n for n in EVAL_METRICS if n == "miou" or n in names)


@dataclass
class SelfCorrectionConfig:
    """SCHP's self-correction (seglab.methods.self_correction): cycles of ``cycle_len`` iterations from
    ``cycle_start`` on, each ending with model aggregation and BatchNorm re-estimation; the learning rate follows
    SCHP's warm-up, cosine and cyclical restarts (schedule.warmup_iters is the warm-up; schedule.name is unused)."""

    enabled: bool = False
    cycle_start: int = 0  # iteration at which the first cycle ends (SCHP: epoch 100 of 150)
    cycle_len: int = 0  # iterations per cycle (SCHP: 10 epochs)
    bn_batches: int = 50  # training batches for the BatchNorm re-estimation at each cycle end
    lambda_s: float = 1.0  # parsing (Lovasz + CE / KL) weight
    lambda_e: float = 1.0  # edge loss weight
    lambda_c: float = 0.1  # parsing-edge consistency weight


@dataclass
class Config:
    name: str = "run"
    output_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    self_correction: SelfCorrectionConfig = field(default_factory=SelfCorrectionConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it (ints are accepted for floats)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, where, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: key '{where}' expects {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{source}: key '{where}' expects null, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{where}' expects a mapping (section), got {value!r}")
        return _build(tp, value, where, source)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: key '{where}' expects a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_convert(v, item_tp, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{where}' expects a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool or tp is str:
        if isinstance(value, tp):
            return value
    else:
        raise TypeError(f"unsupported config annotation {tp!r} at {where}")
    raise ConfigError(f"{source}: key '{where}' expects {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: dict, prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(
                f"{source}: unknown key '{where}'; expected one of: {', '.join(sorted(names))}"
            )
        kwargs[key] = _convert(value, hints[key], where, source)
    return cls(**kwargs)


def config_from_dict(data: dict, source: str = "<dict>") -> Config:
    """Build a :class:`Config` from a nested mapping, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    return _build(Config, data, "", source)


def _set_path(data: dict, dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: cannot set '{dotted}': '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(data: dict, overrides: list[str], source: str = "command line") -> dict:
    """Apply ``key.sub=value`` strings to a nested mapping; values are parsed as YAML scalars/lists."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: override {item!r}: value is not valid YAML: {exc}") from None
        _set_path(data, key.strip(), value, source)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``overrides``."""
    data: dict = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping at the top level")
    if overrides:
        try:
            apply_overrides(data, overrides)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return config_from_dict(data, source)


def config_to_dict(cfg: Config) -> dict:
    """The config as plain data, for writing ``runs/<name>/config.yaml``."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the config as YAML, atomically."""
    from seglab.utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
