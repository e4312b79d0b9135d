"""scripts/gpu_check.py (issue 20, item 6): its --dry-run end to end on the CPU, and its report against known
answers."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check() -> dict:
    """The script's functions (its main does not run)."""
    return runpy.run_path(str(SCRIPT), run_name="gpu_check")


def test_markdown_shows_errors_and_skips(gpu_check):
    results = {"dry_run": False, "sections": {
        "environment": {"gpu": "Some GPU", "date": "2030-01-01", "commit": "abc", "seconds": 1.0},
        "demo_training": {"runs": [{"precision": "fp32", "mIoU": 0.5}, {"precision": "fp16", "skipped": "needs CUDA"},
                                   {"precision": "bf16", "error": "RuntimeError: boom | bang\nTraceback ..."}]},
        "inference": {"error": "ImportError: no benchmarks\nTraceback ...", "seconds": 0.1},
    }}
    text = gpu_check["markdown"](results)
    assert text.startswith("# GPU check\n\n`scripts/gpu_check.py` (issue 20, item 6) on Some GPU, 2030-01-01")
    assert "| precision | mIoU | skipped | error |" in text
    assert "| fp32 | 0.5000 | - | - |" in text
    assert "| fp16 | - | needs CUDA | - |" in text
    assert "| bf16 | - | - | RuntimeError: boom / bang |" in text  # first line only, pipes escaped
    assert "## Inference against torchvision, same weights\n\n- error: ImportError: no benchmarks\n" in text
    assert gpu_check["count_errors"](results) == 2
    assert gpu_check["COMMAND"] in text


def _rows(rows: list[dict], **match) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


@pytest.mark.slow
def test_dry_run(tmp_path):
    """The whole script on the CPU (about 1.5-5 min on a 2-core machine): every section runs without an error and
    the seglab/torchvision pairs agree in fp32."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "gpu_check.json").read_text())
    sections = results["sections"]
    assert list(sections) == ["environment", "demo_data", "demo_training", "train_steps", "distributed", "inference"]
    assert "error" not in json.dumps(results), json.dumps(results, indent=1)[:4000]
    assert results["dry_run"] and sections["environment"]["device"] == "cpu"
    assert sections["demo_data"]["images"] == 20

    runs = {r["precision"]: r for r in sections["demo_training"]["runs"]}
    assert runs["fp16"] == {"precision": "fp16", "skipped": "needs CUDA"}
    for precision in ("fp32", "bf16"):
        assert runs[precision]["iters"] == 3 and 0.0 <= runs[precision]["mIoU"] <= 1.0
    steps = sections["train_steps"]["rows"]
    assert [r["variant"] for r in steps] == ["eager", "channels_last", "compiled"]
    assert all(r["step_ms"] > 0 and np.isfinite(r["first_loss"]) for r in steps)
    # the same seeded model and batch: the first step's loss does not depend on the memory format or compilation
    assert steps[1]["first_loss"] == pytest.approx(steps[0]["first_loss"], rel=1e-2)
    assert steps[2]["first_loss"] == pytest.approx(steps[0]["first_loss"], rel=1e-2)

    train, group = sections["distributed"]["runs"]
    assert train["run"] == "seglab train" and train["iters"] == 2 and 0.0 <= train["mIoU"] <= 1.0
    assert group["backend"] == "gloo" and group["world_size"] == 1 and group["all_reduce_ok"]
    assert len(group["ddp_losses"]) == 5 and group["ddp_losses"][-1] < group["ddp_losses"][0]

    inference = sections["inference"]
    models = ("fcn_resnet50", "deeplabv3_resnet50", "lraspp_mobilenet_v3_large", "maskrcnn_resnet50_fpn")
    for model in models:
        fp32 = _rows(inference["agreement"], model=model, precision="fp32")[0]
        assert fp32["agreement"] == 1.0  # semantic: argmax; Mask R-CNN: lowest IoU of the top-10 boxes
        if model == "maskrcnn_resnet50_fpn":
            assert fp32["labels"] == 1.0
        else:
            assert fp32["max_abs_diff"] < 1e-4 and fp32["finite"]
        assert _rows(inference["agreement"], model=model, precision="fp16")[0]["skipped"] == "needs CUDA"
        assert _rows(inference["agreement"], model=model, precision="bf16")[0]["agreement"] > 0.95
        latency = _rows(inference["latency"], model=model)
        assert [(r["precision"], r["batch"]) for r in latency] == [("bf16", 1), ("bf16", 2)]
        assert all(r["seglab_ms"] > 0 and r["torchvision_ms"] > 0 and r["ratio"] > 0 for r in latency)
    assert [(r["precision"], r["ran_as"]) for r in inference["predictor"]] in (
        [("fp32", "fp32"), ("bf16", "bf16")], [("fp32", "fp32"), ("bf16", "fp32")])  # fp32 where the CPU lacks bf16

    text = (out / "gpu_check.md").read_text()
    assert text.startswith("# GPU check") and "dry run on the CPU" in text
    for title in ("## Environment", "## Demo training", "## Training steps", "## One process under torchrun",
                  "## Inference against torchvision, same weights", "## Reproduce"):
        assert title in text
