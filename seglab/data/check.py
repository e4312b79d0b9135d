"""``seglab check-dataset``: scan a whole dataset once and report every bad input, with label statistics.

A training run reads a sample at a time and stops at the first bad one, possibly hours in. This
scanner reads every listed file of every split up front (in parallel threads: PIL and numpy release
the GIL while decoding) through the same readers as the loaders (:mod:`seglab.data.io`), and collects
every problem instead of stopping: missing root or split list, missing or unpaired files, empty,
truncated or corrupt files, decompression bombs, colour labels, label values >= the class count
(other than 255), label/image size mismatches, and what each layout checks besides (COCO annotations by
:func:`seglab.data.datasets.coco.check_coco`, CIHP's three id maps agreeing, LIP's pose CSV parsing). Label
statistics (pixel share per class over non-ignore pixels, labels without any foreground class) are taken over
the samples that have no problem.

The layouts are those of the dataset registry (:mod:`seglab.data.registry`), the same one ``build_dataset``
reads. The target is a config YAML (its ``data`` section: any registered dataset, root, splits, palette; the
demo datasets are read from their cache folder when ``data.root`` is empty) or a dataset folder, in which every
registered layout present is detected (a folder may hold several: the demo data is VOC and COCO).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seglab.data.datasets import get_dataset, list_layouts
from seglab.data.palettes import CLASSES_FILE, LabelSet, get_label_set, read_classes_file
from seglab.data.registry import Layout, Problem, Sample, label_set_of
from seglab.errors import ConfigError, DatasetError

# Problem kinds found by this module and by seglab.data.io; layouts add their own (Layout.problem_kinds), and the
# COCO kinds come from check_coco.
PROBLEM_KINDS: dict[str, str] = {
    "missing_root": "dataset root or layout folder not found",
    "missing_split_list": "split list not found, not text, or empty",
    "missing_file": "listed image or label file not found",
    "unpaired": "image without a label or label without an image",
    "empty_file": "file is empty (0 bytes)",
    "corrupt_image": "truncated or corrupt file that cannot be decoded",
    "decompression_bomb": "image larger than seglab.data.io.MAX_IMAGE_PIXELS",
    "label_mode": "label is a colour image, not class indices",
    "label_out_of_range": "label values >= the class count other than 255",
    "size_mismatch": "label size differs from its image",
    "converted_image": "image converted to RGB (grayscale, RGBA, palette or 16-bit); not an error",
}
WARNING_KINDS = frozenset({"converted_image"})
_YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found. ``errors`` and ``warnings`` map a kind to every offending path
    (or COCO location); ``counts`` maps each kind to its number of occurrences and ``samples`` to the
    number of distinct image/label pairs scanned."""

    target: str
    layouts: list[str] = field(default_factory=list)
    label_set: str = ""
    splits: list[str] = field(default_factory=list)
    errors: dict[str, list[str]] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)  # path -> first message about it
    class_pixel_share: dict[str, float] = field(default_factory=dict)  # class name -> share of non-ignore pixels
    images_without_foreground: list[str] = field(default_factory=list)  # label paths with only class 0 / 255

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, kind: str, where: str, detail: str = "", is_error: bool | None = None) -> None:
        if is_error is None:
            is_error = kind not in WARNING_KINDS
        target = self.errors if is_error else self.warnings
        target.setdefault(kind, []).append(where)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if detail:
            self.details.setdefault(where, detail)

    def to_text(self, max_examples: int = 5) -> str:
        """A human-readable report: problems by kind with their counts and first files, then label statistics."""
        lines = [
            f"dataset {self.target}: layout {', '.join(self.layouts) or 'unknown'}, splits {', '.join(self.splits)}, "
            f"{self.counts.get('samples', 0)} samples, label set {self.label_set!r}"
        ]
        for title, problems in (("errors", self.errors), ("warnings", self.warnings)):
            if not problems:
                continue
            lines.append(f"{title}: {sum(len(v) for v in problems.values())} in {len(problems)} kinds")
            for kind in sorted(problems):
                paths = problems[kind]
                meaning = _meaning(kind)
                lines.append(f"  {kind} ({len(paths)}){': ' + meaning if meaning else ''}")
                for where in paths[:max_examples]:
                    detail = self.details.get(where, "")
                    lines.append(f"    {where}" + (f"  [{detail}]" if detail and detail != where else ""))
                if len(paths) > max_examples:
                    lines.append(f"    ... and {len(paths) - max_examples} more")
        if self.class_pixel_share:
            shares = ", ".join(f"{name} {share:.2%}" for name, share in self.class_pixel_share.items())
            lines.append(f"class pixel share (of non-ignore pixels): {shares}")
            lines.append(f"labels without foreground: {len(self.images_without_foreground)}")
            for path in self.images_without_foreground[:max_examples]:
                lines.append(f"    {path}")
        lines.append("OK: no errors found" if self.ok else f"FAILED: {sum(map(len, self.errors.values()))} errors")
        return "\n".join(lines)


