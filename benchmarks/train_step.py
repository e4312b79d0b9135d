"""Training step time on the CPU: seglab against the reference implementations, side by side (seglab issue 7).

One step is what the Trainer does per iteration: forward, seglab's ``SegmentationLoss`` (cross-entropy, ignore
255, plus the auxiliary outputs at weight 1 where the model has them), ``zero_grad``, backward and an SGD step
(lr 1e-4, momentum 0.9), in fp32. Both models of a pair take the same images and labels; their steps are
interleaved (A B A B ...) after a warm-up, on the same thread count (benchmarks.common).

Size: 256x256, batch 4 (the issue asks for 512x512; on this 2-core CPU a step at 512x512, batch 4 takes several
seconds, too long for 10+ interleaved repetitions of each side). ``--smoke``: 64x64, batch 2, one repetition.

Pairs:

- ``unet_resnet34``: seglab's U-Net with a ResNet-34 encoder against ``smp.Unet("resnet34")``, the same network,
  started from the same weights (smp's, converted by :func:`seglab.convert.smp.load_smp_unet`).
- ``bisenetv2``: seglab alone, its four booster heads in the loss. The reference, mmsegmentation's BiSeNetV2, is
  not in this environment: mmsegmentation 1.2.2 (on PyPI) imports mmcv (< 2.2, with compiled ops) and mmengine,
  none of which seglab's environment has, and the benchmarks run offline; no other pip-installable
  implementation of the paper's model was found.

    python -m benchmarks.train_step [--reps 10] [--threads N] [--smoke] [--out docs/benchmarks_train_step.md]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import fmt_ms, interleaved, machine_info, summary
from seglab.losses import SegmentationLoss
from seglab.models import create_model
from seglab.utils import atomic_write_text

NUM_CLASSES = 21
PAIRS = ("unet_resnet34", "bisenetv2")
NOTE = {
    "unet_resnet34": "smp.Unet('resnet34'): same network, same starting weights",
    "bisenetv2": "no reference here (mmsegmentation needs mmcv < 2.2 + mmengine, not installed); "
                 "loss with the 4 booster heads",
}


def _models(name: str) -> tuple[nn.Module, nn.Module | None]:
    """seglab's ``name`` and its reference (smp's U-Net, whose weights seglab's starts from), or None."""
    if name != "unet_resnet34":
        return create_model(name, num_classes=NUM_CLASSES), None
    import segmentation_models_pytorch as smp

    from seglab.convert.smp import load_smp_unet

    reference = smp.Unet("resnet34", encoder_weights=None, classes=NUM_CLASSES)
    return load_smp_unet(reference.state_dict(), model=name), reference


def make_step(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> Callable[[], float]:
    """A closure running one training step of ``model`` (train mode) on ``images``/``targets``; returns the loss.

    The loss weights each auxiliary output (``{"aux": [...]}``) 1, as BiSeNetV2's paper does."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    with torch.no_grad():
        probe = model(images)
    num_aux = len(probe.get("aux") or []) if isinstance(probe, dict) else 0
    criterion = SegmentationLoss(aux_weights=[1.0] * num_aux)

    def step() -> float:
        loss, _ = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def measure(name: str, size: int, batch: int, reps: int, warmup: int, smoke: bool) -> dict[str, Any]:
    """One table row: step times of seglab's ``name`` and of its reference (if any), interleaved."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=gen)
    targets = torch.randint(0, NUM_CLASSES, (batch, size, size), generator=gen)
    targets[torch.rand(targets.shape, generator=gen) < 0.05] = 255  # a few ignore pixels, as in real labels
    torch.manual_seed(0)
    ours, reference = _models(name)
    fns = {"seglab": make_step(ours, images, targets)}
    row: dict[str, Any] = {"model": name, "size": size, "batch": batch, "reference": "-", "note": NOTE[name]}
    if reference is not None:
        row["reference"] = "smp"
        fns["smp"] = make_step(reference, images, targets)
    row["times"] = interleaved(fns, reps=reps, warmup=warmup)
    return row


def run(reps: int, threads: int, smoke: bool) -> list[dict[str, Any]]:
    """Rows of every pair at 256x256, batch 4 (smoke: 64x64, batch 2, no warm-up)."""
    torch.set_num_threads(threads)
    size, batch, warmup = (64, 2, 0) if smoke else (256, 4, 2)
    return [measure(name, size, batch, reps, warmup, smoke) for name in PAIRS]


def markdown(rows: list[dict[str, Any]]) -> str:
    """The training-step table (ms, median (IQR)); *ref / seglab* > 1 means seglab's step is faster."""
    lines = [
        "## Training step time", "",
        "One fp32 step: forward, `SegmentationLoss` (aux outputs weighted 1), zero_grad, backward, SGD "
        "(momentum 0.9); ms, median (IQR), seglab and reference interleaved on the same batch. *ref / seglab* > 1 "
        "means seglab is faster.", "",
        "| model | input | batch | seglab ms | reference | reference ms | ref / seglab | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref_times = r["times"].get(r["reference"])
        ratio = f"{summary(ref_times)[0] / summary(r['times']['seglab'])[0]:.2f}" if ref_times else "-"
        lines.append(f"| {r['model']} | {r['size']}x{r['size']} | {r['batch']} | {fmt_ms(r['times']['seglab'])} | "
                     f"{r['reference']} | {fmt_ms(ref_times)} | {ratio} | {r['note']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="docs/benchmarks_train_step.md")
    parser.add_argument("--smoke", action="store_true", help="tiny inputs, one repetition, no warm-up")
    args = parser.parse_args(argv)
    reps = 1 if args.smoke else args.reps
    previous = torch.get_num_threads()
    try:
        rows = run(reps, args.threads, args.smoke)
    finally:
        torch.set_num_threads(previous)
    text = (f"# CPU training step time\n\nMachine: {machine_info(args.threads)}. {reps} interleaved "
            f"repetition(s) after warm-up.\n\n" + markdown(rows))
    atomic_write_text(Path(args.out), text)
    print(text)
    return text


if __name__ == "__main__":
    main()
