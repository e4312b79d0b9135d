"""Train the light Mask R-CNN on the demo shapes; write docs/instance_demo.json and docs/models.md."""

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

from seglab.demos.instance import train_instance_demo
from seglab.model_table import models_markdown
from seglab.utils import atomic_write_text

DOCS = Path(__file__).resolve().parents[1] / "docs"
RESULTS_FILE = DOCS / "instance_demo.json"

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--iters", type=int, help="default: the config's train.iters")
args = parser.parse_args()

with tempfile.TemporaryDirectory() as tmp:
    result = train_instance_demo(output_dir=tmp, iters=args.iters)
machine = f"{platform.machine()}, {os.cpu_count()} CPU cores"
atomic_write_text(RESULTS_FILE, json.dumps({"machine": machine, "result": result}, indent=2) + "\n")
atomic_write_text(DOCS / "models.md", models_markdown(DOCS))
print(json.dumps(result, indent=2))
