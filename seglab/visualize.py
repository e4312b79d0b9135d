"""Pictures of segmentations and training runs: colour maps, overlays, loss/mIoU curves and run plots.

Label maps become colour images through the label set's palette (seglab.data.palettes), with the
ignore label (255) and any index outside the palette drawn white, so unlabelled regions stand out
instead of borrowing a class colour. Files are written atomically (seglab.utils.atomic_write): an
interrupted run never leaves a truncated PNG. Curves are drawn on a ``matplotlib.figure.Figure``
with the Agg canvas, never through pyplot, so plotting from a training loop or a server leaves no
global figure state and needs no display.

``plot_run`` (the ``seglab plot RUN_DIR`` command) draws four PNGs from a run's metrics.jsonl:
train loss with the learning rate, val mIoU (or COCO segm/bbox AP for instance runs) over iterations,
the last val record's per-class IoU as bars and its confusion matrix, row-normalised (each ground-truth
class's row sums to 1, so a cell reads "fraction of class g's pixels predicted as p" whatever the class
frequencies), as a heat map. Class names come from the run's config.yaml (``data.palette``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seglab.utils import atomic_write

if TYPE_CHECKING:
    from seglab.data.palettes import LabelSet

IGNORE_COLOR = (255, 255, 255)

log = logging.getLogger(__name__)


def save_png(path: str | Path, picture: np.ndarray) -> Path:
    """Write an ``HxW`` or ``HxWx3`` uint8 array as a PNG, atomically; returns the path."""
    from PIL import Image

    image = Image.fromarray(np.asarray(picture))
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


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
    """The picture to draw on as HxWx3 uint8 (:func:`seglab.data.io.rgb_array`; array-likes go through NumPy)."""
    from PIL import Image

    from seglab.data.io import rgb_array

    return rgb_array(image if isinstance(image, Image.Image) else np.asarray(image), "visualize")


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
    return save_png(path, overlay(image, label, colors, alpha))


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
    return save_png(path, heatmap(values, vmax, cmap))


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
    return save_png(path, draw_instances(image, instances, class_names, **kwargs))


def legend(class_names: Sequence[str], colors: Sequence[tuple[int, int, int]], *, row_height: int = 20,
           width: int = 220, indices: Sequence[int] | None = None) -> np.ndarray:
    """``HxWx3`` uint8 legend: one row per class, a colour swatch and ``"index name"`` in black on white.

    ``indices`` are the class indices printed beside the names (default: 0, 1, ...), for a legend of some
    classes only."""
    from PIL import Image, ImageDraw

    if len(class_names) != len(colors):
        raise ValueError(f"legend: {len(class_names)} names but {len(colors)} colours")
    palette = _palette(colors)
    picture = Image.new("RGB", (width, row_height * len(class_names) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    for i, name in enumerate(class_names):
        top = 2 + i * row_height
        draw.rectangle([4, top + 2, 4 + row_height * 2, top + row_height - 2], fill=tuple(int(v) for v in palette[i]),
                       outline=(0, 0, 0))
        index = i if indices is None else int(indices[i])
        draw.text((12 + row_height * 2, top + row_height // 2 - 6), f"{index:2d} {name}", fill=(0, 0, 0))
    return np.asarray(picture)


def save_legend(path: str | Path, class_names: Sequence[str], colors: Sequence[tuple[int, int, int]]) -> Path:
    """Write :func:`legend` as a PNG, atomically."""
    return save_png(path, legend(class_names, colors))


def person_outlines(human_ids: np.ndarray) -> np.ndarray:
    """``HxW`` bool: the pixels of each person (``human_ids`` > 0) that touch another id (a 1-pixel outline)."""
    ids = np.asarray(human_ids)
    if ids.ndim != 2:
        raise ValueError(f"person_outlines: human_ids must be HxW, got shape {ids.shape}")
    edge = np.zeros(ids.shape, dtype=bool)
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
    edge[1:, :] |= ids[1:, :] != ids[:-1, :]
    return edge & (ids > 0)


def draw_multi_person_parsing(
    image: Any, parsing: np.ndarray, human_ids: np.ndarray, colors: Sequence[tuple[int, int, int]],
    *, alpha: float = 0.5,
) -> np.ndarray:
    """The parsing overlay with every person outlined in its own colour (multi-person parsing pictures)."""
    picture = overlay(image, parsing, colors, alpha)
    ids = np.asarray(human_ids)
    if ids.shape != picture.shape[:2]:
        raise ValueError(f"human_ids {ids.shape} and image {picture.shape[:2]} differ in size")
    outline = person_outlines(ids)
    person_colors = np.asarray(instance_colors(int(ids.max()) + 1), dtype=np.uint8) if ids.size else None
    if person_colors is not None and outline.any():
        picture[outline] = person_colors[ids[outline]]
    return picture


def save_prediction(out_dir: str | Path, stem: str, image: Any, label: np.ndarray, label_set: LabelSet) -> list[Path]:
    """What ``seglab predict`` writes for a label map: ``<stem>.png`` (class indices with the label set's palette,
    read back as indices), ``<stem>_overlay.png`` (the classes' colours over the image) and ``<stem>_legend.png``
    (the classes present, with their colours and indices). Atomic writes; returns the three paths."""
    from seglab.data.io import write_label_png

    out_dir = Path(out_dir)
    label = np.asarray(label)
    present = [int(c) for c in np.unique(label) if c < label_set.num_classes]
    return [
        write_label_png(out_dir / f"{stem}.png", label.astype(np.uint8), label_set),
        save_overlay(out_dir / f"{stem}_overlay.png", image, label, label_set.colors),
        save_png(out_dir / f"{stem}_legend.png", legend([label_set.classes[c] for c in present],
                                                        [label_set.colors[c] for c in present], indices=present)),
    ]


def save_uncertainty(out_dir: str | Path, stem: str, entropy: np.ndarray, variance: np.ndarray,
                     num_classes: int) -> list[Path]:
    """Monte Carlo dropout maps: ``<stem>_entropy.npy``, ``<stem>_variance.npy`` (float32 HxW) and
    ``<stem>_uncertainty.png`` (the entropy over its maximum ``log K`` as a heat map). Returns the paths."""
    out_dir = Path(out_dir)

    def npy(path: Path, array: np.ndarray) -> Path:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.save would append .npy to the temporary name
                np.save(fh, array)

        return atomic_write(path, write)

    return [
        npy(out_dir / f"{stem}_entropy.npy", entropy),
        npy(out_dir / f"{stem}_variance.npy", variance),
        save_heatmap(out_dir / f"{stem}_uncertainty.png", entropy / math.log(max(num_classes, 2)), vmax=1.0),
    ]


def save_people(out_dir: str | Path, stem: str, image: Any, people: dict[str, Any], label_set: LabelSet) -> Path:
    """What ``seglab predict`` writes for multi-person parsing (``people`` as
    :class:`seglab.engine.people.PeopleParser` returns it): ``<stem>.png`` (the part map, label set's palette),
    ``<stem>_people.png`` (parts coloured, each person outlined in its own colour), ``<stem>_human_ids.png``
    (0 background, person n = n) and ``<stem>_people.json`` (id, score, box per person). Returns the picture's path."""
    from seglab.data.io import write_label_png
    from seglab.utils import atomic_write_text

    out_dir = Path(out_dir)
    parsing, human_ids = np.asarray(people["parsing"]), np.asarray(people["human_ids"])
    write_label_png(out_dir / f"{stem}.png", parsing.astype(np.uint8), label_set)
    picture = save_png(out_dir / f"{stem}_people.png",
                       draw_multi_person_parsing(image, parsing, human_ids, label_set.colors))
    save_png(out_dir / f"{stem}_human_ids.png", human_ids.clip(0, 255).astype(np.uint8))
    atomic_write_text(out_dir / f"{stem}_people.json", json.dumps(people["people"], indent=1))
    return picture


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


def _draw_loss_lr(ax: Any, train: list[dict[str, Any]], title: str) -> None:
    """Train loss on ``ax`` and the learning rate on a twin axis at the right."""
    xs, ys = _series(train, "loss")
    ax.plot(xs, ys, color="tab:blue", label="train loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss", color="tab:blue")
    ax.set_title(title)
    xs, ys = _series(train, "lr")
    if xs:
        ax_lr = ax.twinx()
        ax_lr.plot(xs, ys, color="tab:orange", linestyle="--", label="lr")
        ax_lr.set_ylabel("learning rate", color="tab:orange")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))


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

    _draw_loss_lr(ax_loss, train, "training")
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


