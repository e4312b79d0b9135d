"""Full disks and I/O errors: a checkpoint write that fails (ENOSPC, EIO; injected) stops the run with an error
naming the path and the free space, keeps the previous checkpoint intact and loadable and leaves no partial
file; a run folder that cannot be written is refused before training starts."""

import errno
import os

import pytest
import torch
import yaml

import seglab.checkpoint
import seglab.utils
from seglab.checkpoint import load_state_dict, load_training_state, read_metadata
from seglab.cli import main as cli_main
from seglab.errors import StorageError


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    from seglab.data.datasets.demo import generate_demo_data

    return generate_demo_data(tmp_path_factory.mktemp("demo"), seed=0, num_train=8, num_val=2, size=48)


def write_config(root, out, name):
    cfg = {
        "name": name, "output_dir": str(out),
        "model": {"name": "unet", "num_classes": 5, "kwargs": {"base_width": 4}},
        "data": {"dataset": "demo", "root": str(root), "palette": "demo_shapes", "crop_size": [32, 32],
                 "batch_size": 2, "workers": 0},
        "optim": {"name": "adamw", "lr": 0.01},
        "train": {"iters": 12, "eval_interval": 0, "checkpoint_interval": 4, "log_interval": 1, "seed": 0,
                  "device": "cpu"},
        "eval": {"batch_size": 2},
    }
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def temp_files(folder):
    return sorted(p.name for p in folder.rglob("*.tmp"))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("failing", ["last_state.pt", "last.safetensors"])
def test_a_failed_checkpoint_write_stops_the_run_and_keeps_the_previous_checkpoint(
    tiny_root, tmp_path, monkeypatch, capsys, code, failing
):
    """The second checkpoint (iteration 8) fails half-way through its file; the one of iteration 4 stays."""
    writer_module, writer_name = (torch, "save") if failing == "last_state.pt" else (seglab.checkpoint, "save_file")
    real = getattr(writer_module, writer_name)
    calls = {"n": 0}

    def failing_writer(obj, f, *args, **kwargs):
        if not str(f).endswith(".tmp") or f".{failing}." not in str(f):
            return real(obj, f, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] < 2:
            return real(obj, f, *args, **kwargs)
        with open(f, "wb") as fh:  # a partial file, then the device gives up
            fh.write(b"\0" * 1000)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(writer_module, writer_name, failing_writer)
    config = write_config(tiny_root, tmp_path, "full")
    assert cli_main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    ckpt = tmp_path / "full/checkpoints"
    assert f"{ckpt / failing}: could not be written: {os.strerror(code)} (the previous file is intact)" in err, err
    assert "MiB free on" in err and str(ckpt) in err

    # the previous checkpoint is whole and loads; no partial or temporary file is left
    assert temp_files(tmp_path / "full") == []
    state = load_training_state(ckpt / "last_state.pt")
    weights_iteration = read_metadata(ckpt / "last.safetensors")["iteration"]
    if failing == "last_state.pt":  # stopped before last.safetensors of iteration 8 was written
        assert state["iteration"] == 4 and weights_iteration == 4
    else:  # last_state.pt of iteration 8 was complete; the weights file of iteration 4 is kept
        assert state["iteration"] == 8 and weights_iteration == 4
    weights = load_state_dict(ckpt / "last.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())

    # and the run resumes from what was kept, to the end
    monkeypatch.setattr(writer_module, writer_name, real)
    assert cli_main(["train", str(config), "--resume"]) == 0
    assert load_training_state(ckpt / "last_state.pt")["iteration"] == 12


def test_a_read_only_run_folder_is_refused_before_training(tiny_root, tmp_path, monkeypatch, capsys):
    real_mkstemp = seglab.utils.tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and str(tmp_path / "ro") in str(dir):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(seglab.utils.tempfile, "mkstemp", read_only)
    (tmp_path / "ro").mkdir()
    config = write_config(tiny_root, tmp_path / "ro", "run")  # the config itself is written before the patch acts
    assert cli_main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'ro/run/checkpoints'}: the run folder is not writable (Read-only file system)" in err, err
    assert not (tmp_path / "ro/run/metrics.jsonl").exists()  # no iteration ran


def test_a_file_in_the_way_of_the_run_folder_is_refused_before_training(tiny_root, tmp_path, capsys):
    """A real unwritable path (the tests may run as root, where permission bits do not stop a write)."""
    config = write_config(tiny_root, tmp_path, "run")
    (tmp_path / "run").write_text("not a folder")
    assert cli_main(["train", str(config)]) == 2
    assert "the run folder is not writable" in capsys.readouterr().err


def test_storage_error_is_an_os_error_and_names_free_space(tmp_path):
    path = seglab.utils.atomic_write_text(tmp_path / "f.txt", "old")

    def full(p):
        p.write_text("part")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as info:
        seglab.utils.atomic_write(path, full)
    assert isinstance(info.value, StorageError)
    assert "No space left on device (the previous file is intact)" in str(info.value)
    assert path.read_text() == "old" and temp_files(tmp_path) == []
