"""Person-centric augmentation for human parsing, as SCHP trains with it.

Li, Xu, Wei, Yang, "Self-Correction for Human Parsing", TPAMI 2020 (arXiv 1910.09777); the code is SCHP's
``datasets/datasets.py`` (``_box2cs``, ``__getitem__``) and ``utils/transforms.py`` (``get_affine_transform``).

Faithful: the person box is the whole image, ``[0, 0, w-1, h-1]`` read as x, y, width, height, widened or heightened
to the output's aspect ratio (``_box2cs``); the scale is multiplied by ``clip(1 + N(0,1)*sf, 1-sf, 1+sf)``; with
probability ``rotation_p`` the rotation is ``clip(N(0,1)*rf, -2rf, 2rf)`` degrees; a horizontal flip (``flip_p``)
mirrors the image, swaps the left/right labels and the left/right pose joints; then one affine warp takes the box
to the output size: image bilinear with black fill (0 before normalisation), label nearest with fill 255 (ignore).
The matrix is SCHP's: ``k * R(-r)`` about the box centre, ``k = (out_w - 1) / box_w``, the box centre going to the
output's pixel centre. SCHP's mixture of ``out_w - 1`` with a box width from the ``w / h`` aspect ratio means the
eval warp is exactly the identity only for images of the output size that are at least as wide as they are tall
(portrait images are shrunk by ``(h-1) w / ((w-1) h)``); this is kept, to match SCHP's inputs.

Deviations: the flip is folded into the matrix (``x -> w-1-x``, equivalent to SCHP's flip-then-warp because the
box centre is symmetric) so the image is resampled once; random numbers come from torch's global generator (the
trainer seeds each sample), not numpy's; pose joints (SCHP has none) are mapped by the same matrix and become
missing ``(-1, -1, -1)`` when they leave the output (outside ``[0, out_w-1] x [0, out_h-1]``).

Why ``grid_sample`` and not ``torchvision.transforms.v2.functional.affine``: ``F.affine`` keeps the input's size and
is parametrised by angle, translation and scale about the image centre, whereas SCHP's warp maps a box to an output
of another size; sampling with the explicit inverse matrix (pixel-centre convention, zero padding) reproduces
``cv2.warpAffine`` with ``BORDER_CONSTANT`` in one resampling, and the label is gathered at
``floor(x + 0.5)`` as OpenCV's nearest mode does.

At evaluation SCHP warps the image with the plain centre warp (``train=False`` here) and maps the logits back to
the original size with the inverse matrix before scoring. seglab's ``build_dataset`` instead keeps the original
image for evaluation (no warp), since the Predictor runs at any size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from seglab.config import DataConfig
from seglab.data.palettes import LIP_FLIP_PAIRS, LIP_JOINT_FLIP_PAIRS, LabelSet
from seglab.errors import ConfigError

AUGMENTS = ("crop", "person_affine")  # the values of data.augment
IGNORE_INDEX = 255
MISSING_JOINT = (-1.0, -1.0, -1.0)

Triple = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def box_to_center_scale(width: int, height: int, aspect_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """SCHP's ``_box2cs([0, 0, width-1, height-1])``: the box centre and its (w, h) grown to ``aspect_ratio`` (w/h)."""
    w, h = float(width - 1), float(height - 1)
    center = np.array([w * 0.5, h * 0.5], dtype=np.float64)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    return center, np.array([w, h], dtype=np.float64)


def get_affine_transform(
    center: Sequence[float], scale: Sequence[float], rotation: float, output_size: Sequence[int], inv: bool = False
) -> np.ndarray:
    """SCHP's ``get_affine_transform`` as a 2x3 float64 matrix mapping source pixels to output pixels (or back with
    ``inv``): scale ``(out_w - 1) / scale[0]``, rotation by ``-rotation`` degrees, ``center`` to the output centre.

    Equal to SCHP's three-point construction (``cv2.getAffineTransform`` on the centre, a point along the rotated
    up-direction and a third point perpendicular to it), written in closed form.
    """
    out_h, out_w = int(output_size[0]), int(output_size[1])
    k = (out_w - 1) / float(scale[0])
    rad = math.radians(rotation)
    cos, sin = math.cos(rad), math.sin(rad)
    linear = k * np.array([[cos, sin], [-sin, cos]], dtype=np.float64)  # k * R(-r)
    dst_center = np.array([(out_w - 1) * 0.5, (out_h - 1) * 0.5], dtype=np.float64)
    offset = dst_center - linear @ np.asarray(center, dtype=np.float64)
    matrix = np.concatenate([linear, offset[:, None]], axis=1)
    return invert_affine(matrix) if inv else matrix


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine matrix."""
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def _source_coords(matrix: np.ndarray, output_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Source x, y (float64 [out_h, out_w]) of each output pixel centre under the forward ``matrix``."""
    inv = torch.from_numpy(invert_affine(matrix))
    out_h, out_w = int(output_size[0]), int(output_size[1])
    ys, xs = torch.meshgrid(
        torch.arange(out_h, dtype=torch.float64), torch.arange(out_w, dtype=torch.float64), indexing="ij"
    )
    src_x = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    src_y = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    return src_x, src_y


