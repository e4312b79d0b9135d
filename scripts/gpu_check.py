"""GPU check (issue 20, item 6): one prepared run of seglab on a CUDA machine, about five minutes on an H200.

Sections, each caught on its own (an error is recorded and the next section runs): 1. the environment;
2. ``DEMO_CONFIG`` (U-Net width 16, demo shapes) trained by seglab's Trainer in fp32, bf16 and fp16 (GradScaler);
3. ``Trainer.train_step`` in bf16: eager, ``train.channels_last``, and with ``train_model`` under ``torch.compile``
(the Trainer has no compile option); 4. ``torchrun --nproc_per_node=1 -m seglab train`` (WORLD_SIZE=1: seglab trains
without a process group), and a torchrun worker that joins an nccl group of one (gloo on the CPU), all-reduces and
takes DistributedDataParallel steps; 5. inference latency, output agreement and peak memory against torchvision
with the same weights (benchmarks.inference's pairs: torchvision's seeded random weights loaded into seglab's model
by seglab.convert.torchvision; Mask R-CNN as its published weights build it, score threshold 0) in fp16 and bf16
autocast, and seglab's Predictor end to end.

Writes gpu_check.json (after every section, so a run cut short keeps what it measured) and gpu_check.md (the page
for docs/benchmarks_gpu.md) to --out. From the repository root, with --dry-run for the same code on the CPU with tiny
settings (the test suite runs it):

    PYTHONPATH=. python3 scripts/gpu_check.py --out OUT

It needs seglab's own dependencies, pycocotools included (the demo data generator writes COCO annotations too): where
the GPU machine lacks a package, carry its wheel (the device tool's notes say how).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seglab.demos.semantic import DEMO_CONFIG

REPO = Path(__file__).resolve().parents[1]
COMMAND = "PYTHONPATH=. python3 scripts/gpu_check.py --out OUT"
SEMANTIC = ("fcn_resnet50", "deeplabv3_resnet50", "lraspp_mobilenet_v3_large")
DETECTION = "maskrcnn_resnet50_fpn"
Result = dict[str, Any]


@dataclass(frozen=True)
class Settings:
    device: str
    demo_overrides: tuple[str, ...]  # on top of DEMO_CONFIG, for every training run
    small_data: bool  # a 20-image 64x64 demo set instead of the demo's own 400 images at 256x256
    step_size: int  # training steps: batch of random images and labels
    step_batch: int
    compile_backend: str
    dist_iters: int  # the torchrun training run
    infer_size: int
    batches: tuple[int, ...]
    maskrcnn_size: int  # Mask R-CNN's internal resize (800: torchvision's default for a 512x512 image)
    max_detections: int  # 0: torchvision's (100 detections from 1000 proposals)
    reps: int
    warmup: int
    timeout_s: int  # per torchrun subprocess


GPU = Settings(device="cuda", demo_overrides=("data.workers=6",), small_data=False, step_size=256, step_batch=8,
               compile_backend="inductor", dist_iters=100, infer_size=512, batches=(1, 8), maskrcnn_size=800,
               max_detections=0, reps=20, warmup=5, timeout_s=240)
DRY = Settings(device="cpu", demo_overrides=(
    "data.workers=0", "data.crop_size=[64,64]", "data.batch_size=4", "train.iters=3", "train.log_interval=1",
    "train.eval_interval=0", "train.checkpoint_interval=3", "schedule.warmup_iters=1", "eval.batch_size=4",
), small_data=True, step_size=64, step_batch=2, compile_backend="aot_eager", dist_iters=2, infer_size=64,
    batches=(1, 2), maskrcnn_size=64, max_detections=5, reps=1, warmup=0, timeout_s=120)


# -- helpers ---------------------------------------------------------------------------------------------------------
def attempt(fn: Callable[[], Result], **label: Any) -> Result:
    """``{**label, **fn()}``, or ``{**label, "error": ...}`` when ``fn`` raises: one failure stops nothing else."""
    try:
        return {**label, **fn()}
    except Exception as exc:
        tail = "".join(traceback.format_exception(exc)[-3:]).strip()[-1500:]
        return {**label, "error": f"{type(exc).__name__}: {str(exc)[:500]}\n{tail}"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def autocast(device: torch.device, precision: str):
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32")


def needs_cuda(device: torch.device, precision: str) -> bool:
    return precision == "fp16" and device.type != "cuda"


def median_ms(fn: Callable[[], Any], device: torch.device, reps: int, warmup: int) -> float:
    """Median milliseconds of ``fn()``, synchronised, after ``warmup`` calls."""
    times = []
    for i in range(warmup + reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


# -- demo data -------------------------------------------------------------------------------------------------------
def demo_data(s: Settings, work: Path) -> Path:
    from seglab.data.datasets.demo import ensure_demo_data, generate_demo_data

    if s.small_data:
        return generate_demo_data(work / "demo_shapes", num_train=16, num_val=4, size=64)
    return ensure_demo_data(work / "demo_shapes")


def train_config(s: Settings, root: Path, work: Path, name: str, extra: list[str]):
    from seglab.config import apply_overrides, config_from_dict

    data = copy.deepcopy(DEMO_CONFIG)
    apply_overrides(data, [f"name={name}", f"output_dir={work / 'runs'}", f"data.root={root}",
                           f"train.device={s.device}", *s.demo_overrides, *extra], "scripts/gpu_check.py")
    return config_from_dict(data, "scripts/gpu_check.py")


# -- sections --------------------------------------------------------------------------------------------------------
def environment(s: Settings, commit: str | None) -> Result:
    import torchvision

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        commit = head.stdout.strip() if head.returncode == 0 else commit
    except OSError:
        pass
    cuda = torch.cuda.is_available()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": commit or "unknown",
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        "device": s.device, "cuda_available": cuda, "cpu_cores": os.cpu_count(), "platform": platform.platform(),
    }


def demo_run(s: Settings, root: Path, work: Path, precision: str, extra: list[str]) -> Result:
    from seglab.engine.trainer import Trainer

    device = torch.device(s.device)
    if needs_cuda(device, precision):
        return {"skipped": "needs CUDA"}
    cfg = train_config(s, root, work, f"demo_{precision}", [f"train.precision={precision}", *extra])
    reset_peak(device)
    trainer = Trainer(cfg)
    t0 = time.perf_counter()
    metrics = trainer.fit()
    seconds = time.perf_counter() - t0
    rates = [r["it_per_s"] for r in trainer.history if "it_per_s" in r]
    return {"iters": cfg.train.iters, "mIoU": float(metrics.mIoU), "train_s": seconds,
            "it_per_s": rates[-1] if rates else None, "peak_mib": peak_mib(device)}


def demo_training(s: Settings, root: Path, work: Path, iters: int | None) -> Result:
    extra = [f"train.iters={iters}", f"train.checkpoint_interval={iters}"] if iters else []
    precisions = ("fp32", "bf16", "fp16")
    return {"runs": [attempt(lambda p=p: demo_run(s, root, work, p, extra), precision=p) for p in precisions]}


def step_timing(s: Settings, root: Path, work: Path, variant: str) -> Result:
    from seglab.engine.trainer import Trainer

    device = torch.device(s.device)
    extra = ["train.precision=bf16", f"train.channels_last={variant == 'channels_last'}"]
    trainer = Trainer(train_config(s, root, work, f"steps_{variant}", extra))
    if variant == "compiled":
        trainer.train_model = torch.compile(trainer.model, backend=s.compile_backend)
    g = torch.Generator().manual_seed(0)
    shape = (s.step_batch, s.step_size, s.step_size)
    batch = (torch.randn(shape[0], 3, *shape[1:], generator=g), torch.randint(0, 5, shape, generator=g))
    reset_peak(device)
    t0 = time.perf_counter()
    loss = trainer.train_step([batch])["loss"]  # compiles, for the compiled variant
    first_s = time.perf_counter() - t0
    step_ms = median_ms(lambda: trainer.train_step([batch]), device, s.reps, s.warmup)
    return {"first_step_s": first_s, "step_ms": step_ms, "first_loss": loss, "peak_mib": peak_mib(device)}


def train_steps(s: Settings, root: Path, work: Path) -> Result:
    variants = ("eager", "channels_last", "compiled")
    return {"model": "unet base_width 16", "precision": "bf16", "batch": s.step_batch, "size": s.step_size,
            "compile_backend": s.compile_backend,
            "rows": [attempt(lambda v=v: step_timing(s, root, work, v), variant=v) for v in variants]}


def torchrun(args: list[str], timeout: int) -> float:
    """Run ``torchrun --standalone --nproc_per_node=1 ARGS`` from the repository root; returns its seconds.

    After ``timeout`` seconds torchrun is told to stop its worker (one left behind would hold the GPU through the
    sections that follow)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", *args]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # torchrun stops its workers (their own sessions) on SIGTERM
        try:
            output = proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output = ""
        raise RuntimeError(f"torchrun {' '.join(args)}: stopped after {timeout} s\n{output[-2000:]}") from None
    if proc.returncode:
        raise RuntimeError(f"torchrun {' '.join(args)}: exit {proc.returncode}\n{output[-2000:]}")
    return time.perf_counter() - t0


