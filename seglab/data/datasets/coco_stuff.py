"""COCO-Stuff 164k (Caesar et al., "COCO-Stuff: Thing and Stuff Classes in Context", CVPR 2018) in its release
layout (:data:`TREE`), with 171 classes.

The release's ``stuffthingmaps_trainval2017`` PNGs hold 0-181 (COCO category id - 1; 255 unlabeled), of which
11 thing ids never occur (COCO's unused category ids): the 171 that do are renumbered 0-170 in order
(:data:`RAW_TO_TRAIN`), the others -> 255. A ``<name>_labelTrainIds.png`` beside the raw map (what
mmsegmentation's converter writes, the same numbering) is read as it is.
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
cocostuff/
  images/train2017/<id>.jpg                       118k images
  images/val2017/<id>.jpg                         5k images
  annotations/train2017/<id>.png                  raw stuffthingmaps: 0-181 (11 ids unused), 255 unlabeled
  annotations/train2017/<id>_labelTrainIds.png    optional: train ids 0-170, read as they are
  annotations/val2017/...
"""

LAYOUT = ("expected images/<split>/<id>.jpg with annotations/<split>/<id>_labelTrainIds.png or <id>.png "
          "(split train2017, val2017)")
SPLITS = {"train": "train2017", "val": "val2017"}  # the config's split names -> the release's folders
UNUSED_RAW_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)  # COCO category ids 12, 26, 29, 30, 45, ... 91 - 1
RAW_TO_TRAIN = {raw: train for train, raw in enumerate(i for i in range(182) if i not in UNUSED_RAW_IDS)}
_TO_TRAIN = lookup_table(RAW_TO_TRAIN)


def to_train_ids(path: Path, values: np.ndarray) -> np.ndarray:
    """The train ids of a COCO-Stuff label file: ``*_labelTrainIds.png`` as it is, raw ids through the table."""
    return values if path.name.endswith("_labelTrainIds.png") else _TO_TRAIN[values]


def _folders(root: Path, split: str) -> tuple[Path, Path]:
    folder = SPLITS.get(split, split)
    return root / "images" / folder, root / "annotations" / folder


def _label_name(labels_dir: Path) -> Callable[[str], str]:
    def name(stem: str) -> str:
        train_ids = f"{stem}_labelTrainIds.png"
        return train_ids if (labels_dir / train_ids).is_file() else f"{stem}.png"

    return name


class COCOStuffSegmentation(PairedSegmentationDataset):
    """COCO-Stuff 164k ``split`` ("train"/"train2017" or "val"/"val2017") under ``root``, 171 classes."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Callable[[Any, np.ndarray], Any] | None = None,
        label_set: LabelSet | None = None,
    ) -> None:
        self.root, self.split = Path(root), split
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: COCO-Stuff root folder not found; {LAYOUT}")
        images_dir, labels_dir = _folders(self.root, split)
        ids, images, labels = pair_by_name(images_dir, labels_dir, (".jpg",), _label_name(labels_dir), LAYOUT)
        super().__init__(ids, images, labels, transforms, label_set or get_label_set("coco_stuff"), to_train_ids)


# -- registration ------------------------------------------------------------------------------------------


def _detect(root: Path) -> bool:
    return any((root / "images" / s).is_dir() and (root / "annotations" / s).is_dir() for s in SPLITS.values())


def _scan(root: Path, splits: list[str] | None, add: AddProblem) -> dict[str, list[Sample]]:
    if splits is None:
        splits = [s for s in SPLITS.values() if (root / "images" / s).is_dir()]
    found = {}
    for split in splits:
        images_dir, labels_dir = _folders(root, split)
        found[split] = scan_by_name(images_dir, labels_dir, (".jpg",), _label_name(labels_dir), add)
    return found


COCO_STUFF = register_layout(Layout("coco_stuff", TREE, "coco_stuff", _detect, _scan, map_label=to_train_ids))


def _build(cfg: DataConfig, split: str, train: bool) -> COCOStuffSegmentation:
    from seglab.data.transforms import build_transforms

    labels = config_label_set(cfg, "coco_stuff")
    return COCOStuffSegmentation(config_root(cfg), split, build_transforms(cfg, train), labels)


register_dataset(
    "coco_stuff",
    builders={"semantic": _build},
    label_set="coco_stuff",
    layouts=(COCO_STUFF,),
    summary="COCO-Stuff 164k (`data.root`: the folder of images/ and annotations/), 171 classes",
)

__all__ = ["COCO_STUFF", "COCOStuffSegmentation", "RAW_TO_TRAIN", "to_train_ids"]
