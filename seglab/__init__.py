"""seglab: semantic segmentation, instance segmentation and human parsing in one PyTorch API."""

from seglab.errors import CheckpointError, ConfigError, DatasetError, SeglabError, TrainingError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "InstancePredictor",
    "Predictor",
    "SeglabError",
    "TrainingError",
    "count_parameters",
    "create_model",
    "list_models",
    "load_torchvision",
    "model_info",
    "register_model",
]


_REGISTRY_NAMES = ("count_parameters", "create_model", "list_models", "model_info", "register_model")


def __getattr__(name: str):
    # The registry, Predictor and the converters import torch; import them lazily so `import seglab` stays
    # light and torch-free (a deployment running only seglab.export.ort needs no torch).
    if name in _REGISTRY_NAMES:
        from seglab import registry

        return getattr(registry, name)
    if name == "load_torchvision":
        from seglab.convert.torchvision import load_torchvision

        return load_torchvision
    if name in ("Predictor", "InstancePredictor"):
        from seglab.engine import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'seglab' has no attribute {name!r}")
