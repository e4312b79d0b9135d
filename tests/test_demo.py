import json
from pathlib import Path

import pytest
from rich.console import Console

from seglab.data.datasets import demo as demo_data
from seglab.demos.semantic import run_demo


def test_demo_runs_end_to_end_on_small_settings(tmp_path, monkeypatch):
    """The demo pipeline (data, train, eval, overlays) with a few iterations, on small data that run_demo
    generates into its own folder (not the session ``demo_root``, which run_demo would regenerate for others)."""
    monkeypatch.setattr(demo_data, "DEMO_PARAMS", {"seed": 0, "num_train": 24, "num_val": 6, "size": 96})
    demo_root = tmp_path / "demo"
    console = Console(file=open(tmp_path / "console.txt", "w"), width=120)
    summary = run_demo(
        [f"output_dir={tmp_path / 'runs'}", f"data.root={demo_root}", "train.iters=4", "train.eval_interval=0",
         "train.checkpoint_interval=4", "model.kwargs={base_width: 4}", "data.crop_size=[64,64]",
         "data.workers=0"],
        num_overlays=2,
        console=console,
    )
    console.file.close()
    text = (tmp_path / "console.txt").read_text()
    assert "mIoU" in text and str(demo_root) in text
    manifest = json.loads((demo_root / "manifest.json").read_text())
    assert (manifest["num_train"], manifest["num_val"], manifest["size"]) == (24, 6, 96)
    for key in ("best_weights", "last_weights", "metrics", "curves"):
        assert Path(summary[key]).is_file(), key
    overlays = sorted(Path(summary["overlays"]).glob("*_overlay.png"))
    assert len(overlays) == 2
    final = json.loads((Path(summary["run_dir"]) / "final_metrics.json").read_text())
    assert final["mIoU"] == pytest.approx(summary["mIoU"])


@pytest.mark.slow
def test_full_demo_reaches_target(tmp_path, monkeypatch):
    """The real demo job (as `make demo` runs it) reaches val mIoU >= 0.85."""
    monkeypatch.setenv("SEGLAB_CACHE", str(tmp_path / "cache"))
    summary = run_demo([f"output_dir={tmp_path / 'runs'}"], console=Console(file=open(tmp_path / "c.txt", "w")))
    assert summary["mIoU"] >= 0.85, summary
