"""Train the light Mask R-CNN on the demo shapes (COCO layout) and record its mask and box AP.

``python scripts/instance_demo.py`` trains ``configs/mask_rcnn/mask_rcnn_mobilenet_v3_demo_shapes.yaml``
from scratch (no pretrained backbone: nothing can be downloaded here) on this CPU, evaluates with
pycocotools on the 100 demo val images, and writes docs/instance_demo.json, which
scripts/gen_model_docs.py folds into docs/models.md. The slow test tests/test_instance_demo.py runs
the same function.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "mask_rcnn" / "mask_rcnn_mobilenet_v3_demo_shapes.yaml"
RESULTS_FILE = ROOT / "docs" / "instance_demo.json"


def train_instance_demo(
    *, output_dir: str | Path, iters: int | None = None, data_root: str | Path | None = None
) -> dict[str, Any]:
    """Train the config's model on the demo shapes; returns its COCO AP figures and the time taken."""
    from seglab.config import load_config
    from seglab.data.datasets.demo import ensure_demo_data
    from seglab.engine.trainer import Trainer

    overrides = [f"output_dir={output_dir}", f"data.root={data_root or ensure_demo_data()}"]
    if iters is not None:
        overrides += [f"train.iters={iters}", f"train.eval_interval={iters}"]
    cfg = load_config(CONFIG, overrides)
    t0 = time.perf_counter()
    metrics = Trainer(cfg).fit()
    return {
        "model": cfg.model.name,
        "iters": cfg.train.iters,
        "batch_size": cfg.data.batch_size,
        **{k: round(float(v), 4) for k, v in metrics.to_dict().items()},
        "train_seconds": round(time.perf_counter() - t0, 1),
    }


def results_markdown(path: Path = RESULTS_FILE) -> str:
    """The section of docs/models.md with the recorded result (empty if none was recorded)."""
    if not path.is_file():
        return ""
    data = json.loads(path.read_text())
    r = data["result"]
    return "\n".join([
        "",
        "## Mask R-CNN on the demo shapes",
        "",
        f"Recorded by `python scripts/instance_demo.py` ({data['machine']}): `{r['model']}` trained from scratch "
        f"(config `configs/mask_rcnn/mask_rcnn_mobilenet_v3_demo_shapes.yaml`: {r['iters']} iterations of batch "
        f"{r['batch_size']}, 256x256 images), COCO AP by pycocotools on the 100 demo val images.",
        "",
        "| model | mask AP | mask AP50 | mask AP75 | box AP | box AP50 | training time (s) |",
        "|---|---|---|---|---|---|---|",
        f"| `{r['model']}` | {r['segm_AP']:.3f} | {r['segm_AP50']:.3f} | {r['segm_AP75']:.3f} | {r['bbox_AP']:.3f} "
        f"| {r['bbox_AP50']:.3f} | {r['train_seconds']:.0f} |",
        *(["", data["note"]] if data.get("note") else []),
    ]) + "\n"
