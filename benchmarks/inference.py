"""Inference latency on the CPU: seglab against torchvision and segmentation_models_pytorch, side by side.

- torchvision pairs (fcn_resnet50, deeplabv3_resnet50, deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large,
  maskrcnn_resnet50_fpn): torchvision's model is built with seeded random weights and its state dict loaded into
  seglab's through :func:`seglab.convert.torchvision.load_torchvision`; the outputs are checked equal before any
  timing, so the two columns time the same function.
- smp pairs: seglab ``semantic_fpn_resnet50`` against ``smp.FPN("resnet50")`` (same encoder, both Panoptic-FPN
  style decoders, not the same weights) and seglab ``unet`` (Ronneberger et al.'s plain U-Net) against
  ``smp.Unet("resnet34")`` (a ResNet-34 encoder): each library's U-Net, not the same architecture.
- seglab's own models alone (no reference implementation to compare with); SCHP (``schp_resnet101``) among them
  when it is registered.

When ``seglab.engine.fast.prepare_fast`` exists, its fp32 and bf16 models are timed in the same rounds and their
argmax labels compared with seglab's fp32 eager labels (agreement in % of pixels). Achieved GFLOP/s (FLOPs from
``torch.utils.flop_counter`` over the median latency) are set against a matrix-product ceiling measured in the
same run, fp32 and bf16.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from benchmarks.common import count_flops, fmt_ms, interleaved, matmul_ceiling, summary

TORCHVISION_PAIRS = ("fcn_resnet50", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")
DETECTION = "maskrcnn_resnet50_fpn"
SMP_PAIRS = ("semantic_fpn_resnet50", "unet")
OWN_MODELS = ("fcn8s_vgg16", "segnet_vgg16", "enet", "bisenetv1_resnet18", "bisenetv2", "upernet_swin_t")
OPTIONAL_OWN_MODELS = ("schp_resnet101",)  # timed when registered
SMOKE_MODELS = ("lraspp_mobilenet_v3_large", DETECTION, "unet", "enet")
NUM_CLASSES = 21
SEMANTIC_NOTE = {
    "semantic_fpn_resnet50": "smp.FPN('resnet50'): same encoder, both Panoptic-FPN decoders; weights not shared",
    "unet": "smp.Unet('resnet34'): not the same architecture (seglab: the paper's plain U-Net, width 64; "
            "smp: ResNet-34 encoder); each library's U-Net",
}

_Forward = Callable[[torch.Tensor], Any]


def own_models() -> tuple[str, ...]:
    """seglab's own models for the table: ``OWN_MODELS`` and those of ``OPTIONAL_OWN_MODELS`` that are registered."""
    from seglab.registry import list_models

    registered = set(list_models())
    return OWN_MODELS + tuple(name for name in OPTIONAL_OWN_MODELS if name in registered)


def known_models() -> tuple[str, ...]:
    """Every name :func:`measure_model` accepts: the torchvision pairs, Mask R-CNN, seglab's semantic and parsing
    models."""
    from seglab.registry import list_models

    seglab_models = (*list_models(task="semantic"), *list_models(task="parsing"))
    return tuple(dict.fromkeys((*TORCHVISION_PAIRS, DETECTION, *seglab_models)))


def _torchvision_pair(name: str) -> tuple[nn.Module, nn.Module, _Forward, _Forward]:
    import torchvision.models.segmentation as tvseg

    from seglab.convert.torchvision import load_torchvision

    torch.manual_seed(0)
    reference = getattr(tvseg, name)(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).eval()
    ours = load_torchvision(name, reference.state_dict()).eval()
    return ours, reference, ours, lambda x: reference(x)["out"]


def _mask_rcnn_pair(size: int) -> tuple[nn.Module, nn.Module, _Forward, _Forward]:
    """torchvision's Mask R-CNN as its published weights build it (FrozenBatchNorm2d backbone), resized to ``size``
    (not 800) and with score threshold 0, so all 100 detections reach the mask head in both."""
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    from seglab.convert.torchvision import load_torchvision

    opts = {"min_size": size, "max_size": size, "box_score_thresh": 0.0}
    torch.manual_seed(0)
    backbone = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3)
    reference = MaskRCNN(backbone, num_classes=91, **opts).eval()
    ours = load_torchvision(DETECTION, reference.state_dict(), **opts).eval()
    return ours, reference, lambda x: ours(list(x)), lambda x: reference(list(x))