def torchrun_train(s: Settings, root: Path, work: Path) -> Result:
    from seglab.config import save_config

    it = s.dist_iters
    cfg = train_config(s, root, work, "torchrun", [f"train.iters={it}", f"train.checkpoint_interval={it}",
                                                   "train.eval_interval=0"])
    save_config(cfg, work / "torchrun.yaml")
    seconds = torchrun(["-m", "seglab", "train", str(work / "torchrun.yaml")], s.timeout_s)
    metrics = json.loads((cfg.run_dir / "final_metrics.json").read_text())
    return {"iters": it, "mIoU": metrics["mIoU"], "seconds": seconds,
            "note": "WORLD_SIZE=1: seglab's trainer runs without a process group"}


def process_group(s: Settings, work: Path) -> Result:
    out = work / "process_group.json"
    seconds = torchrun([__file__, "--ddp-worker", str(out), *(["--dry-run"] if s is DRY else [])], s.timeout_s)
    return {**json.loads(out.read_text()), "seconds": seconds}


def ddp_worker(s: Settings, out: Path) -> None:
    """Under torchrun: join the process group (nccl on CUDA, gloo on the CPU), all-reduce, take DDP steps of the
    demo U-Net with seglab's loss; the result goes to ``out`` as JSON."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from seglab.losses import SegmentationLoss
    from seglab.models import create_model

    cuda = s.device == "cuda"
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        value = torch.full((4,), 2.0, device=device)
        dist.all_reduce(value)
        torch.manual_seed(0)
        net = create_model("unet", num_classes=5, base_width=16).to(device)
        model = DistributedDataParallel(net, device_ids=[device.index] if cuda else None)
        optimizer, criterion = torch.optim.AdamW(model.parameters(), lr=1e-3), SegmentationLoss().to(device)
        x = torch.randn(s.step_batch, 3, s.step_size, s.step_size, device=device)
        y = torch.randint(0, 5, (s.step_batch, s.step_size, s.step_size), device=device)
        losses = []
        for _ in range(5):
            optimizer.zero_grad(set_to_none=True)
            loss, _ = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        dist.barrier()
        result = {"backend": str(dist.get_backend()), "world_size": dist.get_world_size(),
                  "all_reduce_ok": bool((value == 2.0).all()), "ddp_losses": losses}
    finally:
        dist.destroy_process_group()
    out.write_text(json.dumps(result))


def distributed(s: Settings, root: Path, work: Path) -> Result:
    return {"runs": [attempt(lambda: torchrun_train(s, root, work), run="seglab train"),
                     attempt(lambda: process_group(s, work), run="process group + DDP")]}


def agreement(ours: Callable, ref: Callable, x: torch.Tensor, precision: str, detection: bool) -> Result:
    """Semantic: argmax agreement and max |logit difference|; Mask R-CNN: for torchvision's top-10 detections of
    the first image, the IoU of the best-matching seglab box (the minimum) and how often its label agrees."""
    from torchvision.ops import box_iou

    with torch.inference_mode(), autocast(x.device, precision):
        a, b = ours(x), ref(x)
    if not detection:
        a, b = a.float(), b.float()
        return {"agreement": float((a.argmax(1) == b.argmax(1)).float().mean()),
                "max_abs_diff": float((a - b).abs().max()), "finite": bool(a.isfinite().all())}
    a, b = a[0], b[0]
    if len(a["boxes"]) == 0 or len(b["boxes"]) == 0:
        raise RuntimeError(f"no detections to compare (seglab {len(a['boxes'])}, torchvision {len(b['boxes'])})")
    best, index = box_iou(b["boxes"][:10].float(), a["boxes"].float()).max(dim=1)
    return {"agreement": float(best.min()), "labels": float((a["labels"][index] == b["labels"][:10]).float().mean())}


def model_pair(name: str, s: Settings) -> tuple[Callable, Callable, torch.nn.Module]:
    """seglab's and torchvision's forward for ``name`` (same weights), on the device, and seglab's module."""
    from benchmarks.inference import _mask_rcnn_pair, _torchvision_pair

    ours, ref, run_ours, run_ref = _mask_rcnn_pair(s.maskrcnn_size) if name == DETECTION else _torchvision_pair(name)
    for model in (ours, ref):
        model.to(s.device).eval()
        if name == DETECTION and s.max_detections:  # dry run: keep the CPU's box and mask heads small
            model.roi_heads.detections_per_img = s.max_detections
            model.rpn._post_nms_top_n = {"training": 2000, "testing": 10 * s.max_detections}
    return run_ours, run_ref, ours


