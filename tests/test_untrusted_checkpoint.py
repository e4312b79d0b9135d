"""Untrusted files run no code: a checkpoint whose unpickling would run a command is refused by every
seglab entry point that reads weights or training state, with a CheckpointError (or exit code 2), and the
command does not run. Damaged files are refused the same way."""

import pickle
import struct

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from seglab.checkpoint import (
    load_state_dict,
    load_training_state,
    load_weights,
    read_metadata,
    remove_stale_temp_files,
    save_weights,
)
from seglab.cli import main as cli_main
from seglab.convert.torchvision import convert_torchvision
from seglab.errors import CheckpointError
from tests.payloads import RunsPython, RunsShell


def _write(path, obj, how):
    if how == "torch.save":
        torch.save(obj, path)
    else:  # a legacy (non-zip) pickle, protocol 2 as torch's legacy format uses
        with open(path, "wb") as fh:
            pickle.dump(obj, fh, protocol=2)
    return path


EVIL_KINDS = [
    ("torch.save", RunsShell, "weights.pth"),
    ("pickle", RunsShell, "weights.pt"),
    ("torch.save", RunsPython, "weights.bin"),
    ("pickle", RunsPython, "weights.pth"),
]


def _evil_weights(tmp_path, how, payload, name):
    """A checkpoint that looks like a torchvision state dict, with one value that runs code when unpickled."""
    marker = tmp_path / f"pwned_{how}_{payload.__name__}"
    good = nn.Conv2d(3, 4, 1).state_dict()
    obj = {"state_dict": {**good, "bias": payload(marker)}}
    return _write(tmp_path / name, obj, how), marker


@pytest.mark.parametrize("how,payload,name", EVIL_KINDS)
def test_payload_is_real(tmp_path, how, payload, name):
    """Plain unpickling of these files does run the payload: the refusals below are not vacuous."""
    path, marker = _evil_weights(tmp_path, how, payload, name)
    if how == "torch.save":
        torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as fh:
            pickle.load(fh)
    assert marker.exists()


@pytest.mark.parametrize("how,payload,name", EVIL_KINDS)
def test_library_readers_refuse_and_run_nothing(tmp_path, how, payload, name):
    path, marker = _evil_weights(tmp_path, how, payload, name)
    with pytest.raises(CheckpointError, match=f"{name}: refused to load weights") as err:
        load_state_dict(path)
    assert "never runs code" in str(err.value)
    assert "weights_only=False" not in str(err.value)  # torch's advice to retry unsafely is not passed on
    with pytest.raises(CheckpointError, match=name):
        load_weights(nn.Conv2d(3, 4, 1), path)
    with pytest.raises(CheckpointError, match=f"{name}: refused to load training state"):
        load_training_state(path)
    with pytest.raises(CheckpointError, match=name):
        convert_torchvision("lraspp_mobilenet_v3_large", path, tmp_path / "out.safetensors")
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_refusal_names_the_blocked_call(tmp_path):
    path, marker = _evil_weights(tmp_path, "torch.save", RunsShell, "w.pth")
    with pytest.raises(CheckpointError, match="system") as err:
        load_state_dict(path)
    assert "UnpicklingError" in str(err.value)
    assert not marker.exists()


def test_cli_convert_and_predict_refuse(tmp_path, capsys):
    path, marker = _evil_weights(tmp_path, "torch.save", RunsShell, "evil.pth")
    out = tmp_path / "converted.safetensors"
    assert cli_main(["convert", "torchvision", "lraspp_mobilenet_v3_large", str(path), str(out)]) == 2
    assert "evil.pth" in capsys.readouterr().err
    assert not out.exists()

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "img.png")
    pred = tmp_path / "pred"
    code = cli_main(["predict", str(tmp_path / "img.png"), "--weights", str(path), "--model", "unet",
                     "--num-classes", "3", "--out", str(pred)])
    assert code == 2
    err = capsys.readouterr().err
    assert "seglab predict: error:" in err and "evil.pth" in err and "refused" in err
    assert not pred.exists() or not any(pred.iterdir())
    assert not marker.exists()