def _metrics_records(metrics_jsonl: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    path = Path(metrics_jsonl)
    if not path.is_file():
        raise ValueError(f"{path}: no such file; expected a run's metrics.jsonl (written by `seglab train`)")
    return _read_metrics(path)


def _new_figure(width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _save_figure(fig: Any, out_png: str | Path) -> Path:
    return atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def _class_name(class_names: Sequence[str] | None, i: int) -> str:
    return class_names[i] if class_names is not None and i < len(class_names) else f"class {i}"


def _last_val_with(val: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    for record in reversed(val):
        if isinstance(record.get(key), list) and record[key]:
            return record
    return None


def normalize_confusion(confusion: Any) -> np.ndarray:
    """Row-normalise a ``C x C`` confusion matrix (rows ground truth): each row divided by its sum, so
    ``out[g, p]`` is the fraction of class ``g``'s pixels predicted as ``p``. A row of zeros (a class
    absent from the ground truth) stays all zeros rather than becoming NaN."""
    matrix = np.asarray(confusion, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"normalize_confusion: expected a square C x C matrix, got shape {matrix.shape}")
    if (matrix < 0).any() or not np.isfinite(matrix).all():
        raise ValueError("normalize_confusion: counts must be finite and non-negative")
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def plot_loss_lr(metrics_jsonl: str | Path, out_png: str | Path) -> Path:
    """Train loss (left axis) and learning rate (right axis) against iteration; returns ``out_png``.

    Raises ValueError naming the file when it is missing or holds no train record with a loss."""
    train, _ = _metrics_records(metrics_jsonl)
    xs, ys = _series(train, "loss")
    if not xs:
        raise ValueError(f"{metrics_jsonl}: no train record with a numeric 'loss' to plot")
    fig, ax = _new_figure(7, 4)
    _draw_loss_lr(ax, train, "training loss and learning rate")
    return _save_figure(fig, out_png)


def plot_val_scores(metrics_jsonl: str | Path, out_png: str | Path) -> Path:
    """Val mIoU (semantic and parsing runs) or segm/bbox AP (instance runs) against iteration.

    Raises ValueError naming the file when no val record holds any of these scores."""
    _, val = _metrics_records(metrics_jsonl)
    fig, ax = _new_figure(7, 4)
    drawn = False
    for key, style in (("mIoU", "o-"), ("segm_AP", "o-"), ("bbox_AP", "s--")):
        xs, ys = _series(val, key)
        if xs:
            ax.plot(xs, ys, style, label=f"val {key}")
            drawn = True
    if not drawn:
        raise ValueError(f"{metrics_jsonl}: no val record (\"split\": \"val\") with mIoU, segm_AP or bbox_AP")
    ax.set_xlabel("iteration")
    ax.set_ylabel("score")
    ax.set_title("validation")
    ax.legend(loc="lower right")
    return _save_figure(fig, out_png)


def plot_per_class_iou(
    metrics_jsonl: str | Path, out_png: str | Path, class_names: Sequence[str] | None = None
) -> Path:
    """Bar chart of the last val record's per-class IoU (its ``"IoU"`` list), one bar per class, named by
    ``class_names``; a class with no IoU (absent, null in JSON) is marked "n/a".

    Raises ValueError naming the file when no val record has a per-class IoU list."""
    _, val = _metrics_records(metrics_jsonl)
    record = _last_val_with(val, "IoU")
    if record is None:
        raise ValueError(f"{metrics_jsonl}: no val record with a per-class 'IoU' list")
    values = record["IoU"]
    names = [_class_name(class_names, i) for i in range(len(values))]
    heights = [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0 for v in values]
    fig, ax = _new_figure(max(6.0, 0.35 * len(values) + 2), 4.5)
    bars = ax.bar(range(len(values)), heights, color="tab:blue")
    for bar, value in zip(bars, values, strict=True):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            ax.text(bar.get_x() + bar.get_width() / 2, 0.01, "n/a", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(values)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    miou = record.get("mIoU")
    miou_text = f", mIoU {miou:.3f}" if isinstance(miou, (int, float)) else ""
    ax.set_title(f"per-class IoU at iteration {record['iter']}{miou_text}")
    return _save_figure(fig, out_png)


def plot_confusion(
    metrics_jsonl: str | Path, out_png: str | Path, class_names: Sequence[str] | None = None
) -> Path:
    """Heat map of the last val record's confusion matrix, row-normalised (:func:`normalize_confusion`):
    rows are ground truth, columns prediction, each cell the fraction of the row's pixels.

    Raises ValueError naming the file when no val record has a ``"confusion"`` matrix."""
    _, val = _metrics_records(metrics_jsonl)
    record = _last_val_with(val, "confusion")
    if record is None:
        raise ValueError(f"{metrics_jsonl}: no val record with a 'confusion' matrix")
    try:
        matrix = normalize_confusion(record["confusion"])
    except ValueError as exc:
        raise ValueError(f"{metrics_jsonl}: iteration {record['iter']}: {exc}") from None
    n = matrix.shape[0]
    names = [_class_name(class_names, i) for i in range(n)]
    side = min(max(5.0, 0.4 * n + 2), 30.0)
    fig, ax = _new_figure(side + 1, side)
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of ground-truth pixels")
    fontsize = 8 if n <= 30 else 5
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=fontsize)
    ax.set_yticks(range(n), names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(f"confusion (row-normalised) at iteration {record['iter']}")
    if n <= 25:
        for g in range(n):
            for p in range(n):
                ax.text(p, g, f"{matrix[g, p]:.2f}", ha="center", va="center", fontsize=8 if n <= 10 else 6,
                        color="white" if matrix[g, p] > 0.5 else "black")
    return _save_figure(fig, out_png)


def run_class_names(run_dir: str | Path) -> list[str] | None:
    """Class names of a run from ``run_dir/config.yaml``'s ``data.palette``; None when there is no
    config or its palette names no known label set."""
    import yaml

    from seglab.data.palettes import get_label_set
    from seglab.errors import ConfigError

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    palette = (cfg.get("data") or {}).get("palette") if isinstance(cfg, dict) else None
    if not isinstance(palette, str):
        return None
    try:
        return list(get_label_set(palette).classes)
    except KeyError:
        log.warning("%s: data.palette %r is not a known label set; classes are drawn by index", path, palette)
        return None


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw a run's plots from ``run_dir/metrics.jsonl`` into ``out_dir`` (default ``run_dir/plots``):
    loss_lr.png, val_miou.png, per_class_iou.png and confusion.png; returns the paths written.

    The loss and val plots are required (ValueError naming the file when it is missing or lacks the
    data); the per-class and confusion plots are skipped, with a logged warning, when the run has no
    such data (instance runs have neither).
    """
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    _metrics_records(metrics)  # fail early, before any file is written, on a missing or broken log
    names = run_class_names(run_dir)
    written = [plot_loss_lr(metrics, out / "loss_lr.png"), plot_val_scores(metrics, out / "val_miou.png")]
    _, val = _read_metrics(metrics)
    for key, name, draw in (
        ("IoU", "per_class_iou.png", plot_per_class_iou),
        ("confusion", "confusion.png", plot_confusion),
    ):
        if _last_val_with(val, key) is None:
            log.warning("%s not drawn: %s has no val record with %r", name, metrics, key)
            continue
        written.append(draw(metrics, out / name, names))
    return written


__all__ = [
    "colorize",
    "draw_instances",
    "draw_multi_person_parsing",
    "heatmap",
    "legend",
    "normalize_confusion",
    "overlay",
    "plot_confusion",
    "plot_curves",
    "plot_loss_lr",
    "plot_per_class_iou",
    "plot_run",
    "plot_val_scores",
    "run_class_names",
    "save_heatmap",
    "save_instances",
    "save_legend",
    "save_overlay",
    "save_people",
    "save_png",
    "save_prediction",
    "save_uncertainty",
]
