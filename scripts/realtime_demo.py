"""Train ENet, BiSeNet V2 and LR-ASPP on the demo shapes; write docs/realtime_demo.json and docs/models.md."""

import argparse
import json
import os
import platform
import tempfile

from seglab.model_table import models_markdown
from seglab.realtime_demo import REALTIME_MODELS, RESULTS_FILE, train_on_demo
from seglab.utils import atomic_write_text

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--iters", type=int, default=500)
parser.add_argument("--models", nargs="+", default=list(REALTIME_MODELS))
args = parser.parse_args()

with tempfile.TemporaryDirectory() as tmp:
    results = [train_on_demo(name, iters=args.iters, output_dir=tmp) for name in args.models]
machine = f"{platform.machine()}, {os.cpu_count()} CPU cores"
atomic_write_text(RESULTS_FILE, json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
atomic_write_text(RESULTS_FILE.parent / "models.md", models_markdown())
print(json.dumps(results, indent=2))
