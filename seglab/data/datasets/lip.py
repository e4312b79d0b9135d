"""LIP (Look Into Person) single-person parsing, and ATR / Pascal-Person-Part in SCHP's flat layout.

Gong, Liang, Zhang, Shen, Lin, "Look into Person: Self-supervised Structure-sensitive Learning and a New Benchmark
for Human Parsing", CVPR 2017. Two layouts are read (:data:`TREE`), detected from the folders under ``root``: the
official download, and SCHP's flat layout (also ATR's and Pascal-Person-Part's).

An item is ``(image float [3,H,W] ImageNet-normalised, target)``: the target is the int64 [H,W] label map, or with
``with_pose`` a dict ``{"mask", "joints": float [16,3]}`` of rows (x, y, v) in the transformed image's pixels,
v = 1 visible / 0 occluded, ``(-1, -1, -1)`` for a missing joint. ``transform`` has the parsing interface of
:mod:`seglab.data.parsing_transforms` (``(uint8 image [3,H,W], mask [H,W], joints | None) -> same``); the
normalisation happens here, once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seglab.config import DataConfig
from seglab.data.datasets.voc import PairedSegmentationDataset, check_files_exist, read_id_list
from seglab.data.palettes import LIP_JOINTS, LabelSet, get_label_set
from seglab.data.registry import (
    AddProblem,
    Layout,
    Sample,
    config_label_set,
    config_root,
    register_dataset,
    register_layout,
    report_unpaired,
)
from seglab.errors import ConfigError, DatasetError

NUM_JOINTS = len(LIP_JOINTS)
POSE_FIELDS = 1 + 3 * NUM_JOINTS  # image name, then 16 x (x, y, visibility)
LIP_LAYOUT = (
    "expected the LIP layout TrainVal_images/{split}_images/<id>.jpg, TrainVal_images/{split}_id.txt, "
    "TrainVal_parsing_annotations/{split}_segmentations/<id>.png, or the flat layout {split}_images/, "
    "{split}_segmentations/, {split}_id.txt"
)

TREE = """
LIP/                                                   official download
  TrainVal_images/{train,val}_images/<id>.jpg
  TrainVal_images/{train,val}_id.txt
  TrainVal_parsing_annotations/{train,val}_segmentations/<id>.png    values 0-19, 255 ignored
  TrainVal_pose_annotations/lip_{train,val}_set.csv     <id>.jpg, then 16 x (x, y, visibility)
ATR/, Pascal-Person-Part/ (or LIP/): SCHP's flat layout
  {train,val}_images/<id>.jpg
  {train,val}_segmentations/<id>.png
  {train,val}_id.txt
  lip_{train,val}_set.csv                               pose, if any (LIP)
"""

ParsingTransform = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], Any]


def read_lip_pose_csv(path: str | Path) -> dict[str, np.ndarray]:
    """LIP's pose CSV as ``{image id: float32 [16, 3]}`` rows (x, y, visibility); a joint written with 'nan'
    is missing: ``(-1, -1, -1)``. The id is the first field without its extension.

    A row that does not have 49 fields, or a field that is not a number, raises :class:`DatasetError` naming the
    file, the line and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: LIP pose CSV not found; expected rows '<id>.jpg,x,y,v,...' (16 joints)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: pose CSV is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    poses: dict[str, np.ndarray] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != POSE_FIELDS:
            raise DatasetError(
                f"{path}: line {line_no} has {len(fields)} fields; expected {POSE_FIELDS} "
                f"(image name, then {NUM_JOINTS} x (x, y, visibility))"
            )
        values = np.empty(3 * NUM_JOINTS, dtype=np.float64)
        for k, raw in enumerate(fields[1:]):
            try:
                values[k] = float(raw)
            except ValueError:
                joint, part = divmod(k, 3)
                raise DatasetError(
                    f"{path}: line {line_no}, field {k + 2} ({LIP_JOINTS[joint]} {'xyv'[part]}) is {raw!r}; "
                    "expected a number or 'nan'"
                ) from None
            if math.isinf(values[k]):
                raise DatasetError(f"{path}: line {line_no}, field {k + 2} is {raw!r}; expected a finite number")
        joints = values.reshape(NUM_JOINTS, 3)
        joints[np.isnan(joints).any(axis=1)] = -1.0
        poses[Path(fields[0]).stem] = joints.astype(np.float32)
    return poses


