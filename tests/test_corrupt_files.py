"""Damaged files: every single-bit flip of a weights file or a training state either is a CheckpointError naming
the file or leaves the content as it was (never other numbers); every truncation is a CheckpointError; the
checksum can be skipped."""

import json
import random
from pathlib import Path

import pytest
import torch

from seglab.checkpoint import (
    content_sha256,
    load_state_dict,
    load_training_state,
    read_metadata,
    save_training_state,
    save_weights,
)
from seglab.errors import CheckpointError


def _weights(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    tensors = {"conv.weight": torch.randn(4, 3, 3, 3), "bn.running_mean": torch.randn(4),
               "bn.num_batches_tracked": torch.tensor(7), "head.weight": torch.randn(2, 4).to(torch.bfloat16)}
    path = save_weights(tmp_path / "w.safetensors", tensors, {"model": "unet", "num_classes": 2, "iteration": 8})
    return path, tensors


def _state(tmp_path: Path) -> tuple[Path, dict]:
    torch.manual_seed(0)
    state = {
        "model": {"conv.weight": torch.randn(4, 3, 3, 3), "bn.num_batches_tracked": torch.tensor(7)},
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 3, 3, 3)}},
                      "param_groups": [{"lr": 0.01, "betas": (0.9, 0.999), "params": [0], "foreach": None}]},
        "iteration": 12,
        "best_score": 0.25,
        "rng": {"torch": torch.get_rng_state()[:64], "python": (3, tuple(range(8)), None)},
    }
    return save_training_state(tmp_path / "last_state.pt", state), state


def _flips(data: bytes, seed: int, step: int = 1):
    """One flipped bit (seeded) at every ``step``-th byte of ``data``."""
    rng = random.Random(seed)
    for pos in range(0, len(data), step):
        damaged = bytearray(data)
        damaged[pos] ^= 1 << rng.randrange(8)
        yield pos, bytes(damaged)


