"""The demo jobs (``seglab demo [--task semantic|parsing|instance]``) and the recorded demo runs.

Each trains a model on data generated on the machine (the demo shapes, the synthetic people), evaluates it
and writes predictions, with a recipe scaled to minutes on a CPU: :mod:`.semantic` (U-Net on the shapes),
:mod:`.parsing` (a light SCHP with self-correction on synthetic people), :mod:`.instance` (a light Mask R-CNN
on the shapes, about 25 minutes on 2 CPU cores) and :mod:`.realtime` (ENet, BiSeNet V2, LR-ASPP on the shapes,
recorded for docs/models.md).
"""

from __future__ import annotations

import importlib
from typing import Any

# seglab demo --task NAME -> the module and function of the job (each takes key.sub=value overrides)
DEMOS = {
    "semantic": ("seglab.demos.semantic", "run_demo"),
    "parsing": ("seglab.demos.parsing", "run_parsing_demo"),
    "instance": ("seglab.demos.instance", "run_instance_demo"),
}


def run(name: str = "semantic", overrides: list[str] | None = None) -> dict[str, Any]:
    """Run the demo job ``name`` with ``key.sub=value`` overrides, reporting on the terminal; returns its summary."""
    from rich.console import Console

    if name not in DEMOS:
        raise ValueError(f"unknown demo {name!r}; expected one of: {', '.join(DEMOS)}")
    module, function = DEMOS[name]
    return getattr(importlib.import_module(module), function)(overrides, console=Console())


__all__ = ["DEMOS", "run"]
