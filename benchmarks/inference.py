"""Inference latency on the CPU: seglab against torchvision and segmentation_models_pytorch, side by side.

- torchvision pairs (fcn_resnet50, deeplabv3_resnet50, deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large,
  maskrcnn_resnet50_fpn): torchvision's model is built with seeded random weights and its state dict loaded into
  seglab's through :func:`seglab.convert.torchvision.load_torchvision`; the outputs are checked equal before any
  timing, so the two columns time the same function.
- smp pairs: seglab ``unet_resnet34`` against ``smp.Unet("resnet34")``: the same network, smp's random weights
  loaded into seglab's through :func:`seglab.convert.smp.load_smp_unet` and the outputs checked equal; seglab
  ``semantic_fpn_resnet50`` against ``smp.FPN("resnet50")``: same encoder, not the same decoder (seglab's is
  Kirillov et al.'s on a standard FPN, whose 3x3 output convs smp's FPN leaves out), weights not shared.
- seglab's own models alone (no reference implementation to compare with), the paper's plain ``unet`` among them;
  SCHP (``schp_resnet101``) when it is registered.

When ``seglab.engine.fast.prepare_fast`` exists, its fp32 and bf16 models are timed in the same rounds and their
argmax labels compared with seglab's fp32 eager labels (agreement in % of pixels); for the models with a speed
target in issue 7 (``COMPILED_MODELS``) also the bf16 model under ``torch.compile`` (compiled before timing).
Achieved GFLOP/s (FLOPs from ``torch.utils.flop_counter`` over the median latency) are set against a
matrix-product ceiling measured in the same run, fp32 and bf16.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from benchmarks.common import count_flops, fmt_ms, interleaved, matmul_ceiling, summary

TORCHVISION_PAIRS = ("fcn_resnet50", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")
DETECTION = "maskrcnn_resnet50_fpn"
SMP_PAIRS = ("unet_resnet34", "semantic_fpn_resnet50")
OWN_MODELS = ("unet", "fcn8s_vgg16", "segnet_vgg16", "enet", "bisenetv1_resnet18", "bisenetv2", "upernet_swin_t")
COMPILED_MODELS = (*TORCHVISION_PAIRS, "bisenetv2")  # the issue-7 speed targets
OPTIONAL_OWN_MODELS = ("schp_resnet101",)  # timed when registered
SMOKE_MODELS = ("lraspp_mobilenet_v3_large", DETECTION, "unet_resnet34", "enet")
NUM_CLASSES = 21
SEMANTIC_NOTE = {
    "semantic_fpn_resnet50": "smp.FPN('resnet50'): same encoder; smp's FPN has no 3x3 output convs (seglab's is "
                             "the paper's FPN: +25 GFLOP at 512x512); weights not shared",
    "unet_resnet34": "smp.Unet('resnet34'): same network, smp's weights converted, outputs checked equal",
}

_Forward = Callable[[torch.Tensor], Any]


def own_models() -> tuple[str, ...]:
    """seglab's own models for the table: ``OWN_MODELS`` and those of ``OPTIONAL_OWN_MODELS`` that are registered."""
    from seglab.models import list_models

    registered = set(list_models())
    return OWN_MODELS + tuple(name for name in OPTIONAL_OWN_MODELS if name in registered)


def known_models() -> tuple[str, ...]:
    """Every name :func:`measure_model` accepts: the torchvision pairs, Mask R-CNN, seglab's semantic and parsing
    models."""
    from seglab.models import list_models

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

    from seglab.convert.smp import load_smp_unet
    from seglab.models import create_model

    torch.manual_seed(0)
    if name == "unet_resnet34":
        reference = smp.Unet("resnet34", encoder_weights=None, classes=NUM_CLASSES).eval()
        ours = load_smp_unet(reference.state_dict(), model=name).eval()
    else:
        ours = create_model(name, num_classes=NUM_CLASSES).eval()
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


FAST_COLUMNS = ("seglab fast fp32", "seglab fast bf16", "seglab fast bf16 compiled")


