"""COCO instance segmentation (Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014).

Reads the official layout (``root/{train2017,val2017}/*.jpg`` with
``root/annotations/instances_{train2017,val2017}.json``) and the demo layout (``root/JPEGImages/`` with
``root/annotations/instances_{train,val}.json``); :func:`coco_layout` picks one.

A sample is ``(image, target)`` in the torchvision detection format: the image a float 0-1
``tv_tensors.Image`` [3,H,W]; the target ``boxes`` (XYXY ``BoundingBoxes``), ``labels`` (int64, the
sorted category ids mapped to contiguous 1..K, 0 being background), ``masks`` (uint8 ``Mask`` [N,H,W]),
``image_id``, ``area`` and ``iscrowd``. Segmentations may be polygons, uncompressed RLE (counts a list)
or compressed RLE (counts a string); pycocotools decodes all three. As in torchvision's reference,
crowd regions are left out of the training targets, but stay in :attr:`COCOInstances.coco`, the ground
truth the evaluation uses.

The annotation file is validated when the dataset is built: a problem that makes the data wrong
(unknown category, malformed polygon or RLE, missing image file) raises :class:`DatasetError` naming
the file, the annotation id and the field; an annotation that is merely unusable (a box with zero
width or height, an empty polygon list, a mask without pixels) is left out and counted in
``skipped``. Checking for masks without pixels rasterises every polygon to RLE once (about 10 us each,
some 10 s for COCO train2017); image sizes are checked against the files when a sample is read (and
for every image by :func:`check_coco`), so construction does not open 118k images.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import numbers
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seglab.config import DataConfig
from seglab.data.io import read_image
from seglab.data.registry import AddProblem, Layout, Sample, config_root, register_dataset, register_layout
from seglab.errors import DatasetError

log = logging.getLogger(__name__)

COCO_LAYOUT = (
    "expected root/annotations/instances_<split>.json with images in root/<split>/ (official COCO) "
    "or in root/JPEGImages/ (seglab demo)"
)

Report = Callable[[str, str, str, bool], None]  # (kind, where, detail, is_error)

TREE = """
coco/
  train2017/<file_name>                    images (also val2017/; the demo: JPEGImages/)
  annotations/instances_train2017.json     COCO instances: images, annotations, categories
  annotations/instances_val2017.json       (split = the part after instances_)
"""


def coco_layout(root: str | Path, split: str) -> tuple[Path, Path]:
    """``(ann_file, image_dir)`` of ``split`` under ``root``: the official layout, else the demo layout."""
    root = Path(root)
    ann_file = root / "annotations" / f"instances_{split}.json"
    if not ann_file.is_file():
        raise DatasetError(f"{ann_file}: annotation file not found; {COCO_LAYOUT}")
    for image_dir in (root / split, root / "JPEGImages"):
        if image_dir.is_dir():
            return ann_file, image_dir
    raise DatasetError(f"{root}: neither {root / split} nor {root / 'JPEGImages'} is a folder; {COCO_LAYOUT}")


# -- validation --------------------------------------------------------------------------------------


def _load_json(ann_file: Path) -> dict[str, Any]:
    if not ann_file.is_file():
        raise DatasetError(f"{ann_file}: annotation file not found")
    try:
        data = json.loads(ann_file.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{ann_file}: not a readable JSON file: {exc}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{ann_file}: expected a JSON object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{ann_file}: field {key!r} missing or not a list; expected the COCO instances format")
    return data


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _segmentation_rle(seg: Any, height: int, width: int) -> dict[str, Any] | str:
    """The annotation's mask as one compressed RLE, or a string saying what is wrong with ``seg``
    ("empty" for an empty polygon list)."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        if not seg:
            return "empty"
        for k, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                return f"polygon {k} is not a list of numbers"
            if len(poly) % 2:
                return f"polygon {k} has an odd number of coordinates ({len(poly)})"
            if len(poly) < 6:
                return f"polygon {k} has {len(poly) // 2} points; expected at least 3"
        return mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in p] for p in seg], height, width))
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(s) for s in size)):
            return f"RLE size {size!r} is not [height, width]"
        if list(size) != [height, width]:
            return f"RLE size {size} differs from the image size [{height}, {width}]"
        if isinstance(counts, list):
            if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != height * width:
                return f"uncompressed RLE counts must be non-negative integers summing to {height * width}"
            return mask_utils.frPyObjects(seg, height, width)
        if isinstance(counts, str):
            rle = {"size": size, "counts": counts.encode("ascii")}
            try:
                mask_utils.area(rle)
            except Exception as exc:  # pycocotools raises plain exceptions for corrupt strings
                return f"compressed RLE counts cannot be decoded: {exc}"
            return rle
        return f"RLE counts must be a list or a string, got {type(counts).__name__}"
    return f"expected polygons (a list) or RLE (a dict), got {type(seg).__name__}"


