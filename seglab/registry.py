"""Model registry: name -> factory, with the facts of each model (task, paper, year, input size).

Factories register themselves with :func:`register_model`, in the manner of timm's ``@register_model``:
the decorator records the model's facts, so ``seglab.models.list_models`` and ``model_info`` answer without
building anything. This module only stores: it imports no model file. The package :mod:`seglab.models`
imports every family (which registers its factories) and holds the lookups (``list_models``, ``model_info``,
``create_model``), so a lookup always sees every model and no import loops back here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch-free at import: the dataset registry reads TASKS without loading torch
    from torch import nn

# the tasks a model or a dataset is registered for (seglab.tasks has one object per task, Parsing R-CNN's
# detector-style parsing included)
TASKS = ("semantic", "instance", "parsing")


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a registered model.

    ``paper_kwargs`` are the factory options that reproduce the paper's setting; ``paper_params`` is the
    reference parameter count at that setting (from the paper or its reference code), or None if unknown.
    ``detector``: called as a torchvision detector (lists in, dicts out) although its task is another (Parsing
    R-CNN); ``people``: predicts each person separately (multi-person parsing: PGN, Parsing R-CNN).
    """

    name: str
    task: str
    paper: str
    year: int
    input_size: tuple[int, int]
    factory: Callable[..., nn.Module]
    url: str = ""
    paper_kwargs: dict[str, Any] = field(default_factory=dict)
    paper_params: int | None = None
    detector: bool = False
    people: bool = False


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    *,
    task: str,
    paper: str,
    year: int,
    input_size: tuple[int, int],
    url: str = "",
    paper_kwargs: dict[str, Any] | None = None,
    paper_params: int | None = None,
    detector: bool = False,
    people: bool = False,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model factory under its function name."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelInfo(
            name=name,
            task=task,
            paper=paper,
            year=year,
            input_size=tuple(input_size),
            factory=fn,
            url=url,
            paper_kwargs=dict(paper_kwargs or {}),
            paper_params=paper_params,
            detector=detector,
            people=people,
        )
        return fn

    return decorator


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, counted as the reference table does: ``sum(p.numel())``."""
    return sum(p.numel() for p in model.parameters())