def _meaning(kind: str) -> str:
    """What problem ``kind`` means, from :data:`PROBLEM_KINDS` or the layout that reports it."""
    if kind in PROBLEM_KINDS:
        return PROBLEM_KINDS[kind]
    return next((layout.problem_kinds[kind] for layout in list_layouts() if kind in layout.problem_kinds), "")


@dataclass
class _SampleResult:
    problems: list[Problem]
    histogram: np.ndarray | None = None  # 256 bins of label values, when the sample is clean
    label: str = ""


def _check_sample(sample: Sample, layout: Layout, num_classes: int) -> _SampleResult:
    """Read one image/label pair as the loaders do, then the layout's own checks; list its problems (never raises
    DatasetError)."""
    from seglab.data.datasets.voc import read_sbd_label
    from seglab.data.io import image_to_rgb, label_to_array, open_image_file

    problems: list[Problem] = []
    size = None
    try:
        img = open_image_file(sample.image, "image")
        if img.mode != "RGB":
            problems.append(("converted_image", str(sample.image), f"mode {img.mode}"))
        size = image_to_rgb(img, sample.image).size
    except DatasetError as exc:
        problems.append((getattr(exc, "kind", "corrupt_image"), str(sample.image), str(exc)))
    try:
        if sample.label.suffix == ".mat":
            label = read_sbd_label(sample.label)
        else:
            label = label_to_array(open_image_file(sample.label, "label"), sample.label)
    except DatasetError as exc:
        kind = getattr(exc, "kind", "corrupt_image" if sample.label.is_file() else "missing_file")
        problems.append((kind, str(sample.label), str(exc)))
        return _SampleResult(problems)
    if layout.map_label is not None:
        label = layout.map_label(sample.label, label)
    if size is not None and label.shape != (size[1], size[0]):
        problems.append((
            "size_mismatch", str(sample.label),
            f"label {label.shape[1]}x{label.shape[0]} vs image {size[0]}x{size[1]} (WxH) {sample.image.name}",
        ))
    bad = np.unique(label[(label >= num_classes) & (label != 255)])
    if bad.size:
        mapped = " (train ids, after the layout's id mapping)" if layout.map_label is not None else ""
        problems.append(("label_out_of_range", str(sample.label),
                         f"values {bad.tolist()[:10]} >= {num_classes}{mapped}"))
    if layout.check_sample is not None:
        problems += layout.check_sample(sample, label)
    if any(kind not in WARNING_KINDS for kind, _, _ in problems):
        return _SampleResult(problems)
    return _SampleResult(problems, np.bincount(label.ravel(), minlength=256), str(sample.label))


def _detect(root: Path) -> list[Layout]:
    found = [layout for layout in list_layouts() if layout.detect(root)]
    return [layout for layout in found if not layout.generic] or found


