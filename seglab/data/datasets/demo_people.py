"""Demo people: synthetic human figures written in the LIP (single person, with pose) and CIHP (multi-person) layouts.

Human-parsing code needs data with LIP's 20 part labels, left/right parts and pose joints, and the demo must
run without a download. Each figure is an articulated stick skeleton on LIP's 16 joints (order 0 R_Ankle ...
15 L_Wrist) at a random pose (standing, walking, one or both arms raised, hands on hips, a slight torso lean),
scale, position and colours, dressed with PIL polygons and ellipses that write the image, the part label and
a body-segment owner map in the same draw call (so labels match the drawn pixels exactly; no 255 band is
written: JPEG softens the image edges, the labels stay crisp, as in LIP's own annotations).

Garment colours come from a hue band per class (:data:`_GARMENT_HSV`: shirts red, coats brown, dresses magenta,
jumpsuits cyan, pants blue, skirts green, scarves yellow, hats purple, gloves white, socks pale, shoes dark) with
random saturation and brightness, so colour is a cue as well as shape and position, as in the shapes demo.

Parts and labels: head -> Face 13 with Hair 2 (short, fringe, long, bun), sometimes Hat 1 and Sunglasses 4;
UpperClothes 5 or Coat 7 (open front over an UpperClothes shirt), sometimes Scarf 11; Pants 9 (long or shorts)
or Skirt 12, or Dress 6 (replaces upper and lower clothes) or Jumpsuits 10; LeftArm 14 / RightArm 15 are the arm's
skin (sleeves take the garment's label, as in LIP), sometimes Glove 3 on the hands; LeftLeg 16 / RightLeg 17 skin,
sometimes Socks 8, LeftShoe 18 / RightShoe 19. The neck is Face in LIP; in CIHP (label 10 = Torso-skin, no
Jumpsuits) the neck and a V-neck chest triangle are Torso-skin.

Left and right are decidable from the image alone (a flip without the label swap then costs mIoU):
- orientation: about 70% of the figures face the viewer (a face with eyes, nose and mouth; the person's left
  is on the image right), the others face away (the head is all hair, no face features; left is image left);
- asymmetric details, always on the person's left: a watch band on the left wrist, a light stripe across the
  left shoe and the left glove, and (half of the figures) a bag strap from the left shoulder to the right hip.
The pose CSV carries the orientation: L_Shoulder lies right of R_Shoulder in the image iff the figure faces
the viewer, and the arms never cross the body's midline.

Pose CSV (LIP's): ``<id>.jpg`` then 16 x (x, y, v) in image pixels; v = 1 visible, 0 when another part or a
foreground prop (about 12% of LIP images put a background-labelled box in front of the legs) covers the joint
(a knee under a skirt is occluded); a joint outside the image is ``nan,nan,nan`` (about 20% of the LIP figures
are cropped at the bottom or a side edge).

CIHP: 1-3 figures per image (height 30-70% of the side) drawn in order; later ones may occlude earlier ones,
each keeping at least half of its own in-image area visible. Human_ids are 1..N in drawing order (only the
figures actually placed), Instance_ids number the visible (person, part) pairs 1..M person by person in
label order, Category_ids are the part labels.

Written files under the returned folder ``D`` (ids ``train_00000`` ... / ``val_00000`` ...)::

    LIP/TrainVal_images/{train,val}_images/<id>.jpg, LIP/TrainVal_images/{train,val}_id.txt
    LIP/TrainVal_parsing_annotations/{train,val}_segmentations/<id>.png      P-mode, LIP palette, values 0-19
    LIP/TrainVal_pose_annotations/lip_{train,val}_set.csv
    CIHP/instance-level_human_parsing/{Training,Validation}/{Images,Category_ids,Instance_ids,Human_ids}/<id>.*
    CIHP/instance-level_human_parsing/Training/train_id.txt, .../Validation/val_id.txt
    manifest.json                                                            generator and parameters, written last

Backgrounds reuse the shapes demo's textures (:func:`seglab.data.datasets.demo._background`). Everything is
deterministic from the seed (each image draws from its own generator), built in a temporary sibling folder and
renamed into place.
"""

from __future__ import annotations

import json
import logging
import math
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from seglab.config import DataConfig
from seglab.data.datasets.cihp import CIHP, cihp_builders
from seglab.data.datasets.demo import (
    _background,
    _read_manifest,
    _save_png,
    cache_folder,
    check_replaceable,
    replace_folder_atomically,
)
from seglab.data.datasets.lip import LIP, lip_dataset
from seglab.data.palettes import LIP_CLASSES, get_label_set
from seglab.data.registry import register_dataset
from seglab.utils import atomic_write_text

log = logging.getLogger(__name__)

