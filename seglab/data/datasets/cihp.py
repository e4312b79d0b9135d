"""CIHP (Crowd Instance-level Human Parsing): multi-person parsing with part and person instances.

Gong, Liang, Li, Chen, Yang, Lin, "Instance-level Human Parsing via Part Grouping Network", ECCV 2018. The official
layout (:data:`TREE`) is read under ``root``, or ``root`` being the ``instance-level_human_parsing`` folder itself.

The three maps are checked on read (numpy, a few unique() calls): a pixel of a person has a part label and a part
instance, and every part instance lies inside exactly one person and one category; an inconsistent file raises
:class:`DatasetError` naming it and the id.

Semantic items (``instance=False``): ``(image float [3,H,W] normalised, int64 [H,W] Category_ids)``, or with
``with_humans`` a dict ``{"mask", "human_ids"}`` (0 = background and padding); ``transform`` has the parsing
interface of :mod:`seglab.data.parsing_transforms` and receives the [2,H,W] stack (labels, human ids) then.
Instance items (``instance=True``, for Parsing R-CNN): ``(image float [3,H,W] in 0-1, not normalised, target)``
with ``boxes`` (XYXY, pixel extent: x2 = last column + 1), ``labels`` (all 1, person), ``masks`` uint8 [N,H,W],
``parsing`` int64 [N,H,W] (the person's part labels, 0 elsewhere), ``area``, ``iscrowd`` and ``image_id`` (the
index); people whose mask is empty are skipped. ``transform`` then takes and returns ``(tv Image uint8, target)``
as the detection pipelines of :mod:`seglab.data.instance_transforms` do.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seglab.config import DataConfig
from seglab.data.datasets.lip import ParsingTransform, finish_item
from seglab.data.datasets.voc import check_files_exist, read_id_list
from seglab.data.io import read_image, read_label
from seglab.data.palettes import LIP_FLIP_PAIRS, get_label_set
from seglab.data.registry import (
    AddProblem,
    Layout,
    Problem,
    Sample,
    config_label_set,
    config_root,
    register_dataset,
    register_layout,
    report_unpaired,
)
from seglab.errors import ConfigError, DatasetError

CIHP_FOLDER = "instance-level_human_parsing"
SPLIT_FOLDERS = {"train": "Training", "val": "Validation"}
CIHP_LAYOUT = (
    f"expected the CIHP layout {CIHP_FOLDER}/{{Training,Validation}}/{{Images/<id>.jpg, Category_ids/<id>.png, "
    "Instance_ids/<id>.png, Human_ids/<id>.png} with Training/train_id.txt, Validation/val_id.txt"
)
MAP_FOLDERS = ("Category_ids", "Instance_ids", "Human_ids")
TREE = f"""
CIHP/{CIHP_FOLDER}/
  Training/Images/<id>.jpg
  Training/Category_ids/<id>.png     part label per pixel, 0-19 (CIHP label set)
  Training/Instance_ids/<id>.png     part-instance id per pixel, 0 = none
  Training/Human_ids/<id>.png        person id per pixel, 1..N, 0 = background
  Training/train_id.txt
  Validation/...                     the same, with val_id.txt
