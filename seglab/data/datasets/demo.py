"""Demo data: synthetic "shapes" scenes written in the PASCAL VOC 2012 layout and as COCO instances.

The demo has to run anywhere without a download, and still exercise the real code path: the scenes
are generated deterministically from a seed, written to disk in the official layouts, and read back
through :class:`~seglab.data.datasets.voc.VOCSegmentation` (and any COCO reader) like real data.

Each scene has a varied background (a random colour gradient, plus sinusoidal stripes, a soft checker
or smooth blobs along a random colour direction, plus Gaussian noise) and 1-5 objects of the classes
``circle, square, triangle, star``. Each object gets a saturated colour whose hue lies in its class's band
(circle red, star yellow, square green, triangle blue, each +-20 degrees, with saturation 0.6-1 and
brightness 0.55-1 drawn at random), chosen to contrast with what lies under it by a margin, and a faint
shading gradient; backgrounds are muted (saturation scaled to at most 40%). Colour therefore carries
the class as well as the shape. That is deliberate: with random colours the shape alone takes a
from-scratch U-Net (width 16, batch 8) well over 1000 steps to learn (val mIoU 0.26 after 1000 steps,
measured), more than the few CPU minutes the demo may take. Objects
vary in size (about 10-40% of the image side), position and rotation (circles stay round, squares
square); later objects occlude earlier ones, with each earlier object kept at least 60% visible.

Written files (``<id>`` is ``train_00000`` ... / ``val_00000`` ...)::

    JPEGImages/<id>.jpg                      quality 90
    SegmentationClass/<id>.png               P-mode, class indices, 255 on a ~2 px band around each object
    SegmentationObject/<id>.png              P-mode, instance indices 1..N, the same 255 band
    ImageSets/Segmentation/{train,val,trainval}.txt
    annotations/instances_{train,val}.json   COCO: categories 1..4, compressed-RLE visible masks
    manifest.json                            generator version and parameters, written last

The folder is built under a temporary sibling name and renamed into place, so an interrupted
generation never leaves a half dataset that looks complete.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from seglab.config import DataConfig
from seglab.data.datasets.coco import COCO, COCOInstances, coco_instances
from seglab.data.datasets.voc import VOC, VOCSegmentation
from seglab.data.palettes import DEMO_SHAPES_CLASSES, get_label_set
from seglab.data.registry import config_label_set, register_dataset
from seglab.errors import DatasetError
from seglab.utils import atomic_write_text

log = logging.getLogger(__name__)

GENERATOR = "seglab.demo_shapes"
GENERATOR_VERSION = 2
DEMO_CLASSES = DEMO_SHAPES_CLASSES  # background, circle, square, triangle, star
DEMO_PARAMS: dict[str, int] = {"seed": 0, "num_train": 300, "num_val": 100, "size": 256}  # ensure_demo_data's

CIRCLE, SQUARE, TRIANGLE, STAR = 1, 2, 3, 4
SCALE_RANGE = (0.10, 0.40)  # object extent as a fraction of the image side
MAX_OBJECTS = 5
MIN_VISIBLE = 0.6  # an earlier object keeps at least this fraction of its area visible
COLOR_MARGIN = 80.0  # RGB distance between an object's colour and (nearly all) pixels under it
NOISE_SIGMA = (5.0, 9.0)
CLASS_HUES = {1: 0.0, 2: 1 / 3, 3: 2 / 3, 4: 1 / 6}  # circle red, square green, triangle blue, star yellow
HUE_HALF_WIDTH = 20 / 360
BACKGROUND_SATURATION = 0.4  # background colour deviations from grey are scaled by at most this
_ENTRIES = {"JPEGImages", "SegmentationClass", "SegmentationObject", "ImageSets", "annotations", "manifest.json"}


# -- scene drawing ---------------------------------------------------------------------------------


def _background(rng: np.random.Generator, size: int, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """HxWx3 float32: a colour gradient plus one texture along a random colour direction."""
    xx, yy = grid
    angle = rng.uniform(0, 2 * math.pi)
    t = math.cos(angle) * xx + math.sin(angle) * yy
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    bg = c0 + (c1 - c0) * t[..., None]
    kind = rng.integers(0, 3)
    a = rng.uniform(0, math.pi)
    u, v = math.cos(a) * xx + math.sin(a) * yy, -math.sin(a) * xx + math.cos(a) * yy
    if kind == 0:  # sinusoidal stripes
        tex = np.sin(2 * math.pi * rng.uniform(2, 12) * u + rng.uniform(0, 2 * math.pi))
    elif kind == 1:  # soft checker
        cells = rng.uniform(3, 10)
        tex = np.tanh(1.5 * np.sin(math.pi * cells * u + rng.uniform(0, 6)) * np.sin(math.pi * cells * v))
    else:  # smooth blobs: low-resolution noise upsampled bicubically
        k = int(rng.integers(3, 8))
        low = Image.fromarray(rng.standard_normal((k, k)).astype(np.float32))
        tex = np.asarray(low.resize((size, size), Image.Resampling.BICUBIC))
        tex = np.clip(tex / max(float(tex.std()), 1e-6), -2, 2) / 2
    direction = rng.normal(size=3).astype(np.float32)
    direction /= max(float(np.linalg.norm(direction)), 1e-6)
    amplitude = rng.uniform(10, 35) * math.sqrt(3)
    bg = bg + tex.astype(np.float32)[..., None] * (amplitude * direction)
    gray = bg.mean(axis=2, keepdims=True)
    return gray + rng.uniform(0.0, BACKGROUND_SATURATION) * (bg - gray)  # muted: objects own the strong hues


def _shape_polygon(cls: int, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if cls == SQUARE:
        radii, n = [r], 4
    elif cls == TRIANGLE:
        radii, n = [1.15 * r], 3
    else:  # STAR: five points, inner radius 0.45 of the outer
        radii, n = [1.15 * r, 0.45 * 1.15 * r], 10
    pts = []
    for i in range(n):
        rad = radii[i % len(radii)]
        theta = angle + 2 * math.pi * i / n
        pts.append((cx + rad * math.cos(theta), cy + rad * math.sin(theta)))
    return pts


def _shape_mask(cls: int, cx: float, cy: float, r: float, angle: float, size: int) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if cls == CIRCLE:
        rc = 0.85 * r
        draw.ellipse([cx - rc, cy - rc, cx + rc, cy + rc], fill=1)
    else:
        draw.polygon(_shape_polygon(cls, cx, cy, r, angle), fill=1)
    return np.asarray(canvas, dtype=bool)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV (all in [0, 1]) to RGB in [0, 255], shape (N, 3)."""
    k = (np.array([5.0, 3.0, 1.0])[None, :] + h[:, None] * 6.0) % 6.0
    rgb = v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return (rgb * 255.0).astype(np.float32)