def warp_image(image: torch.Tensor, matrix: np.ndarray, output_size: Sequence[int]) -> torch.Tensor:
    """``image`` [C,H,W] warped bilinearly by ``matrix`` to ``output_size`` (H, W), 0 outside; dtype kept."""
    height, width = image.shape[-2:]
    src_x, src_y = _source_coords(matrix, output_size)
    grid = torch.stack([(2 * src_x + 1) / width - 1, (2 * src_y + 1) / height - 1], dim=-1)  # pixel centres
    data = image.as_subclass(torch.Tensor)
    work = data.to(torch.float64 if data.dtype == torch.float64 else torch.float32)
    out = nnf.grid_sample(work[None], grid[None].to(work.dtype), mode="bilinear", padding_mode="zeros",
                          align_corners=False)[0]
    if data.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.to(data.dtype)


def warp_label(
    label: torch.Tensor, matrix: np.ndarray, output_size: Sequence[int], fill: int = IGNORE_INDEX
) -> torch.Tensor:
    """``label`` [H,W] (or [K,H,W]) warped with nearest neighbour (OpenCV's ``floor(x + 0.5)``), ``fill`` outside."""
    height, width = label.shape[-2:]
    src_x, src_y = _source_coords(matrix, output_size)
    ix, iy = torch.floor(src_x + 0.5).long(), torch.floor(src_y + 0.5).long()
    inside = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
    data = label.as_subclass(torch.Tensor)
    out = data[..., iy.clamp(0, height - 1), ix.clamp(0, width - 1)].clone()
    out[..., ~inside] = fill
    return out


def warp_joints(joints: torch.Tensor, matrix: np.ndarray, output_size: Sequence[int]) -> torch.Tensor:
    """Joint rows (x, y, v) mapped by ``matrix``; missing rows (v < 0) and rows leaving the output become -1s."""
    out_h, out_w = int(output_size[0]), int(output_size[1])
    joints = joints.to(torch.float32)
    m = torch.from_numpy(matrix)
    xy = joints[:, :2].double()
    x = m[0, 0] * xy[:, 0] + m[0, 1] * xy[:, 1] + m[0, 2]
    y = m[1, 0] * xy[:, 0] + m[1, 1] * xy[:, 1] + m[1, 2]
    out = torch.stack([x.float(), y.float(), joints[:, 2]], dim=1)
    eps = 1e-6
    keep = (joints[:, 2] >= 0) & (x >= -eps) & (x <= out_w - 1 + eps) & (y >= -eps) & (y <= out_h - 1 + eps)
    out[~keep] = torch.tensor(MISSING_JOINT)
    return out


def swap_lut(pairs: Sequence[Sequence[int]]) -> torch.Tensor:
    """A 256-entry int64 lookup table exchanging the labels of each pair (identity elsewhere)."""
    lut = torch.arange(256, dtype=torch.int64)
    for a, b in pairs:
        if not (0 <= a < 255 and 0 <= b < 255):
            raise ValueError(f"flip pair ({a}, {b}) must hold labels in 0..254")
        lut[a], lut[b] = b, a
    return lut


def swap_joints(joints: torch.Tensor, pairs: Sequence[Sequence[int]]) -> torch.Tensor:
    """Joint rows with the slots of each pair exchanged (a flip turns the right ankle into the left one)."""
    order = list(range(joints.shape[0]))
    for a, b in pairs:
        order[a], order[b] = b, a
    return joints[order]


