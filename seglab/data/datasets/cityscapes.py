"""Cityscapes (Cordts et al., CVPR 2016) in its official layout (:data:`TREE`), with the 19 training classes.

Label files hold Cityscapes' label ids (0-33); training uses the 19 train ids of cityscapesScripts'
``helpers/labels.py``, mapped here by :data:`LABEL_TO_TRAIN` (every id not evaluated -> 255, ignored). A
``*_labelTrainIds.png`` beside the labelIds file (what ``createTrainIdLabelImgs.py`` writes) is read as it is.
``cityscapes`` reads the fine annotations (gtFine: train, val, test), ``cityscapes_coarse`` the coarse ones
(gtCoarse: train, train_extra, val). :func:`sequence_frames` lists ``leftImg8bit_sequence``'s unlabelled video
frames, Naive-Student's unlabelled set.

Every image's label file is checked at construction, so a missing file fails before training starts.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from seglab.config import DataConfig
from seglab.data.datasets.voc import PairedSegmentationDataset
from seglab.data.palettes import LabelSet
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
cityscapes/
  leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png              train, val, test
  gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png               label ids 0-33 (mapped to the
                                                                                 19 train ids, others 255)
  gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png          optional: train ids, read as is
  leftImg8bit_sequence/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png     unlabelled video frames
"""

COARSE_TREE = """
cityscapes/
  leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png       train, train_extra, val
  gtCoarse/<split>/<city>/<city>_<seq>_<frame>_gtCoarse_labelIds.png    label ids, mapped as gtFine's
"""

LAYOUT = (
    "expected the Cityscapes layout: leftImg8bit/<split>/<city>/<name>_leftImg8bit.png with "
    "gtFine/<split>/<city>/<name>_gtFine_labelIds.png (or gtCoarse/... for the coarse annotations)"
)
IMAGE_SUFFIX = "_leftImg8bit.png"

# label id -> train id, cityscapesScripts helpers/labels.py (the 19 classes with trainId < 255)
LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                  26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
TRAIN_TO_LABEL = {train: label for label, train in LABEL_TO_TRAIN.items()}
_TO_TRAIN = lookup_table(LABEL_TO_TRAIN)


def to_train_ids(path: Path, values: np.ndarray) -> np.ndarray:
    """The train ids of a Cityscapes label file: ``*_labelTrainIds.png`` as it is, label ids through the table."""
    return values if path.name.endswith("_labelTrainIds.png") else _TO_TRAIN[values]


def to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Train ids (0-18) back to Cityscapes label ids, as cityscapesScripts' evaluation reads predictions; 255
    (ignore) becomes 0 (unlabeled)."""
    table = lookup_table(TRAIN_TO_LABEL, default=0)
    return table[np.asarray(train_ids, dtype=np.uint8)]


def write_label_ids(out_dir: str | Path, image: str | Path, train_ids: np.ndarray) -> Path:
    """Write a prediction of ``image`` (``<name>_leftImg8bit.png``) as ``out_dir/<name>_labelIds.png``: the train
    ids mapped to label ids in an 8-bit grey PNG, which cityscapesScripts' evalPixelLevelSemanticLabeling finds
    by ``<city>_<seq>_<frame>`` and reads (atomically written)."""
    from PIL import Image

    from seglab.utils import atomic_write

    name = Path(image).name.removesuffix(IMAGE_SUFFIX).removesuffix(Path(image).suffix)
    label_ids = Image.fromarray(to_label_ids(np.asarray(train_ids)), mode="L")
    path = Path(out_dir) / f"{name}_labelIds.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: label_ids.save(tmp, format="PNG"))


def _annotation(fine: bool) -> tuple[str, str]:
    return ("gtFine", "_gtFine_") if fine else ("gtCoarse", "_gtCoarse_")


def label_path(root: Path, split: str, image: Path, fine: bool = True) -> Path:
    """The label file of ``image``: its labelTrainIds file where one exists, else its labelIds file."""
    folder, tag = _annotation(fine)
    stem = image.name.removesuffix(IMAGE_SUFFIX)
    base = root / folder / split / image.parent.name / f"{stem}{tag}"
    train_ids = base.with_name(base.name + "labelTrainIds.png")
    return train_ids if train_ids.is_file() else base.with_name(base.name + "labelIds.png")


def split_images(root: Path, split: str, folder: str = "leftImg8bit") -> list[Path]:
    """The images of ``split``: ``root/<folder>/<split>/<city>/*_leftImg8bit.png``, sorted."""
    base = root / folder / split
    if not base.is_dir():
        raise DatasetError(f"{base}: Cityscapes split folder not found; {LAYOUT}")
    images = sorted(p for p in base.glob(f"*/*{IMAGE_SUFFIX}") if p.is_file())
    if not images:
        raise DatasetError(f"{base}: no <city>/*{IMAGE_SUFFIX} images; {LAYOUT}")
    return images


