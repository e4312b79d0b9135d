"""Model registry: name -> factory, with the facts of each model (task, paper, year, input size).

Factories register themselves with :func:`register_model`, in the manner of timm's ``@register_model``:
the decorator records the model's facts, so :func:`list_models` and :func:`model_info` answer without
building anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

TASKS = ("semantic", "instance", "parsing")


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a registered model.

    ``paper_kwargs`` are the factory options that reproduce the paper's setting; ``paper_params`` is the
    reference parameter count at that setting (from shared/reference/models.md), or None if unknown.
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
    detector: bool = False  # the torchvision detection contract (lists in, dicts out), e.g. Parsing R-CNN

    @property
    def detection_contract(self) -> bool:
        """True for models called as torchvision detectors: every instance model, and detector-based parsing."""
        return self.task == "instance" or self.detector


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
        )
        return fn

    return decorator


def _ensure_loaded() -> None:
    # Importing the model packages runs their @register_model decorators.
    import seglab.models  # noqa: F401


def list_models(task: str | None = None) -> list[str]:
    """Names of registered models, sorted, optionally only those of one task."""
    _ensure_loaded()
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return sorted(n for n, info in _REGISTRY.items() if task is None or info.task == task)


def model_info(name: str) -> ModelInfo:
    """The registered facts of model ``name``."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build model ``name`` with factory options ``kwargs`` (``num_classes``, ``pretrained_backbone``, ...)."""
    return model_info(name).factory(**kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, counted as the reference table does: ``sum(p.numel())``."""
    return sum(p.numel() for p in model.parameters())
