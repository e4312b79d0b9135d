"""Dataset registry: every on-disk layout and every ``data.dataset`` name, registered once by the file that reads it.

A :class:`Layout` is a way files lie on disk (VOC, folder, COCO, LIP, CIHP) with the hooks ``seglab check-dataset``
scans it with; a :class:`DatasetInfo` is a name a config's ``data.dataset`` may hold, with the tasks it serves, its
label set, the layouts it is read from and the builder ``seglab.data.build_dataset`` calls. Each file under
``seglab/data/datasets/`` registers its own at import, and importing the package ``seglab.data.datasets`` imports
every such file, as timm's model package fills its registry: use the accessors re-exported there (or
``seglab.data.build_dataset`` / ``seglab.data.check.check_dataset``). This module imports none of the dataset files,
so any of them can import it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from seglab.config import DataConfig
from seglab.data.palettes import CLASSES_FILE, LabelSet, custom_label_set, get_label_set, read_classes_file
from seglab.errors import ConfigError
from seglab.registry import TASKS


@dataclass(frozen=True)
class Sample:
    """An image and its label map as check-dataset reads them; ``maps`` are further label maps of the same image
    that the layout's ``check_sample`` reads (CIHP's Instance_ids and Human_ids)."""

    image: Path
    label: Path
    maps: tuple[Path, ...] = ()


class AddProblem(Protocol):
    """How a scan hook reports a problem: ``DatasetReport.add`` (``is_error`` None: by kind)."""

    def __call__(self, kind: str, where: str, detail: str = "", is_error: bool | None = None) -> None: ...


Problem = tuple[str, str, str]  # (kind, path, message)
ScanHook = Callable[[Path, "list[str] | None", AddProblem], dict[str, list[Sample]]]
SampleHook = Callable[[Sample, np.ndarray], list[Problem]]
Builder = Callable[[DataConfig, str, bool], Any]
LabelMap = Callable[[Path, np.ndarray], np.ndarray]


def lookup_table(pairs: Mapping[int, int], default: int = 255) -> np.ndarray:
    """A 256-entry uint8 table sending each key of ``pairs`` to its value and every other value to ``default``
    (apply as ``table[label]``): how a layout's stored ids become train ids."""
    table = np.full(256, default, dtype=np.uint8)
    for key, value in pairs.items():
        table[key] = value
    return table


@dataclass(frozen=True)
class Layout:
    """An on-disk layout and how ``seglab check-dataset`` reads it.

    ``tree`` draws the files (for the docs); ``label_set`` is the one assumed for a folder of this layout when
    check-dataset is given none. Hooks:

    - ``detect(root)``: whether folder ``root`` holds this layout;
    - ``scan(root, splits, add)``: the samples of each split, keyed by the split's name in the report
      (``splits`` None: every split found), reporting layout-level problems (missing folders or split lists,
      unpaired files) through ``add``; the scanner then reads every sample as the loaders do;
    - ``check_sample(sample, label)``: further problems of one sample once its label map was read (CIHP: the
      three id maps agree), or None;
    - ``map_label(path, values)``: the train ids of a label file's values, for layouts that store other ids
      (Cityscapes' labelIds, ADE20K's 0 = other, CamVid's 11 = void), or None; the loaders apply the same.

    ``problem_kinds`` are the kinds only this layout reports, with their meaning; a ``generic`` layout (the plain
    folder) is taken for a folder only when no other layout detects it.
    """

    name: str
    tree: str
    label_set: str
    detect: Callable[[Path], bool]
    scan: ScanHook
    check_sample: SampleHook | None = None
    problem_kinds: Mapping[str, str] = field(default_factory=dict)
    map_label: LabelMap | None = None
    generic: bool = False  # matches any folder of images (the folder layout): detected only where no other is


def config_root(cfg: DataConfig) -> Path:
    """``data.root``, required: the folder check-dataset reads for datasets without a generated default."""
    if not cfg.root:
        raise ConfigError(f"data.root: the {cfg.dataset} dataset needs data.root (the folder of its layout)")
    return Path(cfg.root)


