"""PASCAL VOC 2012 segmentation, optionally with the SBD augmented training labels.

Reads the official layout exactly (``root`` is the VOC2012 folder; :data:`TREE`).

SBD (Hariharan et al., "Semantic Contours from Inverse Detectors", ICCV 2011), given as the
``benchmark_RELEASE/dataset`` folder (``img/<id>.jpg``, ``cls/<id>.mat`` with the ``GTcls.Segmentation``
field, ``train.txt``, ``val.txt``), adds the ids of its ``train.txt`` to the split: VOC's own ids keep
their VOC files, and ids of VOC's val split are dropped from the SBD part so nothing leaks into
validation. Reading .mat files needs scipy (``pip install seglab[sbd]``).

Every listed file is checked at construction, so a missing file fails before training starts.
:class:`PairedSegmentationDataset` (image/label path lists, validation, transforms) is shared with
the folder loader.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from seglab.config import DataConfig
from seglab.data.io import read_image, read_label
from seglab.data.palettes import LabelSet, get_label_set
from seglab.data.registry import (
    AddProblem,
    Layout,
    Sample,
    config_label_set,
    config_root,
    register_dataset,
    register_layout,
)
from seglab.errors import DatasetError

TREE = """
VOC2012/
  JPEGImages/<id>.jpg
  SegmentationClass/<id>.png             palette PNG of class indices, 255 = void (ignored)
  ImageSets/Segmentation/<split>.txt     one id per line (train, val, trainval)
"""

VOC_LAYOUT = (
    "expected the VOC2012 layout: JPEGImages/<id>.jpg, SegmentationClass/<id>.png, ImageSets/Segmentation/<split>.txt"
)
SBD_LAYOUT = "expected the SBD layout benchmark_RELEASE/dataset: img/<id>.jpg, cls/<id>.mat, train.txt, val.txt"


def read_id_list(path: Path, layout: str) -> list[str]:
    """The ids in a split file (first token of each non-empty line)."""
    if not path.is_file():
        raise DatasetError(f"{path}: split file not found; {layout}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: split file is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    ids = [line.split()[0] for line in text.splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"{path}: split file lists no ids; expected one id per line")
    return ids


def check_files_exist(paths: list[Path], layout: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetError(f"{missing[0]}: listed file not found{more}; {layout}")


def read_sbd_label(path: Path) -> np.ndarray:
    """The ``GTcls.Segmentation`` class map of an SBD .mat file as uint8 HxW."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DatasetError(f"{path}: reading SBD .mat labels needs scipy: pip install seglab[sbd]") from None
    try:
        mat = loadmat(path, squeeze_me=True, struct_as_record=False)
        seg = np.asarray(mat["GTcls"].Segmentation)
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise DatasetError(f"{path}: cannot read GTcls.Segmentation from the SBD .mat file: {exc}") from None
    if seg.ndim != 2 or (seg.size and (seg.min() < 0 or seg.max() > 255)):
        raise DatasetError(f"{path}: GTcls.Segmentation must be an HxW map of indices 0..255, got shape {seg.shape}")
    return seg.astype(np.uint8)


def pair_by_name(
    images_dir: Path, labels_dir: Path, image_suffixes: tuple[str, ...], label_name: Callable[[str], str], layout: str
) -> tuple[list[str], list[Path], list[Path]]:
    """Ids, images and labels of a split whose images lie in one folder and labels in another, the label of image
    ``<stem><suffix>`` named ``label_name(stem)`` (ADE20K, CamVid, COCO-Stuff). A missing folder, an empty one
    or an image without its label is a DatasetError naming the file."""
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: folder not found; {layout}")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in image_suffixes and p.is_file())
    if not images:
        raise DatasetError(f"{images_dir}: no images ({', '.join(image_suffixes)}); {layout}")
    labels = [labels_dir / label_name(p.stem) for p in images]
    missing = [(image, label) for image, label in zip(images, labels, strict=True) if not label.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetError(f"{missing[0][1]}: label file not found for {missing[0][0].name}{more}; {layout}")
    return [p.stem for p in images], images, labels


def scan_by_name(
    images_dir: Path, labels_dir: Path, image_suffixes: tuple[str, ...], label_name: Callable[[str], str],
    add: AddProblem,
) -> list[Sample]:
    """check-dataset's view of a :func:`pair_by_name` split: every image with its label path (a missing label is
    then reported as missing_file), missing folders reported, labels without an image warned about."""
    missing = [folder for folder in (images_dir, labels_dir) if not folder.is_dir()]
    for folder in missing:
        add("missing_root", str(folder), "folder not found")
    if missing:
        return []
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in image_suffixes and p.is_file())
    samples = [Sample(p, labels_dir / label_name(p.stem)) for p in images]
    stems = {p.stem for p in images}
    for label in sorted(labels_dir.glob("*.png")):
        if label.stem.removesuffix("_labelTrainIds") not in stems:  # COCO-Stuff keeps both kinds side by side
            add("unpaired", str(label), f"a label file without its image in {images_dir}", False)
    return samples


