"""Models rebuilt from weights files: :func:`load_model` is the one way seglab does it.

seglab's weights files (safetensors) record the model's name, class count, factory options and label set in
their metadata (:func:`seglab.checkpoint.save_weights`), so a file alone rebuilds its model. ``seglab predict``,
``seglab eval``, ``seglab export`` and ``seglab pseudo-label`` all go through :func:`load_model`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from seglab.errors import CheckpointError

if TYPE_CHECKING:
    from torch import nn

    from seglab.config import Config


def model_spec(
    weights: str | Path, *, name: str | None = None, num_classes: int | None = None, config: Config | None = None
) -> tuple[str, dict[str, Any]]:
    """The model name and factory options that rebuild the model of ``weights``.

    From ``config`` (its model section) when given, else from the file's metadata; ``name`` and ``num_classes``
    override either. The recorded factory options apply only to the recorded model (another ``name`` starts
    from its defaults).
    """
    from seglab.checkpoint import read_metadata

    if config is not None:
        name = name or config.model.name
        kwargs = {"num_classes": config.model.num_classes, **config.model.kwargs}
    else:
        meta = read_metadata(weights)
        recorded = meta.get("model")
        if not (name or recorded):
            raise CheckpointError(f"{weights}: the file names no model (metadata 'model'); pass the model name "
                                  "(--model NAME) or a config")
        kwargs = dict(meta.get("model_kwargs") or {}) if name in (None, recorded) else {}
        name = name or recorded
        if meta.get("num_classes"):
            kwargs["num_classes"] = int(meta["num_classes"])
    if num_classes:
        kwargs["num_classes"] = int(num_classes)
    return name, kwargs


def load_model(
    weights: str | Path, *, name: str | None = None, num_classes: int | None = None, config: Config | None = None,
    verify: bool = True,
) -> nn.Module:
    """The model of ``weights``, built as :func:`model_spec` says and loaded strictly (eval mode not set); the
    file's SHA-256 is checked unless ``verify=False``.

    Raises :class:`~seglab.errors.CheckpointError` when the file is missing, unsafe, names no model, or does not
    match the model (missing, unexpected or mis-shaped tensors are listed).
    """
    from seglab.checkpoint import load_weights
    from seglab.models import create_model

    name, kwargs = model_spec(weights, name=name, num_classes=num_classes, config=config)
    model = create_model(name, **kwargs)
    load_weights(model, weights, verify=verify)
    return model


__all__ = ["load_model", "model_spec"]
