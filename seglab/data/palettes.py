"""Label sets: the class names, colours and left/right flip pairs of every dataset seglab reads.

A label set is what turns an index map into something a person can read (coloured PNGs, overlays,
metric tables) and tells the flip transform which labels swap sides. Label PNGs are written as
palette (P-mode) images so that the file holds class indices and its palette holds the colours.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VOID_COLOR = (224, 224, 192)  # the colour VOC gives index 255 ("void", ignored)


def voc_colormap(n: int = 256) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map: the bits of the index interleaved into the high bits of R, G, B."""
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return colors


@dataclass(frozen=True)
class LabelSet:
    """Class names and colours of a dataset, index order; ``flip_pairs`` swap under a horizontal flip."""

    name: str
    classes: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    flip_pairs: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if len(self.classes) != len(self.colors):
            raise ValueError(f"label set {self.name!r}: {len(self.classes)} classes but {len(self.colors)} colours")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def palette_bytes(self) -> bytes:
        """768 bytes for ``PIL.Image.putpalette``: the class colours, then the VOC colour map, 255 void."""
        colors = voc_colormap(256)
        colors[: self.num_classes] = self.colors
        colors[255] = VOID_COLOR
        return bytes(v for rgb in colors for v in rgb)


VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

DEMO_SHAPES_CLASSES = ("background", "circle", "square", "triangle", "star")

COCO_CLASSES = (  # background, then the 80 COCO instance categories in category-id order
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip

LIP_CLASSES = (
    "Background", "Hat", "Hair", "Glove", "Sunglasses", "UpperClothes", "Dress", "Coat", "Socks", "Pants",
    "Jumpsuits", "Scarf", "Skirt", "Face", "LeftArm", "RightArm", "LeftLeg", "RightLeg", "LeftShoe", "RightShoe",
)  # fmt: skip
LIP_COLORS = (
    (0, 0, 0), (128, 0, 0), (255, 0, 0), (0, 85, 0), (170, 0, 51), (255, 85, 0), (0, 0, 85), (0, 119, 221),
    (85, 85, 0), (0, 85, 85), (85, 51, 0), (52, 86, 128), (0, 128, 0), (0, 0, 255), (51, 170, 221),
    (0, 255, 255), (85, 255, 170), (170, 255, 85), (255, 255, 0), (255, 170, 0),
)  # fmt: skip
LIP_FLIP_PAIRS = ((14, 15), (16, 17), (18, 19))  # LeftArm/RightArm, LeftLeg/RightLeg, LeftShoe/RightShoe

# CIHP: LIP's labels, colours and flip pairs, except that label 10 is torso skin (not jumpsuits).
CIHP_CLASSES = LIP_CLASSES[:10] + ("Torso-skin",) + LIP_CLASSES[11:]

# ATR (Liang et al., "Deep Human Parsing with Active Template Regression", TPAMI 2015), SCHP's label order.
ATR_CLASSES = (
    "Background", "Hat", "Hair", "Sunglasses", "Upper-clothes", "Skirt", "Pants", "Dress", "Belt", "Left-shoe",
    "Right-shoe", "Face", "Left-leg", "Right-leg", "Left-arm", "Right-arm", "Bag", "Scarf",
)  # fmt: skip
ATR_FLIP_PAIRS = ((9, 10), (12, 13), (14, 15))  # shoes, legs, arms

# Pascal-Person-Part (Chen et al., "Detect What You Can", CVPR 2014), SCHP's label order; no left/right labels.
PASCAL_PERSON_PART_CLASSES = ("Background", "Head", "Torso", "Upper Arms", "Lower Arms", "Upper Legs", "Lower Legs")

# The 16 LIP pose joints in the order of the LIP pose CSV (MPII order), and the pairs a horizontal flip swaps.
LIP_JOINTS = (
    "R_Ankle", "R_Knee", "R_Hip", "L_Hip", "L_Knee", "L_Ankle", "Pelvis", "Thorax", "Neck", "Head",
    "R_Wrist", "R_Elbow", "R_Shoulder", "L_Shoulder", "L_Elbow", "L_Wrist",
)  # fmt: skip
LIP_JOINT_FLIP_PAIRS = ((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13))

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_COLORS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

CAMVID_CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)  # fmt: skip
CAMVID_COLORS = (  # the SegNet CamVid colours
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)  # fmt: skip


# ADE20K SceneParsing (Zhou et al., CVPR 2017): the 150 classes of objectInfo150, in annotation order 1..150
# (annotation value 0, "other", is not a class: the loader ignores it and shifts the rest down by one).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

