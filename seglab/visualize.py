"""Pictures of segmentations and training runs: colour maps, overlays and loss/mIoU curves.

Label maps become colour images through the label set's palette (seglab.data.palettes), with the
ignore label (255) and any index outside the palette drawn white, so unlabelled regions stand out
instead of borrowing a class colour. Files are written atomically (seglab.utils.atomic_write): an
interrupted run never leaves a truncated PNG. Curves are drawn on a ``matplotlib.figure.Figure``
with the Agg canvas, never through pyplot, so plotting from a training loop or a server leaves no
global figure state and needs no display.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seglab.utils import atomic_write

IGNORE_COLOR = (255, 255, 255)


def _palette(colors: Sequence[tuple[int, int, int]]) -> np.ndarray:
    palette = np.asarray(colors, dtype=np.int64)
    if len(colors) == 0:
        return np.zeros((0, 3), dtype=np.uint8)
    if palette.ndim != 2 or palette.shape[1] != 3 or palette.min() < 0 or palette.max() > 255:
        raise ValueError(f"colors must be (r, g, b) triples in [0, 255], got {list(colors)[:4]}")
    return palette.astype(np.uint8)


def colorize(label: np.ndarray, colors: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """``H x W`` class indices -> ``H x W x 3`` uint8 colours; 255 and out-of-range indices are white."""
    label = np.asarray(label)
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"colorize: label must be an HxW integer array, got {label.dtype} {label.shape}")
    palette = _palette(colors)
    out = np.empty((*label.shape, 3), dtype=np.uint8)
    out[...] = IGNORE_COLOR
    valid = (label >= 0) & (label < len(palette))
    out[valid] = palette[label[valid]]
    return out


def _rgb(image: Any) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 uint8, got shape {image.shape}")
    return image


def overlay(
    image: np.ndarray, label: np.ndarray, colors: Sequence[tuple[int, int, int]], alpha: float = 0.5
) -> np.ndarray:
    """The image blended with the colourised label: ``(1 - alpha) * image + alpha * colour``."""
    image = _rgb(image)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha must be in [0, 1], got {alpha}")
    label = np.asarray(label)
    if label.shape != image.shape[:2]:
        raise ValueError(f"overlay: label {label.shape} and image {image.shape[:2]} differ in size")
    color = colorize(label, colors).astype(np.float32)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * color
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def save_overlay(
    path: str | Path,
    image: np.ndarray,
    label: np.ndarray,
    colors: Sequence[tuple[int, int, int]],
    alpha: float = 0.5,
) -> Path:
    """Write :func:`overlay` as a PNG at ``path`` (atomically); returns the path."""
    from PIL import Image

    picture = Image.fromarray(overlay(image, label, colors, alpha))
    return atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def heatmap(values: np.ndarray, vmax: float | None = None, cmap: str = "inferno") -> np.ndarray:
    """``H x W`` values -> ``H x W x 3`` uint8 colours: ``values / vmax`` clipped to [0, 1] through ``cmap``.

    ``vmax`` defaults to the largest finite value (1 if there is none or it is not positive); values below 0
    and non-finite values are drawn as 0.
    """
    from matplotlib import colormaps

    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"heatmap: values must be an HxW array, got shape {values.shape}")
    finite = np.isfinite(values)
    if vmax is None:
        vmax = float(values[finite].max()) if finite.any() else 1.0
    if not (math.isfinite(vmax) and vmax > 0):
        vmax = 1.0
    scaled = np.clip(np.where(finite, values, 0.0) / vmax, 0.0, 1.0)
    rgba = colormaps[cmap](scaled, bytes=True)
    return np.ascontiguousarray(rgba[..., :3])


def save_heatmap(path: str | Path, values: np.ndarray, vmax: float | None = None, cmap: str = "inferno") -> Path:
    """Write :func:`heatmap` of ``values`` as a PNG at ``path`` (atomically); returns the path."""
    from PIL import Image

    picture = Image.fromarray(heatmap(values, vmax, cmap))
    return atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def instance_colors(n: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """``n`` distinct bright colours, one per instance (golden-ratio hue steps)."""
    import colorsys

    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((seed * 0.37 + i * 0.618034) % 1.0, 0.85, 0.95)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def draw_instances(
    image: Any,
    instances: dict[str, Any],
    class_names: Sequence[str],
    *,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    alpha: float = 0.5,
) -> np.ndarray:
    """``HxWx3`` uint8 picture of ``image`` with each instance in its own colour, its box and a
    ``"name score"`` caption (torchvision.utils.draw_segmentation_masks / draw_bounding_boxes).

    ``instances`` is one output dict of an instance model (boxes, labels, scores, masks[N,1,H,W] and
    optionally mask_scores, which are then the scores shown and thresholded).
    """
    import torch
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    picture = torch.from_numpy(np.array(_rgb(image), order="C")).permute(2, 0, 1)  # a writable copy
    scores = instances.get("mask_scores", instances["scores"])
    keep = torch.as_tensor(scores) >= score_threshold
    if not bool(keep.any()):
        return picture.permute(1, 2, 0).numpy().copy()
    labels = [int(v) for v in torch.as_tensor(instances["labels"])[keep]]
    colors = instance_colors(len(labels))
    if "masks" in instances:
        masks = torch.as_tensor(instances["masks"])[keep][:, 0] > mask_threshold
        picture = draw_segmentation_masks(picture, masks, alpha=alpha, colors=colors)
    captions = [
        f"{class_names[c] if 0 <= c < len(class_names) else c} {float(s):.2f}"
        for c, s in zip(labels, torch.as_tensor(scores)[keep], strict=True)
    ]
    boxes = torch.as_tensor(instances["boxes"], dtype=torch.float32)[keep]
    picture = draw_bounding_boxes(picture, boxes, labels=captions, colors=colors, width=2)
    return picture.permute(1, 2, 0).numpy().copy()


def save_instances(
    path: str | Path, image: Any, instances: dict[str, Any], class_names: Sequence[str], **kwargs: Any
) -> Path:
    """Write :func:`draw_instances`'s picture as a PNG, atomically."""
    from PIL import Image

    picture = Image.fromarray(draw_instances(image, instances, class_names, **kwargs))
    return atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def _read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and val records of a metrics.jsonl, sorted by iteration, the last record per iteration
    kept (a resumed run logs again the iterations after its last checkpoint)."""
    train: dict[int, dict[str, Any]] = {}
    val: dict[int, dict[str, Any]] = {}
    with open(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {lineno} is not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}: line {lineno} is not a JSON object")
            is_val = record.get("split") == "val"
            if not is_val and "loss" not in record:
                continue
            iteration = record.get("iter")
            if not isinstance(iteration, (int, float)) or isinstance(iteration, bool):
                raise ValueError(f"{path}: line {lineno} has no numeric 'iter'")
            (val if is_val else train)[int(iteration)] = record
    return [train[k] for k in sorted(train)], [val[k] for k in sorted(val)]


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(int(record["iter"]))
            ys.append(float(value))
    return xs, ys


def plot_curves(metrics_jsonl: str | Path, out_png: str | Path) -> Path:
    """Draw a run's metrics.jsonl: train loss (and lr) and val mIoU (and aAcc) against iteration.

    Raises ValueError naming the file and line for a line that is not a JSON object, or a train or
    val record without a numeric ``iter``. Returns ``out_png``, written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics_jsonl = Path(metrics_jsonl)
    train, val = _read_metrics(metrics_jsonl)

    fig = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_val = fig.subplots(1, 2)

    xs, ys = _series(train, "loss")
    ax_loss.plot(xs, ys, color="tab:blue", label="train loss")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("loss", color="tab:blue")
    ax_loss.set_title("training")
    xs, ys = _series(train, "lr")
    if xs:
        ax_lr = ax_loss.twinx()
        ax_lr.plot(xs, ys, color="tab:orange", linestyle="--", label="lr")
        ax_lr.set_ylabel("learning rate", color="tab:orange")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if not train:
        ax_loss.text(0.5, 0.5, "no training records", ha="center", va="center", transform=ax_loss.transAxes)

    for key, style in (("mIoU", "o-"), ("aAcc", "s--"), ("segm_AP", "o-"), ("bbox_AP", "s--")):
        xs, ys = _series(val, key)
        if xs:
            ax_val.plot(xs, ys, style, label=f"val {key}")
    ax_val.set_xlabel("iteration")
    ax_val.set_ylabel("score")
    ax_val.set_title("validation")
    if val:
        ax_val.legend(loc="lower right")
    else:
        ax_val.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax_val.transAxes)

    return atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


__all__ = ["colorize", "draw_instances", "overlay", "plot_curves", "save_instances", "save_overlay"]
