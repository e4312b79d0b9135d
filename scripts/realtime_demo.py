"""Train ENet, BiSeNet V2 and LR-ASPP on the demo shapes; write docs/realtime_demo.json and docs/models.md."""

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

from seglab.demos.realtime import REALTIME_MODELS, train_on_demo
from seglab.model_table import models_markdown
from seglab.utils import atomic_write_text

DOCS = Path(__file__).resolve().parents[1] / "docs"
RESULTS_FILE = DOCS / "realtime_demo.json"

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--iters", type=int, default=500)
parser.add_argument("--models", nargs="+", default=list(REALTIME_MODELS))
args = parser.parse_args()

with tempfile.TemporaryDirectory() as tmp:
    results = [train_on_demo(name, iters=args.iters, output_dir=tmp) for name in args.models]
machine = f"{platform.machine()}, {os.cpu_count()} CPU cores"
atomic_write_text(RESULTS_FILE, json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
atomic_write_text(DOCS / "models.md", models_markdown(DOCS))
print(json.dumps(results, indent=2))