def compare_model(name: str, s: Settings) -> Result:
    device, detection = torch.device(s.device), name == DETECTION
    run_ours, run_ref, _ = model_pair(name, s)
    g = torch.Generator().manual_seed(0)
    inputs = {b: (torch.rand if detection else torch.randn)(b, 3, s.infer_size, s.infer_size, generator=g).to(device)
              for b in s.batches}
    agree = [{"precision": "fp32", **agreement(run_ours, run_ref, inputs[s.batches[0]], "fp32", detection)}]
    timings = []
    for precision in ("fp16", "bf16"):
        if needs_cuda(device, precision):
            agree.append({"precision": precision, "skipped": "needs CUDA"})
            continue
        agree.append({"precision": precision, **agreement(run_ours, run_ref, inputs[s.batches[0]], precision,
                                                          detection)})
        for batch, x in inputs.items():
            row: Result = {"model": name, "precision": precision, "batch": batch}
            for side, fn in (("seglab", run_ours), ("torchvision", run_ref)):
                reset_peak(device)
                with torch.inference_mode(), autocast(device, precision):
                    row[f"{side}_ms"] = median_ms(lambda fn=fn, x=x: fn(x), device, s.reps, s.warmup)
                row[f"{side}_peak_mib"] = peak_mib(device)
            timings.append({**row, "ratio": row["seglab_ms"] / row["torchvision_ms"]})
    return {"agreement": [{"model": name, **row} for row in agree], "latency": timings}


