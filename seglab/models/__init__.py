"""Model families and the lookups of the model registry.

Importing this package imports every family, whose factories register themselves in :mod:`seglab.registry`;
the lookups below therefore always see every model. ``seglab.create_model`` and ``seglab.list_models`` are
these functions.
"""

from typing import Any

from torch import nn

from seglab.models import instance, parsing, semantic  # noqa: F401  (registers the factories)
from seglab.registry import _REGISTRY, TASKS, ModelInfo, count_parameters, register_model


def list_models(task: str | None = None) -> list[str]:
    """Names of registered models, sorted, optionally only those of one task."""
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return sorted(n for n, info in _REGISTRY.items() if task is None or info.task == task)


def model_info(name: str) -> ModelInfo:
    """The registered facts of model ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build model ``name`` with factory options ``kwargs`` (``num_classes``, ``pretrained_backbone``, ...)."""
    return model_info(name).factory(**kwargs)


__all__ = ["ModelInfo", "count_parameters", "create_model", "list_models", "model_info", "register_model"]
