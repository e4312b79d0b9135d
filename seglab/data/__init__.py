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
    from seglab.data.datasets.voc import PairedSegmentationDataset

DATASETS = ("demo", "folder", "voc")


def build_dataset(cfg: DataConfig, split: str, train: bool) -> PairedSegmentationDataset:
    """The dataset ``cfg.dataset`` for ``split``, with the training or evaluation transforms."""
    if cfg.dataset not in DATASETS:
        raise ConfigError(f"data.dataset: unknown dataset {cfg.dataset!r}; expected one of: {', '.join(DATASETS)}")
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


__all__ = ["DATASETS", "build_dataset"]
