"""Run `seglab demo --task parsing` and record its result in docs/parsing_demo.json and docs/models.md."""

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

from seglab.demos.parsing import parsing_demo_config, run_parsing_demo
from seglab.model_table import models_markdown
from seglab.utils import atomic_write_text

DOCS = Path(__file__).resolve().parents[1] / "docs"
RESULTS_FILE = DOCS / "parsing_demo.json"

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("overrides", nargs="*", help="key.sub=value applied to the demo config")
args = parser.parse_args()

with tempfile.TemporaryDirectory() as tmp:
    summary = run_parsing_demo([f"output_dir={tmp}", *args.overrides])
keys = ("mIoU", "pixel_acc", "mean_acc", "iou", "iters", "train_seconds", "total_seconds")
result = {k: round(summary[k], 4) if isinstance(summary[k], float) else summary[k] for k in keys}
machine = f"{platform.machine()}, {os.cpu_count()} CPU cores"
cfg = parsing_demo_config(args.overrides)
model = cfg.model.name + "".join(f", {k}={v}" for k, v in cfg.model.kwargs.items())
atomic_write_text(RESULTS_FILE, json.dumps({"machine": machine, "model": model, "result": result}, indent=2) + "\n")
atomic_write_text(DOCS / "models.md", models_markdown(DOCS))
print(json.dumps(result, indent=2))