def _pick_color(rng: np.random.Generator, cls: int, region: np.ndarray) -> np.ndarray:
    """A colour from class ``cls``'s hue band at least COLOR_MARGIN from 95% of ``region``'s pixels
    (else the farthest candidate)."""
    hue = (CLASS_HUES[cls] + rng.uniform(-HUE_HALF_WIDTH, HUE_HALF_WIDTH, 24)) % 1.0
    candidates = _hsv_to_rgb(hue, rng.uniform(0.6, 1.0, 24), rng.uniform(0.55, 1.0, 24))
    dist = np.linalg.norm(region[None, :, :] - candidates[:, None, :], axis=2)
    k = max(int(0.05 * dist.shape[1]) - 1, 0)
    score = np.partition(dist, k, axis=1)[:, k]
    good = np.flatnonzero(score >= COLOR_MARGIN)
    return candidates[good[0] if good.size else int(np.argmax(score))]


def render_scene(
    rng: np.random.Generator, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, np.ndarray]]]:
    """One scene: ``(image HxWx3 uint8, class map, instance map, [(class, visible mask), ...])``.

    The class and instance maps are uint8 with 255 on a ~2 px band around every visible object.
    """
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    canvas = _background(rng, size, (xs, ys))
    instances = np.zeros((size, size), np.uint8)
    classes: list[int] = []
    full_areas: list[int] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        visible = np.bincount(instances.ravel(), minlength=len(classes) + 1)
        for _attempt in range(20):
            cls = int(rng.integers(1, len(DEMO_CLASSES)))
            r = rng.uniform(*SCALE_RANGE) * size / 2
            reach = 1.15 * r
            cx, cy = rng.uniform(reach, size - reach, 2)
            angle = rng.uniform(0, 2 * math.pi)
            mask = _shape_mask(cls, cx, cy, r, angle, size)
            covered = np.bincount(instances[mask], minlength=len(classes) + 1)
            if all(visible[j + 1] - covered[j + 1] >= MIN_VISIBLE * full_areas[j] for j in range(len(classes))):
                break
        else:
            continue  # no placement keeps the earlier objects visible enough: skip this object
        y0, y1 = max(int(cy - reach) - 4, 0), min(int(cy + reach) + 5, size)
        x0, x1 = max(int(cx - reach) - 4, 0), min(int(cx + reach) + 5, size)
        color = _pick_color(rng, cls, canvas[y0:y1:2, x0:x1:2].reshape(-1, 3))
        b = rng.uniform(0, 2 * math.pi)
        shade = rng.uniform(-15, 15) * ((xs[mask] * size - cx) * math.cos(b) + (ys[mask] * size - cy) * math.sin(b)) / r
        canvas[mask] = color + shade[:, None]
        classes.append(cls)
        full_areas.append(int(mask.sum()))
        instances[mask] = len(classes)
    sigma = rng.uniform(*NOISE_SIGMA)
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * sigma
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)

    objects = [(cls, instances == k + 1) for k, cls in enumerate(classes)]
    lut = np.array([0, *classes], np.uint8)
    semantic = lut[instances]
    inst_img = Image.fromarray(instances)
    grown = np.asarray(inst_img.filter(ImageFilter.MaxFilter(3)))
    shrunk = np.asarray(inst_img.filter(ImageFilter.MinFilter(3)))
    border = grown != shrunk  # a neighbour belongs to another instance: 1 px each side of every edge
    semantic[border] = 255
    instances = instances.copy()
    instances[border] = 255
    return image, semantic, instances, objects