GENERATOR = "seglab.demo_people"
GENERATOR_VERSION = 2  # 2: garment colours by class (_GARMENT_HSV)
DEMO_PEOPLE_PARAMS: dict[str, int] = {
    "seed": 0, "num_train": 400, "num_val": 100, "size": 192, "num_cihp_train": 200, "num_cihp_val": 50,
}  # fmt: skip
JOINTS = (  # LIP's joint order, as seglab.data.palettes.LIP_JOINTS
    "R_Ankle", "R_Knee", "R_Hip", "L_Hip", "L_Knee", "L_Ankle", "Pelvis", "Thorax", "Neck", "Head",
    "R_Wrist", "R_Elbow", "R_Shoulder", "L_Shoulder", "L_Elbow", "L_Wrist",
)  # fmt: skip
_ENTRIES = {"LIP", "CIHP", "manifest.json"}

HAT, HAIR, GLOVE, SUNGLASSES, UPPER, DRESS, COAT, SOCKS, PANTS, JUMPSUIT, SCARF, SKIRT, FACE = range(1, 14)
ARM, LEG, SHOE = {+1: 14, -1: 15}, {+1: 16, -1: 17}, {+1: 18, -1: 19}  # keyed by side: +1 left, -1 right
TORSO_SKIN = 10  # CIHP's label 10
# body-segment owners, used for joint visibility; the CIHP human id is derived from the person's layer
HEAD, TORSO = 1, 2
ARM_OWNER, LEG_OWNER = {+1: 3, -1: 4}, {+1: 5, -1: 6}
_JOINT_OWNERS = (
    {6}, {6}, {6, 2}, {5, 2}, {5}, {5}, {2, 5, 6}, {2}, {1, 2}, {1}, {4}, {4}, {4, 2}, {3, 2}, {3}, {3},
)  # fmt: skip
_UPPER_JOINTS = {  # joints that lean with the upper body
    "Thorax",
    "Neck",
    "Head",
    "R_Wrist",
    "R_Elbow",
    "R_Shoulder",
    "L_Shoulder",
    "L_Elbow",
    "L_Wrist",
}
LIP_SCALE, CIHP_SCALE = (0.55, 0.95), (0.30, 0.70)  # person height as a fraction of the image side
MIN_VISIBLE = 0.5
_SKIN = np.array([[255, 224, 196], [241, 194, 160], [224, 172, 130], [198, 134, 96], [141, 85, 54], [92, 58, 40]])
_HAIR = np.array([[30, 25, 22], [70, 45, 30], [120, 80, 40], [215, 185, 120], [150, 60, 30], [160, 160, 160]])

Point = tuple[float, float]


# -- drawing ---------------------------------------------------------------------------------------


class _Layer:
    """One person's image, part labels and segment owners, drawn together so they always agree."""

    def __init__(self, size: int) -> None:
        self.rgb = Image.new("RGB", (size, size))
        self.label = Image.new("L", (size, size))
        self.owner = Image.new("L", (size, size))
        self._draws = [ImageDraw.Draw(im) for im in (self.rgb, self.label, self.owner)]

    def polygon(self, pts: list[Point], label: int, owner: int, color: np.ndarray) -> None:
        for draw, fill in zip(self._draws, (_rgb(color), label, owner), strict=True):
            draw.polygon(pts, fill=fill)

    def ellipse(self, c: Point, rx: float, ry: float, label: int, owner: int, color: np.ndarray) -> None:
        box = [c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry]
        for draw, fill in zip(self._draws, (_rgb(color), label, owner), strict=True):
            draw.ellipse(box, fill=fill)

    def segment(self, p0: Point, p1: Point, w0: float, w1: float, label: int, owner: int, color: np.ndarray) -> None:
        """A limb piece: a quad of widths w0 -> w1 with round caps."""
        self.polygon(_quad(p0, p1, w0, w1), label, owner, color)
        self.ellipse(p0, w0 / 2, w0 / 2, label, owner, color)
        self.ellipse(p1, w1 / 2, w1 / 2, label, owner, color)

    def paint(self, kind: str, xy: Any, color: np.ndarray, width: int = 1) -> None:
        """Image-only detail (eyes, stripes, straps): labels and owners unchanged."""
        draw = self._draws[0]
        if kind == "line":
            draw.line(xy, fill=_rgb(color), width=width)
        elif kind == "ellipse":
            draw.ellipse(xy, fill=_rgb(color))
        else:
            draw.polygon(xy, fill=_rgb(color))


def _rgb(color: np.ndarray) -> tuple[int, int, int]:
    c = np.clip(np.rint(color), 0, 255).astype(int)
    return int(c[0]), int(c[1]), int(c[2])


def _quad(p0: Point, p1: Point, w0: float, w1: float) -> list[Point]:
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    n = math.hypot(dx, dy) or 1.0
    nx, ny = -dy / n, dx / n
    return [
        (p0[0] + nx * w0 / 2, p0[1] + ny * w0 / 2), (p1[0] + nx * w1 / 2, p1[1] + ny * w1 / 2),
        (p1[0] - nx * w1 / 2, p1[1] - ny * w1 / 2), (p0[0] - nx * w0 / 2, p0[1] - ny * w0 / 2),
    ]  # fmt: skip