def _split_paths(root: Path, split: str) -> dict[str, Path] | None:
    """The folders and files of ``split`` in whichever layout ``root`` holds (None: neither), unchecked."""
    official = root / "TrainVal_images"
    if official.is_dir():
        return {
            "images": official / f"{split}_images",
            "labels": root / "TrainVal_parsing_annotations" / f"{split}_segmentations",
            "ids": official / f"{split}_id.txt",
            "pose": root / "TrainVal_pose_annotations" / f"lip_{split}_set.csv",
        }
    if (root / f"{split}_images").is_dir():
        flat_pose = root / f"lip_{split}_set.csv"
        return {
            "images": root / f"{split}_images",
            "labels": root / f"{split}_segmentations",
            "ids": root / f"{split}_id.txt",
            "pose": flat_pose if flat_pose.is_file() else root / "TrainVal_pose_annotations" / f"lip_{split}_set.csv",
        }
    return None


def _missing_layout(root: Path, split: str) -> str:
    return (f"neither {root / 'TrainVal_images'} (official LIP layout) nor {root / f'{split}_images'} (flat layout) "
            f"exists; {LIP_LAYOUT}")


def _lip_paths(root: Path, split: str) -> dict[str, Path]:
    """The folders and files of ``split`` in whichever layout ``root`` holds; a missing folder raises."""
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root folder not found; {LIP_LAYOUT}")
    paths = _split_paths(root, split)
    if paths is None:
        raise DatasetError(f"{root}: {_missing_layout(root, split)}")
    for key in ("images", "labels"):
        if not paths[key].is_dir():
            raise DatasetError(f"{paths[key]}: folder not found; {LIP_LAYOUT}")
    return paths


def _image_path(folder: Path, image_id: str) -> Path:
    """``<id>.jpg`` (the official extension), or ``<id>.png`` when only that exists."""
    jpg = folder / f"{image_id}.jpg"
    if not jpg.is_file() and (folder / f"{image_id}.png").is_file():
        return folder / f"{image_id}.png"
    return jpg