class PersonAffine:
    """SCHP's person-centric affine augmentation: ``(image, mask, joints) -> (image, mask, joints)``.

    ``image`` is uint8 or float [3,H,W] (returned in the same dtype, black outside), ``mask`` int [H,W] (returned
    int64, 255 outside; a [K,H,W] stack is accepted, channel 0 being the label and the others id maps such as
    CIHP's human ids, filled with 0 and never swapped), ``joints`` float [J,3] rows (x, y, v) or None. With
    ``train=False`` it is the plain centre warp, with no randomness. ``size`` is the output (H, W).
    """

    def __init__(
        self,
        size: Sequence[int] = (473, 473),
        scale_factor: float = 0.25,
        rotation: float = 30.0,
        rotation_p: float = 0.6,
        flip_p: float = 0.5,
        flip_pairs: Sequence[Sequence[int]] = LIP_FLIP_PAIRS,
        joint_flip_pairs: Sequence[Sequence[int]] = LIP_JOINT_FLIP_PAIRS,
        train: bool = True,
    ) -> None:
        if len(size) != 2 or min(int(s) for s in size) < 2:
            raise ValueError(f"size must be (H, W) with both >= 2, got {size}")
        if not 0 <= scale_factor < 1:
            raise ValueError(f"scale_factor must be in [0, 1), got {scale_factor}")
        self.size = (int(size[0]), int(size[1]))
        self.aspect_ratio = self.size[1] / self.size[0]
        self.scale_factor = float(scale_factor)
        self.rotation = float(rotation)
        self.rotation_p = float(rotation_p)
        self.flip_p = float(flip_p)
        self.flip_pairs = tuple((int(a), int(b)) for a, b in flip_pairs)
        self.joint_flip_pairs = tuple((int(a), int(b)) for a, b in joint_flip_pairs)
        self.lut = swap_lut(self.flip_pairs)
        self.train = train

    def sample(self) -> tuple[float, float, bool]:
        """Draw (scale multiplier, rotation in degrees, flip) from torch's global generator; four draws always."""
        sf, rf = self.scale_factor, self.rotation
        s = float(torch.randn(())) * sf + 1.0
        r = float(torch.randn(())) * rf
        rotate = float(torch.rand(())) < self.rotation_p
        flip = float(torch.rand(())) < self.flip_p
        s = min(max(s, 1.0 - sf), 1.0 + sf)
        r = min(max(r, -2.0 * rf), 2.0 * rf) if rotate else 0.0
        return s, r, flip

    def matrix(
        self, height: int, width: int, scale: float = 1.0, rotation: float = 0.0, flip: bool = False
    ) -> np.ndarray:
        """The 2x3 source-to-output matrix for an image of ``height`` x ``width``, flip folded in."""
        center, box = box_to_center_scale(width, height, self.aspect_ratio)
        m = get_affine_transform(center, box * scale, rotation, self.size)
        if flip:  # x -> w-1-x first; the box centre is symmetric, so SCHP's mirrored centre is the same point
            m = m @ np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        return m

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, joints: torch.Tensor | None = None) -> Triple:
        height, width = image.shape[-2:]
        if tuple(mask.shape[-2:]) != (height, width):
            raise ValueError(f"image size {(height, width)} differs from mask size {tuple(mask.shape[-2:])}")
        scale, rotation, flip = self.sample() if self.train else (1.0, 0.0, False)
        m = self.matrix(height, width, scale, rotation, flip)
        out_image = warp_image(image, m, self.size)
        mask = torch.as_tensor(mask).as_subclass(torch.Tensor).long()
        label = mask if mask.ndim == 2 else mask[0]
        out_label = warp_label(label, m, self.size, IGNORE_INDEX)
        if flip and self.flip_pairs:
            out_label = self.lut[out_label]
        if mask.ndim == 3:
            ids = warp_label(mask[1:], m, self.size, 0)
            out_label = torch.cat([out_label[None], ids])
        if joints is not None:
            joints = warp_joints(torch.as_tensor(joints), m, self.size)
            if flip:
                joints = swap_joints(joints, self.joint_flip_pairs)
        return out_image, out_label, joints

    def __repr__(self) -> str:
        return (f"PersonAffine(size={self.size}, scale_factor={self.scale_factor}, rotation={self.rotation}, "
                f"rotation_p={self.rotation_p}, flip_p={self.flip_p}, train={self.train})")