def _lerp(a: Point, b: Point, t: float) -> Point:
    return a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t


# Garment colours by class: a hue band (centre, half-width in degrees), saturation and value ranges per label, so
# colour is a cue to the class as well as shape and position (as the shapes demo does; with free colours a
# from-scratch CPU model needs far more than the demo's minutes to tell a coat from a shirt or a skirt from a dress).
_GARMENT_HSV: dict[int, tuple[float, float, tuple[float, float], tuple[float, float]]] = {
    UPPER: (0, 15, (0.6, 1.0), (0.55, 1.0)),  # reds
    COAT: (28, 10, (0.75, 1.0), (0.3, 0.55)),  # browns
    DRESS: (300, 15, (0.5, 1.0), (0.55, 1.0)),  # magentas
    JUMPSUIT: (180, 15, (0.6, 1.0), (0.5, 0.95)),  # cyans
    PANTS: (225, 15, (0.6, 1.0), (0.35, 0.9)),  # blues
    SKIRT: (120, 15, (0.55, 1.0), (0.45, 0.95)),  # greens
    SCARF: (58, 10, (0.7, 1.0), (0.75, 1.0)),  # yellows
    HAT: (270, 12, (0.5, 1.0), (0.45, 0.9)),  # purples
    GLOVE: (0, 180, (0.0, 0.12), (0.88, 1.0)),  # white
    SOCKS: (195, 20, (0.15, 0.35), (0.8, 1.0)),  # pale blue-grey
    SHOE[1]: (0, 180, (0.0, 0.5), (0.1, 0.28)),  # dark, any hue (both shoes)
}


def _class_colour(rng: np.random.Generator, label: int) -> np.ndarray:
    """An RGB colour (0-255) from ``label``'s band in :data:`_GARMENT_HSV`."""
    import colorsys

    hue, spread, sat, val = _GARMENT_HSV[label]
    h = ((hue + rng.uniform(-spread, spread)) % 360) / 360
    return np.array(colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val))) * 255


# -- one figure ------------------------------------------------------------------------------------


def _sample_style(rng: np.random.Generator, cihp: bool) -> dict[str, Any]:
    """Clothes, accessories, colours and pose of one figure (body frame, independent of placement)."""
    r = rng.random
    skin = _SKIN[rng.integers(len(_SKIN))] + rng.uniform(-12, 12, 3)
    top_p = [0.58, 0.26, 0.16, 0.0] if cihp else [0.5, 0.24, 0.14, 0.12]  # no Jumpsuits in CIHP
    top = rng.choice(["upper", "coat", "dress", "jumpsuit"], p=top_p)
    bottom = None if top in ("dress", "jumpsuit") else rng.choice(["pants", "shorts", "skirt"], p=[0.45, 0.2, 0.35])
    s: dict[str, Any] = {
        "front": r() < 0.7,
        "skin": skin,
        "hair": _HAIR[rng.integers(len(_HAIR))] + rng.uniform(-10, 10, 3),
        "hair_style": rng.choice(["short", "fringe", "long", "bun"]),
        "top": top,
        "bottom": bottom,
        "hat": r() < 0.3,
        "sunglasses": r() < 0.3,
        "scarf": r() < 0.25,
        "gloves": r() < 0.3,
        "socks": r() < 0.4,
        "strap": r() < 0.5,
        "vneck": cihp and r() < 0.5,
        "width": rng.uniform(0.92, 1.1),
        "sleeve": {"coat": 1.0, "dress": rng.choice([0.0, 0.3])}.get(top, rng.choice([0.0, 0.3, 0.55, 1.0])),
        "lean": math.radians(rng.uniform(-8, 8)),
        "face_drop": rng.uniform(0.15, 0.45),
        "hem": (rng.uniform(0.28, 0.4), rng.uniform(0.13, 0.17)),
    }
    top_label = {"upper": UPPER, "coat": COAT, "dress": DRESS, "jumpsuit": JUMPSUIT}[top]
    s["top_color"] = _class_colour(rng, top_label)
    s["shirt_color"] = _class_colour(rng, UPPER)  # the shirt under an open coat
    s["bottom_color"] = _class_colour(rng, SKIRT if bottom == "skirt" else PANTS)
    for key, label in (("scarf_color", SCARF), ("hat_color", HAT), ("shoe_color", SHOE[1]), ("glove_color", GLOVE),
                       ("sock_color", SOCKS)):
        s[key] = _class_colour(rng, label)
    # pose: angles in degrees from straight down, positive away from the body's midline
    mode = rng.choice(["stand", "walk", "raise", "akimbo"], p=[0.35, 0.3, 0.15, 0.2])
    arms, legs = {}, {}
    for side in (+1, -1):
        m = mode if r() < 0.7 else "stand"
        if m == "raise":
            a = rng.uniform(120, 165)
            arms[side] = (a, a + rng.uniform(-25, 25))
        elif m == "akimbo":
            a = rng.uniform(35, 55)
            arms[side] = (a, a - rng.uniform(80, 100))
        elif m == "walk":
            a = rng.uniform(-5, 35)
            arms[side] = (a, a + rng.uniform(0, 45))
        else:
            a = rng.uniform(5, 18)
            arms[side] = (a, a + rng.uniform(0, 15))
    stride = 1 if r() < 0.5 else -1
    for side in (+1, -1):
        if mode == "walk" and side == stride:
            t = rng.uniform(8, 18)
            legs[side] = (t, t - rng.uniform(0, 10))
        else:
            t = rng.uniform(1, 7)
            legs[side] = (t, t + rng.uniform(-2, 8 if mode == "walk" else 3))
    s["arms"], s["legs"] = arms, legs
    return s