def sequence_frames(root: str | Path, split: str = "train") -> list[Path]:
    """The unlabelled video frames of ``leftImg8bit_sequence/<split>`` (all cities), sorted: the unlabelled
    set of Naive-Student's Cityscapes setting."""
    return split_images(Path(root), split, "leftImg8bit_sequence")


class CityscapesSegmentation(PairedSegmentationDataset):
    """Cityscapes ``split`` under ``root`` with fine (``fine=True``) or coarse annotations, as train ids."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Callable[[Any, np.ndarray], Any] | None = None,
        label_set: LabelSet | None = None,
        fine: bool = True,
    ) -> None:
        from seglab.data.palettes import get_label_set

        self.root, self.split, self.fine = Path(root), split, fine
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: Cityscapes root folder not found; {LAYOUT}")
        images = split_images(self.root, split)
        labels = [label_path(self.root, split, image, fine) for image in images]
        missing = [p for p in labels if not p.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DatasetError(f"{missing[0]}: label file not found for {images[labels.index(missing[0])].name}"
                               f"{more}; {LAYOUT}")
        ids = [image.name.removesuffix(IMAGE_SUFFIX) for image in images]
        super().__init__(ids, images, labels, transforms, label_set or get_label_set("cityscapes"), to_train_ids)


# -- registration ------------------------------------------------------------------------------------------


def _detect(root: Path, fine: bool = True) -> bool:
    return (root / "leftImg8bit").is_dir() and (root / _annotation(fine)[0]).is_dir()


def _scan(root: Path, splits: list[str] | None, add: AddProblem, fine: bool = True) -> dict[str, list[Sample]]:
    folder, tag = _annotation(fine)
    if splits is None:
        splits = sorted(p.name for p in (root / "leftImg8bit").iterdir()
                        if p.is_dir() and (root / folder / p.name).is_dir())
    found: dict[str, list[Sample]] = {}
    for split in splits:
        try:
            images = split_images(root, split)
        except DatasetError as exc:
            add("missing_root", str(root / "leftImg8bit" / split), str(exc))
            found[split] = []
            continue
        found[split] = [Sample(image, label_path(root, split, image, fine)) for image in images]
        stems = {image.name.removesuffix(IMAGE_SUFFIX) for image in images}
        for label in sorted((root / folder / split).glob(f"*/*{tag}label*Ids.png")):
            if label.name.split(tag)[0] not in stems:
                add("unpaired", str(label), "a label file without its image in leftImg8bit", False)
    return found


CITYSCAPES = register_layout(Layout("cityscapes", TREE, "cityscapes", _detect, _scan, map_label=to_train_ids))
CITYSCAPES_COARSE = register_layout(Layout(
    "cityscapes_coarse", COARSE_TREE, "cityscapes", partial(_detect, fine=False), partial(_scan, fine=False),
    map_label=to_train_ids,
))  # fmt: skip


def _build(cfg: DataConfig, split: str, train: bool, fine: bool = True) -> CityscapesSegmentation:
    from seglab.data.transforms import build_transforms

    labels = config_label_set(cfg, "cityscapes")
    return CityscapesSegmentation(config_root(cfg), split, build_transforms(cfg, train), labels, fine=fine)


register_dataset(
    "cityscapes",
    builders={"semantic": _build},
    label_set="cityscapes",
    layouts=(CITYSCAPES,),
    summary="Cityscapes, fine annotations (gtFine), label ids mapped to the 19 train ids",
)
register_dataset(
    "cityscapes_coarse",
    builders={"semantic": partial(_build, fine=False)},
    label_set="cityscapes",
    layouts=(CITYSCAPES_COARSE,),
    summary="Cityscapes, coarse annotations (gtCoarse: train, train_extra, val), mapped to the 19 train ids",
)

__all__ = [
    "CITYSCAPES",
    "CITYSCAPES_COARSE",
    "LABEL_TO_TRAIN",
    "CityscapesSegmentation",
    "sequence_frames",
    "to_label_ids",
    "to_train_ids",
    "write_label_ids",
]
