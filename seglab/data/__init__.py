"""Data: label sets, image/label I/O, joint transforms and dataset loaders.

``build_dataset`` turns the ``data`` section of a config into a dataset, through the dataset registry
(:mod:`seglab.data.registry`, filled by the files of :mod:`seglab.data.datasets`). Importing this package is
light: the loaders, torchvision transforms and optional readers (scipy for SBD, pycocotools for the demo's COCO
file) load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from seglab.config import DataConfig
from seglab.data.registry import TASKS
from seglab.errors import ConfigError

if TYPE_CHECKING:
    from seglab.data.datasets.cihp import CIHPDataset
    from seglab.data.datasets.coco import COCOInstances
    from seglab.data.datasets.voc import PairedSegmentationDataset
    from seglab.data.palettes import LabelSet
    from seglab.data.registry import DatasetInfo


def build_dataset(
    cfg: DataConfig, split: str, train: bool, task: str = "semantic"
) -> PairedSegmentationDataset | COCOInstances | CIHPDataset:
    """The dataset ``cfg.dataset`` for ``split`` and ``task``, with the training or evaluation transforms.

    The name is looked up in the dataset registry (``seglab.data.datasets.list_datasets()``; the table in
    docs/datasets.md), whose entry says which tasks it serves and builds it. Instance data are COCO files (``coco``,
    ``demo``) or CIHP's per-person items (``cihp``, ``demo_people_cihp``); the human-parsing datasets serve the
    parsing and semantic tasks with their own label set unless ``data.palette`` names another one.
    """
    if task not in TASKS:
        raise ConfigError(f"task: unknown task {task!r}; expected one of: {', '.join(TASKS)}")
    from seglab.data.datasets import get_dataset

    info = get_dataset(cfg.dataset)
    if task not in info.tasks:
        raise _wrong_task(info, task)
    return info.build(cfg, split, train, task)


# (task asked for, whether the dataset holds people) -> why the dataset cannot serve it
_WRONG_TASK = {
    ("semantic", False): "holds instance annotations; use it with the instance task, or a semantic dataset ({})",
    ("parsing", False): "is not a human-parsing dataset; for the parsing task expected one of: {}",
    ("instance", False): "has no instance annotations; for the instance task expected one of: {}",
    ("instance", True): "has no person instances; for the instance task expected one of: {}",
}


def _wrong_task(info: DatasetInfo, task: str) -> ConfigError:
    """The error for a dataset that does not serve ``task``, naming those that do."""
    from seglab.data.datasets import list_datasets

    why = _WRONG_TASK[(task, "parsing" in info.tasks)].format(", ".join(list_datasets(task)))
    return ConfigError(f"data.dataset: {info.name!r} {why}")


def label_set_for(cfg: DataConfig) -> LabelSet:
    """The label set of a data config: ``data.classes``, else ``data.palette``, else (left at "voc") a folder
    dataset's classes.txt or the dataset's own label set."""
    import seglab.data.datasets  # noqa: F401 - fills the registry
    from seglab.data.registry import label_set_of

    return label_set_of(cfg)


__all__ = ["TASKS", "build_dataset", "label_set_for"]
