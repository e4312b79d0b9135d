"""CVAT's "COCO 1.0" export -> label maps, through the COCO importer.

The export (CVAT's format documentation, "COCO"):

    export/
      annotations/instances_<subset>.json     one file per subset (a task's: default)
      images/<subset>/<file_name>             (older CVAT versions: images/<file_name>)

Defaults differ from plain COCO where CVAT's exporter (Datumaro) differs from COCO's conventions: every mask
shape is written as an ``iscrowd: 1`` RLE, so ``crowd="class"`` paints it as its label; box shapes have an empty
segmentation and are painted as boxes (``boxes="mask"``), as CVAT's own Segmentation mask export does. Polygons
of one group form one object. With several subsets, each becomes a split list in the output.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from seglab.data.annotations.coco import CocoFile
from seglab.data.annotations.common import Source
from seglab.errors import DatasetError

LAYOUT = "expected annotations/instances_<subset>.json and images/<subset>/ (or images/), CVAT's COCO 1.0 export"


def read_cvat_coco(
    src: str | Path, *, images: str | Path | None = None, crowd: str = "class", boxes: str = "mask"
) -> Source:
    """Read an unpacked CVAT "COCO 1.0" export folder ``src``.

    ``images`` overrides the images folder; ``crowd`` and ``boxes`` as for :func:`~.coco.read_coco`."""
    src = Path(src)
    files = sorted((src / "annotations").glob("instances_*.json"))
    if not files:
        raise DatasetError(f"{src / 'annotations'}: no instances_<subset>.json; {LAYOUT}")
    parsed = []
    for path in files:
        subset = path.stem[len("instances_"):]
        dirs = [Path(images)] if images is not None else [src / "images" / subset, src / "images"]
        parsed.append(CocoFile(path, dirs, crowd, boxes, split=subset))
    for coco in parsed[1:]:
        if coco.categories != parsed[0].categories:
            raise DatasetError(f"{coco.path}: categories differ from those of {parsed[0].path}; the subsets of one "
                               "export share their labels")
    return Source(parsed[0].classes, itertools.chain.from_iterable(coco.samples() for coco in parsed))
