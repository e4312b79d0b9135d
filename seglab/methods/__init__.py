"""Methods that work with any model: inference-time procedures that wrap a model rather than change it."""

from seglab.methods.mc_dropout import enable_mc_dropout, mc_predict

__all__ = ["enable_mc_dropout", "mc_predict"]