def detect_layouts(root: Path) -> list[str]:
    """The names of the registered layouts present in folder ``root`` (voc, folder, coco, lip, cihp), in
    registration order."""
    return [layout.name for layout in _detect(root)]


def _plan(target: Path) -> tuple[Path, list[tuple[Layout, list[str] | None]], LabelSet | None]:
    """(root, [(layout, splits or None to detect)], the config's label set or None) for a config file or a
    folder."""
    if target.suffix in _YAML_SUFFIXES and target.is_file():
        from seglab.config import load_config

        data = load_config(target).data
        try:
            info = get_dataset(data.dataset)
            root = info.check_root(data)
            labels = label_set_of(data)
        except ConfigError as exc:
            raise ConfigError(f"{target}: {exc}") from None
        splits = list(dict.fromkeys([data.train_split, data.val_split]))
        return root, [(layout, splits) for layout in info.layouts], labels
    if target.is_file():
        raise ConfigError(f"{target}: expected a config file ({', '.join(_YAML_SUFFIXES)}) or a dataset folder")
    return target, [], None


def check_dataset(
    target: str | Path, *, workers: int = 2, progress: bool = False, label_set: str | None = None
) -> DatasetReport:
    """Scan every split and file of the dataset at ``target`` (config YAML or folder) and report all problems.

    ``label_set`` (default: the config's label set, else a folder's classes.txt, else the detected layout's)
    gives the class count that label
    values are checked against and the class names of the statistics.
    """
    if workers < 1:
        raise ConfigError(f"check-dataset: workers must be >= 1, got {workers}")
    target = Path(target)
    root, plan, labels = _plan(target)
    if root.is_dir() and not plan:
        plan = [(layout, None) for layout in _detect(root)]
    if label_set is not None:
        try:
            labels = get_label_set(label_set)
        except KeyError as exc:
            raise ConfigError(f"{target}: data.palette: {exc.args[0]}") from None
    elif labels is None and (root / CLASSES_FILE).is_file():
        try:
            labels = read_classes_file(root / CLASSES_FILE)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    elif labels is None:
        labels = get_label_set(plan[0][0].label_set if plan else "voc")
    report = DatasetReport(str(target), label_set=labels.name)
    if not root.is_dir():
        report.add("missing_root", str(root), "dataset root folder not found")
        return report
    if not plan:
        names = ", ".join(layout.name for layout in list_layouts())
        report.add("missing_root", str(root), f"no registered layout ({names}) found in this folder")
        return report
    samples: dict[tuple[Path, Path], tuple[Sample, Layout]] = {}
    for layout, splits in plan:
        report.layouts.append(layout.name)
        for split, found in layout.scan(root, splits, report.add).items():
            report.splits.append(split)
            for sample in found:
                samples.setdefault((sample.image, sample.label), (sample, layout))
    report.counts["samples"] = len(samples)
    _scan(list(samples.values()), labels, report, workers, progress)
    return report


def _scan(
    samples: list[tuple[Sample, Layout]], labels: LabelSet, report: DatasetReport, workers: int, progress: bool
) -> None:
    histogram = np.zeros(256, np.int64)
    seen: set[tuple[str, str]] = set()  # (kind, path): a file shared by two samples is reported once
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda s: _check_sample(*s, labels.num_classes), samples)
        if progress:
            from rich.progress import track

            results = track(results, total=len(samples), description="checking files")
        for result in results:
            for kind, path, message in result.problems:
                if (kind, path) not in seen:
                    seen.add((kind, path))
                    report.add(kind, path, message)
            if result.histogram is not None:
                histogram += result.histogram
                if not result.histogram[1 : labels.num_classes].any():
                    report.images_without_foreground.append(result.label)
    valid = histogram[: labels.num_classes]
    if valid.sum():
        report.class_pixel_share = {name: float(n / valid.sum()) for name, n in zip(labels.classes, valid, strict=True)}


__all__ = ["PROBLEM_KINDS", "DatasetReport", "check_dataset", "detect_layouts"]
