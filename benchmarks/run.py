"""The CPU benchmark suite's runner (seglab issue 7): every concern in one process, then one Markdown file and chart.

    python -m benchmarks.run [--smoke] [--reps N] [--threads T] [--out docs/benchmarks.md]
                             [--only inference evaluator data train] [--models NAME ...]

Runs benchmarks.inference (latency against torchvision and smp, GFLOP/s against the matrix-product ceiling),
benchmarks.evaluator (confusion-matrix throughput), benchmarks.data_pipeline (images/s with 0 and 2 workers) and
benchmarks.train_step (training step time against smp), and writes their tables, the command line and the
machine into ``--out`` and a chart (PNG) beside it. ``--models`` restricts the inference section to those
models. ``--smoke`` runs tiny sizes once, for the test suite; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks import data_pipeline, evaluator, inference, train_step
from benchmarks.common import machine_info, summary
from seglab.utils import atomic_write_bytes, atomic_write_text

MODULES = {"inference": inference, "evaluator": evaluator, "data": data_pipeline, "train": train_step}
CHARTED = ("inference", "evaluator", "data")  # the sections the chart draws


def chart_png(rows: dict[str, list[dict[str, Any]]]) -> bytes:
    """A three-panel PNG: batch-1 latency per model and implementation, evaluator Mpixel/s, data images/s."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 9), layout="constrained")
    grid = fig.add_gridspec(2, 2)
    ax_lat, ax_eval, ax_data = fig.add_subplot(grid[0, :]), fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])

    latency = [r for r in rows["inference"] if r["section"] == "inference" and r["batch"] == 1]
    columns = ["seglab", "reference", "seglab fast fp32", "seglab fast bf16", "seglab fast bf16 compiled"]
    width = 0.8 / len(columns)
    for j, column in enumerate(columns):
        xs, heights = [], []
        for i, r in enumerate(latency):
            key = r["reference"] if column == "reference" else column
            if key in r["times"]:
                xs.append(i + (j - (len(columns) - 1) / 2) * width)
                heights.append(summary(r["times"][key])[0] * 1e3)
        if xs:
            ax_lat.bar(xs, heights, width, label=column)
    ax_lat.set_xticks(range(len(latency)), [r["model"] for r in latency], rotation=30, ha="right", fontsize=8)
    ax_lat.set_yscale("log")
    size = latency[0]["size"] if latency else 0
    ax_lat.set_ylabel("ms (median, log scale)")
    ax_lat.set_title(f"Inference latency, {size}x{size}, batch 1 (reference: torchvision or smp)")
    ax_lat.legend(fontsize=8)

    ev = rows["evaluator"]
    ax_eval.barh([r["method"] for r in ev], [r["pixels"] / summary(r["times"])[0] / 1e6 for r in ev])
    ax_eval.set_xlabel("Mpixel/s (median)")
    ax_eval.set_title("Evaluator: 21-class confusion matrix")
    ax_eval.tick_params(axis="y", labelsize=8)

    data = rows["data"]
    ax_data.bar([str(r["workers"]) for r in data], [r["images"] / summary(r["times"])[0] for r in data])
    ax_data.set_xlabel("DataLoader workers")
    ax_data.set_ylabel("images/s (median)")
    ax_data.set_title("Data pipeline: decode, augment, collate")

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def report(rows: dict[str, list[dict[str, Any]]], command: str, threads: int, reps: int,
           png_name: str | None) -> str:
    """The whole Markdown file: header (command, machine), each module's section, the chart (if drawn)."""
    header = [
        "# CPU benchmarks: seglab side by side with the reference implementations", "",
        f"Written by `{command}`.", "",
        f"Machine: {machine_info(threads)}. {reps} interleaved repetition(s) after warm-up per comparison.", "",
    ]
    sections = [MODULES[name].markdown(module_rows) for name, module_rows in rows.items()]
    chart = f"\n## Chart\n\n![benchmarks]({png_name})\n" if png_name else ""
    return "\n".join(header) + "\n" + "\n".join(sections) + chart


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions per comparison (default 10)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="docs/benchmarks.md", help="Markdown file; the PNG goes beside it")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition (for the test suite)")
    parser.add_argument("--only", nargs="+", choices=list(MODULES), default=list(MODULES),
                        help="run only these concerns (the chart needs inference, evaluator and data)")
    parser.add_argument("--models", nargs="+", metavar="NAME",
                        help="inference section: only these models (default: all; smoke: a few); one of "
                             "torchvision's segmentation names, maskrcnn_resnet50_fpn or a seglab semantic/parsing "
                             "model")
    args = parser.parse_args(argv)
    if args.models:
        unknown = [name for name in args.models if name not in inference.known_models()]
        if unknown:
            parser.error(f"--models: unknown {', '.join(unknown)}; known: {', '.join(inference.known_models())}")
    argv = sys.argv[1:] if argv is None else argv
    reps = 1 if args.smoke else args.reps
    previous = torch.get_num_threads()
    try:
        rows = {}
        for name in args.only:
            if name == "inference" and args.models:
                rows[name] = inference.run(reps, args.threads, args.smoke, models=tuple(args.models))
            else:
                rows[name] = MODULES[name].run(reps, args.threads, args.smoke)
    finally:
        torch.set_num_threads(previous)
    out = Path(args.out)
    png = out.with_suffix(".png")
    command = " ".join(["python -m benchmarks.run", *argv])
    drawn = set(CHARTED) <= set(rows)
    if drawn:
        atomic_write_bytes(png, chart_png(rows))
    text = report(rows, command, args.threads, reps, png.name if drawn else None)
    atomic_write_text(out, text)
    print(text)
    return text


if __name__ == "__main__":
    main()
