"""Data-parallel training: 2 processes (torchrun, gloo, CPU) and 1 process with the same global batch
reach the same weights, the distributed evaluation equals the single-process one exactly, and the
sampler shows every sample once per epoch across the ranks."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from seglab.checkpoint import load_into, load_state_dict
from seglab.config import config_from_dict
from seglab.engine.trainer import Trainer, _EpochSampler
from seglab.errors import ConfigError


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory):
    """Demo data with the 255 bands relabelled as background in the training labels: the per-rank mean
    losses then weigh every pixel alike, and their average equals the full batch's mean (with ignored
    pixels it would not: each rank divides by its own count of valid pixels)."""
    from seglab.data.datasets.demo import generate_demo_data

    root = generate_demo_data(tmp_path_factory.mktemp("demo"), seed=0, num_train=8, num_val=5, size=64)
    for path in root.rglob("SegmentationClass/*.png"):
        label = Image.open(path)
        values = np.array(label)
        values[values == 255] = 0
        out = Image.fromarray(values, mode="P")
        out.putpalette(label.getpalette())
        out.save(path)
    return root


def config_dict(root: Path, out: Path, name: str) -> dict:
    return {
        "name": name,
        "output_dir": str(out),
        "model": {"name": "unet", "num_classes": 5, "kwargs": {"base_width": 4, "batch_norm": False}},
        "data": {"dataset": "demo", "root": str(root), "palette": "demo_shapes", "crop_size": [64, 64],
                 "scale_range": [1.0, 1.0], "batch_size": 4, "workers": 0},
        "optim": {"name": "sgd", "lr": 0.05},
        "schedule": {"name": "poly", "warmup_iters": 0},
        "train": {"iters": 4, "eval_interval": 0, "checkpoint_interval": 4, "log_interval": 1, "seed": 0,
                  "device": "cpu"},
        "eval": {"batch_size": 2},
    }


def torchrun_train(cfg_path: Path, timeout: float) -> None:
    """``torchrun --standalone --nproc_per_node=2 -m seglab train CFG`` (gloo, one thread per process); on a
    timeout torchrun and its workers are killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "seglab", "train", str(cfg_path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, output.decode()[-4000:]


def test_sampler_shards_each_global_batch():
    n, batch, seed = 11, 4, 3
    single = _EpochSampler(n, seed, epoch=2).order
    shards = [_EpochSampler(n, seed, epoch=2, batch_size=batch, rank=r, world_size=2).order for r in range(2)]
    assert [len(s) for s in shards] == [4, 4]  # 2 complete global batches of 4, 2 per rank each
    for step in range(2):  # rank r reads the r-th contiguous half of each global batch
        global_batch = single[step * batch:(step + 1) * batch]
        assert shards[0][step * 2:step * 2 + 2] + shards[1][step * 2:step * 2 + 2] == global_batch
    seen = shards[0] + shards[1]
    assert len(set(seen)) == len(seen) == 8 and set(seen) == set(single[:8])  # once each; the 3 left over dropped
    for epoch in range(3):  # with n divisible by the batch every sample is seen exactly once per epoch
        seen = sum((_EpochSampler(12, seed, epoch, batch_size=batch, rank=r, world_size=2).order for r in range(2)), [])
        assert sorted(seen) == list(range(12))
    resumed = _EpochSampler(n, seed, epoch=2, start=batch, batch_size=batch, rank=1, world_size=2).order
    assert resumed == shards[1][2:]  # resuming at step 1 continues each rank's shard
    with pytest.raises(ConfigError, match="not divisible"):
        _EpochSampler(n, seed, 0, batch_size=3, rank=0, world_size=2)


def test_two_processes_equal_one_process(clean_root, tmp_path):
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(config_dict(clean_root, tmp_path, "ddp")))
    torchrun_train(cfg_path, timeout=180)

    single = Trainer(config_from_dict(config_dict(clean_root, tmp_path, "single")))
    start = {k: v.clone() for k, v in single.model.state_dict().items()}
    single.fit()
    ddp_run, single_run = tmp_path / "ddp", tmp_path / "single"

    # the same weights after 4 steps (gradients averaged over 2 shards of 2 = the mean over the batch of 4)
    a = load_state_dict(ddp_run / "checkpoints/last.safetensors")
    b = load_state_dict(single_run / "checkpoints/last.safetensors")
    assert a.keys() == b.keys()
    assert max((b[k] - start[k]).abs().max().item() for k in b) > 1e-3  # training moved the weights
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)

    # rank 0 alone wrote the run folder; the logged loss is the mean over the ranks
    records = [json.loads(line) for line in (ddp_run / "metrics.jsonl").read_text().splitlines()]
    ddp_losses = [r["loss"] for r in records if "loss" in r and "split" not in r]
    single_losses = [r["loss"] for r in single.history if "loss" in r and "split" not in r]
    assert len(ddp_losses) == 4 and ddp_losses == pytest.approx(single_losses, rel=1e-5)
    assert sorted(p.name for p in ddp_run.iterdir()) == sorted(p.name for p in single_run.iterdir())

    # the distributed evaluation (each rank its shard of the 5 val images, matrices summed) equals one
    # process evaluating the same weights: the confusion matrix is identical
    ddp_metrics = json.loads((ddp_run / "final_metrics.json").read_text())
    load_into(single.model, a, "ddp weights")
    reference = single.evaluate()
    assert np.array_equal(np.array(ddp_metrics["confusion"]), reference.confusion)
    assert reference.confusion.sum() > 0.9 * 5 * 64 * 64  # all 5 val images counted once (less the 255 band)
    assert ddp_metrics["mIoU"] == reference.mIoU