def _scan(data: dict[str, Any], ann_file: Path, image_dir: Path, report: Report) -> dict[int, list[dict[str, Any]]]:
    """Validate ``data``; report every problem; return the usable annotations per image id."""
    categories: set[int] = set()
    for k, cat in enumerate(data["categories"]):
        cid = cat.get("id") if isinstance(cat, dict) else None
        if not _is_int(cid) or not isinstance(cat.get("name"), str):
            report("bad_category", f"{ann_file}: categories[{k}]", "expected an integer 'id' and a string 'name'", True)
        elif cid in categories:
            report("duplicate_id", f"{ann_file}: category {cid}", "field 'id' is used twice", True)
        else:
            categories.add(cid)
    images: dict[int, tuple[int, int]] = {}
    for k, img in enumerate(data["images"]):
        fields = ("id", "width", "height")
        if not isinstance(img, dict) or not all(_is_int(img.get(f)) for f in fields) or not isinstance(
            img.get("file_name"), str
        ):
            report("bad_image", f"{ann_file}: images[{k}]", "expected integer id, width, height and a file_name", True)
            continue
        if img["id"] in images:
            report("duplicate_id", f"{ann_file}: image {img['id']}", "field 'id' is used twice", True)
            continue
        images[img["id"]] = (img["height"], img["width"])
        if not (image_dir / img["file_name"]).is_file():
            report("missing_image", f"{image_dir / img['file_name']}", f"image {img['id']} listed in {ann_file} "
                   "not found", True)
    kept: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
    seen: set[Any] = set()
    for k, ann in enumerate(data["annotations"]):
        aid = ann.get("id") if isinstance(ann, dict) else None
        where = f"{ann_file}: annotation {aid}" if _is_int(aid) else f"{ann_file}: annotations[{k}]"
        if not _is_int(aid):
            report("bad_annotation", where, "field 'id' missing or not an integer", True)
            continue
        if aid in seen:
            report("duplicate_id", where, "field 'id' is used twice", True)
            continue
        seen.add(aid)
        if not _is_int(ann.get("image_id")) or ann["image_id"] not in images:  # _is_int: a list is unhashable
            report("unknown_image", where, f"field 'image_id' {ann.get('image_id')!r} is not in 'images'", True)
            continue
        if not _is_int(ann.get("category_id")) or ann["category_id"] not in categories:
            report("unknown_category", where, f"field 'category_id' {ann.get('category_id')!r} is not in "
                   f"'categories' (ids {sorted(categories)})", True)
            continue
        if ann.get("iscrowd", 0) not in (0, 1):
            report("bad_annotation", where, f"field 'iscrowd' must be 0 or 1, got {ann.get('iscrowd')!r}", True)
            continue
        if "area" in ann and not (_is_number(ann["area"]) and ann["area"] >= 0):
            report("bad_annotation", where, f"field 'area' must be a number >= 0, got {ann['area']!r}", True)
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            report("bad_bbox", where, f"field 'bbox' must be [x, y, width, height] numbers, got {bbox!r}", True)
            continue
        if bbox[2] <= 0 or bbox[3] <= 0:
            report("degenerate_box", where, f"field 'bbox' {bbox} has zero width or height; skipped", False)
            continue
        height, width = images[ann["image_id"]]
        rle = _segmentation_rle(ann.get("segmentation"), height, width)
        if rle == "empty":
            report("empty_segmentation", where, "field 'segmentation' is an empty polygon list; skipped", False)
            continue
        if isinstance(rle, str):
            report("bad_segmentation", where, f"field 'segmentation': {rle}", True)
            continue
        from pycocotools import mask as mask_utils

        if int(mask_utils.area(rle)) == 0:
            report("empty_mask", where, "field 'segmentation' covers no pixel; skipped", False)
            continue
        kept[ann["image_id"]].append(ann)
    return kept


