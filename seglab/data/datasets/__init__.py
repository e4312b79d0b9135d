"""Dataset loaders, each reading an official layout exactly, and the demo data generator."""

from seglab.data.datasets.demo import ensure_demo_data, generate_demo_data
from seglab.data.datasets.folder import FolderSegmentation
from seglab.data.datasets.voc import PairedSegmentationDataset, VOCSegmentation

__all__ = [
    "FolderSegmentation",
    "PairedSegmentationDataset",
    "VOCSegmentation",
    "ensure_demo_data",
    "generate_demo_data",
]