def finish_item(
    image: Any, label: np.ndarray, joints: np.ndarray | None, transform: ParsingTransform | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Apply a parsing transform to (PIL image, label array [H,W] or [K,H,W], joints) and normalise the image."""
    from seglab.data.transforms import image_tensor, normalize_image

    img = image_tensor(image)
    mask = torch.from_numpy(np.ascontiguousarray(label)).long()
    pose = torch.from_numpy(joints).float() if joints is not None else None
    if transform is not None:
        img, mask, pose = transform(img, mask, pose)
    return normalize_image(img), mask.long(), pose


class LIPDataset(PairedSegmentationDataset):
    """LIP ``split`` ("train" / "val") under ``root`` in the official or SCHP's flat layout; ATR and
    Pascal-Person-Part in the flat layout with ``label_set`` "atr" / "pascal_person_part".

    ``with_pose`` reads the pose CSV (a DatasetError names it if missing, or names the first image it lacks).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: ParsingTransform | None = None,
        *,
        with_pose: bool = False,
        label_set: str | LabelSet = "lip",
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.with_pose = with_pose
        paths = _lip_paths(self.root, split)
        self.layout = "official" if paths["images"].parent.name == "TrainVal_images" else "flat"
        ids = read_id_list(paths["ids"], LIP_LAYOUT)
        image_paths = [_image_path(paths["images"], i) for i in ids]
        label_paths = [paths["labels"] / f"{i}.png" for i in ids]
        check_files_exist(image_paths + label_paths, LIP_LAYOUT)
        self.poses: dict[str, np.ndarray] = {}
        if with_pose:
            if not paths["pose"].is_file():
                raise DatasetError(
                    f"{paths['pose']}: pose CSV not found; with_pose needs lip_{split}_set.csv "
                    f"(rows '<id>.jpg' then {NUM_JOINTS} x (x, y, visibility))"
                )
            self.poses = read_lip_pose_csv(paths["pose"])
            missing = [i for i in ids if i not in self.poses]
            if missing:
                raise DatasetError(
                    f"{paths['pose']}: no row for image {missing[0]!r} of {paths['ids']}"
                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                )
        labels = label_set if isinstance(label_set, LabelSet) else get_label_set(label_set)
        super().__init__(ids, image_paths, label_paths, None, labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        image, label = super().__getitem__(index)  # checked: same size, values < num_classes or 255
        joints = self.poses[self.ids[index]] if self.with_pose else None
        x, mask, pose = finish_item(image, label, joints, self.transform)
        if self.with_pose:
            return x, {"mask": mask, "joints": pose}
        return x, mask

    def __repr__(self) -> str:
        return (f"LIPDataset({self.root}, split={self.split!r}, {len(self)} images, {self.layout} layout, "
                f"label set {self.label_set.name!r}, with_pose={self.with_pose})")


# -- registration ------------------------------------------------------------------------------------------


def _detect(root: Path) -> bool:
    return (root / "TrainVal_images").is_dir() or any(p.is_dir() for p in root.glob("*_segmentations"))


def _scan_splits(root: Path, splits: list[str] | None, add: AddProblem) -> dict[str, list[Sample]]:
    """The listed pairs of each split (``splits`` None: every ``<split>_id.txt``); missing folders and split lists,
    unlisted files without their partner (warnings) and pose CSVs that do not parse are reported."""
    if splits is None:
        lists = root / "TrainVal_images" if (root / "TrainVal_images").is_dir() else root
        splits = sorted(p.name.removesuffix("_id.txt") for p in lists.glob("*_id.txt"))
    found: dict[str, list[Sample]] = {}
    for split in splits:
        found[split] = []
        paths = _split_paths(root, split)
        if paths is None:
            add("missing_root", str(root / f"{split}_images"), _missing_layout(root, split))
            continue
        missing = [paths[key] for key in ("images", "labels") if not paths[key].is_dir()]
        for folder in missing:
            add("missing_root", str(folder), f"folder not found; {LIP_LAYOUT}")
        if missing:
            continue
        try:
            ids = read_id_list(paths["ids"], LIP_LAYOUT)
        except DatasetError as exc:
            add("missing_split_list", str(paths["ids"]), str(exc))
            continue
        found[split] = [Sample(_image_path(paths["images"], i), paths["labels"] / f"{i}.png") for i in ids]
        report_unpaired({paths["images"]: (".jpg", ".png"), paths["labels"]: (".png",)}, set(ids), add)
        if paths["pose"].is_file():
            try:
                read_lip_pose_csv(paths["pose"])
            except DatasetError as exc:
                add("bad_pose_csv", str(paths["pose"]), str(exc))
    return found


LIP = register_layout(Layout(
    "lip", TREE, "lip", _detect, _scan_splits,
    problem_kinds={"bad_pose_csv": "LIP pose CSV with a malformed row or field"},
))  # fmt: skip


def lip_dataset(
    cfg: DataConfig,
    split: str,
    train: bool,
    *,
    label_set: str = "lip",
    root: Callable[[DataConfig], str | Path] = config_root,
) -> LIPDataset:
    """A LIP-layout split (LIP, ATR, Pascal-Person-Part, the demo people) with the label set of ``data.palette``
    (its default "voc": ``label_set``) and :func:`~seglab.data.parsing_transforms.build_parsing_transform` (the
    items of the semantic and the parsing task); ``root(cfg)`` is called last, as it may generate data."""
    from seglab.data.parsing_transforms import build_parsing_transform

    if cfg.with_humans:
        raise ConfigError(f"data.with_humans: {cfg.dataset!r} has no person ids; they are read from the CIHP layout "
                          "(cihp, demo_people_cihp)")
    labels = config_label_set(cfg, label_set)
    transform = build_parsing_transform(cfg, labels, train)
    return LIPDataset(root(cfg), split, transform, with_pose=cfg.with_pose, label_set=labels)


for _name, _summary in (
    ("lip", "Look Into Person, single-person parsing with 16 pose joints; official or SCHP's flat layout"),
    ("atr", "ATR, single-person parsing, in SCHP's flat layout"),
    ("pascal_person_part", "Pascal-Person-Part (body parts, no left/right), in SCHP's flat layout"),
):
    register_dataset(
        _name,
        builders=dict.fromkeys(("semantic", "parsing"), partial(lip_dataset, label_set=_name)),
        label_set=_name,
        layouts=(LIP,),
        summary=_summary,
    )

__all__ = ["LIP", "LIPDataset", "finish_item", "lip_dataset", "read_lip_pose_csv"]
