"""Training, evaluation and inference: the loops every model shares.

``evaluator`` (confusion matrix and metrics), ``inference`` (whole / slide / multi-scale / flip and
the Predictor) and ``trainer``. The trainer is not imported here, so that evaluation and prediction
stay importable without the config and data machinery.
"""

from seglab.engine.evaluator import ConfusionMatrix, SegMetrics, evaluate, evaluate_confusion, metrics_to_text
from seglab.engine.inference import InstancePredictor, Predictor, infer_probs, sliding_windows

__all__ = [
    "ConfusionMatrix",
    "InstancePredictor",
    "Predictor",
    "SegMetrics",
    "evaluate",
    "evaluate_confusion",
    "infer_probs",
    "metrics_to_text",
    "sliding_windows",
]