def _skeleton(s: dict[str, Any]) -> dict[str, Point]:
    """Joint and landmark positions in the body frame: x towards the person's left, y up, in units of height."""
    w = s["width"]
    j: dict[str, Point] = {"Pelvis": (0.0, 0.51), "Thorax": (0.0, 0.77), "Neck": (0.0, 0.845), "Head": (0.0, 0.985)}
    for side, name in ((+1, "L"), (-1, "R")):
        hip = (side * 0.06 * w, 0.5)
        t, k = (math.radians(v) for v in s["legs"][side])
        knee = (hip[0] + side * 0.235 * math.sin(t), hip[1] - 0.235 * math.cos(t))
        ankle = (knee[0] + side * 0.22 * math.sin(k), knee[1] - 0.22 * math.cos(k))
        sh = (side * 0.11 * w, 0.8)
        a, b = (math.radians(v) for v in s["arms"][side])
        elbow = (sh[0] + side * 0.15 * math.sin(a), sh[1] - 0.15 * math.cos(a))
        wrist = (elbow[0] + side * 0.13 * math.sin(b), elbow[1] - 0.13 * math.cos(b))
        hand = (elbow[0] + side * 0.16 * math.sin(b), elbow[1] - 0.16 * math.cos(b))
        j |= {f"{name}_Hip": hip, f"{name}_Knee": knee, f"{name}_Ankle": ankle, f"{name}_Shoulder": sh,
              f"{name}_Elbow": elbow, f"{name}_Wrist": wrist, f"{name}_Hand": hand}  # fmt: skip
    return j


