"""A killed run loses nothing: SIGKILL at a random point, ``--resume``, and the final weights equal an
uninterrupted run's bit for bit (CPU); SIGTERM and SIGINT (preemption) save the state of the iteration they
interrupt and exit with 75, and the resume is as exact; checkpoints are always complete files; a non-finite
loss stops the run with the last good checkpoint kept."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

import seglab.utils
from seglab.checkpoint import load_state_dict, load_training_state, read_metadata
from seglab.cli import main as cli_main
from seglab.config import config_from_dict, config_to_dict
from seglab.engine.trainer import Trainer
from seglab.errors import TrainingError

ITERS = 30


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    from seglab.data.datasets.demo import generate_demo_data

    return generate_demo_data(tmp_path_factory.mktemp("demo"), seed=0, num_train=16, num_val=4, size=64)


def tiny_config(root: Path, out: Path, name: str, workers: int = 0, **train) -> dict:
    return {
        "name": name,
        "output_dir": str(out),
        "model": {"name": "unet", "num_classes": 5, "kwargs": {"base_width": 4}},
        "data": {"dataset": "demo", "root": str(root), "palette": "demo_shapes", "crop_size": [48, 48],
                 "scale_range": [0.75, 1.25], "batch_size": 2, "workers": workers},
        "optim": {"name": "adamw", "lr": 0.01},
        "schedule": {"name": "poly", "warmup_iters": 2},
        "train": {"iters": ITERS, "eval_interval": 0, "checkpoint_interval": 1, "log_interval": 1, "seed": 0,
                  "device": "cpu", **train},
        "eval": {"batch_size": 2},
    }


def temp_files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*.tmp")}


def assert_same_weights(a_path: Path, b_path: Path) -> None:
    a, b = load_state_dict(a_path), load_state_dict(b_path)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def losses_by_iter(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r and "split" not in r]
    iters = [r["iter"] for r in train]
    assert iters == sorted(set(iters)), f"metrics.jsonl repeats or reorders iterations: {iters}"
    return {r["iter"]: r["loss"] for r in train}


class _CheckpointWatcher(threading.Thread):
    """Reads last.safetensors and last_state.pt over and over while a run writes them: every read must see a
    complete file (atomic rename), never a partial one."""

    def __init__(self, ckpt_dir: Path) -> None:
        super().__init__(daemon=True)
        self.ckpt_dir, self.reads, self.errors = ckpt_dir, 0, []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for name, load in (("last.safetensors", load_state_dict), ("last_state.pt", load_training_state)):
                path = self.ckpt_dir / name
                if not path.exists():
                    continue
                try:
                    load(path)
                    self.reads += 1
                except Exception as exc:  # noqa: BLE001 - any failure to read is what this test looks for
                    self.errors.append(f"{name}: {exc}")
            time.sleep(0.002)


@pytest.fixture
def one_thread():
    """Bit-identity holds only with the same thread count (and kernels) on both sides: the killed subprocess
    runs with OMP_NUM_THREADS=1, so the in-process runs use one intra-op thread too, whatever the suite's
    default is for this test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def kill_and_resume(tiny_root: Path, tmp_path: Path, workers: int, seed: int, sig: int = signal.SIGKILL,
                    checkpoint_interval: int = 1) -> None:
    """Run A uninterrupted; run B in a subprocess sent ``sig`` after a random number of iterations, resumed
    through the CLI; B's final weights and per-iteration losses must equal A's. SIGKILL goes to the process group
    (data workers die with it) and leaves the last periodic checkpoint; SIGTERM/SIGINT go to the main process,
    which saves the iteration it was in and exits with 75 (``checkpoint_interval`` above ITERS: that save is the
    only one before the end)."""
    assert torch.get_num_threads() == 1, "the subprocess runs on one thread; so must run A and the resume"
    rng = random.Random(seed)
    kill_after, extra_delay = rng.randint(3, ITERS - 5), rng.uniform(0.0, 0.05)
    train = {"checkpoint_interval": checkpoint_interval}

    cfg_a = config_from_dict(tiny_config(tiny_root, tmp_path, "a", workers, **train))
    Trainer(cfg_a).fit()
    run_a = tmp_path / "a"
    assert temp_files(run_a) == set(), "an uninterrupted run left temporary files"

    config_path = tmp_path / "b.yaml"
    config_path.write_text(yaml.safe_dump(config_to_dict(config_from_dict(tiny_config(tiny_root, tmp_path, "b",
                                                                                      workers, **train)))))
    run_b = tmp_path / "b"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    watcher = _CheckpointWatcher(run_b / "checkpoints")
    watcher.start()
    proc = subprocess.Popen([sys.executable, "-m", "seglab", "train", str(config_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        metrics = run_b / "metrics.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= kill_after:
                break
            time.sleep(0.005)
        time.sleep(extra_delay)
        assert proc.poll() is None, f"run B ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
        if sig == signal.SIGKILL:
            os.killpg(proc.pid, signal.SIGKILL)  # the process group: data workers die with it
        else:
            os.kill(proc.pid, sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        watcher.stop.set()
        watcher.join()
    stderr = proc.stderr.read().decode()
    assert watcher.errors == [], watcher.errors[:3]

    state = load_training_state(run_b / "checkpoints/last_state.pt")
    killed_at = int(state["iteration"])
    assert kill_after - 1 <= killed_at < ITERS
    if sig == signal.SIGKILL:  # what the kill left: complete files of one iteration, short of the end
        assert proc.returncode == -signal.SIGKILL
        assert watcher.reads > 0
        assert read_metadata(run_b / "checkpoints/last.safetensors")["iteration"] in (killed_at, killed_at - 1)
    else:  # the state of the last iteration run, written on the signal; a distinct exit code; a clear message
        assert proc.returncode == 75, stderr[-2000:]
        assert max(losses_by_iter(run_b)) == killed_at
        assert read_metadata(run_b / "checkpoints/last.safetensors")["iteration"] == killed_at
        name = signal.Signals(sig).name
        assert f"stopped by {name} after iteration {killed_at} of {ITERS}" in stderr, stderr[-2000:]
        assert "last_state.pt (continue with --resume)" in stderr

    assert cli_main(["train", str(config_path), "--resume"]) == 0
    assert json.loads((run_b / "final_metrics.json").read_text())["mIoU"] == pytest.approx(
        json.loads((run_a / "final_metrics.json").read_text())["mIoU"], abs=0)
    assert_same_weights(run_a / "checkpoints/last.safetensors", run_b / "checkpoints/last.safetensors")
    assert losses_by_iter(run_b) == losses_by_iter(run_a)
    assert temp_files(run_b) == set(), "temporary files left (by the kill, or by the resumed run)"


def test_sigkill_then_resume_is_bit_identical(tiny_root, tmp_path, one_thread):
    kill_and_resume(tiny_root, tmp_path, workers=0, seed=1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_preemption_signal_saves_the_iteration_and_resume_is_bit_identical(tiny_root, tmp_path, one_thread, sig):
    kill_and_resume(tiny_root, tmp_path, workers=0, seed=3, sig=sig, checkpoint_interval=1000)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical_with_workers(tiny_root, tmp_path, one_thread):
    kill_and_resume(tiny_root, tmp_path, workers=2, seed=2)


def test_atomic_write_fsyncs_file_then_renames_then_fsyncs_folder(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(seglab.utils.os, "fsync", fsync)
    monkeypatch.setattr(seglab.utils.os, "replace", replace)
    (tmp_path / "out").mkdir()
    seglab.utils.atomic_write_text(tmp_path / "out" / "f.txt", "new")
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].startswith(".f.txt.") and events[0][1].endswith(".tmp")  # the temporary file
    assert events[1][1] == "f.txt" and events[2][1] == "out"  # then its folder
    assert (tmp_path / "out" / "f.txt").read_text() == "new"
    assert temp_files(tmp_path) == set()


def test_failed_write_keeps_the_old_file(tmp_path):
    path = seglab.utils.atomic_write_text(tmp_path / "w.txt", "old")

    def half_write(p):
        p.write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        seglab.utils.atomic_write(path, half_write)
    assert path.read_text() == "old"
    assert temp_files(tmp_path) == set()


def test_nan_loss_stops_with_last_good_checkpoint(tiny_root, tmp_path, monkeypatch, capsys):
    """The 10th step's loss is NaN: the run stops naming iteration 10, and the checkpoint of iteration 8
    (checkpoint_interval 4) is kept, loadable and equal to an uninterrupted run stopped at 8."""
    from seglab.losses import SegmentationLoss

    reference = Trainer(config_from_dict(tiny_config(tiny_root, tmp_path, "ref", checkpoint_interval=4)))
    reference.fit(stop_at=8)

    calls = {"n": 0}
    real_forward = SegmentationLoss.forward

    def poisoned(self, outputs, targets):
        loss, parts = real_forward(self, outputs, targets)
        calls["n"] += 1
        if calls["n"] == 10:
            loss = loss * float("nan")
        return loss, parts

    monkeypatch.setattr(SegmentationLoss, "forward", poisoned)
    config_path = tmp_path / "nan.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(tiny_root, tmp_path, "nan", checkpoint_interval=4)))
    assert cli_main(["train", str(config_path)]) == 2
    err = capsys.readouterr().err
    assert "iteration 10" in err and "nan" in err.lower(), err
    assert "last_state.pt" in err and "iteration 8" in err, err

    ckpt = tmp_path / "nan" / "checkpoints"
    assert load_training_state(ckpt / "last_state.pt")["iteration"] == 8
    assert read_metadata(ckpt / "last.safetensors")["iteration"] == 8
    weights = load_state_dict(ckpt / "last.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert_same_weights(tmp_path / "ref/checkpoints/last.safetensors", ckpt / "last.safetensors")
    assert temp_files(tmp_path / "nan") == set()

    # the trainer object itself raises TrainingError with the same facts
    calls["n"] = 0
    trainer = Trainer(config_from_dict(tiny_config(tiny_root, tmp_path, "nan2", checkpoint_interval=4)))
    with pytest.raises(TrainingError, match="iteration 10"):
        trainer.fit()
    assert trainer.iteration == 9