def test_distributed_config_errors(clean_root, tmp_path, monkeypatch):
    """Checked before any process group is needed: the global batch must divide over the processes, and
    SyncBatchNorm (CUDA only in this torch) is refused on the CPU."""
    from seglab.engine import distributed

    monkeypatch.setattr(distributed, "init_from_env", lambda device, timeout_s: (distributed.DistInfo(0, 2, 0), device))
    uneven = config_dict(clean_root, tmp_path, "uneven")
    uneven["data"]["batch_size"] = 3
    with pytest.raises(ConfigError, match=r"data.batch_size=3 \(the global batch\) is not divisible by the 2"):
        Trainer(config_from_dict(uneven))
    sync = config_dict(clean_root, tmp_path, "sync")
    sync["train"]["sync_bn"] = True
    with pytest.raises(ConfigError, match="train.sync_bn: SyncBatchNorm runs on CUDA only"):
        Trainer(config_from_dict(sync))


def test_sync_batchnorm_needs_cuda_in_this_torch(tmp_path):
    """What the ConfigError above guards against: with a process group up, SyncBatchNorm's training
    forward refuses CPU tensors."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        layer = torch.nn.SyncBatchNorm(2).train()
        with pytest.raises(ValueError, match="expected input tensor to be on GPU"):
            layer(torch.randn(2, 2, 4, 4))
    finally:
        dist.destroy_process_group()


def test_two_process_instance_training_gathers_coco_results(tmp_path):
    """An instance model under torchrun: DDP over torchvision's Mask R-CNN trains, each rank evaluates its shard,
    and the gathered COCO results give the AP one process computes for the same weights."""
    from seglab.data.datasets.demo import generate_demo_data

    root = generate_demo_data(tmp_path / "demo", num_train=4, num_val=3, size=96)
    kwargs = {"min_size": 96, "max_size": 96, "frozen_bn": False, "rpn_pre_nms_top_n_train": 200,
              "rpn_post_nms_top_n_train": 100, "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50,
              "box_batch_size_per_image": 32, "box_score_thresh": 0.0, "box_detections_per_img": 10}
    cfg = {
        "name": "ddp_instance", "output_dir": str(tmp_path),
        "model": {"name": "mask_rcnn_mobilenet_v3_fpn", "num_classes": 5, "kwargs": kwargs},
        "data": {"dataset": "demo", "root": str(root), "palette": "demo_shapes", "batch_size": 2, "workers": 0},
        "optim": {"name": "adamw", "lr": 0.0005},
        "train": {"iters": 2, "eval_interval": 0, "checkpoint_interval": 2, "log_interval": 1, "seed": 0,
                  "device": "cpu"},
    }
    cfg_path = tmp_path / "instance.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    torchrun_train(cfg_path, timeout=240)
    run = tmp_path / "ddp_instance"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "loss_mask" in r] == [1, 2]
    ddp_metrics = json.loads((run / "final_metrics.json").read_text())

    single = Trainer(config_from_dict({**cfg, "name": "single_instance"}))
    load_into(single.model, load_state_dict(run / "checkpoints/last.safetensors"), "ddp weights")
    reference = single.evaluate().to_dict()
    assert ddp_metrics == pytest.approx(reference, abs=1e-12)
    segm = json.loads((run / "coco_results" / "segm_results.json").read_text())
    assert {r["image_id"] for r in segm} == {1, 2, 3}  # every val image's detections, from both ranks