def test_resume_from_malicious_training_state_refuses(demo_root, tmp_path, capsys):
    marker = tmp_path / "pwned_resume"
    config = {
        "name": "evil", "output_dir": str(tmp_path),
        "model": {"name": "unet", "num_classes": 5, "kwargs": {"base_width": 4}},
        "data": {"dataset": "demo", "root": str(demo_root), "palette": "demo_shapes", "crop_size": [48, 48],
                 "batch_size": 2, "workers": 0},
        "train": {"iters": 2, "device": "cpu"},
    }
    (tmp_path / "evil.yaml").write_text(yaml.safe_dump(config))
    ckpt = tmp_path / "evil" / "checkpoints"
    ckpt.mkdir(parents=True)
    _write(ckpt / "last_state.pt", {"iteration": 1, "optimizer": RunsPython(marker)}, "torch.save")
    assert cli_main(["train", str(tmp_path / "evil.yaml"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "last_state.pt: refused to load training state" in err
    assert not marker.exists()


def _corrupt_safetensors(tmp_path):
    good = save_weights(tmp_path / "good.safetensors", {"w": torch.arange(64.0).view(8, 8)}, {"model": "x"})
    data = good.read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    files = {
        "empty": b"",
        "truncated": data[: len(data) - 40],  # the last tensor bytes missing
        "random": np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes(),
        "huge_header": struct.pack("<Q", 2**60) + data[8:],
        "bad_json": data[:8] + b"{" * header_len + data[8 + header_len:],
        "bad_offsets": data[:8] + data[8:8 + header_len].replace(b"[0,256]", b"[0,999]") + data[8 + header_len:],
    }
    assert b"[0,256]" in data[8:8 + header_len]  # the offsets the bad_offsets case corrupts
    paths = {}
    for kind, content in files.items():
        paths[kind] = tmp_path / f"{kind}.safetensors"
        paths[kind].write_bytes(content)
    return good, paths


def test_corrupt_safetensors_is_a_checkpoint_error(tmp_path):
    good, paths = _corrupt_safetensors(tmp_path)
    assert torch.equal(load_state_dict(good)["w"], torch.arange(64.0).view(8, 8))
    for kind, path in paths.items():
        with pytest.raises(CheckpointError, match=f"{kind}.safetensors: not a readable safetensors file"):
            load_state_dict(path)
        with pytest.raises(CheckpointError, match=f"{kind}.safetensors"):
            load_weights(nn.Linear(8, 8, bias=False), path)
    for kind in ("empty", "random", "huge_header", "bad_json"):  # the header itself is damaged
        with pytest.raises(CheckpointError, match=f"{kind}.safetensors"):
            read_metadata(paths[kind])


def test_damaged_pth_is_a_checkpoint_error(tmp_path):
    torch.save({"w": torch.ones(32, 32)}, tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    save_file({"w": torch.ones(2)}, str(tmp_path / "safetensors_named.pth"))  # wrong suffix for its format
    for name in ("truncated.pt", "empty.pt", "text.pth", "safetensors_named.pth"):
        with pytest.raises(CheckpointError, match=f"{name}: refused to load weights"):
            load_state_dict(tmp_path / name)
        with pytest.raises(CheckpointError, match=f"{name}: refused to load training state"):
            load_training_state(tmp_path / name)
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a training state mapping, got list"):
        load_training_state(tmp_path / "list.pt")


def test_remove_stale_temp_files(tmp_path):
    (tmp_path / "last.safetensors").write_bytes(b"keep")
    (tmp_path / ".last.safetensors.ab12cd.tmp").write_bytes(b"half")
    (tmp_path / ".last_state.pt.x9y8z7.tmp").write_bytes(b"")
    (tmp_path / "notes.tmp").write_bytes(b"not ours: no leading dot")
    removed = remove_stale_temp_files(tmp_path)
    assert [p.name for p in removed] == [".last.safetensors.ab12cd.tmp", ".last_state.pt.x9y8z7.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors", "notes.tmp"]
    assert remove_stale_temp_files(tmp_path / "missing") == []