def predictor_latency(s: Settings, precision: str) -> Result:
    from seglab.engine.inference import Predictor

    device = torch.device(s.device)
    predictor = Predictor(model_pair("fcn_resnet50", s)[2], device=device, precision=precision)
    image = np.random.default_rng(0).integers(0, 256, (s.infer_size, s.infer_size, 3), dtype=np.uint8)
    reset_peak(device)
    ms = median_ms(lambda: predictor(image), device, s.reps, s.warmup)
    return {"model": "fcn_resnet50", "ran_as": predictor.precision, "ms": ms, "peak_mib": peak_mib(device)}


def inference(s: Settings) -> Result:
    result: Result = {
        "inputs": f"{s.infer_size}x{s.infer_size} (Mask R-CNN resizes them to {s.maskrcnn_size}), median of {s.reps} "
                  f"after {s.warmup} warm-up; ratio = seglab / torchvision",
        "agreement_note": "at batch 1; semantic: argmax agreement and max abs logit difference; Mask R-CNN: the "
                          "lowest IoU of torchvision's top-10 boxes with seglab's best match, and the share of "
                          "matching labels",
        "latency": [], "agreement": [],
    }
    for name in (*SEMANTIC, DETECTION):
        compared = attempt(lambda n=name: compare_model(n, s), model=name)
        result["latency"] += compared.get("latency", [])
        result["agreement"] += compared.get("agreement", [compared] if "error" in compared else [])
    result["predictor"] = [attempt(lambda p=p: predictor_latency(s, p), precision=p) for p in ("fp32", "bf16")]
    return result


# -- report ----------------------------------------------------------------------------------------------------------
TITLES = {"environment": "Environment", "demo_data": "Demo data", "demo_training": "Demo training",
          "train_steps": "Training steps (Trainer.train_step, demo U-Net, bf16)",
          "distributed": "One process under torchrun", "inference": "Inference against torchvision, same weights"}


def cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.{4 if abs(value) < 1 else 2}f}"
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, str) and "\n" in value:  # an error: its first line
        value = value.splitlines()[0][:200]
    return "-" if value is None else str(value).replace("|", "/")


