"""seglab: semantic segmentation, instance segmentation and human parsing in one PyTorch API."""

from seglab.errors import CheckpointError, ConfigError, DatasetError, SeglabError, TrainingError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "InferenceOptions",
    "InstancePredictor",
    "PeopleParser",
    "Predictor",
    "SeglabError",
    "TrainingError",
    "Trainer",
    "count_parameters",
    "create_model",
    "from_pretrained",
    "list_models",
    "load_model",
    "load_torchvision",
    "model_info",
    "register_model",
    "save_pretrained",
]

# name -> the module that defines it. These import torch; they load on first use, so `import seglab` stays light
# and torch-free (a deployment running only seglab.export.ort needs no torch).
_LAZY = {
    **dict.fromkeys(("count_parameters", "create_model", "list_models", "model_info", "register_model"),
                    "seglab.models"),
    **dict.fromkeys(("InferenceOptions", "InstancePredictor", "Predictor"), "seglab.engine.inference"),
    "PeopleParser": "seglab.engine.people",
    "Trainer": "seglab.engine.trainer",
    **dict.fromkeys(("from_pretrained", "load_model", "save_pretrained"), "seglab.pretrained"),
    "load_torchvision": "seglab.convert.torchvision",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'seglab' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