def _check_image_size(path: Path, expected_hw: tuple[int, int], actual_wh: tuple[int, int]) -> str | None:
    if (actual_wh[1], actual_wh[0]) != tuple(expected_hw):
        return (f"image is {actual_wh[0]}x{actual_wh[1]} (width x height) but the annotation file says "
                f"{expected_hw[1]}x{expected_hw[0]} (fields 'width', 'height')")
    return None


def check_coco(ann_file: str | Path, image_dir: str | Path) -> list[tuple[str, str, str, bool]]:
    """Every problem of a COCO annotation file and its images as ``(kind, where, detail, is_error)``.

    Never raises for bad data; ``is_error`` is False for what :class:`COCOInstances` skips and counts.
    """
    from PIL import Image

    ann_file, image_dir = Path(ann_file), Path(image_dir)
    problems: list[tuple[str, str, str, bool]] = []
    if not image_dir.is_dir():
        problems.append(("missing_dir", str(image_dir), "image folder not found", True))
    try:
        data = _load_json(ann_file)
    except DatasetError as exc:
        return [*problems, ("bad_file", str(ann_file), str(exc), True)]
    _scan(data, ann_file, image_dir, lambda *p: problems.append(p))
    missing = {p[1] for p in problems if p[0] == "missing_image"}
    for img in data["images"]:
        if not isinstance(img, dict) or not all(_is_int(img.get(f)) for f in ("width", "height")):
            continue
        path = image_dir / str(img.get("file_name"))
        if str(path) in missing or not path.is_file():
            continue
        try:
            with Image.open(path) as im:
                size = im.size
        except OSError as exc:
            problems.append(("bad_image", str(path), f"cannot read image: {exc}", True))
            continue
        detail = _check_image_size(path, (img["height"], img["width"]), size)
        if detail:
            problems.append(("size_mismatch", str(path), f"image {img.get('id')}: {detail}", True))
    return problems


# -- dataset -----------------------------------------------------------------------------------------