"""


def _unique_owner(key_ids: np.ndarray, owner_ids: np.ndarray) -> int | None:
    """The first key id whose pixels carry more than one owner id, or None."""
    pairs = np.unique(key_ids.astype(np.int64) * 65536 + owner_ids.astype(np.int64))
    keys = pairs // 65536
    repeated = keys[1:][keys[1:] == keys[:-1]]
    return int(repeated[0]) if repeated.size else None


def check_cihp_ids(category: np.ndarray, instance: np.ndarray, human: np.ndarray, where: str) -> None:
    """Raise :class:`DatasetError` unless the three maps agree (see the module docstring); ``where`` names the files."""
    person = human > 0
    bad = person & ((category == 0) | (instance == 0))
    if bad.any():
        y, x = np.argwhere(bad)[0]
        raise DatasetError(
            f"{where}: human id {int(human[y, x])} at pixel (x={x}, y={y}) has category {int(category[y, x])} and "
            f"part instance {int(instance[y, x])}; expected both > 0 on every pixel of a person"
        )
    part = instance > 0
    if (part & ~person).any():
        y, x = np.argwhere(part & ~person)[0]
        raise DatasetError(
            f"{where}: part instance id {int(instance[y, x])} at pixel (x={x}, y={y}) lies outside every person "
            "(Human_ids = 0); expected each part instance inside exactly one person"
        )
    inst = instance[part]
    for owner, name in ((human[part], "person (Human_ids)"), (category[part], "category (Category_ids)")):
        repeated = _unique_owner(inst, owner)
        if repeated is not None:
            owners = np.unique(owner[inst == repeated]).tolist()
            raise DatasetError(
                f"{where}: part instance id {repeated} spans {name} values {owners}; expected exactly one"
            )


def cihp_split_folder(root: str | Path, split: str) -> Path:
    """The ``Training`` / ``Validation`` folder of ``split`` under ``root`` (or ``root`` = the CIHP folder)."""
    root = Path(root)
    if split not in SPLIT_FOLDERS:
        raise DatasetError(f"{root}: unknown CIHP split {split!r}; expected one of: {', '.join(SPLIT_FOLDERS)}")
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root folder not found; {CIHP_LAYOUT}")
    base = root / CIHP_FOLDER if (root / CIHP_FOLDER).is_dir() else root
    folder = base / SPLIT_FOLDERS[split]
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder not found; {CIHP_LAYOUT}")
    for name in ("Images", *MAP_FOLDERS):
        if not (folder / name).is_dir():
            raise DatasetError(f"{folder / name}: folder not found; {CIHP_LAYOUT}")
    return folder


class CIHPDataset:
    """CIHP ``split`` ("train" / "val"): semantic items, with person ids (``with_humans``), or instance items
    (``instance``). ``check_ids=False`` skips the per-read consistency check of the three id maps."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: ParsingTransform | Callable[[Any, dict[str, Any]], Any] | None = None,
        *,
        with_humans: bool = False,
        instance: bool = False,
        check_ids: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.with_humans = with_humans
        self.instance = instance
        self.check_ids = check_ids
        self.label_set = get_label_set("cihp")
        self.folder = cihp_split_folder(self.root, split)
        self.ids = read_id_list(self.folder / f"{split}_id.txt", CIHP_LAYOUT)
        self.image_paths = [self.folder / "Images" / f"{i}.jpg" for i in self.ids]
        self.map_paths = {name: [self.folder / name / f"{i}.png" for i in self.ids] for name in MAP_FOLDERS}
        check_files_exist(self.image_paths + [p for paths in self.map_paths.values() for p in paths], CIHP_LAYOUT)

    def __len__(self) -> int:
        return len(self.ids)

    def read_maps(self, index: int) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
        """(PIL image, Category_ids, Instance_ids, Human_ids) of item ``index``, sizes and ids checked."""
        image = read_image(self.image_paths[index])
        maps = []
        for name in MAP_FOLDERS:
            path = self.map_paths[name][index]
            values = read_label(path)
            if values.shape != (image.height, image.width):
                raise DatasetError(
                    f"{path}: size {values.shape[1]}x{values.shape[0]} (WxH) differs from image "
                    f"{self.image_paths[index]} size {image.width}x{image.height}"
                )
            maps.append(values)
        category, instance, human = maps
        bad = np.unique(category[(category >= self.label_set.num_classes) & (category != 255)])
        if bad.size:
            raise DatasetError(f"{self.map_paths['Category_ids'][index]}: values {bad.tolist()[:10]} are not CIHP "
                               f"labels 0..{self.label_set.num_classes - 1} (or 255 = ignore)")
        if self.check_ids:
            where = f"{self.map_paths['Human_ids'][index]} with Category_ids/ and Instance_ids/"
            check_cihp_ids(category, instance, human, where)
        return image, category, instance, human

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        image, category, _, human = self.read_maps(index)
        if self.instance:
            return self._instance_item(index, image, category, human)
        if not self.with_humans:
            x, mask, _ = finish_item(image, category, None, self.transform)
            return x, mask
        x, stack, _ = finish_item(image, np.stack([category, human]), None, self.transform)
        return x, {"mask": stack[0], "human_ids": stack[1]}

    def _instance_item(
        self, index: int, image: Any, category: np.ndarray, human: np.ndarray
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        height, width = category.shape
        people = [int(h) for h in np.unique(human) if h > 0]
        masks = np.stack([human == h for h in people]) if people else np.zeros((0, height, width), bool)
        keep = masks.reshape(len(people), -1).any(axis=1)
        masks = masks[keep]
        parsing = np.where(masks, category[None].astype(np.int64), 0)
        boxes = np.zeros((len(masks), 4), np.float32)
        for k, m in enumerate(masks):
            ys, xs = np.nonzero(m)
            boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        target = {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=(height, width)),
            "labels": torch.ones(len(masks), dtype=torch.int64),
            "masks": tv_tensors.Mask(torch.from_numpy(masks.astype(np.uint8))),
            "parsing": tv_tensors.Mask(torch.from_numpy(parsing)),
            "area": torch.from_numpy(masks.reshape(len(masks), -1).sum(axis=1).astype(np.float32)),
            "iscrowd": torch.zeros(len(masks), dtype=torch.int64),
            "image_id": index,
        }
        img = tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1))
        if self.transform is not None:
            img, target = self.transform(img, target)
        if img.dtype == torch.uint8:
            img = tv_tensors.wrap(F.to_dtype(img, torch.float32, scale=True), like=img)
        return img, target

    def __repr__(self) -> str:
        kind = "instance" if self.instance else ("semantic+humans" if self.with_humans else "semantic")
        return f"CIHPDataset({self.folder}, {len(self)} images, {kind} items)"


