"""ADE20K SceneParsing (Zhou et al., "Scene Parsing through ADE20K Dataset", CVPR 2017) in the layout of the
challenge's ``ADEChallengeData2016`` release (:data:`TREE`), with its 150 classes.

Annotation PNGs hold 0-150, where 0 is "other" (no class): it is ignored (255) and every class value k becomes
train id k - 1, the rule mmsegmentation calls ``reduce_zero_label`` and evaluates ADE20K with.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from seglab.config import DataConfig
from seglab.data.datasets.voc import PairedSegmentationDataset, pair_by_name, scan_by_name
from seglab.data.palettes import LabelSet, get_label_set
from seglab.data.registry import (
    AddProblem,
    Layout,
    Sample,
    config_label_set,
    config_root,
    lookup_table,
    register_dataset,
    register_layout,
)
from seglab.errors import DatasetError

TREE = """
ADEChallengeData2016/
  images/training/ADE_train_<n>.jpg          20,210 images
  images/validation/ADE_val_<n>.jpg          2,000 images
  annotations/training/ADE_train_<n>.png     0 = other (ignored), 1-150 = classes (train ids 0-149)
  annotations/validation/ADE_val_<n>.png
"""

LAYOUT = "expected ADEChallengeData2016/images/<split>/*.jpg and annotations/<split>/*.png (split training, validation)"
SPLITS = {"train": "training", "val": "validation"}  # the config's split names -> the release's folders
_REDUCE_ZERO = lookup_table({k: k - 1 for k in range(1, 255)})  # 0 -> 255, k -> k - 1, 255 stays 255


def reduce_zero_label(path: Path, values: np.ndarray) -> np.ndarray:
    """ADE20K's annotation values as train ids: 0 ("other") -> 255, k -> k - 1."""
    return _REDUCE_ZERO[values]


def _folders(root: Path, split: str) -> tuple[Path, Path]:
    folder = SPLITS.get(split, split)
    return root / "images" / folder, root / "annotations" / folder


class ADE20KSegmentation(PairedSegmentationDataset):
    """ADE20K ``split`` ("train"/"training" or "val"/"validation") under ``root`` (ADEChallengeData2016)."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Callable[[Any, np.ndarray], Any] | None = None,
        label_set: LabelSet | None = None,
    ) -> None:
        self.root, self.split = Path(root), split
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: ADE20K root folder not found; {LAYOUT}")
        ids, images, labels = pair_by_name(*_folders(self.root, split), (".jpg",), lambda stem: f"{stem}.png", LAYOUT)
        super().__init__(ids, images, labels, transforms, label_set or get_label_set("ade20k"), reduce_zero_label)


# -- registration ------------------------------------------------------------------------------------------


def _detect(root: Path) -> bool:
    return (root / "images" / "training").is_dir() or (root / "annotations" / "validation").is_dir()


def _scan(root: Path, splits: list[str] | None, add: AddProblem) -> dict[str, list[Sample]]:
    if splits is None:
        splits = [s for s in SPLITS.values() if (root / "images" / s).is_dir()]
    return {s: scan_by_name(*_folders(root, s), (".jpg",), lambda stem: f"{stem}.png", add) for s in splits}


ADE20K = register_layout(Layout("ade20k", TREE, "ade20k", _detect, _scan, map_label=reduce_zero_label))


def _build(cfg: DataConfig, split: str, train: bool) -> ADE20KSegmentation:
    from seglab.data.transforms import build_transforms

    return ADE20KSegmentation(config_root(cfg), split, build_transforms(cfg, train), config_label_set(cfg, "ade20k"))


register_dataset(
    "ade20k",
    builders={"semantic": _build},
    label_set="ade20k",
    layouts=(ADE20K,),
    summary="ADE20K SceneParsing (`data.root`: ADEChallengeData2016), 150 classes, 0 = other ignored",
)

__all__ = ["ADE20K", "ADE20KSegmentation", "reduce_zero_label"]
