"""Data: label sets, image/label I/O, joint transforms and dataset loaders.

``build_dataset`` turns the ``data`` section of a config into a dataset. Importing this package is
light: the loaders, torchvision transforms and optional readers (scipy for SBD, pycocotools for the
demo's COCO file) load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from seglab.config import DataConfig
from seglab.errors import ConfigError

if TYPE_CHECKING:
    from seglab.data.datasets.coco import COCOInstances
    from seglab.data.datasets.voc import PairedSegmentationDataset

DATASETS = ("coco", "demo", "folder", "voc")
TASKS = ("semantic", "instance")
INSTANCE_DATASETS = ("coco", "demo")


def build_dataset(
    cfg: DataConfig, split: str, train: bool, task: str = "semantic"
) -> PairedSegmentationDataset | COCOInstances:
    """The dataset ``cfg.dataset`` for ``split`` and ``task``, with the training or evaluation transforms.

    Instance data are COCO files: ``coco`` reads the official layout under ``cfg.root``, ``demo`` the
    demo's ``annotations/instances_<split>.json`` beside ``JPEGImages/``.
    """
    if task not in TASKS:
        raise ConfigError(f"task: unknown task {task!r}; expected one of: {', '.join(TASKS)}")
    if cfg.dataset not in DATASETS:
        raise ConfigError(f"data.dataset: unknown dataset {cfg.dataset!r}; expected one of: {', '.join(DATASETS)}")
    if task == "instance":
        return _build_instance_dataset(cfg, split, train)
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


__all__ = ["DATASETS", "INSTANCE_DATASETS", "TASKS", "build_dataset"]
