import os
import pickle

import pytest
import torch
from torch import nn

from seglab.checkpoint import (
    load_state_dict,
    load_training_state,
    load_weights,
    read_metadata,
    save_training_state,
    save_weights,
)
from seglab.errors import CheckpointError


def test_safetensors_roundtrip_with_metadata(tmp_path):
    model = nn.Conv2d(3, 4, 3)
    path = save_weights(tmp_path / "w.safetensors", model.state_dict(), {"model": "x", "num_classes": 4})
    other = nn.Conv2d(3, 4, 3)
    meta = load_weights(other, path)
    assert meta == {"model": "x", "num_classes": 4}
    assert torch.equal(other.weight, model.weight)
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


def test_pth_loads_with_weights_only(tmp_path):
    model = nn.Linear(2, 3)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pth")
    sd = load_state_dict(tmp_path / "w.pth")
    assert torch.equal(sd["weight"], model.weight)
    assert read_metadata(tmp_path / "w.pth") == {}


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    with open(tmp_path / "evil.pth", "wb") as fh:
        pickle.dump({"weight": evil}, fh)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


def test_shape_mismatch_lists_keys(tmp_path):
    path = save_weights(tmp_path / "w.safetensors", nn.Conv2d(3, 4, 3).state_dict())
    with pytest.raises(CheckpointError) as err:
        load_weights(nn.Conv2d(3, 5, 3), path)
    assert "weight" in str(err.value) and "(4, 3, 3, 3)" in str(err.value) and "w.safetensors" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict(tmp_path / "nope.safetensors")


def test_training_state_roundtrip(tmp_path):
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "iteration": 3, "rng": torch.get_rng_state()}
    save_training_state(tmp_path / "s.pt", state)
    state = load_training_state(tmp_path / "s.pt")
    assert state["iteration"] == 3
    assert torch.equal(state["rng"], torch.get_rng_state())
    momentum = state["optimizer"]["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, opt.state_dict()["state"][0]["momentum_buffer"])