# -- registration ------------------------------------------------------------------------------------------


def _base(root: Path) -> Path:
    return root / CIHP_FOLDER if (root / CIHP_FOLDER).is_dir() else root


def _detect(root: Path) -> bool:
    base = _base(root)
    return any((base / folder / "Category_ids").is_dir() for folder in SPLIT_FOLDERS.values())


def _scan_splits(root: Path, splits: list[str] | None, add: AddProblem) -> dict[str, list[Sample]]:
    """The listed samples of each split (``splits`` None: the splits whose folder exists), with Instance_ids and
    Human_ids as further maps; missing folders and split lists and unlisted files without their partners
    (warnings) are reported."""
    base = _base(root)
    if splits is None:
        splits = [split for split, folder in SPLIT_FOLDERS.items() if (base / folder).is_dir()]
    found: dict[str, list[Sample]] = {}
    for split in splits:
        found[split] = []
        if split not in SPLIT_FOLDERS:
            add("missing_root", str(base / split), f"unknown CIHP split {split!r}; expected one of: "
                f"{', '.join(SPLIT_FOLDERS)}")
            continue
        folder = base / SPLIT_FOLDERS[split]
        missing = [folder / name for name in ("Images", *MAP_FOLDERS) if not (folder / name).is_dir()]
        for path in missing:
            add("missing_root", str(path), f"folder not found; {CIHP_LAYOUT}")
        if missing:
            continue
        try:
            ids = read_id_list(folder / f"{split}_id.txt", CIHP_LAYOUT)
        except DatasetError as exc:
            add("missing_split_list", str(folder / f"{split}_id.txt"), str(exc))
            continue
        found[split] = [
            Sample(folder / "Images" / f"{i}.jpg", folder / "Category_ids" / f"{i}.png",
                   (folder / "Instance_ids" / f"{i}.png", folder / "Human_ids" / f"{i}.png"))
            for i in ids
        ]  # fmt: skip
        folders = {folder / "Images": (".jpg",), **{folder / name: (".png",) for name in MAP_FOLDERS}}
        report_unpaired(folders, set(ids), add)
    return found