# COCO-Stuff 164k (Caesar et al., CVPR 2018): the 80 thing and 91 stuff classes that occur, in category-id order
# (the 11 unused thing ids of COCO are dropped: 171 contiguous train ids).
COCO_STUFF_CLASSES = COCO_CLASSES[1:] + (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel",
    "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip

def _voc_colored(name: str, classes: tuple[str, ...]) -> LabelSet:
    return LabelSet(name, classes, tuple(voc_colormap(len(classes))))


_LABEL_SETS: dict[str, LabelSet] = {
    "voc": _voc_colored("voc", VOC_CLASSES),
    "demo_shapes": _voc_colored("demo_shapes", DEMO_SHAPES_CLASSES),
    "binary": _voc_colored("binary", ("background", "foreground")),  # a folder dataset of one class
    "lip": LabelSet("lip", LIP_CLASSES, LIP_COLORS, LIP_FLIP_PAIRS),
    "cityscapes": LabelSet("cityscapes", CITYSCAPES_CLASSES, CITYSCAPES_COLORS),
    "camvid": LabelSet("camvid", CAMVID_CLASSES, CAMVID_COLORS),
    # ADE20K and COCO-Stuff: the VOC colour map (distinct for the first 256 indices)
    "ade20k": _voc_colored("ade20k", ADE20K_CLASSES),
    "coco_stuff": _voc_colored("coco_stuff", COCO_STUFF_CLASSES),
    "coco": _voc_colored("coco", COCO_CLASSES),  # the VOC colour map: distinct for the first 256 indices
    "cihp": LabelSet("cihp", CIHP_CLASSES, LIP_COLORS, LIP_FLIP_PAIRS),
    # ATR and Pascal-Person-Part: the VOC colour map, as SCHP's get_palette draws them
    "atr": LabelSet("atr", ATR_CLASSES, tuple(voc_colormap(len(ATR_CLASSES))), ATR_FLIP_PAIRS),
    "pascal_person_part": _voc_colored("pascal_person_part", PASCAL_PERSON_PART_CLASSES),
}


CLASSES_FILE = "classes.txt"  # a folder dataset's own class list (what seglab convert-data writes)
_HEX_COLOR = re.compile(r"#[0-9a-fA-F]{6}")


def custom_label_set(
    classes: Sequence[str], colors: Sequence[Sequence[int]] | None = None, name: str = "custom", where: str = "classes"
) -> LabelSet:
    """A label set from class names (index order) and optional ``[R, G, B]`` colours (default: the VOC colour
    map); ValueError naming ``where`` for an empty or repeated name or a colour that is not three values 0-255."""
    classes = [str(c) for c in classes]
    if not classes or any(not c.strip() for c in classes):
        raise ValueError(f"{where}: expected a list of non-empty class names, got {classes!r}")
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        raise ValueError(f"{where}: class names must differ; repeated: {', '.join(repeated)}")
    if not colors:
        return LabelSet(name, tuple(classes), tuple(voc_colormap(len(classes))))
    if len(colors) != len(classes):
        raise ValueError(f"{where}: {len(classes)} classes but {len(colors)} colours")
    rgb = []
    for i, color in enumerate(colors):
        values = list(color) if isinstance(color, (list, tuple)) else []
        if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255
                                       for v in values):
            raise ValueError(f"{where}: colour {i} ({classes[i]}) must be [R, G, B] with values 0-255, got {color!r}")
        rgb.append((values[0], values[1], values[2]))
    return LabelSet(name, tuple(classes), tuple(rgb))


def read_classes_entries(path: str | Path) -> list[tuple[str, tuple[int, int, int] | None]]:
    """The ``(name, colour or None)`` lines of a ``classes.txt``, in index order: ``name`` or ``name #rrggbb`` (the
    colour is the last whitespace-separated token when it matches ``#rrggbb``). Blank lines are errors (they would
    shift every index after them) except at the end; ValueError naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the class list ({exc})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError(f"{path}: the class list is empty; expected one class per line, 'name' or 'name #rrggbb'")
    entries: list[tuple[str, tuple[int, int, int] | None]] = []
    for number, line in enumerate(lines, 1):
        tokens = line.split()
        if not tokens:
            raise ValueError(f"{path}: line {number} is empty; expected one class per line, 'name' or 'name #rrggbb'")
        if len(tokens) > 1 and _HEX_COLOR.fullmatch(tokens[-1]):
            rgb = tuple(int(tokens[-1][i : i + 2], 16) for i in (1, 3, 5))
            entries.append((" ".join(tokens[:-1]), (rgb[0], rgb[1], rgb[2])))
        else:
            entries.append((line.strip(), None))
    return entries


def read_classes_file(path: str | Path) -> LabelSet:
    """The label set of a ``classes.txt`` (:func:`read_classes_entries`); a class without a colour gets the VOC
    colour map's colour of its index. ValueError naming the file for a malformed one."""
    entries = read_classes_entries(path)
    voc = voc_colormap(len(entries))
    colors = [list(color or voc[i]) for i, (_, color) in enumerate(entries)]
    return custom_label_set([name for name, _ in entries], colors, where=str(path))


def label_set_metadata(labels: LabelSet) -> dict[str, Any]:
    """What a weights file or an export records of ``labels``: its name, and for a label set that is not
    registered (a config's ``data.classes``, a folder's classes.txt) its classes and colours too."""
    if _LABEL_SETS.get(labels.name) == labels:
        return {"label_set": labels.name}
    return {"label_set": labels.name, "label_set_classes": list(labels.classes),
            "label_set_colors": [list(c) for c in labels.colors]}


def label_set_from_metadata(meta: Mapping[str, Any], default: str = "voc") -> LabelSet:
    """The label set recorded by :func:`label_set_metadata` (``default`` where none is)."""
    if meta.get("label_set_classes"):
        return custom_label_set(meta["label_set_classes"], meta.get("label_set_colors"),
                                name=str(meta.get("label_set") or "custom"), where="label_set_classes")
    return get_label_set(meta.get("label_set") or default)


def list_label_sets() -> list[str]:
    """Names accepted by :func:`get_label_set` (and by the config key ``data.palette``)."""
    return sorted(_LABEL_SETS)


def get_label_set(name: str) -> LabelSet:
    """The label set called ``name``; an unknown name raises KeyError listing the available ones."""
    try:
        return _LABEL_SETS[name]
    except KeyError:
        raise KeyError(f"unknown label set {name!r}; available: {', '.join(list_label_sets())}") from None


__all__ = [
    "ATR_FLIP_PAIRS",
    "CLASSES_FILE",
    "LIP_FLIP_PAIRS",
    "LIP_JOINTS",
    "LIP_JOINT_FLIP_PAIRS",
    "LabelSet",
    "custom_label_set",
    "get_label_set",
    "label_set_from_metadata",
    "label_set_metadata",
    "list_label_sets",
    "read_classes_entries",
    "read_classes_file",
    "voc_colormap",
]