def test_a_written_file_carries_its_checksum_and_loads(tmp_path):
    path, tensors = _weights(tmp_path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        assert len(json.loads(fh.metadata()["sha256"])) == 64
    assert read_metadata(path) == {"model": "unet", "num_classes": 2, "iteration": 8}  # without the checksum
    loaded = load_state_dict(path)
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    state_path, state = _state(tmp_path)
    assert content_sha256(load_training_state(state_path)) == content_sha256(state)


def test_content_checksum_sees_values_types_and_order_free_keys():
    a = {"x": torch.tensor([1.0, 2.0]), "y": [1, (2, 3)], "z": 0.1}
    assert content_sha256(a) == content_sha256({"z": 0.1, "y": [1, (2, 3)], "x": torch.tensor([1.0, 2.0])})
    for other in ({**a, "x": torch.tensor([1.0, 2.5])}, {**a, "x": torch.tensor([1, 2])}, {**a, "y": [1, [2, 3]]},
                  {**a, "z": 0.1000001}, {**a, "x": torch.tensor([[1.0, 2.0]])}):
        assert content_sha256(other) != content_sha256(a)


def test_every_bit_flip_of_a_weights_file_is_caught_or_harmless(tmp_path):
    path, tensors = _weights(tmp_path)
    good, original_meta = path.read_bytes(), read_metadata(path)
    caught = harmless = 0
    for pos, damaged in _flips(good, seed=0):
        path.write_bytes(damaged)
        try:
            loaded, meta = load_state_dict(path), read_metadata(path)
        except CheckpointError as exc:
            assert str(path) in str(exc)
            caught += 1
            continue
        same = loaded.keys() == tensors.keys() and all(
            loaded[k].dtype == tensors[k].dtype and torch.equal(loaded[k], tensors[k]) for k in tensors)
        assert same and meta == original_meta, f"a flipped bit at byte {pos} loaded as other content"
        harmless += 1
    print(f"weights file: {caught} of {len(good)} flips caught, {harmless} harmless")
    assert caught == len(good), (caught, harmless, len(good))  # measured: every one


def test_every_truncation_of_a_weights_file_is_a_checkpoint_error(tmp_path):
    path, _ = _weights(tmp_path)
    good = path.read_bytes()
    for length in range(0, len(good), 7):
        path.write_bytes(good[:length])
        with pytest.raises(CheckpointError, match="w.safetensors"):
            load_state_dict(path)


def test_every_bit_flip_of_a_training_state_is_caught_or_harmless(tmp_path):
    """torch.load itself takes most flips of a .pt silently (other numbers); the stored checksum catches them.
    Flips that torch.load ignores (most of the file is the zip's alignment padding and bookkeeping) leave the
    content as it was."""
    path, state = _state(tmp_path)
    good, reference = path.read_bytes(), content_sha256(state)
    caught = harmless = 0
    for pos, damaged in _flips(good, seed=1, step=3):
        path.write_bytes(damaged)
        try:
            loaded = load_training_state(path)
        except CheckpointError as exc:
            assert str(path) in str(exc)
            caught += 1
            continue
        assert content_sha256(loaded) == reference, f"a flipped bit at byte {pos} loaded as other content"
        harmless += 1
    print(f"training state: {caught} of {caught + harmless} flips caught, {harmless} harmless")
    assert caught > 0.2 * (caught + harmless), (caught, harmless)


def test_every_truncation_of_a_training_state_is_a_checkpoint_error(tmp_path):
    path, _ = _state(tmp_path)
    good = path.read_bytes()
    for length in range(0, len(good), 17):
        path.write_bytes(good[:length])
        with pytest.raises(CheckpointError, match="last_state.pt"):
            load_training_state(path)


def test_a_damaged_data_byte_is_named_and_verify_false_skips_the_check(tmp_path):
    path, tensors = _weights(tmp_path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # inside head.weight's data: safetensors alone reads it as another number
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"w\.safetensors: damaged: its content does not match the SHA-256"):
        load_state_dict(path)
    loaded = load_state_dict(path, verify=False)
    assert not torch.equal(loaded["head.weight"], tensors["head.weight"])


def test_a_damaged_checksum_key_is_not_taken_for_a_file_without_one(tmp_path):
    path, _ = _weights(tmp_path)
    path.write_bytes(path.read_bytes().replace(b'"sha256"', b'"sha257"', 1))
    with pytest.raises(CheckpointError, match="checksum is stored under 'sha257'"):
        load_state_dict(path)


def test_files_without_a_checksum_load_unchecked(tmp_path):
    from safetensors.torch import save_file

    tensors = {"w": torch.randn(3)}
    save_file(tensors, str(tmp_path / "foreign.safetensors"), metadata={"format": "pt"})
    assert torch.equal(load_state_dict(tmp_path / "foreign.safetensors")["w"], tensors["w"])
    torch.save({"iteration": 3}, tmp_path / "old_state.pt")
    assert load_training_state(tmp_path / "old_state.pt") == {"iteration": 3}


def test_a_file_replaced_while_it_is_read_loads_as_one_save_or_the_other(tmp_path):
    """A reader (a server, an evaluation) loading last.safetensors while a run replaces it gets one complete save:
    tensors and the checksum in the metadata are read through one open, never from two different saves."""
    import threading

    path = tmp_path / "last.safetensors"
    saves = [{"w": torch.full((64, 64), float(i))} for i in range(2)]
    save_weights(path, saves[0], {"iteration": 0})
    stop, seen = threading.Event(), set()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            save_weights(path, saves[i % 2], {"iteration": i % 2})

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for _ in range(400):
            state = load_state_dict(path)  # raises CheckpointError on a mixed read
            seen.add(float(state["w"][0, 0]))
    finally:
        stop.set()
        thread.join()
    assert seen == {0.0, 1.0}, seen  # the file really was replaced under the reads