class PairedSegmentationDataset:
    """Images and label maps given as parallel path lists; ``dataset[i]`` is ``(image, mask)``.

    Without transforms an item is a PIL RGB image and a uint8 HxW label array; with them, whatever the
    transforms return (for :func:`~seglab.data.transforms.build_transforms`: float [3,H,W], int64 [H,W]).
    A label whose size differs from its image, or with values >= ``num_classes`` other than 255 (after
    ``label_map``, the layout's id -> train id mapping, if any), raises :class:`DatasetError` naming the files.
    """

    def __init__(
        self,
        ids: list[str],
        image_paths: list[Path],
        label_paths: list[Path],
        transforms: Callable[[Any, np.ndarray], Any] | None = None,
        label_set: LabelSet | None = None,
        label_map: Callable[[Path, np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.ids = ids
        self.image_paths = image_paths
        self.label_paths = label_paths
        self.transforms = transforms
        self.label_set = label_set or get_label_set("voc")
        self.label_map = label_map

    def __len__(self) -> int:
        return len(self.ids)

    def load_label(self, path: Path) -> np.ndarray:
        """The label map of ``path`` as training reads it: the file's values, through ``label_map(path, values)``
        where the layout stores other ids than the train ids (Cityscapes' labelIds, ADE20K's 0 = other)."""
        label = read_sbd_label(path) if path.suffix == ".mat" else read_label(path)
        return label if self.label_map is None else self.label_map(path, label)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image_path, label_path = self.image_paths[index], self.label_paths[index]
        image = read_image(image_path)
        label = self.load_label(label_path)
        if label.shape != (image.height, image.width):
            raise DatasetError(
                f"{label_path}: label size {label.shape[1]}x{label.shape[0]} (WxH) differs from image "
                f"{image_path} size {image.width}x{image.height}"
            )
        num_classes = self.label_set.num_classes
        if label.max(initial=0) >= num_classes:
            bad = np.unique(label[(label >= num_classes) & (label != 255)])
            if bad.size:
                raise DatasetError(
                    f"{label_path}: label values {bad.tolist()[:10]} are >= the {num_classes} classes of label set "
                    f"{self.label_set.name!r} (and are not 255 = ignore)"
                )
        if self.transforms is not None:
            return self.transforms(image, label)
        return image, label

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, label set {self.label_set.name!r})"


class VOCSegmentation(PairedSegmentationDataset):
    """PASCAL VOC 2012 ``split`` from ``root`` (the VOC2012 folder), with SBD train ids merged when
    ``sbd_root`` (benchmark_RELEASE/dataset) is given."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Callable[[Any, np.ndarray], Any] | None = None,
        sbd_root: str | Path | None = None,
        label_set: LabelSet | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: VOC root folder not found; {VOC_LAYOUT}")
        ids = read_id_list(self.root / "ImageSets" / "Segmentation" / f"{split}.txt", VOC_LAYOUT)
        image_paths = [self.root / "JPEGImages" / f"{i}.jpg" for i in ids]
        label_paths = [self.root / "SegmentationClass" / f"{i}.png" for i in ids]
        check_files_exist(image_paths + label_paths, VOC_LAYOUT)
        if sbd_root:
            sbd_ids, sbd_images, sbd_labels = self._sbd_part(Path(sbd_root), set(ids))
            ids, image_paths, label_paths = ids + sbd_ids, image_paths + sbd_images, label_paths + sbd_labels
        super().__init__(ids, image_paths, label_paths, transforms, label_set)

    def _sbd_part(self, sbd_root: Path, voc_ids: set[str]) -> tuple[list[str], list[Path], list[Path]]:
        if self.split == "val":
            raise DatasetError(f"{sbd_root}: SBD labels are merged into training splits only, not 'val'")
        try:
            import scipy.io  # noqa: F401
        except ImportError:
            raise DatasetError(f"{sbd_root}: reading SBD .mat labels needs scipy: pip install seglab[sbd]") from None
        if not sbd_root.is_dir():
            raise DatasetError(f"{sbd_root}: SBD folder not found; {SBD_LAYOUT}")
        val_file = self.root / "ImageSets" / "Segmentation" / "val.txt"
        voc_val = set(read_id_list(val_file, VOC_LAYOUT)) if val_file.is_file() else set()
        seen = set(voc_ids) | voc_val
        ids = []
        for i in read_id_list(sbd_root / "train.txt", SBD_LAYOUT):
            if i not in seen:
                seen.add(i)
                ids.append(i)
        images = [sbd_root / "img" / f"{i}.jpg" for i in ids]
        labels = [sbd_root / "cls" / f"{i}.mat" for i in ids]
        check_files_exist(images + labels, SBD_LAYOUT)
        return ids, images, labels


# -- registration ------------------------------------------------------------------------------------------


def _detect(root: Path) -> bool:
    return (root / "ImageSets" / "Segmentation").is_dir() or (root / "JPEGImages").is_dir()


def _scan_splits(root: Path, splits: list[str] | None, add: AddProblem) -> dict[str, list[Sample]]:
    lists = root / "ImageSets" / "Segmentation"
    if splits is None:
        splits = sorted(p.stem for p in lists.glob("*.txt"))
    found: dict[str, list[Sample]] = {}
    for split in splits:
        found[split] = []
        try:
            ids = read_id_list(lists / f"{split}.txt", VOC_LAYOUT)
        except DatasetError as exc:
            add("missing_split_list", str(lists / f"{split}.txt"), str(exc))
            continue
        found[split] = [Sample(root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ids]
    return found


VOC = register_layout(Layout("voc", TREE, "voc", _detect, _scan_splits))


def _build(cfg: DataConfig, split: str, train: bool) -> VOCSegmentation:
    from seglab.data.transforms import build_transforms

    labels = config_label_set(cfg, "voc")
    transforms = build_transforms(cfg, train)
    sbd_root = (cfg.sbd_root or None) if split == cfg.train_split else None
    return VOCSegmentation(config_root(cfg), split, transforms, sbd_root=sbd_root, label_set=labels)


register_dataset(
    "voc",
    builders={"semantic": _build},
    label_set="voc",
    layouts=(VOC,),
    summary="PASCAL VOC 2012 (`data.root`: the VOC2012 folder), plus SBD's training labels from `data.sbd_root`",
)

__all__ = ["VOC", "PairedSegmentationDataset", "VOCSegmentation", "pair_by_name", "scan_by_name"]
