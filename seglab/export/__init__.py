"""Deployment: ONNX export (:mod:`seglab.export.onnx`) and torch-free ONNX Runtime inference (:mod:`.ort`).

Importing this package does not import torch (nor onnx or onnxruntime): those load when a function runs.
"""

from seglab.export.onnx import ExportError, export_onnx, export_weights, read_onnx_metadata
from seglab.export.ort import OnnxPredictor

__all__ = ["ExportError", "OnnxPredictor", "export_onnx", "export_weights", "read_onnx_metadata"]