def _render_person(
    s: dict[str, Any], cx: float, foot_y: float, height: float, size: int, cihp: bool
) -> tuple[_Layer, np.ndarray]:
    """Draw one figure; returns its layer and its 16 joints in image pixels (float [16, 2])."""
    d = 1.0 if s["front"] else -1.0  # the person's left is image right when facing the viewer
    cos_l, sin_l = math.cos(s["lean"]), math.sin(s["lean"])

    def low(p: Point) -> Point:
        return cx + d * p[0] * height, foot_y - p[1] * height

    def up(p: Point) -> Point:  # upper body: leaned about the pelvis
        x, y = p[0], p[1] - 0.51
        return low((cos_l * x - sin_l * y, sin_l * x + cos_l * y + 0.51))

    h, w = height, s["width"]
    j = _skeleton(s)
    L = _Layer(size)
    front, sleeve = s["front"], s["sleeve"]
    top_label = {"upper": UPPER, "coat": COAT, "dress": DRESS, "jumpsuit": JUMPSUIT}[s["top"]]
    hair_long = s["hair_style"] == "long"
    head_c, head_rx, head_ry = up((0.0, 0.92)), 0.056 * h, 0.068 * h

    if hair_long and front:  # hair falling behind the shoulders
        L.polygon([up((-0.07, 0.93)), up((0.07, 0.93)), up((0.085, 0.7)), up((-0.085, 0.7))], HAIR, HEAD, s["hair"])
    # legs, socks, lower garments, shoes
    for side in (+1, -1):
        n = "L" if side > 0 else "R"
        hip, knee, ankle = low(j[f"{n}_Hip"]), low(j[f"{n}_Knee"]), low(j[f"{n}_Ankle"])
        L.segment(hip, knee, 0.08 * w * h, 0.06 * h, LEG[side], LEG_OWNER[side], s["skin"])
        L.segment(knee, ankle, 0.06 * h, 0.045 * h, LEG[side], LEG_OWNER[side], s["skin"])
        if s["socks"]:
            L.segment(_lerp(ankle, knee, 0.4 if s["bottom"] != "pants" else 0.25), ankle, 0.052 * h, 0.048 * h,
                      SOCKS, LEG_OWNER[side], s["sock_color"])  # fmt: skip
        if s["bottom"] in ("pants", "shorts") or s["top"] == "jumpsuit":
            label = JUMPSUIT if s["top"] == "jumpsuit" else PANTS
            color = s["top_color"] if s["top"] == "jumpsuit" else s["bottom_color"]
            hem = _lerp(hip, knee, 0.8) if s["bottom"] == "shorts" else _lerp(knee, ankle, 0.82)
            L.segment(hip, knee, 0.095 * w * h, 0.07 * h, label, LEG_OWNER[side], color)
            if s["bottom"] != "shorts":
                L.segment(knee, hem, 0.07 * h, 0.06 * h, label, LEG_OWNER[side], color)
            L.polygon([low((-0.09 * w, 0.54)), low((0.09 * w, 0.54)), low((0.03, 0.44)), low((-0.03, 0.44))],
                      label, TORSO, color)  # fmt: skip
        toe = (ankle[0] + d * side * 0.018 * h, ankle[1] + 0.022 * h)  # feet turned outwards
        L.ellipse(toe, 0.042 * h, 0.022 * h, SHOE[side], LEG_OWNER[side], s["shoe_color"])
        if side > 0:  # left shoe: a light stripe across
            L.paint("line", [(toe[0], toe[1] - 0.022 * h), (toe[0], toe[1] + 0.022 * h)], np.array([245.0, 245, 235]),
                    max(1, round(0.012 * h)))  # fmt: skip
    if s["bottom"] == "skirt" or s["top"] == "dress":
        hem_y, hem_x = s["hem"]
        label, color = (DRESS, s["top_color"]) if s["top"] == "dress" else (SKIRT, s["bottom_color"])
        L.polygon([low((-0.088 * w, 0.56)), low((0.088 * w, 0.56)), low((hem_x, hem_y)), low((-hem_x, hem_y))],
                  label, TORSO, color)  # fmt: skip
    # neck, torso garment, V-neck, strap, scarf
    neck_label = TORSO_SKIN if cihp else FACE
    neck = [up((-0.026, 0.87)), up((0.026, 0.87)), up((0.028, 0.79)), up((-0.028, 0.79))]
    L.polygon(neck, neck_label, HEAD, s["skin"])
    bottom_y = 0.36 if s["top"] == "coat" else 0.47
    bw = 0.11 if s["top"] == "coat" else 0.09
    torso = [up((-0.125 * w, 0.815)), up((-0.035, 0.826)), up((0.035, 0.826)), up((0.125 * w, 0.815)),
             up((0.08 * w, 0.6)), up((bw * w, bottom_y)), up((-bw * w, bottom_y)), up((-0.08 * w, 0.6))]  # fmt: skip
    L.polygon(torso, top_label, TORSO, s["top_color"])
    if s["top"] == "coat" and front:  # open coat: the shirt underneath
        L.polygon([up((-0.03, 0.822)), up((0.03, 0.822)), up((0.025, 0.4)), up((-0.025, 0.4))], UPPER, TORSO,
                  s["shirt_color"])  # fmt: skip
    if s["vneck"] and front:
        L.polygon([up((-0.03, 0.826)), up((0.03, 0.826)), up((0.0, 0.75))], TORSO_SKIN, TORSO, s["skin"])
    if s["strap"]:  # bag strap from the left shoulder to the right hip
        L.paint("line", [up((0.085 * w, 0.79)), up((-0.06 * w, 0.52))], s["shoe_color"] * 0.5, max(1, round(0.015 * h)))
    if hair_long and not front:
        L.polygon([up((-0.07, 0.93)), up((0.07, 0.93)), up((0.08, 0.68)), up((-0.08, 0.68))], HAIR, HEAD, s["hair"])
    if s["scarf"]:
        L.polygon([up((-0.05, 0.845)), up((0.05, 0.845)), up((0.06, 0.79)), up((-0.06, 0.79))], SCARF, TORSO,
                  s["scarf_color"])  # fmt: skip
        L.polygon([up((0.01, 0.8)), up((0.045, 0.8)), up((0.05, 0.66)), up((0.02, 0.66))], SCARF, TORSO,
                  s["scarf_color"])  # fmt: skip
    # arms: skin, sleeve (the garment's label), hand or glove, a watch on the left wrist
    for side in (+1, -1):
        n = "L" if side > 0 else "R"
        sh, el, wr, hand = (up(j[f"{n}_{k}"]) for k in ("Shoulder", "Elbow", "Wrist", "Hand"))
        owner = ARM_OWNER[side]
        L.segment(sh, el, 0.05 * h, 0.04 * h, ARM[side], owner, s["skin"])
        L.segment(el, wr, 0.04 * h, 0.034 * h, ARM[side], owner, s["skin"])
        if sleeve > 0:
            sleeve_color = s["top_color"]
            end = _lerp(sh, el, sleeve / 0.5) if sleeve <= 0.5 else _lerp(el, wr, (sleeve - 0.5) / 0.5 * 0.9)
            L.segment(sh, el if sleeve > 0.5 else end, 0.058 * h, 0.048 * h, top_label, owner, sleeve_color)
            if sleeve > 0.5:
                L.segment(el, end, 0.048 * h, 0.042 * h, top_label, owner, sleeve_color)
        if s["gloves"]:
            L.segment(_lerp(el, wr, 0.75), hand, 0.04 * h, 0.05 * h, GLOVE, owner, s["glove_color"])
            if side > 0:
                L.paint("line", [_lerp(el, wr, 0.8), _lerp(wr, hand, 0.6)], np.array([240.0, 240, 230]),
                        max(1, round(0.012 * h)))  # fmt: skip
        else:
            L.ellipse(hand, 0.026 * h, 0.026 * h, ARM[side], owner, s["skin"])
        if side > 0:
            watch = _quad(_lerp(el, wr, 0.84), _lerp(el, wr, 0.97), 0.04 * h, 0.036 * h)
            L.paint("polygon", watch, np.array([25.0, 25, 30]))
    # head: hair, face (front) with features, sunglasses, hat
    if s["hair_style"] == "bun":
        L.ellipse(up((0.0, 0.985)), 0.03 * h, 0.026 * h, HAIR, HEAD, s["hair"])
    L.ellipse(head_c, head_rx, head_ry, HAIR, HEAD, s["hair"])
    if front:
        drop = {"short": 0.1, "fringe": 0.3, "long": 0.2, "bun": 0.12}[s["hair_style"]] + s["face_drop"] * 0.2
        fc = (head_c[0], head_c[1] + drop * head_ry)
        L.ellipse(fc, head_rx * 0.86, head_ry * (1 - drop * 0.6), FACE, HEAD, s["skin"])
        ey = fc[1] - 0.12 * head_ry
        dark = np.array([20.0, 15, 15])
        for ex in (-0.38, 0.38):
            e = (fc[0] + ex * head_rx, ey)
            L.paint("ellipse", [e[0] - 0.06 * h * 0.18, e[1] - 0.06 * h * 0.18, e[0] + 0.06 * h * 0.18,
                                e[1] + 0.06 * h * 0.18], dark)  # fmt: skip
        L.paint("line", [(fc[0], ey + 0.15 * head_ry), (fc[0], ey + 0.35 * head_ry)], s["skin"] * 0.7, 1)
        L.paint("line", [(fc[0] - 0.25 * head_rx, ey + 0.55 * head_ry), (fc[0] + 0.25 * head_rx, ey + 0.55 * head_ry)],
                np.array([150.0, 40, 40]), max(1, round(0.008 * h)))  # fmt: skip
        if s["sunglasses"]:
            L.polygon([(fc[0] - 0.8 * head_rx, ey - 0.22 * head_ry), (fc[0] + 0.8 * head_rx, ey - 0.22 * head_ry),
                       (fc[0] + 0.72 * head_rx, ey + 0.26 * head_ry), (fc[0] - 0.72 * head_rx, ey + 0.26 * head_ry)],
                      SUNGLASSES, HEAD, np.array([15.0, 15, 20]))  # fmt: skip
    if s["hat"]:
        top_c = (head_c[0], head_c[1] - 0.55 * head_ry)
        L.ellipse(top_c, head_rx * 1.02, head_ry * 0.55, HAT, HEAD, s["hat_color"])
        bx, by0, by1 = 1.4 * head_rx, top_c[1] + 0.3 * head_ry, top_c[1] + 0.5 * head_ry  # the brim
        brim = [(top_c[0] - bx, by0), (top_c[0] + bx, by0), (top_c[0] + bx, by1), (top_c[0] - bx, by1)]
        L.polygon(brim, HAT, HEAD, s["hat_color"])
    joints = np.array([(up if JOINTS[k] in _UPPER_JOINTS else low)(j[JOINTS[k]]) for k in range(16)], np.float64)
    return L, joints


