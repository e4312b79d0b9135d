"""Dataset loaders, each reading an official layout exactly, and the demo data generators.

Importing this package imports every layout file, each of which registers its layout and its ``data.dataset``
names in :mod:`seglab.data.registry`; the registry's accessors are re-exported here so that a caller reading them
through this package always sees every registration.
"""

from seglab.data.datasets.ade20k import ADE20KSegmentation
from seglab.data.datasets.camvid import CamVidSegmentation
from seglab.data.datasets.cihp import CIHPDataset
from seglab.data.datasets.cityscapes import CityscapesSegmentation
from seglab.data.datasets.coco import COCOInstances, check_coco, coco_layout
from seglab.data.datasets.coco_stuff import COCOStuffSegmentation
from seglab.data.datasets.demo import ensure_demo_data, generate_demo_data
from seglab.data.datasets.demo_people import ensure_demo_people, generate_demo_people
from seglab.data.datasets.folder import FolderSegmentation
from seglab.data.datasets.lip import LIPDataset
from seglab.data.datasets.voc import PairedSegmentationDataset, VOCSegmentation
from seglab.data.registry import datasets_markdown, get_dataset, list_datasets, list_layouts, with_datasets_table

__all__ = [
    "ADE20KSegmentation",
    "CIHPDataset",
    "COCOInstances",
    "COCOStuffSegmentation",
    "CamVidSegmentation",
    "CityscapesSegmentation",
    "FolderSegmentation",
    "LIPDataset",
    "PairedSegmentationDataset",
    "VOCSegmentation",
    "check_coco",
    "coco_layout",
    "datasets_markdown",
    "ensure_demo_data",
    "ensure_demo_people",
    "generate_demo_data",
    "generate_demo_people",
    "get_dataset",
    "list_datasets",
    "list_layouts",
    "with_datasets_table",
]
