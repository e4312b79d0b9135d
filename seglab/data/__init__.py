"""Data: label sets, image/label I/O, joint transforms and dataset loaders.

``build_dataset`` turns the ``data`` section of a config into a dataset. Importing this package is
light: the loaders, torchvision transforms and optional readers (scipy for SBD, pycocotools for the
demo's COCO file) load only when used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from seglab.config import DataConfig
from seglab.errors import ConfigError

if TYPE_CHECKING:
    from seglab.data.datasets.cihp import CIHPDataset
    from seglab.data.datasets.coco import COCOInstances
    from seglab.data.datasets.voc import PairedSegmentationDataset
    from seglab.data.palettes import LabelSet

# human-parsing datasets and the label set each uses when data.palette is left at its default ("voc")
PARSING_DATASETS = {
    "lip": "lip", "atr": "atr", "pascal_person_part": "pascal_person_part", "demo_people": "lip",
    "cihp": "cihp", "demo_people_cihp": "cihp",
}  # fmt: skip
DATASETS = ("coco", "demo", "folder", "voc", *PARSING_DATASETS)
TASKS = ("semantic", "instance", "parsing")
INSTANCE_DATASETS = ("coco", "demo", "cihp", "demo_people_cihp")
AUGMENTS = ("crop", "person_affine")


def build_dataset(
    cfg: DataConfig, split: str, train: bool, task: str = "semantic"
) -> PairedSegmentationDataset | COCOInstances | CIHPDataset:
    """The dataset ``cfg.dataset`` for ``split`` and ``task``, with the training or evaluation transforms.

    Instance data are COCO files: ``coco`` reads the official layout under ``cfg.root``, ``demo`` the
    demo's ``annotations/instances_<split>.json`` beside ``JPEGImages/``; ``cihp`` / ``demo_people_cihp`` give
    CIHP's per-person parsing items. The parsing datasets (task "parsing" or "semantic") are described in
    :func:`_build_parsing_dataset`.
    """
    if task not in TASKS:
        raise ConfigError(f"task: unknown task {task!r}; expected one of: {', '.join(TASKS)}")
    if cfg.dataset not in DATASETS:
        raise ConfigError(f"data.dataset: unknown dataset {cfg.dataset!r}; expected one of: {', '.join(DATASETS)}")
    if task == "instance":
        if cfg.dataset in PARSING_DATASETS:
            return _build_cihp_instances(cfg, split, train)
        return _build_instance_dataset(cfg, split, train)
    if cfg.dataset in PARSING_DATASETS:
        return _build_parsing_dataset(cfg, split, train)
    if task == "parsing":
        raise ConfigError(f"data.dataset: {cfg.dataset!r} is not a human-parsing dataset; for the parsing task "
                          f"expected one of: {', '.join(PARSING_DATASETS)}")
    if cfg.dataset == "coco":
        raise ConfigError("data.dataset: 'coco' holds instance annotations; use it with the instance task, "
                          f"or a semantic dataset ({', '.join(d for d in DATASETS if d != 'coco')})")
    from seglab.data.datasets import FolderSegmentation, VOCSegmentation, ensure_demo_data
    from seglab.data.palettes import get_label_set
    from seglab.data.transforms import build_transforms

    try:
        label_set = get_label_set(cfg.palette)
    except KeyError as exc:
        raise ConfigError(f"data.palette: {exc.args[0]}") from None
    transforms = build_transforms(cfg, train)
    if cfg.dataset == "voc":
        sbd_root = (cfg.sbd_root or None) if split == cfg.train_split else None
        return VOCSegmentation(cfg.root, split, transforms, sbd_root=sbd_root, label_set=label_set)
    if cfg.dataset == "demo":
        root = cfg.root or ensure_demo_data()
        return VOCSegmentation(root, split, transforms, label_set=label_set)
    if not cfg.root:
        raise ConfigError("data.root: the folder dataset needs data.root (a folder with images/ and masks/)")
    return FolderSegmentation(cfg.root, split, transforms, label_set=label_set)


def label_set_for(cfg: DataConfig) -> LabelSet:
    """The label set of a data config: ``data.palette``, except that the parsing datasets take their own when it is
    left at its default ("voc")."""
    from seglab.data.palettes import get_label_set

    name = PARSING_DATASETS[cfg.dataset] if cfg.dataset in PARSING_DATASETS and cfg.palette == "voc" else cfg.palette
    try:
        return get_label_set(name)
    except KeyError as exc:
        raise ConfigError(f"data.palette: {exc.args[0]}") from None


def _parsing_root(cfg: DataConfig) -> str:
    """``cfg.root``, or for the demo people the LIP/ or CIHP/ part of the generated folder (``cfg.root`` if set)."""
    if cfg.dataset.startswith("demo_people"):
        part = "CIHP" if cfg.dataset == "demo_people_cihp" else "LIP"
        if cfg.root:
            return str(Path(cfg.root) / part) if (Path(cfg.root) / part).is_dir() else cfg.root
        from seglab.data.datasets.demo_people import ensure_demo_people

        return str(ensure_demo_people() / part)
    if not cfg.root:
        raise ConfigError(f"data.root: the {cfg.dataset} dataset needs data.root (the folder of its official layout)")
    return cfg.root


def _build_parsing_dataset(cfg: DataConfig, split: str, train: bool) -> Any:
    """LIP / ATR / Pascal-Person-Part / demo people (LIP layout) or CIHP / demo people (CIHP layout), semantic items.

    The label set is the dataset's own unless ``data.palette`` names another one (its default "voc" means the
    dataset's). Training: ``data.augment`` "crop" is the scale/crop/flip pipeline of
    :func:`~seglab.data.transforms.build_transforms` (its flip swaps ``data.label_swap``, or the label set's flip
    pairs when that is empty); "person_affine" is SCHP's :class:`~seglab.data.parsing_transforms.PersonAffine`
    to ``data.crop_size``. Evaluation keeps the original image (no warp), as the Predictor runs at any size.
    Joints (``with_pose``) and person ids (``with_humans``) are moved by person_affine only.
    """
    import dataclasses

    from seglab.data.palettes import get_label_set
    from seglab.data.parsing_transforms import PairStepsTransform, PersonAffine
    from seglab.data.transforms import build_transforms

    if cfg.augment not in AUGMENTS:
        raise ConfigError(f"data.augment: unknown augmentation {cfg.augment!r}; expected one of: {', '.join(AUGMENTS)}")
    is_cihp = PARSING_DATASETS[cfg.dataset] == "cihp"
    if cfg.with_pose and is_cihp:
        raise ConfigError(f"data.with_pose: {cfg.dataset!r} has no pose annotations; pose is read for LIP layouts")
    if cfg.with_humans and not is_cihp:
        raise ConfigError(f"data.with_humans: {cfg.dataset!r} has no person ids; expected cihp or demo_people_cihp")
    name = cfg.palette if cfg.palette != "voc" else PARSING_DATASETS[cfg.dataset]
    try:
        label_set = get_label_set(name)
    except KeyError as exc:
        raise ConfigError(f"data.palette: {exc.args[0]}") from None
    transform = None
    if train and cfg.augment == "person_affine":
        if len(cfg.crop_size) != 2 or min(cfg.crop_size) < 2:
            raise ConfigError(f"data.crop_size: expected [H, W] with both >= 2, got {cfg.crop_size}")
        if not 0 <= cfg.scale_factor < 1:
            raise ConfigError(f"data.scale_factor: expected a value in [0, 1), got {cfg.scale_factor}")
        if not 0 <= cfg.rotation_p <= 1:
            raise ConfigError(f"data.rotation_p: expected a probability in [0, 1], got {cfg.rotation_p}")
        flip_pairs = [tuple(p) for p in cfg.label_swap] or label_set.flip_pairs
        transform = PersonAffine(cfg.crop_size, cfg.scale_factor, cfg.rotation, cfg.rotation_p,
                                 flip_p=0.5 if cfg.hflip else 0.0, flip_pairs=flip_pairs, train=True)
    elif train:
        for key in ("with_pose", "with_humans"):
            if getattr(cfg, key):
                raise ConfigError(f"data.{key}: training with {key} needs data.augment: person_affine "
                                  "(the crop pipeline moves the label map only)")
        if not cfg.label_swap and label_set.flip_pairs:
            cfg = dataclasses.replace(cfg, label_swap=[list(p) for p in label_set.flip_pairs])
        transform = PairStepsTransform(build_transforms(cfg, train=True).steps)
    root = _parsing_root(cfg)
    if is_cihp:
        from seglab.data.datasets.cihp import CIHPDataset

        return CIHPDataset(root, split, transform, with_humans=cfg.with_humans)
    from seglab.data.datasets.lip import LIPDataset

    return LIPDataset(root, split, transform, with_pose=cfg.with_pose, label_set=label_set)


def _build_cihp_instances(cfg: DataConfig, split: str, train: bool) -> CIHPDataset:
    """CIHP instance items (Parsing R-CNN): the detection pipeline, its flip replaced by one that swaps part labels."""
    if PARSING_DATASETS[cfg.dataset] != "cihp":
        raise ConfigError(f"data.dataset: {cfg.dataset!r} has no person instances; for the instance task "
                          f"expected one of: {', '.join(INSTANCE_DATASETS)}")
    import dataclasses

    from torchvision.transforms import v2

    from seglab.data.datasets.cihp import CIHPDataset
    from seglab.data.instance_transforms import build_instance_transforms
    from seglab.data.palettes import LIP_FLIP_PAIRS
    from seglab.data.parsing_transforms import InstanceFlipWithSwap

    pipeline = build_instance_transforms(dataclasses.replace(cfg, hflip=False), train)
    if train and cfg.hflip:
        pipeline = v2.Compose([InstanceFlipWithSwap(LIP_FLIP_PAIRS, p=0.5), *pipeline.transforms])
    return CIHPDataset(_parsing_root(cfg), split, pipeline, instance=True)


def _build_instance_dataset(cfg: DataConfig, split: str, train: bool) -> COCOInstances:
    if cfg.dataset not in INSTANCE_DATASETS:
        raise ConfigError(f"data.dataset: {cfg.dataset!r} has no instance annotations; for the instance task "
                          f"expected one of: {', '.join(INSTANCE_DATASETS)}")
    from seglab.data.datasets import COCOInstances, coco_layout, ensure_demo_data
    from seglab.data.instance_transforms import build_instance_transforms

    if cfg.dataset == "coco" and not cfg.root:
        raise ConfigError("data.root: the coco dataset needs data.root (the folder with annotations/ and <split>/)")
    root = cfg.root or ensure_demo_data()
    ann_file, image_dir = coco_layout(root, split)
    return COCOInstances(ann_file, image_dir, build_instance_transforms(cfg, train))


__all__ = ["AUGMENTS", "DATASETS", "INSTANCE_DATASETS", "PARSING_DATASETS", "TASKS", "build_dataset", "label_set_for"]