# -- scenes ----------------------------------------------------------------------------------------


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return xs, ys


def _layer_arrays(layer: _Layer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.asarray(layer.rgb), np.asarray(layer.label), np.asarray(layer.owner)


def _finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * rng.uniform(3.0, 7.0)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def render_lip_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One person: ``(image HxWx3 uint8, LIP label map HxW uint8, joints float [16, 3])``.

    A joint row is (x, y, v) in pixels with v = 1 visible, 0 occluded; a joint outside the image is all NaN.
    """
    canvas = _background(rng, size, _grid(size))
    style = _sample_style(rng, cihp=False)
    height = rng.uniform(*LIP_SCALE) * size
    cx = rng.uniform(0.35, 0.65) * size
    foot_y = rng.uniform(min(height + 0.01 * size, 0.99 * size), 0.99 * size)
    if rng.random() < 0.2:  # cropped at an edge: joints outside the image are missing
        if rng.random() < 0.6:
            foot_y = size + rng.uniform(0.1, 0.3) * height
        else:
            cx = (rng.uniform(0.0, 0.1) if rng.random() < 0.5 else rng.uniform(0.9, 1.0)) * size
    layer, points = _render_person(style, cx, foot_y, height, size, cihp=False)
    rgb, label, owner = _layer_arrays(layer)
    mask = owner > 0
    canvas[mask] = rgb[mask]
    label, owner = np.where(mask, label, 0).astype(np.uint8), owner.copy()
    if rng.random() < 0.12:  # a foreground prop (background label) in front of the legs
        x0 = int(cx - rng.uniform(0.1, 0.35) * height)
        x1 = int(cx + rng.uniform(0.1, 0.35) * height)
        y0 = int(foot_y - rng.uniform(0.12, 0.35) * height)
        box = (slice(max(y0, 0), size), slice(max(x0, 0), max(min(x1, size), 0)))
        canvas[box] = rng.uniform(0, 255, 3).astype(np.float32) * rng.uniform(0.4, 0.9)
        label[box], owner[box] = 0, 0
    joints = np.full((16, 3), np.nan)
    for k, (x, y) in enumerate(points):
        if 0 <= x < size and 0 <= y < size:
            joints[k] = (x, y, float(int(owner[int(y), int(x)]) in _JOINT_OWNERS[k]))
    return _finish(rng, canvas), label, joints


def render_cihp_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """1-3 people: ``(image HxWx3 uint8, Category_ids, Instance_ids, Human_ids)``, the maps HxW uint8."""
    canvas = _background(rng, size, _grid(size))
    category = np.zeros((size, size), np.uint8)
    human = np.zeros((size, size), np.uint8)
    full_areas: list[int] = []
    for _ in range(int(rng.integers(1, 4))):
        style = _sample_style(rng, cihp=True)
        visible = np.bincount(human.ravel(), minlength=len(full_areas) + 1)
        for _attempt in range(20):
            height = rng.uniform(*CIHP_SCALE) * size
            cx = rng.uniform(0.12, 0.88) * size
            foot_y = rng.uniform(min(height + 0.01 * size, size), size + 0.05 * height)
            layer, _ = _render_person(style, cx, foot_y, height, size, cihp=True)
            rgb, label, owner = _layer_arrays(layer)
            mask = owner > 0
            covered = np.bincount(human[mask], minlength=len(full_areas) + 1)
            if mask.any() and all(
                visible[k + 1] - covered[k + 1] >= MIN_VISIBLE * area for k, area in enumerate(full_areas)
            ):
                break
        else:
            continue  # no placement keeps the earlier people visible enough: skip this one
        canvas[mask] = rgb[mask]
        category[mask] = label[mask]
        full_areas.append(int(mask.sum()))
        human[mask] = len(full_areas)
    instance = np.zeros((size, size), np.uint8)
    next_id = 1
    for k in range(1, len(full_areas) + 1):
        person = human == k
        for part in np.unique(category[person]).tolist():
            instance[person & (category == part)] = next_id
            next_id += 1
    return _finish(rng, canvas), category, instance, human


# -- writing ---------------------------------------------------------------------------------------


def _manifest(**params: int) -> dict[str, Any]:
    return {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        **params,
        "classes": list(LIP_CLASSES),
        "cihp_label_10": "Torso-skin",
        "joints": list(JOINTS),
        "layouts": {"LIP": "LIP official", "CIHP": "instance-level_human_parsing"},
    }


def _csv_row(image_id: str, joints: np.ndarray) -> str:
    fields = [f"{image_id}.jpg"]
    for x, y, v in joints:
        fields += ["nan", "nan", "nan"] if np.isnan(x) else [f"{x:.1f}", f"{y:.1f}", str(int(v))]
    return ",".join(fields) + "\n"


def _write_lip(out: Path, seed: int, splits: tuple[tuple[str, int], ...], size: int, palette: bytes) -> None:
    images, segs = out / "TrainVal_images", out / "TrainVal_parsing_annotations"
    poses = out / "TrainVal_pose_annotations"
    poses.mkdir(parents=True)
    for split_code, (split, count) in enumerate(splits):
        (images / f"{split}_images").mkdir(parents=True)
        (segs / f"{split}_segmentations").mkdir(parents=True)
        ids, rows = [], []
        for i in range(count):
            image, label, joints = render_lip_image(np.random.default_rng([seed, 0, split_code, i]), size)
            image_id = f"{split}_{i:05d}"
            Image.fromarray(image).save(images / f"{split}_images" / f"{image_id}.jpg", format="JPEG", quality=90)
            _save_png(label, palette, segs / f"{split}_segmentations" / f"{image_id}.png")
            ids.append(image_id)
            rows.append(_csv_row(image_id, joints))
        (images / f"{split}_id.txt").write_text("".join(f"{x}\n" for x in ids))
        (poses / f"lip_{split}_set.csv").write_text("".join(rows))


def _write_cihp(out: Path, seed: int, splits: tuple[tuple[str, int], ...], size: int, palette: bytes) -> None:
    for split_code, (split, count) in enumerate(splits):
        folder = out / "instance-level_human_parsing" / ("Training" if split == "train" else "Validation")
        for sub in ("Images", "Category_ids", "Instance_ids", "Human_ids"):
            (folder / sub).mkdir(parents=True)
        ids = []
        for i in range(count):
            image, category, instance, human = render_cihp_image(np.random.default_rng([seed, 1, split_code, i]), size)
            image_id = f"{split}_{i:05d}"
            Image.fromarray(image).save(folder / "Images" / f"{image_id}.jpg", format="JPEG", quality=90)
            for sub, array in (("Category_ids", category), ("Instance_ids", instance), ("Human_ids", human)):
                _save_png(array, palette, folder / sub / f"{image_id}.png")
            ids.append(image_id)
        (folder / f"{split}_id.txt").write_text("".join(f"{x}\n" for x in ids))


def generate_demo_people(
    root: str | Path,
    *,
    seed: int = 0,
    num_train: int = 400,
    num_val: int = 100,
    size: int = 192,
    num_cihp_train: int = 200,
    num_cihp_val: int = 50,
) -> Path:
    """Generate the synthetic people (``root/LIP``, ``root/CIHP``, ``root/manifest.json``), replacing a previous
    demo there; returns ``root``."""
    counts = (num_train, num_val, num_cihp_train, num_cihp_val)
    if min(counts) < 0 or num_train + num_val == 0 or num_cihp_train + num_cihp_val == 0:
        raise ValueError(f"need at least one LIP and one CIHP image and no negative count, got {counts}")
    if size < 64:
        raise ValueError(f"size must be at least 64, got {size}")
    params = {"seed": seed, "num_train": num_train, "num_val": num_val, "size": size,
              "num_cihp_train": num_cihp_train, "num_cihp_val": num_cihp_val}  # fmt: skip
    root = Path(root)
    check_replaceable(root, _ENTRIES, "demo people", "demo-people dataset")

    def write(tmp: Path) -> None:
        palette = get_label_set("lip").palette_bytes()
        _write_lip(tmp / "LIP", seed, (("train", num_train), ("val", num_val)), size, palette)
        _write_cihp(tmp / "CIHP", seed, (("train", num_cihp_train), ("val", num_cihp_val)), size, palette)
        atomic_write_text(tmp / "manifest.json", json.dumps(_manifest(**params), indent=2) + "\n")

    return replace_folder_atomically(root, write, _manifest(**params))


def default_demo_people_root() -> Path:
    """``$SEGLAB_CACHE/demo_people``, else ``~/.cache/seglab/demo_people``."""
    return cache_folder("demo_people")


def ensure_demo_people(root: str | Path | None = None) -> Path:
    """The synthetic people at ``root`` (default :func:`default_demo_people_root`), generated with
    ``DEMO_PEOPLE_PARAMS`` only when its manifest is missing or records other parameters; returns the folder."""
    root = Path(root) if root else default_demo_people_root()
    if _read_manifest(root) == _manifest(**DEMO_PEOPLE_PARAMS):
        return root
    log.info("generating the demo people into %s", root)
    return generate_demo_people(root, **DEMO_PEOPLE_PARAMS)


# -- registration ------------------------------------------------------------------------------------------


def demo_people_part(cfg: DataConfig, part: str, generate: bool = True) -> Path:
    """The ``part`` ("LIP" or "CIHP") of the demo people: ``data.root``/part (or ``data.root`` itself when it has
    no such folder), else the cache folder's, generated first if ``generate``."""
    if cfg.root:
        root = Path(cfg.root)
        return root / part if (root / part).is_dir() else root
    return (ensure_demo_people() if generate else default_demo_people_root()) / part


register_dataset(
    "demo_people",
    builders=dict.fromkeys(("semantic", "parsing"),
                           partial(lip_dataset, label_set="lip", root=partial(demo_people_part, part="LIP"))),
    label_set="lip",
    layouts=(LIP,),
    summary="synthetic people with pose; `data.root` empty: the cache folder's `demo_people/LIP`, generated if needed",
    check_root=partial(demo_people_part, part="LIP", generate=False),
)
register_dataset(
    "demo_people_cihp",
    builders=cihp_builders(partial(demo_people_part, part="CIHP")),
    label_set="cihp",
    layouts=(CIHP,),
    summary="synthetic groups of 1-3 people; `data.root` empty: the cache folder's `demo_people/CIHP`, generated if "
    "needed",
    check_root=partial(demo_people_part, part="CIHP", generate=False),
)

__all__ = [
    "DEMO_PEOPLE_PARAMS", "JOINTS", "default_demo_people_root", "demo_people_part", "ensure_demo_people",
    "generate_demo_people", "render_cihp_image", "render_lip_image",
]  # fmt: skip