class PairStepsTransform:
    """Runs the ``(Image, Mask)`` steps of a :class:`~seglab.data.transforms.SegmentationTransform` (scale, crop,
    flip with swap, jitter) with the parsing interface ``(image, mask, joints) -> (image uint8, mask int64, None)``.

    Joints and stacked id maps are refused: those steps move only one label map.
    """

    def __init__(self, steps: Sequence[Any]) -> None:
        self.steps = list(steps)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, joints: torch.Tensor | None = None) -> Triple:
        if joints is not None or mask.ndim != 2:
            raise ValueError("the crop pipeline moves one label map only; use PersonAffine for joints or id maps")
        img, msk = tv_tensors.Image(image), tv_tensors.Mask(mask.to(torch.uint8))
        for step in self.steps:
            img, msk = step(img, msk)
        return img.as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor).long(), None


class InstanceFlipWithSwap:
    """Horizontal flip of a CIHP instance sample ``(tv Image, target)`` with probability ``p``: image, boxes and
    masks are mirrored, and ``target["parsing"]`` is mirrored with its left/right part labels swapped."""

    def __init__(self, pairs: Sequence[Sequence[int]] = LIP_FLIP_PAIRS, p: float = 0.5) -> None:
        self.p = p
        self.lut = swap_lut(pairs)

    def __call__(self, image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        if float(torch.rand(())) >= self.p:
            return image, target
        target = dict(target)
        for key in ("boxes", "masks"):
            if key in target:
                target[key] = F.horizontal_flip(target[key])
        if "parsing" in target:
            parsing = target["parsing"]
            flipped = self.lut[parsing.as_subclass(torch.Tensor).flip(-1).long()]
            is_mask = isinstance(parsing, tv_tensors.Mask)
            target["parsing"] = tv_tensors.wrap(flipped, like=parsing) if is_mask else flipped
        return F.horizontal_flip(image), target


def build_parsing_transform(
    cfg: DataConfig, label_set: LabelSet, train: bool
) -> PersonAffine | PairStepsTransform | None:
    """The training transform of a human-parsing dataset (None for evaluation: the original image, no warp, as
    the Predictor runs at any size).

    ``data.augment`` "crop" is the scale/crop/flip pipeline of :func:`~seglab.data.transforms.build_transforms`
    (its flip swaps ``data.label_swap``, or ``label_set``'s flip pairs when that is empty); "person_affine" is
    SCHP's :class:`PersonAffine` to ``data.crop_size``. Joints (``with_pose``) and person ids (``with_humans``)
    are moved by person_affine only.
    """
    import dataclasses

    from seglab.data.transforms import build_transforms

    if cfg.augment not in AUGMENTS:
        raise ConfigError(f"data.augment: unknown augmentation {cfg.augment!r}; expected one of: {', '.join(AUGMENTS)}")
    if not train:
        return None
    if cfg.augment == "person_affine":
        if len(cfg.crop_size) != 2 or min(cfg.crop_size) < 2:
            raise ConfigError(f"data.crop_size: expected [H, W] with both >= 2, got {cfg.crop_size}")
        if not 0 <= cfg.scale_factor < 1:
            raise ConfigError(f"data.scale_factor: expected a value in [0, 1), got {cfg.scale_factor}")
        if not 0 <= cfg.rotation_p <= 1:
            raise ConfigError(f"data.rotation_p: expected a probability in [0, 1], got {cfg.rotation_p}")
        flip_pairs = [tuple(p) for p in cfg.label_swap] or label_set.flip_pairs
        return PersonAffine(cfg.crop_size, cfg.scale_factor, cfg.rotation, cfg.rotation_p,
                            flip_p=0.5 if cfg.hflip else 0.0, flip_pairs=flip_pairs, train=True)
    for key in ("with_pose", "with_humans"):
        if getattr(cfg, key):
            raise ConfigError(f"data.{key}: training with {key} needs data.augment: person_affine "
                              "(the crop pipeline moves the label map only)")
    if not cfg.label_swap and label_set.flip_pairs:
        cfg = dataclasses.replace(cfg, label_swap=[list(p) for p in label_set.flip_pairs])
    return PairStepsTransform(build_transforms(cfg, train=True).steps)


__all__ = [
    "AUGMENTS",
    "InstanceFlipWithSwap",
    "PairStepsTransform",
    "PersonAffine",
    "box_to_center_scale",
    "build_parsing_transform",
    "get_affine_transform",
    "invert_affine",
    "swap_joints",
    "swap_lut",
    "warp_image",
    "warp_joints",
    "warp_label",
]
