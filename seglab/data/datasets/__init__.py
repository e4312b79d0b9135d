"""Dataset loaders, each reading an official layout exactly, and the demo data generator."""

from seglab.data.datasets.coco import COCOInstances, check_coco, coco_layout
from seglab.data.datasets.demo import ensure_demo_data, generate_demo_data
from seglab.data.datasets.folder import FolderSegmentation
from seglab.data.datasets.voc import PairedSegmentationDataset, VOCSegmentation

__all__ = [
    "COCOInstances",
    "FolderSegmentation",
    "PairedSegmentationDataset",
    "VOCSegmentation",
    "check_coco",
    "coco_layout",
    "ensure_demo_data",
    "generate_demo_data",
]