class COCOInstances:
    """COCO instances of ``ann_file`` with images in ``image_dir``; ``transforms(image, target)`` if given.

    ``image_ids`` are the sorted image ids (images without annotations included); ``coco`` is the
    pycocotools ground truth (crowd regions included) for evaluation.
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_dir: str | Path,
        transforms: Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]] | None = None,
        *,
        skip_crowd_in_targets: bool = True,
    ) -> None:
        from pycocotools.coco import COCO as COCOApi

        self.ann_file, self.image_dir = Path(ann_file), Path(image_dir)
        self.transforms = transforms
        self.skip_crowd_in_targets = skip_crowd_in_targets
        if not self.image_dir.is_dir():
            raise DatasetError(f"{self.image_dir}: image folder not found (images of {self.ann_file})")
        data = _load_json(self.ann_file)
        skipped: Counter[str] = Counter()

        def report(kind: str, where: str, detail: str, is_error: bool) -> None:
            if is_error:
                raise DatasetError(f"{where}: {detail}")
            skipped[kind] += 1

        self._anns = _scan(data, self.ann_file, self.image_dir, report)
        self.skipped: dict[str, int] = dict(skipped)
        if self.skipped:
            log.warning("%s: skipped annotations %s", self.ann_file, self.skipped)
        self.coco = COCOApi()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            self.coco.createIndex()
        self.image_ids: list[int] = sorted(self.coco.imgs)
        self.cat_ids: list[int] = sorted(self.coco.cats)
        self.cat_id_to_label: dict[int, int] = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.label_to_cat_id: dict[int, int] = {i + 1: c for i, c in enumerate(self.cat_ids)}
        self.classes: list[str] = ["background", *(self.coco.cats[c]["name"] for c in self.cat_ids)]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from pycocotools import mask as mask_utils
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        pil = read_image(path)
        height, width = info["height"], info["width"]
        detail = _check_image_size(path, (height, width), pil.size)
        if detail:
            raise DatasetError(f"{path}: image {image_id} in {self.ann_file}: {detail}")
        anns = self._anns[image_id]
        if self.skip_crowd_in_targets:
            anns = [a for a in anns if not a.get("iscrowd", 0)]
        masks = np.zeros((len(anns), height, width), np.uint8)
        for k, ann in enumerate(anns):
            masks[k] = mask_utils.decode(_segmentation_rle(ann["segmentation"], height, width))
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # XYWH -> XYXY
        boxes[:, 0::2].clamp_(0, width)
        boxes[:, 1::2].clamp_(0, height)
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([self.cat_id_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
            "masks": tv_tensors.Mask(torch.from_numpy(masks)),
            "image_id": torch.tensor(image_id, dtype=torch.int64),
            "area": torch.tensor([float(a.get("area", masks[k].sum())) for k, a in enumerate(anns)],
                                 dtype=torch.float32),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
        }
        image = tv_tensors.Image(torch.from_numpy(np.array(pil)).permute(2, 0, 1))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        if image.dtype == torch.uint8:  # as v2.ToDtype(torch.float32, scale=True) does
            image = tv_tensors.wrap(F.to_dtype(image, torch.float32, scale=True), like=image)
        return image, target

    def __repr__(self) -> str:
        return f"COCOInstances({self.ann_file}, {len(self)} images, {len(self.cat_ids)} categories)"


# -- registration ------------------------------------------------------------------------------------------


def _detect(root: Path) -> bool:
    return any((root / "annotations").glob("instances_*.json"))


def _scan_splits(root: Path, splits: list[str] | None, add: AddProblem) -> dict[str, list[Sample]]:
    """COCO problems only (:func:`check_coco`); its images are read there, so no samples."""
    if splits is None:
        splits = sorted(p.stem.removeprefix("instances_") for p in (root / "annotations").glob("instances_*.json"))
    for split in splits:
        try:
            ann_file, image_dir = coco_layout(root, split)
        except DatasetError as exc:
            add("missing_split_list", str(root / "annotations" / f"instances_{split}.json"), str(exc))
            continue
        for kind, where, detail, is_error in check_coco(ann_file, image_dir):
            add(kind, where, detail, is_error)
    return {f"coco:{split}": [] for split in splits}


COCO = register_layout(Layout("coco", TREE, "voc", _detect, _scan_splits))


def coco_instances(cfg: DataConfig, split: str, train: bool, root: str | Path) -> COCOInstances:
    """``split`` of the COCO files under ``root`` with the detection transforms of ``data``."""
    from seglab.data.instance_transforms import build_instance_transforms

    ann_file, image_dir = coco_layout(root, split)
    return COCOInstances(ann_file, image_dir, build_instance_transforms(cfg, train))


register_dataset(
    "coco",
    builders={"instance": lambda cfg, split, train: coco_instances(cfg, split, train, config_root(cfg))},
    label_set="coco",
    layouts=(COCO,),
    summary="COCO instances, official layout; `data.train_split` / `data.val_split`: `train2017` / `val2017`",
)

__all__ = ["COCO", "COCOInstances", "check_coco", "coco_instances", "coco_layout"]