def _smp_pair(name: str) -> tuple[nn.Module, nn.Module, _Forward, _Forward]:
    import segmentation_models_pytorch as smp

    from seglab.registry import create_model

    torch.manual_seed(0)
    ours = create_model(name, num_classes=NUM_CLASSES).eval()
    if name == "unet":
        reference = smp.Unet("resnet34", encoder_weights=None, classes=NUM_CLASSES).eval()
    else:
        reference = smp.FPN("resnet50", encoder_weights=None, classes=NUM_CLASSES).eval()
    return ours, reference, ours, reference


def _check_same(name: str, ours: Any, reference: Any) -> None:
    """Raise if the converted seglab model does not reproduce torchvision's output (same weights, same input)."""
    if isinstance(ours, list):  # detection: per image boxes, scores, labels, masks
        for a, b in zip(ours, reference, strict=True):
            for key in ("boxes", "scores", "labels", "masks"):
                torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-4,
                                           msg=lambda m, k=key: f"{name} {k}: {m}")
    else:
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


def _fast_models(model: nn.Module) -> tuple[dict[str, nn.Module], str]:
    """seglab's fast inference path in fp32 and bf16, when ``seglab.engine.fast`` exists; else nothing.

    Returns the models and a note (the error, when ``prepare_fast`` exists but fails on this model)."""
    try:
        from seglab.engine.fast import prepare_fast
    except ImportError:
        return {}, ""
    fast: dict[str, nn.Module] = {}
    for precision in ("fp32", "bf16"):
        try:
            fast[f"seglab fast {precision}"] = prepare_fast(model, precision=precision, channels_last=True,
                                                            fold_bn=True)
        except Exception as exc:  # noqa: BLE001 - reported in the table's note, the other columns still run
            return {}, f"fast path failed: {type(exc).__name__}: {exc}"
    return fast, ""