def _check_sample(sample: Sample, category: np.ndarray) -> list[Problem]:
    """Instance_ids and Human_ids of ``sample`` readable, of Category_ids' size, and the three maps in agreement
    (:func:`check_cihp_ids`)."""
    problems: list[Problem] = []
    maps = []
    for path in sample.maps:
        try:
            values = read_label(path)
        except DatasetError as exc:
            problems.append((getattr(exc, "kind", "corrupt_image"), str(path), str(exc)))
            continue
        if values.shape != category.shape:
            problems.append(("size_mismatch", str(path), f"size {values.shape[1]}x{values.shape[0]} (WxH) differs "
                             f"from {sample.label} size {category.shape[1]}x{category.shape[0]}"))
        maps.append(values)
    if not problems:
        where = f"{sample.maps[1]} with Category_ids/ and Instance_ids/"
        try:
            check_cihp_ids(category, maps[0], maps[1], where)
        except DatasetError as exc:
            problems.append(("inconsistent_ids", str(sample.maps[1]), str(exc)))
    return problems


CIHP = register_layout(Layout(
    "cihp", TREE, "cihp", _detect, _scan_splits, _check_sample,
    problem_kinds={"inconsistent_ids": "CIHP Category_ids, Instance_ids and Human_ids disagree"},
))  # fmt: skip


def cihp_dataset(
    cfg: DataConfig, split: str, train: bool, *, root: Callable[[DataConfig], str | Path] = config_root
) -> CIHPDataset:
    """A CIHP-layout split as the semantic and parsing tasks read it: part maps with the label set of
    ``data.palette`` (default CIHP's) for the flip pairs and
    :func:`~seglab.data.parsing_transforms.build_parsing_transform`. ``root(cfg)`` is called last, as it may
    generate data."""
    from seglab.data.parsing_transforms import build_parsing_transform

    if cfg.with_pose:
        raise ConfigError(f"data.with_pose: {cfg.dataset!r} has no pose annotations; pose is read for LIP layouts")
    transform = build_parsing_transform(cfg, config_label_set(cfg, "cihp"), train)
    return CIHPDataset(root(cfg), split, transform, with_humans=cfg.with_humans)


def cihp_people(
    cfg: DataConfig, split: str, train: bool, *, root: Callable[[DataConfig], str | Path] = config_root
) -> CIHPDataset:
    """A CIHP-layout split as the instance task reads it (Parsing R-CNN): one item per image with each person's
    box and part map, through the detection pipeline with its flip replaced by one that swaps part labels."""
    import dataclasses

    from torchvision.transforms import v2

    from seglab.data.instance_transforms import build_instance_transforms
    from seglab.data.parsing_transforms import InstanceFlipWithSwap

    pipeline = build_instance_transforms(dataclasses.replace(cfg, hflip=False), train)
    if train and cfg.hflip:
        pipeline = v2.Compose([InstanceFlipWithSwap(LIP_FLIP_PAIRS, p=0.5), *pipeline.transforms])
    return CIHPDataset(root(cfg), split, pipeline, instance=True)


def cihp_builders(root: Callable[[DataConfig], str | Path] = config_root) -> dict[str, Callable[..., CIHPDataset]]:
    """The builders of a CIHP-layout dataset read from ``root(cfg)``: part maps (semantic, parsing), people
    (instance)."""
    parts, people = partial(cihp_dataset, root=root), partial(cihp_people, root=root)
    return {"semantic": parts, "parsing": parts, "instance": people}


register_dataset(
    "cihp",
    builders=cihp_builders(),
    label_set="cihp",
    layouts=(CIHP,),
    summary="Crowd Instance-level Human Parsing: parts, part instances and person ids of 1-N people",
)

__all__ = ["CIHP", "CIHPDataset", "check_cihp_ids", "cihp_builders", "cihp_dataset", "cihp_people", "cihp_split_folder"]