def _fast_models(model: nn.Module, compiled: bool = False) -> tuple[dict[str, nn.Module], str]:
    """seglab's fast inference path in fp32 and bf16 (and bf16 under ``torch.compile`` if ``compiled``), when
    ``seglab.engine.fast`` exists; else nothing.

    Returns the models and a note (the error, when ``prepare_fast`` exists but fails on this model)."""
    try:
        from seglab.engine.fast import prepare_fast
    except ImportError:
        return {}, ""
    variants = [("fp32", False), ("bf16", False)] + ([("bf16", True)] if compiled else [])
    fast: dict[str, nn.Module] = {}
    for precision, compile_ in variants:
        try:
            fast[f"seglab fast {precision}{' compiled' if compile_ else ''}"] = prepare_fast(
                model, precision=precision, channels_last=True, fold_bn=True, compile=compile_)
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
        from seglab.models import create_model

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
            fast, fast_note = _fast_models(model, compiled=name in COMPILED_MODELS)
            labels = ours_out.argmax(1)
            for column, fast_model in fast.items():
                row["agreement"][column] = _agreement(fast_model, x, labels)  # also compiles the compiled one
                fns[column] = lambda m=fast_model: m(x)
            if "seglab fast bf16 compiled" in fast and not fast["seglab fast bf16 compiled"].compiled:
                fast_note = "torch.compile failed: the compiled column ran eagerly"
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


def _best_fast(row: dict[str, Any], columns: tuple[str, ...] = FAST_COLUMNS) -> float | None:
    """The smallest median latency (s) among the row's fast-path ``columns``, or None without any."""
    medians = [summary(row["times"][c])[0] for c in columns if c in row["times"]]
    return min(medians) if medians else None


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
        "> 1 means seglab (fp32 eager) is faster. Fast-path columns give [% of pixels whose label equals seglab fp32 "
        "eager's] and run `prepare_fast(..., channels_last=True)` for every model (the Predictor keeps UperNet, "
        "which sets `channels_last_inference = False`, in NCHW); *compiled* is the bf16 fast model under "
        "`torch.compile` (`Predictor(..., compile=True)`), timed for the models with a speed target. *ref / fast* "
        "is the reference's median over the fastest seglab fast column's, *img/s* that column's images per "
        "second. GFLOP/s is seglab fp32 eager's FLOPs (`torch.utils.flop_counter`) over its median latency; "
        "*% ceiling* is against the fp32 matrix-product ceiling; *bf16 % ceiling* is the fastest bf16 column's "
        "GFLOP/s (same FLOPs) against the bf16 ceiling.",
        "",
        "| model | input | batch | seglab ms | reference | reference ms | ref / seglab | seglab fast fp32 ms "
        "| seglab fast bf16 ms | seglab fast bf16 compiled ms | ref / fast | img/s | GFLOP | GFLOP/s | % ceiling "
        "| bf16 % ceiling | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fp32_ceiling = ceiling.get("fp32", {}).get("gflops")
    bf16_ceiling = ceiling.get("bf16", {}).get("gflops")
    for r in rows:
        if r["section"] != "inference":
            continue
        ours = summary(r["times"]["seglab"])[0]
        ref_times = r["times"].get(r["reference"])
        ratio = f"{summary(ref_times)[0] / ours:.2f}" if ref_times else "-"
        fastest = _best_fast(r)
        fast_ratio = f"{summary(ref_times)[0] / fastest:.2f}" if ref_times and fastest else "-"
        rate = f"{r['batch'] / (fastest or ours):.1f}"
        achieved = r["flops"] / ours / 1e9
        pct = f"{100 * achieved / fp32_ceiling:.0f}" if fp32_ceiling else "-"
        bf16 = _best_fast(r, FAST_COLUMNS[1:])
        pct_bf16 = f"{100 * r['flops'] / bf16 / 1e9 / bf16_ceiling:.0f}" if bf16 and bf16_ceiling else "-"
        lines.append(
            f"| {r['model']} | {r['size']}x{r['size']} | {r['batch']} | {fmt_ms(r['times']['seglab'])} | "
            f"{r['reference']} | {fmt_ms(ref_times)} | {ratio} | "
            + " | ".join(_fast_cell(r, c) for c in FAST_COLUMNS)
            + f" | {fast_ratio} | {rate} | {r['flops'] / 1e9:.1f} | {achieved:.1f} | {pct} | {pct_bf16} | "
            f"{r['note']} |"
        )
    return "\n".join(lines) + "\n"