@dataclass(frozen=True)
class DatasetInfo:
    """A ``data.dataset`` name: a builder ``(cfg, split, train) -> dataset`` per task it serves (the items that task
    reads: label maps, or COCO-style instances), its label set (used when ``data.palette`` is left at "voc"), the
    layouts it is read from, a one-line summary and ``check_root(cfg)``, the folder check-dataset reads (never
    generating data)."""

    name: str
    builders: Mapping[str, Builder]
    label_set: str
    layouts: tuple[Layout, ...]
    summary: str
    check_root: Callable[[DataConfig], Path] = config_root
    classes_file: bool = False  # data.root/classes.txt, where present, is the label set (the folder layout)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks the dataset serves."""
        return tuple(self.builders)

    def build(self, cfg: DataConfig, split: str, train: bool, task: str) -> Any:
        """The dataset of ``split`` as ``task`` reads it (KeyError for a task it does not serve)."""
        return self.builders[task](cfg, split, train)


_LAYOUTS: dict[str, Layout] = {}
_DATASETS: dict[str, DatasetInfo] = {}


def register_layout(layout: Layout) -> Layout:
    """Register ``layout`` under its name; returns it."""
    if layout.name in _LAYOUTS:
        raise ValueError(f"dataset layout {layout.name!r} is registered twice")
    get_label_set(layout.label_set)
    _LAYOUTS[layout.name] = layout
    return layout


def register_dataset(
    name: str,
    *,
    builders: Mapping[str, Builder],
    label_set: str,
    layouts: Iterable[Layout],
    summary: str,
    check_root: Callable[[DataConfig], Path] = config_root,
    classes_file: bool = False,
) -> DatasetInfo:
    """Register the ``data.dataset`` value ``name`` with a builder per task it serves; its layouts must be
    registered first."""
    if name in _DATASETS:
        raise ValueError(f"dataset {name!r} is registered twice")
    tasks, layouts = tuple(builders), tuple(layouts)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"dataset {name!r}: tasks {tasks}; expected some of {', '.join(TASKS)}")
    for layout in layouts:
        if _LAYOUTS.get(layout.name) is not layout:
            raise ValueError(f"dataset {name!r}: layout {layout.name!r} is not registered")
    get_label_set(label_set)
    info = DatasetInfo(name, dict(builders), label_set, layouts, summary, check_root, classes_file)
    _DATASETS[name] = info
    return info


def list_datasets(task: str | None = None) -> list[str]:
    """Registered ``data.dataset`` names, sorted, optionally only those serving ``task``."""
    if task is not None and task not in TASKS:
        raise ConfigError(f"task: unknown task {task!r}; expected one of: {', '.join(TASKS)}")
    return sorted(n for n, info in _DATASETS.items() if task is None or task in info.tasks)


def get_dataset(name: str) -> DatasetInfo:
    """The registration of ``data.dataset`` value ``name``; an unknown name is a ConfigError listing the known."""
    try:
        return _DATASETS[name]
    except KeyError:
        raise ConfigError(
            f"data.dataset: unknown dataset {name!r}; expected one of: {', '.join(list_datasets())}"
        ) from None


def list_layouts() -> list[Layout]:
    """Registered layouts, in registration order (the order check-dataset reports detected layouts in)."""
    return list(_LAYOUTS.values())


# -- helpers for the dataset files ----------------------------------------------------------------------------


