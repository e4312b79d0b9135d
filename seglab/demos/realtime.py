"""Train the real-time models (ENet, BiSeNet V2, LR-ASPP) on the demo shapes and record their val mIoU.

``python scripts/realtime_demo.py`` runs each model with the demo's recipe (seglab/demos/semantic.py: AdamW,
poly schedule, 128x128 crops, batch 8) from scratch, without pretrained weights, and writes
docs/realtime_demo.json, which scripts/gen_model_docs.py folds into docs/models.md. The slow test
tests/test_realtime_demo.py runs the same function with fewer iterations.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

REALTIME_MODELS = ("enet", "bisenetv2", "lraspp_mobilenet_v3_large")


# BiSeNet V2's four booster heads, each weighted 1 as in the paper's training recipe.
AUX_WEIGHTS = {"bisenetv2": [1.0, 1.0, 1.0, 1.0]}


def train_on_demo(
    name: str, *, iters: int, output_dir: str | Path, data_root: str | Path | None = None
) -> dict[str, Any]:
    """Train model ``name`` on the demo shapes with the demo recipe; returns mIoU, iterations and time."""
    from seglab.data.datasets.demo import ensure_demo_data
    from seglab.demos.semantic import demo_config
    from seglab.engine.trainer import Trainer

    cfg = demo_config(
        [f"name={name}", f"output_dir={output_dir}", f"model.name={name}", "model.kwargs={}", f"train.iters={iters}",
         f"train.eval_interval={iters}", f"train.checkpoint_interval={iters}",
         f"train.aux_weights={AUX_WEIGHTS.get(name, [])}"]
    )
    cfg.data.root = str(data_root or ensure_demo_data())
    trainer = Trainer(cfg)
    t0 = time.perf_counter()
    metrics = trainer.fit()
    return {"model": name, "iters": iters, "mIoU": round(float(metrics.mIoU), 4),
            "train_seconds": round(time.perf_counter() - t0, 1)}


def results_markdown(path: Path) -> str:
    """The section of docs/models.md with the results recorded in ``path`` (empty if none were recorded)."""
    if not path.is_file():
        return ""
    data = json.loads(path.read_text())
    lines = [
        "",
        "## Real-time models on the demo shapes",
        "",
        f"Recorded by `python scripts/realtime_demo.py` ({data['machine']}): each model trained from scratch "
        "with the demo recipe (AdamW lr 0.003, poly, 128x128 crops, batch 8), val mIoU on the 100 demo val images.",
        "",
        "| model | iterations | val mIoU | training time (s) |",
        "|---|---|---|---|",
    ]
    for r in data["results"]:
        lines.append(f"| `{r['model']}` | {r['iters']} | {r['mIoU']:.4f} | {r['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"
