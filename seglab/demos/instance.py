"""``seglab demo --task instance``: the light Mask R-CNN trained on the demo shapes (COCO layout), its AP.

The job trains :data:`INSTANCE_DEMO_CONFIG` (also kept as configs/mask_rcnn/mask_rcnn_mobilenet_v3_demo_shapes.yaml;
a test checks they agree) from scratch (no pretrained backbone: nothing can be downloaded here) and evaluates
with pycocotools on the 100 demo val images. ``python scripts/instance_demo.py`` records the result in
docs/instance_demo.json, which scripts/gen_model_docs.py folds into docs/models.md; the slow test
tests/test_instance_demo.py runs the same function.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

INSTANCE_DEMO_CONFIG: dict[str, Any] = {
    "name": "mask_rcnn_demo",
    "output_dir": "runs",
    # from scratch, so trainable BatchNorm; fewer proposals and sampled RoIs than COCO's recipe (the scenes hold
    # at most 5 objects), which makes a step ~3x cheaper on a CPU
    "model": {"name": "mask_rcnn_mobilenet_v3_fpn", "num_classes": 5,
              "kwargs": {"min_size": 256, "max_size": 256, "frozen_bn": False, "rpn_pre_nms_top_n_train": 600,
                         "rpn_post_nms_top_n_train": 300, "rpn_pre_nms_top_n_test": 300,
                         "rpn_post_nms_top_n_test": 100, "box_batch_size_per_image": 128,
                         "box_detections_per_img": 20}},
    "data": {"dataset": "demo", "root": "", "palette": "demo_shapes", "scale_range": [0.75, 1.25], "hflip": True,
             "batch_size": 4, "workers": 1},
    "optim": {"name": "adamw", "lr": 0.001, "weight_decay": 0.0001},
    "schedule": {"name": "cosine", "warmup_iters": 100, "warmup_ratio": 0.01},
    "train": {"iters": 1000, "eval_interval": 500, "checkpoint_interval": 250, "log_interval": 20, "seed": 0,
              "grad_clip": 10.0},
    "eval": {"batch_size": 4},
}


def instance_demo_config(overrides: list[str] | None = None):
    """The instance demo's config, with ``key.sub=value`` overrides applied."""
    from seglab.demos.semantic import config_with_overrides

    return config_with_overrides(INSTANCE_DEMO_CONFIG, overrides, "seglab demo --task instance")


def run_instance_demo(overrides: list[str] | None = None, *, console: Any = None) -> dict[str, Any]:
    """Train the demo config's model (with ``key.sub=value`` overrides) on the demo shapes, generated if needed;
    prints and returns its COCO AP figures and the time taken."""
    result = _train(instance_demo_config(overrides))
    if console is not None:
        console.print_json(json.dumps(result))
    return result


def _train(cfg: Any) -> dict[str, Any]:
    from seglab.data.datasets.demo import ensure_demo_data
    from seglab.engine.trainer import Trainer

    cfg.data.root = cfg.data.root or str(ensure_demo_data())
    t0 = time.perf_counter()
    metrics = Trainer(cfg).fit()
    return {
        "model": cfg.model.name,
        "iters": cfg.train.iters,
        "batch_size": cfg.data.batch_size,
        **{k: round(float(v), 4) for k, v in metrics.to_dict().items()},
        "train_seconds": round(time.perf_counter() - t0, 1),
    }


def train_instance_demo(
    *, output_dir: str | Path, iters: int | None = None, data_root: str | Path | None = None
) -> dict[str, Any]:
    """:func:`run_instance_demo` writing under ``output_dir``, with ``iters`` iterations if given."""
    overrides = [f"output_dir={output_dir}"] + ([f"data.root={data_root}"] if data_root else [])
    if iters is not None:
        overrides += [f"train.iters={iters}", f"train.eval_interval={iters}"]
    return _train(instance_demo_config(overrides))


def results_markdown(path: Path) -> str:
    """The section of docs/models.md with the result recorded in ``path`` (empty if none was recorded)."""
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
