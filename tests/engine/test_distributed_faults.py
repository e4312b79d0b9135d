"""Distributed faults (2 processes, gloo, CPU): a rank that dies or hangs makes the other exit with a clear error
in bounded time (no hang on a collective), and under ``torchrun --max-restarts=1`` a killed rank's job restarts
by itself, resumes from its last checkpoint and ends with the weights of an uninterrupted run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.memory import descendants
from seglab.checkpoint import load_state_dict

ITERS = 24


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from seglab.data.datasets.demo import generate_demo_data

    return generate_demo_data(tmp_path_factory.mktemp("demo"), seed=0, num_train=8, num_val=2, size=48)


def write_config(root: Path, out: Path, name: str, **train) -> Path:
    cfg = {
        "name": name, "output_dir": str(out),
        "model": {"name": "unet", "num_classes": 5, "kwargs": {"base_width": 4}},
        "data": {"dataset": "demo", "root": str(root), "palette": "demo_shapes", "crop_size": [32, 32],
                 "scale_range": [1.0, 1.0], "batch_size": 4, "workers": 0},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"iters": ITERS, "eval_interval": 0, "checkpoint_interval": 4, "log_interval": 1, "seed": 0,
                  "device": "cpu", **train},
        "eval": {"batch_size": 2},
    }
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def env(**extra: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd()), **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logged_iterations(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["iter"] for r in lines if "loss" in r and "split" not in r]


def wait_for_iteration(run_dir: Path, n: int, procs: list, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(logged_iterations(run_dir)) >= n:
            return
        assert all(p.poll() is None for p in procs), "a process ended before the fault was injected"
        time.sleep(0.01)
    raise AssertionError(f"iteration {n} not reached in {timeout} s")


def kill_all(procs: list) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"])
def test_a_dead_or_hung_rank_makes_the_other_exit_with_a_clear_error(root, tmp_path, fault):
    """Both ranks started by hand (as a multi-node job without an agent on this node would be): rank 1 is killed
    (its peer sees the closed connection at once) or stopped (its peer waits for train.dist_timeout_s = 5 s);
    rank 0 then exits with status 2 and names itself, the iteration, the timeout and the checkpoint."""
    config = write_config(root, tmp_path, "run", dist_timeout_s=5)
    port = str(free_port())
    procs = [
        subprocess.Popen([sys.executable, "-m", "seglab", "train", str(config)],
                         env=env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                 MASTER_PORT=port),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        for r in range(2)
    ]
    try:
        wait_for_iteration(tmp_path / "run", 6, procs)
        os.kill(procs[1].pid, getattr(signal, fault))
        t0 = time.monotonic()
        procs[0].wait(timeout=60)
        waited = time.monotonic() - t0
    finally:
        kill_all(procs)
    err = procs[0].stderr.read().decode()
    assert procs[0].returncode == 2, err[-3000:]
    assert "rank 0: a collective operation failed in iteration" in err, err[-3000:]
    assert "train.dist_timeout_s=5 s" in err and "last_state.pt" in err
    assert "Traceback" not in err
    # bounded: at once for a dead peer, after the timeout (plus the step in progress) for a hung one
    assert waited < (10 if fault == "SIGKILL" else 30), waited
    print(f"{fault}: rank 0 exited {waited:.1f} s after the fault")


def rank_pids(agent_pid: int) -> dict[int, int]:
    """The torchrun workers under ``agent_pid``: {rank: pid}, from /proc (Linux)."""
    ranks = {}
    for child in descendants(agent_pid):
        try:
            environ = (Path("/proc") / str(child) / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        values = dict(item.split(b"=", 1) for item in environ if b"=" in item)
        if b"RANK" in values and b"TORCHELASTIC_RESTART_COUNT" in values:
            ranks[int(values[b"RANK"])] = child
    return ranks


def torchrun(config: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *extra,
           "-m", "seglab", "train", str(config)]
    return subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


@pytest.mark.slow
def test_torchrun_restarts_a_killed_rank_and_the_run_ends_as_an_uninterrupted_one(root, tmp_path):
    """torchrun --max-restarts=1; rank 1 is SIGKILLed after iteration 10 (last checkpoint: 8); the agent stops
    rank 0, starts both again, they resume from iteration 8 by themselves and end with the uninterrupted
    2-process run's weights, bit for bit (one thread per process, as in the uninterrupted run)."""
    reference = torchrun(write_config(root, tmp_path, "uninterrupted"))
    out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, out.decode()[-3000:]

    job = torchrun(write_config(root, tmp_path, "restarted"), "--max-restarts=1")
    try:
        wait_for_iteration(tmp_path / "restarted", 10, [job])
        pids = rank_pids(job.pid)
        assert set(pids) == {0, 1}, pids
        os.kill(pids[1], signal.SIGKILL)
        out, _ = job.communicate(timeout=300)
    finally:
        kill_all([job])
    text = out.decode()
    assert job.returncode == 0, text[-3000:]
    assert "torchrun restart 1: resuming from" in text, text[-3000:]

    run = tmp_path / "restarted"
    assert logged_iterations(run) == list(range(1, ITERS + 1))  # resumed: nothing logged twice or missed
    a = load_state_dict(tmp_path / "uninterrupted/checkpoints/last.safetensors")
    b = load_state_dict(run / "checkpoints/last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_the_messages_gloo_fails_collectives_with_are_recognised():
    """The three messages gloo gave in these tests (a dead peer, a hung peer in a receive, a hung peer in DDP's
    forward) are collective failures; an error of the step itself is not."""
    from seglab.engine.distributed import is_collective_failure

    for text in ("[../gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:22930: Connection reset by peer.",
                 "[../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 10000ms for recv operation",
                 "Application timeout caused pair closure"):
        assert is_collective_failure(RuntimeError(text)), text
    assert not is_collective_failure(RuntimeError("The size of tensor a (3) must match the size of tensor b (4)"))
    assert not is_collective_failure(ValueError("gloo"))