def table(rows: list[Result]) -> str:
    """A markdown table of ``rows`` (dicts), one column per key in order of appearance."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return "\n".join(lines + ["| " + " | ".join(cell(row.get(k)) for k in keys) + " |" for row in rows]) + "\n"


def markdown(results: Result) -> str:
    sections = results["sections"]
    env = sections.get("environment", {})
    out = [f"# GPU check\n\n`scripts/gpu_check.py` (issue 20, item 6) on {env.get('gpu') or env.get('device')}, "
           f"{env.get('date')}, commit `{env.get('commit')}`" + (", **dry run on the CPU**" * results["dry_run"])
           + ". Times in ms unless a name says s; memory in MiB (peak allocated by torch, reset per row).\n"]
    for name, data in sections.items():
        out.append(f"\n## {TITLES.get(name, name)}\n\n")
        out += [f"- {key}: {cell(value)}\n" for key, value in data.items() if not isinstance(value, list)]
        out += [f"\n{key}:\n\n{table(value)}" for key, value in data.items() if isinstance(value, list) and value]
    out.append(f"\n## Reproduce\n\nFrom the repository root (seglab need not be installed):\n\n    {COMMAND}\n")
    return "".join(out)


def count_errors(data: Any) -> int:
    if isinstance(data, dict):
        return int("error" in data) + sum(count_errors(v) for v in data.values())
    return sum(count_errors(v) for v in data) if isinstance(data, list) else 0


def summary_line(name: str, data: Result) -> str:
    return f"{name:14s} {count_errors(data):6d} {data.get('seconds', 0.0):8.1f}"


def main(argv: list[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(description="seglab's prepared GPU check (issue 20, item 6).")
    parser.add_argument("--out", type=Path, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--dry-run", action="store_true", help="the same code paths on the CPU, tiny settings")
    parser.add_argument("--commit", help="the commit to record when git cannot tell")
    parser.add_argument("--demo-iters", type=int, help="demo training iterations (default: the demo's own)")
    parser.add_argument("--skip", nargs="+", default=[], choices=["demo_training", "train_steps", "distributed",
                                                                  "inference"], help="sections to leave out")
    parser.add_argument("--ddp-worker", type=Path, help=argparse.SUPPRESS)  # internal: the torchrun worker
    args = parser.parse_args(argv)
    s = DRY if args.dry_run else GPU
    if args.ddp_worker:
        ddp_worker(s, args.ddp_worker)
        return {}
    if args.out is None:
        parser.error("--out is required")
    from seglab.utils import atomic_write_text

    args.out.mkdir(parents=True, exist_ok=True)
    results: Result = {"argv": sys.argv, "dry_run": args.dry_run, "sections": {}}
    tmp = tempfile.TemporaryDirectory(prefix="gpu_check-")  # demo data, run folders, torchrun's files
    work, data = Path(tmp.name), {}

    def section(name: str, fn: Callable[[], Result]) -> None:
        if name in args.skip:
            return
        t0 = time.perf_counter()
        results["sections"][name] = {**attempt(fn), "seconds": time.perf_counter() - t0}
        atomic_write_text(args.out / "gpu_check.json", json.dumps(results, indent=2) + "\n")
        print(summary_line(name, results["sections"][name]), flush=True)

    def demo_root() -> Path:
        if "root" not in data:
            raise RuntimeError("no demo data (see the demo_data section)")
        return data["root"]

    def data_section() -> Result:
        data["root"] = demo_data(s, work)
        return {"images": len(list((data["root"] / "JPEGImages").iterdir()))}

    try:
        section("environment", lambda: environment(s, args.commit))
        section("demo_data", data_section)
        section("demo_training", lambda: demo_training(s, demo_root(), work, args.demo_iters))
        section("train_steps", lambda: train_steps(s, demo_root(), work))
        section("distributed", lambda: distributed(s, demo_root(), work))
        section("inference", lambda: inference(s))
    finally:
        tmp.cleanup()
    atomic_write_text(args.out / "gpu_check.md", markdown(results))
    print("\n".join(["", f"{'section':14s} {'errors':>6s} {'seconds':>8s}",
                     *(summary_line(k, v) for k, v in results["sections"].items()),
                     f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}"]))
    return results


if __name__ == "__main__":
    main()