def config_label_set(cfg: DataConfig, default: str, classes_file: Path | None = None) -> LabelSet:
    """The label set of a data config: ``data.classes`` (with ``data.colors``) where given; else the one named by
    ``data.palette``; left at "voc", ``classes_file`` where it exists (a folder's classes.txt), else ``default``
    (the dataset's)."""
    if cfg.colors and not cfg.classes:
        raise ConfigError("data.colors: given without data.classes; list the class names too")
    if cfg.classes:
        if cfg.palette != "voc":
            raise ConfigError(f"data.classes and data.palette ({cfg.palette!r}) both define the label set; keep one")
        try:
            return custom_label_set(cfg.classes, cfg.colors or None, where="data.classes / data.colors")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if cfg.palette == "voc" and classes_file is not None and classes_file.is_file():
        try:
            return read_classes_file(classes_file)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    name = cfg.palette if cfg.palette != "voc" else default
    try:
        return get_label_set(name)
    except KeyError as exc:
        raise ConfigError(f"data.palette: {exc.args[0]}") from None


def label_set_of(cfg: DataConfig) -> LabelSet:
    """The label set a data config trains with: :func:`config_label_set` with its dataset's own label set, and
    ``data.root/classes.txt`` for datasets that read one."""
    info = get_dataset(cfg.dataset)
    classes_file = Path(cfg.root) / CLASSES_FILE if info.classes_file and cfg.root else None
    return config_label_set(cfg, info.label_set, classes_file)


def report_unpaired(folders: Mapping[Path, tuple[str, ...]], listed: set[str], add: AddProblem) -> None:
    """Warn (``unpaired``) about files in ``folders`` (folder -> file suffixes) that are in no split list and lack
    their partners in the other folders: loaders never read them, so they are not errors."""
    files = {
        folder: {p.stem: p for p in sorted(folder.iterdir()) if p.suffix in suffixes}
        for folder, suffixes in folders.items()
    }
    everywhere = set.intersection(*(set(by_stem) for by_stem in files.values()))
    for by_stem in files.values():
        for stem in sorted(set(by_stem) - everywhere - listed):
            lacking = ", ".join(other.name for other in folders if stem not in files[other])
            add("unpaired", str(by_stem[stem]), f"in no split list and missing from {lacking}", False)


# -- docs ---------------------------------------------------------------------------------------------------

DOCS_BEGIN = "<!-- begin datasets table: generated by scripts/gen_dataset_docs.py from the dataset registry -->"
DOCS_END = "<!-- end datasets table -->"


def datasets_markdown() -> str:
    """The registered datasets as a markdown table, then each layout's file tree (the generated part of
    docs/datasets.md)."""
    lines = ["| `data.dataset` | tasks | label set (classes) | layout | what |", "|---|---|---|---|---|"]
    for name in list_datasets():
        info = _DATASETS[name]
        labels = get_label_set(info.label_set)
        layouts = " + ".join(f"[{layout.name}](#layout-{layout.name})" for layout in info.layouts)
        lines.append(f"| `{name}` | {', '.join(info.tasks)} | `{labels.name}` ({labels.num_classes}) | {layouts} | "
                     f"{info.summary} |")
    for layout in sorted(_LAYOUTS.values(), key=lambda lay: lay.name):
        lines += ["", f"### Layout `{layout.name}`", "", "```", layout.tree.strip("\n"), "```"]
    return "\n".join(lines) + "\n"


def with_datasets_table(text: str) -> str:
    """``text`` (a markdown page) with the part between :data:`DOCS_BEGIN` and :data:`DOCS_END` replaced by
    :func:`datasets_markdown`; ValueError if the markers are missing."""
    begin, end = text.find(DOCS_BEGIN), text.find(DOCS_END)
    if begin < 0 or end < begin:
        raise ValueError(f"expected the markers {DOCS_BEGIN!r} and then {DOCS_END!r}")
    return text[: begin + len(DOCS_BEGIN)] + "\n" + datasets_markdown() + text[end:]


__all__ = [
    "DOCS_BEGIN",
    "DOCS_END",
    "TASKS",
    "AddProblem",
    "DatasetInfo",
    "Layout",
    "Problem",
    "Sample",
    "config_label_set",
    "config_root",
    "datasets_markdown",
    "get_dataset",
    "label_set_of",
    "list_datasets",
    "list_layouts",
    "lookup_table",
    "register_dataset",
    "register_layout",
    "report_unpaired",
    "with_datasets_table",
]
