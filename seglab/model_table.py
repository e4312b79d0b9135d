"""The table of registered models: for ``seglab models`` and the generated docs/models.md.

Parameter counts are computed by building each model at its paper setting on the ``meta`` device
(no memory, no weights), counted as ``sum(p.numel())``, and set beside the paper's reference count.
FLOPs come from ``torch.utils.flop_counter`` over one eval-mode forward pass of a 1x3x512x512 input
(1 channel where the paper setting has ``in_channels=1``), also on the meta device, so the table
costs no computation. The flop counter counts 2 FLOPs per multiply-add.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from seglab.models import count_parameters, list_models, model_info
from seglab.tasks import task_of


@dataclass(frozen=True)
class ModelRow:
    name: str
    task: str
    paper: str
    year: int
    input_size: tuple[int, int]
    setting: str
    params: int
    paper_params: int | None
    url: str
    gflops: float | None = None


def count_at_paper_setting(name: str) -> int:
    """Parameters of model ``name`` built with its ``paper_kwargs`` (on the meta device)."""
    info = model_info(name)
    with torch.device("meta"):
        model = info.factory(**info.paper_kwargs)
    return count_parameters(model)


FLOPS_INPUT = (512, 512)


def flops_at_paper_setting(name: str, size: tuple[int, int] = FLOPS_INPUT) -> float:
    """FLOPs (2 per multiply-add) of one eval-mode forward pass of model ``name`` at its paper setting."""
    from torch.utils.flop_counter import FlopCounterMode

    info = model_info(name)
    with torch.device("meta"):
        model = info.factory(**info.paper_kwargs).eval()
        x = torch.empty(1, info.paper_kwargs.get("in_channels", 3), *size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


def model_rows(task: str | None = None) -> list[ModelRow]:
    rows = []
    for name in list_models(task):
        info = model_info(name)
        setting = ", ".join(f"{k}={v}" for k, v in info.paper_kwargs.items()) or "defaults"
        rows.append(
            ModelRow(
                name=name,
                task=info.task,
                paper=info.paper,
                year=info.year,
                input_size=info.input_size,
                setting=setting,
                params=count_at_paper_setting(name),
                paper_params=info.paper_params,
                url=info.url,
                gflops=None if task_of(info).detection else flops_at_paper_setting(name) / 1e9,
            )
        )
    return rows


def _fmt(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _delta(row: ModelRow) -> str:
    if row.paper_params is None:
        return "-"
    return f"{100.0 * (row.params - row.paper_params) / row.paper_params:+.2f}%"


def _gflops(row: ModelRow) -> str:
    return "-" if row.gflops is None else f"{row.gflops:.1f}"


def models_markdown(results_dir: Path | None = None) -> str:
    """docs/models.md, generated from the registry (scripts/gen_model_docs.py writes it), with the recorded demo
    runs found in ``results_dir`` (realtime_demo.json, instance_demo.json, parsing_demo.json; the script passes
    the repository's docs/ folder) appended."""
    lines = [
        "# Models",
        "",
        "Generated from the registry by `python scripts/gen_model_docs.py`; do not edit by hand "
        "(a test fails when this file is stale).",
        "",
        "*params*: `sum(p.numel())` of the factory built with the paper's setting (column *setting*); "
        "*reference*: the count from the paper or its reference code (the source is in each model file's docstring). "
        "*GFLOPs@512*: `torch.utils.flop_counter` (2 FLOPs per multiply-add) over one eval-mode forward "
        "pass of a 1x3x512x512 input at the paper's setting (auxiliary heads do not run in eval mode).",
        "",
        "| model | task | paper | year | input | setting | params | reference | diff | GFLOPs@512 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in model_rows():
        paper = f"[{r.paper}]({r.url})" if r.url else r.paper
        lines.append(
            f"| `{r.name}` | {r.task} | {paper} | {r.year} | {r.input_size[0]}x{r.input_size[1]} | "
            f"{r.setting} | {_fmt(r.params)} | {_fmt(r.paper_params)} | {_delta(r)} | {_gflops(r)} |"
        )
    text = "\n".join(lines) + "\n"
    if results_dir is None:
        return text
    from seglab.demos import instance, parsing, realtime

    results_dir = Path(results_dir)
    return (text + realtime.results_markdown(results_dir / "realtime_demo.json")
            + instance.results_markdown(results_dir / "instance_demo.json")
            + parsing.results_markdown(results_dir / "parsing_demo.json"))


def models_rich_table(task: str | None = None):
    """The same table for the terminal."""
    from rich.table import Table

    table = Table(title="seglab models")
    numeric = ("params", "reference", "diff", "year", "GFLOPs@512")
    for col in ("model", "task", "paper", "year", "input", "setting", *numeric[:3], numeric[4]):
        table.add_column(col, justify="right" if col in numeric else "left")
    for r in model_rows(task):
        table.add_row(
            r.name, r.task, r.paper, str(r.year), f"{r.input_size[0]}x{r.input_size[1]}", r.setting,
            _fmt(r.params), _fmt(r.paper_params), _delta(r), _gflops(r),
        )
    return table
