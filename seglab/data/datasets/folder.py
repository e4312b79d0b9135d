"""A plain folder of images and masks, paired by file stem (:data:`TREE`): the layout for one's own data.

A split is chosen by ``root/<split>/images`` (a sub-folder with the same layout) or ``root/<split>.txt``
(one stem per line); with neither (or ``split=None``) every pair is used. An image without a mask or a
mask without an image is an error, not skipped silently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from seglab.config import DataConfig
from seglab.data.datasets.voc import PairedSegmentationDataset, check_files_exist, read_id_list
from seglab.data.palettes import CLASSES_FILE, LabelSet
from seglab.data.registry import (
    AddProblem,
    Layout,
    Sample,
    config_root,
    label_set_of,
    register_dataset,
    register_layout,
)
from seglab.errors import DatasetError

log = logging.getLogger(__name__)

TREE = """
root/
  images/<stem>.{jpg,jpeg,png,bmp,tif,tiff}
  masks/<stem>.png       palette (P) or grayscale (L) PNG of class indices, 255 = ignore
  classes.txt            optional: one class per line in index order, "name" or "name #rrggbb"
  (a split: root/<split>/images/ and root/<split>/masks/, or root/<split>.txt listing stems)
"""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
FOLDER_LAYOUT = (
    "expected root/images/<stem>.{jpg,jpeg,png,bmp,tif,tiff} and root/masks/<stem>.png, optionally "
    "under root/<split>/ or listed in root/<split>.txt"
)


def _first(stems: list[str], n: int = 5) -> str:
    more = f" ... ({len(stems)} in all)" if len(stems) > n else ""
    return ", ".join(stems[:n]) + more


class FolderSegmentation(PairedSegmentationDataset):
    """Images in ``root/images`` with masks of the same stem in ``root/masks``."""

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        transforms: Callable[[Any, np.ndarray], Any] | None = None,
        label_set: LabelSet | None = None,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: dataset folder not found; {FOLDER_LAYOUT}")
        stems: list[str] | None = None
        if split and (root / split / "images").is_dir():
            root = root / split
        elif split and (root / f"{split}.txt").is_file():
            stems = read_id_list(root / f"{split}.txt", FOLDER_LAYOUT)
        elif split:
            log.warning("%s: no %s/images folder or %s.txt; using every image for split %r", root, split, split, split)
        self.root = root
        self.split = split
        images_dir, masks_dir = root / "images", root / "masks"
        for folder in (images_dir, masks_dir):
            if not folder.is_dir():
                raise DatasetError(f"{folder}: folder not found; {FOLDER_LAYOUT}")
        images: dict[str, Path] = {}
        for path in sorted(images_dir.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                if path.stem in images:
                    raise DatasetError(f"{path}: two images share the stem {path.stem!r} ({images[path.stem].name})")
                images[path.stem] = path
        masks = {p.stem: p for p in sorted(masks_dir.glob("*.png")) if p.is_file()}
        if stems is None:
            no_mask = sorted(set(images) - set(masks))
            no_image = sorted(set(masks) - set(images))
            if no_mask:
                raise DatasetError(f"{images_dir}: images without a mask in {masks_dir}: {_first(no_mask)}")
            if no_image:
                raise DatasetError(f"{masks_dir}: masks without an image in {images_dir}: {_first(no_image)}")
            stems = sorted(images)
            if not stems:
                raise DatasetError(f"{images_dir}: no images found; {FOLDER_LAYOUT}")
        else:
            no_image = [s for s in stems if s not in images]
            if no_image:
                raise DatasetError(f"{root / f'{split}.txt'}: listed stems without an image: {_first(no_image)}")
            check_files_exist([masks_dir / f"{s}.png" for s in stems], FOLDER_LAYOUT)
        super().__init__(
            list(stems), [images[s] for s in stems], [masks_dir / f"{s}.png" for s in stems], transforms, label_set
        )


# -- registration ------------------------------------------------------------------------------------------


def _detect(root: Path) -> bool:
    return (root / "images").is_dir() or any((p / "images").is_dir() for p in root.iterdir() if p.is_dir())


def _pairs(root: Path, add: AddProblem) -> dict[str, Sample]:
    images = {p.stem: p for p in sorted((root / "images").iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem: p for p in sorted((root / "masks").glob("*.png"))}
    for stem in sorted(set(images) - set(masks)):
        add("unpaired", str(images[stem]), f"no mask {root / 'masks' / (stem + '.png')}")
    for stem in sorted(set(masks) - set(images)):
        add("unpaired", str(masks[stem]), f"no image {stem}.* in {root / 'images'}")
    return {s: Sample(images[s], masks[s]) for s in sorted(set(images) & set(masks))}


def _scan_splits(root: Path, splits: list[str] | None, add: AddProblem) -> dict[str, list[Sample]]:
    if splits is None:  # detected: root/images, root/<split>/images, root/<split>.txt
        splits = [p.name for p in sorted(root.iterdir()) if (p / "images").is_dir()]
        splits += [p.stem for p in sorted(root.glob("*.txt")) if p.name != CLASSES_FILE]  # split lists
        if (root / "images").is_dir() and not splits:
            splits = [""]
    found: dict[str, list[Sample]] = {}
    for split in splits:
        samples = found.setdefault(split or "(all)", [])
        base = root / split if split and (root / split / "images").is_dir() else root
        for folder in (base / "images", base / "masks"):
            if not folder.is_dir():
                add("missing_root", str(folder), f"folder not found; {FOLDER_LAYOUT}")
        if not (base / "images").is_dir() or not (base / "masks").is_dir():
            continue
        pairs = _pairs(base, add)
        if base == root and split and (root / f"{split}.txt").is_file():
            try:
                stems = read_id_list(root / f"{split}.txt", FOLDER_LAYOUT)
            except DatasetError as exc:
                add("missing_split_list", str(root / f"{split}.txt"), str(exc))
                continue
            for stem in stems:
                if stem in pairs:
                    samples.append(pairs[stem])
                else:
                    add("missing_file", f"{root / 'images' / stem}.*", f"listed in {split}.txt")
        else:
            samples.extend(pairs.values())
    return found


FOLDER = register_layout(Layout("folder", TREE, "voc", _detect, _scan_splits, generic=True))


def _build(cfg: DataConfig, split: str, train: bool) -> FolderSegmentation:
    from seglab.data.transforms import build_transforms

    root = config_root(cfg)
    labels = label_set_of(cfg)
    transforms = build_transforms(cfg, train)
    return FolderSegmentation(root, split, transforms, label_set=labels)


register_dataset(
    "folder",
    builders={"semantic": _build},
    label_set="voc",
    layouts=(FOLDER,),
    summary="one's own images and masks paired by stem (what `seglab convert-data` writes); the classes from "
            "`data.classes`, `data.palette` or `root/classes.txt`",
    classes_file=True,
)

__all__ = ["FOLDER", "FolderSegmentation"]