# -- writing ---------------------------------------------------------------------------------------


def _save_png(array: np.ndarray, palette: bytes, path: Path) -> None:
    img = Image.fromarray(array)
    img.putpalette(palette)
    img.save(path, format="PNG")


def _coco_annotations(objects: list[tuple[int, np.ndarray]], image_id: int, next_id: int) -> list[dict[str, Any]]:
    from pycocotools import mask as mask_utils

    anns = []
    for cls, visible in objects:
        if not visible.any():
            continue  # fully occluded
        rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
        anns.append(
            {
                "id": next_id + len(anns),
                "image_id": image_id,
                "category_id": cls,
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "area": float(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
            }
        )
    return anns


def _manifest(seed: int, num_train: int, num_val: int, size: int) -> dict[str, Any]:
    return {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "size": size,
        "classes": list(DEMO_CLASSES),
    }


def _write_dataset(out: Path, seed: int, num_train: int, num_val: int, size: int) -> None:
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationObject", "ImageSets/Segmentation", "annotations"):
        (out / sub).mkdir(parents=True)
    palette = get_label_set("demo_shapes").palette_bytes()  # the VOC colour map, 255 void
    categories = [{"id": i, "name": name, "supercategory": "shape"} for i, name in enumerate(DEMO_CLASSES) if i]
    all_ids: list[str] = []
    for split_code, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        ids, images, annotations = [], [], []
        for i in range(count):
            rng = np.random.default_rng([seed, split_code, i])  # per image: independent of the counts
            image, semantic, instances, objects = render_scene(rng, size)
            image_id = f"{split}_{i:05d}"
            Image.fromarray(image).save(out / "JPEGImages" / f"{image_id}.jpg", format="JPEG", quality=90)
            _save_png(semantic, palette, out / "SegmentationClass" / f"{image_id}.png")
            _save_png(instances, palette, out / "SegmentationObject" / f"{image_id}.png")
            ids.append(image_id)
            images.append({"id": i + 1, "file_name": f"{image_id}.jpg", "width": size, "height": size})
            annotations += _coco_annotations(objects, i + 1, len(annotations) + 1)
        (out / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{x}\n" for x in ids))
        coco = {
            "info": {"description": f"seglab demo shapes, {split} split (images in JPEGImages/)", "version": "1"},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        all_ids += ids
    (out / "ImageSets" / "Segmentation" / "trainval.txt").write_text("".join(f"{x}\n" for x in all_ids))
    atomic_write_text(out / "manifest.json", json.dumps(_manifest(seed, num_train, num_val, size), indent=2) + "\n")


def _read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def check_replaceable(
    root: Path, entries: set[str] = _ENTRIES, what: str = "demo data", kind: str = "demo dataset"
) -> None:
    """Refuse to replace a folder that holds anything the generator does not write (``entries``); ``what`` and
    ``kind`` name the generated data in the error."""
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root}: exists and is not a folder; cannot write the {what} there")
    if root.is_dir():
        foreign = sorted(p.name for p in root.iterdir() if p.name not in entries)
        if foreign:
            raise DatasetError(
                f"{root}: not empty and not a {kind} (holds {', '.join(foreign[:5])}); "
                f"refusing to replace it with the {what}"
            )


def generate_demo_data(
    root: str | Path, *, seed: int = 0, num_train: int = 300, num_val: int = 100, size: int = 256
) -> Path:
    """Generate the demo shapes dataset into ``root`` (replacing a previous demo dataset there); returns ``root``."""
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise ValueError(f"need at least one image, got num_train={num_train}, num_val={num_val}")
    if size < 32:
        raise ValueError(f"size must be at least 32, got {size}")
    root = Path(root)
    check_replaceable(root)
    manifest = _manifest(seed, num_train, num_val, size)
    return replace_folder_atomically(root, lambda tmp: _write_dataset(tmp, seed, num_train, num_val, size), manifest)


def replace_folder_atomically(root: Path, write: Callable[[Path], None], manifest: dict[str, Any]) -> Path:
    """Build a generated dataset with ``write(tmp)`` in a temporary sibling folder, then rename it to ``root``
    (a previous folder there is moved aside first and removed after), so an interrupted generation never leaves
    a half dataset that looks complete. ``write`` writes ``manifest.json`` last; if another process renamed the
    same generation (equal ``manifest``) into place first, its copy is kept."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        write(tmp)
        os.chmod(tmp, 0o755)
        old = None
        if root.is_dir():
            if any(root.iterdir()):
                old = root.with_name(f".{root.name}.old-{uuid.uuid4().hex[:8]}")
                os.replace(root, old)
            else:
                root.rmdir()
        try:
            os.replace(tmp, root)
        except OSError:
            if _read_manifest(root) != manifest:  # another process finished the same generation first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def cache_folder(name: str) -> Path:
    """``$SEGLAB_CACHE/<name>``, else ``~/.cache/seglab/<name>``: where generated demo data live."""
    cache = os.environ.get("SEGLAB_CACHE")
    return (Path(cache) if cache else Path.home() / ".cache" / "seglab") / name


def default_demo_root() -> Path:
    """``$SEGLAB_CACHE/demo_shapes``, else ``~/.cache/seglab/demo_shapes``."""
    return cache_folder("demo_shapes")


def ensure_demo_data(root: str | Path | None = None) -> Path:
    """The demo dataset at ``root`` (default :func:`default_demo_root`), generated with ``DEMO_PARAMS``
    only when its manifest is missing or records other parameters; returns the folder."""
    root = Path(root) if root else default_demo_root()
    params = dict(DEMO_PARAMS)
    if _read_manifest(root) == _manifest(**params):
        return root
    log.info("generating the demo shapes dataset into %s", root)
    return generate_demo_data(root, **params)


# -- registration ------------------------------------------------------------------------------------------


def _semantic(cfg: DataConfig, split: str, train: bool) -> VOCSegmentation:
    """The VOC files (label maps); ``data.root`` empty: the cache folder, generated if needed."""
    from seglab.data.transforms import build_transforms

    labels = config_label_set(cfg, "demo_shapes")
    transforms = build_transforms(cfg, train)
    return VOCSegmentation(cfg.root or ensure_demo_data(), split, transforms, label_set=labels)


def _instances(cfg: DataConfig, split: str, train: bool) -> COCOInstances:
    """The COCO files (instances); ``data.root`` empty: the cache folder, generated if needed."""
    return coco_instances(cfg, split, train, cfg.root or ensure_demo_data())


register_dataset(
    "demo",
    builders={"semantic": _semantic, "instance": _instances},
    label_set="demo_shapes",
    layouts=(VOC, COCO),
    summary="synthetic shapes; `data.root` empty: `demo_shapes/` in the cache folder (`$SEGLAB_CACHE`, else "
    "`~/.cache/seglab`), generated if needed",
    check_root=lambda cfg: Path(cfg.root) if cfg.root else default_demo_root(),
)

__all__ = ["DEMO_CLASSES", "DEMO_PARAMS", "default_demo_root", "ensure_demo_data", "generate_demo_data", "render_scene"]