def _agreement(fast: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    """% of pixels whose argmax label from ``fast`` equals ``labels`` (seglab fp32 eager)."""
    out = fast(x)
    out = out["out"] if isinstance(out, dict) else out
    return float((out.float().argmax(1) == labels).double().mean()) * 100.0


def measure_model(name: str, size: int, batch: int, reps: int, warmup: int) -> dict[str, Any]:
    """One table row: the latency of seglab's ``name`` (and its reference, and the fast path) on one input."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen)
    row: dict[str, Any] = {"section": "inference", "model": name, "size": size, "batch": batch, "reference": "-",
                           "note": "", "agreement": {}}
    reference_fn: _Forward | None = None
    if name in TORCHVISION_PAIRS:
        model, _, ours_fn, reference_fn = _torchvision_pair(name)
        row["reference"] = "torchvision"
        row["note"] = "same weights, outputs checked equal"
    elif name == DETECTION:
        model, _, ours_fn, reference_fn = _mask_rcnn_pair(size)
        row["model"], row["reference"] = "mask_rcnn_resnet50_fpn", "torchvision"
        row["note"] = f"same weights, outputs checked equal; resized to {size} (not 800), score threshold 0"
    elif name in SMP_PAIRS:
        model, _, ours_fn, reference_fn = _smp_pair(name)
        row["reference"] = "smp"
        row["note"] = SEMANTIC_NOTE[name]
    else:
        from seglab.registry import create_model

        torch.manual_seed(0)
        model = create_model(name, num_classes=NUM_CLASSES).eval()
        ours_fn = model
    fns: dict[str, Callable[[], Any]] = {"seglab": lambda: ours_fn(x)}
    with torch.no_grad():
        ours_out = ours_fn(x)
        if reference_fn is not None:
            if row["reference"] == "torchvision":
                _check_same(name, ours_out, reference_fn(x))
            fns[row["reference"]] = lambda: reference_fn(x)
        if name != DETECTION:
            fast, fast_note = _fast_models(model)
            labels = ours_out.argmax(1)
            for column, fast_model in fast.items():
                row["agreement"][column] = _agreement(fast_model, x, labels)
                fns[column] = lambda m=fast_model: m(x)
            row["note"] = "; ".join(s for s in (row["note"], fast_note) if s)
        row["flops"] = count_flops(lambda: ours_fn(x))
        row["times"] = interleaved(fns, reps=reps, warmup=warmup)
    return row


def ceilings(smoke: bool, reps: int) -> list[dict[str, Any]]:
    """The fp32 and bf16 matrix-product ceilings (4096x4096; 256 in smoke mode)."""
    n = 256 if smoke else 4096
    rows = []
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        gflops, times = matmul_ceiling(dtype, n=n, reps=max(3, min(reps, 5)))
        rows.append({"section": "ceiling", "dtype": label, "n": n, "gflops": gflops, "times": times})
    return rows


def run(reps: int, threads: int, smoke: bool, models: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Rows of the ceiling and of every model at 512x512, batch 1 and 4 (Mask R-CNN: one image).

    ``smoke``: 64x64, batch 1, one repetition without warm-up, a few models (``SMOKE_MODELS``) unless ``models``
    names them."""
    torch.set_num_threads(threads)
    size, batches, warmup = (64, (1,), 0) if smoke else (512, (1, 4), 2)
    if models is None:
        models = SMOKE_MODELS if smoke else (*TORCHVISION_PAIRS, DETECTION, *SMP_PAIRS, *own_models())
    rows = ceilings(smoke, reps)
    for name in models:
        for batch in (1,) if name == DETECTION else batches:
            rows.append(measure_model(name, size, batch, reps, warmup))
    return rows


def _fast_cell(row: dict[str, Any], column: str) -> str:
    if column not in row["times"]:
        return "-"
    return f"{fmt_ms(row['times'][column])} [{row['agreement'][column]:.2f}%]"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The ceiling line and the latency table (ms, median (IQR); GFLOP/s of seglab's fp32 eager model)."""
    ceiling = {r["dtype"]: r for r in rows if r["section"] == "ceiling"}
    lines = ["## Inference latency", ""]
    if ceiling:
        parts = [f"{k} {v['gflops']:.0f} GFLOP/s" for k, v in ceiling.items()]
        n = next(iter(ceiling.values()))["n"]
        lines += [f"Matrix-product ceiling ({n}x{n} `torch.mm`, median): {', '.join(parts)}.", ""]
    lines += [
        "Latency in ms, median (IQR), one forward pass under `torch.no_grad()`, columns interleaved. *ref / seglab* "
        "> 1 means seglab is faster. Fast-path columns give [% of pixels whose label equals seglab fp32 eager's]. "
        "GFLOP/s is seglab fp32 eager's FLOPs (`torch.utils.flop_counter`) over its median latency; "
        "*% ceiling* is against the fp32 matrix-product ceiling; *bf16 % ceiling* is the fast bf16 model's "
        "GFLOP/s (same FLOPs) against the bf16 ceiling.",
        "",
        "| model | input | batch | seglab ms | reference | reference ms | ref / seglab | seglab fast fp32 ms "
        "| seglab fast bf16 ms | GFLOP | GFLOP/s | % ceiling | bf16 % ceiling | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fp32_ceiling = ceiling.get("fp32", {}).get("gflops")
    bf16_ceiling = ceiling.get("bf16", {}).get("gflops")
    for r in rows:
        if r["section"] != "inference":
            continue
        ours = summary(r["times"]["seglab"])[0]
        ref_times = r["times"].get(r["reference"])
        ratio = f"{summary(ref_times)[0] / ours:.2f}" if ref_times else "-"
        achieved = r["flops"] / ours / 1e9
        pct = f"{100 * achieved / fp32_ceiling:.0f}" if fp32_ceiling else "-"
        bf16_times = r["times"].get("seglab fast bf16")
        pct_bf16 = (f"{100 * r['flops'] / summary(bf16_times)[0] / 1e9 / bf16_ceiling:.0f}"
                    if bf16_times and bf16_ceiling else "-")
        lines.append(
            f"| {r['model']} | {r['size']}x{r['size']} | {r['batch']} | {fmt_ms(r['times']['seglab'])} | "
            f"{r['reference']} | {fmt_ms(ref_times)} | {ratio} | {_fast_cell(r, 'seglab fast fp32')} | "
            f"{_fast_cell(r, 'seglab fast bf16')} | {r['flops'] / 1e9:.1f} | {achieved:.1f} | {pct} | {pct_bf16} | "
            f"{r['note']} |"
        )
    return "\n".join(lines) + "\n"
