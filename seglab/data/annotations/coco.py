"""COCO instances JSON (``images``, ``annotations``, ``categories``) -> label maps.

Categories become indices 1..N by ascending category id (one named ``background`` becomes 0). A segmentation is
a list of polygons (one object; a polygon inside another cuts a hole: see :mod:`.common`), or an RLE with
``counts`` compressed (a string) or uncompressed (a list), decoded by pycocotools. ``iscrowd`` regions are 255
(ignore) with ``crowd="ignore"``, or their category with ``crowd="class"``: CVAT's exporter (Datumaro) writes
every mask as an ``iscrowd: 1`` RLE whether or not it is a crowd. An annotation with an empty segmentation
(a box only) is an error with ``boxes="error"``, or painted as its box with ``boxes="mask"`` (CVAT's own mask
export paints boxes so). Every listed image is converted; one without annotations is all background.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seglab.data.annotations.common import (
    IGNORE,
    LabelClass,
    Sample,
    Source,
    check_polygon,
    check_size,
    class_table,
    coco_rle,
    image_size,
    load_json,
    paint,
    polygons_rle,
)
from seglab.errors import ConfigError, DatasetError

CROWD_CHOICES = ("ignore", "class")
BOX_CHOICES = ("error", "mask")


def default_image_dirs(json_path: Path) -> list[Path]:
    """Where a COCO file's ``file_name`` is looked for: beside the JSON, in ``images/`` beside it and one folder
    up, and for ``instances_<name>.json`` in ``<name>/`` and ``images/<name>/`` one folder up (COCO's and CVAT's
    layouts)."""
    here, up = json_path.parent, json_path.parent.parent
    dirs = [here, here / "images", up, up / "images"]
    if json_path.stem.startswith("instances_"):
        name = json_path.stem[len("instances_"):]
        dirs += [up / name, up / "images" / name]
    return list(dict.fromkeys(dirs))


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class CocoFile:
    """One parsed, checked COCO instances file; :meth:`samples` renders its images lazily."""

    def __init__(self, path: Path, image_dirs: list[Path], crowd: str, boxes: str, split: str | None = None) -> None:
        if crowd not in CROWD_CHOICES:
            raise ConfigError(f"crowd={crowd!r}: expected one of {', '.join(CROWD_CHOICES)}")
        if boxes not in BOX_CHOICES:
            raise ConfigError(f"boxes={boxes!r}: expected one of {', '.join(BOX_CHOICES)}")
        self.path, self.image_dirs, self.crowd, self.boxes, self.split = path, image_dirs, crowd, boxes, split
        data = load_json(path, "COCO annotation file")
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
            raise DatasetError(f"{path}: expected a COCO instances file: an object with 'images', 'annotations' "
                               "and 'categories' lists")
        self.categories = self._categories(data["categories"])
        labels = [LabelClass(name) for name in self.categories.values()]
        self.classes, indices = class_table(labels, str(path))
        self.index = dict(zip(self.categories, indices, strict=True))
        self.images = self._images(data["images"])
        self.annotations: dict[int, list[dict]] = {image_id: [] for image_id in self.images}
        annotations = data.get("annotations", [])
        if not isinstance(annotations, list):
            raise DatasetError(f"{path}: 'annotations' is not a list")
        for number, ann in enumerate(annotations):
            self._check_annotation(ann, number)
            self.annotations[ann["image_id"]].append(ann)

    def _categories(self, categories: list) -> dict[int, str]:
        found: dict[int, str] = {}
        for number, cat in enumerate(categories):
            if not isinstance(cat, dict) or not _int(cat.get("id")) or not isinstance(cat.get("name"), str):
                raise DatasetError(f"{self.path}: categories[{number}] needs an integer 'id' and a string 'name'")
            if cat["id"] in found:
                raise DatasetError(f"{self.path}: category id {cat['id']} is listed twice")
            found[cat["id"]] = cat["name"]
        return dict(sorted(found.items()))

    def _images(self, images: list) -> dict[int, dict]:
        found: dict[int, dict] = {}
        for number, img in enumerate(images):
            ok = isinstance(img, dict) and _int(img.get("id")) and isinstance(img.get("file_name"), str)
            if not ok or not all(_int(img.get(k)) and img[k] > 0 for k in ("width", "height")):
                raise DatasetError(f"{self.path}: images[{number}] needs an integer 'id', a 'file_name' and positive "
                                   "integer 'width' and 'height'")
            if img["id"] in found:
                raise DatasetError(f"{self.path}: image id {img['id']} is listed twice")
            found[img["id"]] = img
        return found

    def _check_annotation(self, ann: Any, number: int) -> None:
        where = f"{self.path}: annotations[{number}]"
        if not isinstance(ann, dict):
            raise DatasetError(f"{where} is not an object")
        where = f"{self.path}: annotation id {ann.get('id', '?')}"
        if ann.get("image_id") not in self.images:
            raise DatasetError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        if ann.get("category_id") not in self.categories:
            raise DatasetError(f"{where}: category_id {ann.get('category_id')!r} is not in 'categories' "
                               f"(ids {sorted(self.categories)})")
        segmentation = ann.get("segmentation")
        if isinstance(segmentation, list):
            if not segmentation:
                self._check_box(ann, where)
            for k, polygon in enumerate(segmentation):
                if not isinstance(polygon, list):
                    raise DatasetError(f"{where}: segmentation is not a list of polygons; expected "
                                       "[[x1, y1, x2, y2, ...], ...]")
                check_polygon(polygon, f"{where}, polygon {k}")
        elif not isinstance(segmentation, dict):
            raise DatasetError(f"{where}: no segmentation; expected a list of polygons or an RLE object")

    def _check_box(self, ann: dict, where: str) -> None:
        if self.boxes == "error":
            raise DatasetError(f"{where}: empty segmentation (a box only); convert-data reads masks and polygons "
                               "(boxes='mask' paints boxes, as CVAT's mask export does)")
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
                and box[2] > 0 and box[3] > 0):
            raise DatasetError(f"{where}: empty segmentation and no valid 'bbox' [x, y, width, height]")

    def find_image(self, file_name: str, where: str) -> Path:
        names = [Path(file_name)] + ([Path(Path(file_name).name)] if Path(file_name).name != file_name else [])
        for folder in self.image_dirs:
            for name in names:
                if (folder / name).is_file():
                    return folder / name
        looked = ", ".join(str(folder) for folder in self.image_dirs)
        raise DatasetError(f"{where}: image file {file_name!r} not found (looked in {looked}); "
                           "pass images=DIR (--images) for the folder that holds it")

    def _object(self, ann: dict, height: int, width: int) -> tuple[int, dict]:
        where = f"{self.path}: annotation id {ann.get('id', '?')}"
        segmentation = ann["segmentation"]
        if isinstance(segmentation, dict):
            mask = coco_rle(segmentation, height, width, where)
        elif segmentation:
            mask = polygons_rle(segmentation, height, width)
        else:
            x, y, w, h = ann["bbox"]
            mask = polygons_rle([[x, y, x + w, y, x + w, y + h, x, y + h]], height, width)
        index = IGNORE if ann.get("iscrowd") and self.crowd == "ignore" else self.index[ann["category_id"]]
        return index, mask

    def samples(self) -> Iterator[Sample]:
        for image_id, img in self.images.items():
            where = f"{self.path}: image id {image_id}"
            path = self.find_image(img["file_name"], where)
            size = image_size(path)
            check_size(path, size, (img["width"], img["height"]), where)
            objects = [self._object(ann, img["height"], img["width"]) for ann in self.annotations[image_id]]
            label = paint(img["height"], img["width"], objects)
            yield Sample(Path(img["file_name"]).stem, path, label, len(objects), self.split, size)


def read_coco(
    src: str | Path, *, images: str | Path | None = None, crowd: str = "ignore", boxes: str = "error"
) -> Source:
    """Read a COCO instances JSON file ``src``.

    ``images``: the folder of the images (default: searched beside the file, see :func:`default_image_dirs`);
    ``crowd``: ``"ignore"`` paints ``iscrowd`` regions 255, ``"class"`` their category; ``boxes``: ``"error"``
    refuses box-only annotations, ``"mask"`` paints their box."""
    src = Path(src)
    dirs = [Path(images)] if images is not None else default_image_dirs(src)
    coco = CocoFile(src, dirs, crowd, boxes)
    return Source(coco.classes, coco.samples())
