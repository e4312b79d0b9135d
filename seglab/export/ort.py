"""ONNX Runtime inference with the :class:`~seglab.engine.inference.Predictor` interface, without torch.

An ONNX file written by :func:`seglab.export.onnx.export_onnx` carries everything needed to run it: the
input "image" ``[B, 3, H, W]`` (RGB scaled to 0-1, minus the mean, over the std), the output "logits"
``[B, K, H, W]``, and seglab's metadata (model name, num_classes, label_set, mean, std) as JSON strings in
the model's ``metadata_props``. :class:`OnnxPredictor` reads them back, normalises in NumPy and runs an
onnxruntime session, so a deployment can drop torch: this module imports NumPy, Pillow and seglab's torch-free
image reading (:func:`seglab.data.io.rgb_array`, the Predictor's too) at load time, onnxruntime when a predictor is
created.

Whole-image inference only (no sliding window, scales or flip): that is what one exported graph does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seglab.data.io import rgb_array
from seglab.errors import CheckpointError
from seglab.utils import decode_json_values

# The same values as seglab.data.transforms.IMAGENET_MEAN/STD (which imports torch); a test keeps them equal.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``[3, H, W]`` float32: ``(image / 255 - mean) / std``, in float32 step by step as seglab's torch path."""
    x = rgb_array(image, "OnnxPredictor").astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Numerically stable softmax (the maximum is subtracted first), float32."""
    z = logits.astype(np.float32) - logits.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


class OnnxPredictor:
    """Whole-image segmentation with an ONNX file: ``OnnxPredictor("model.onnx")(image) -> H x W labels``.

    ``image`` is an HxWx3 uint8 array (grey and RGBA are converted) or a PIL image. ``metadata`` holds the
    seglab metadata stored at export (``model``, ``num_classes``, ``label_set``, ``mean``, ``std``, ...);
    files without it are run with the ImageNet mean/std.
    """

    def __init__(self, path: str | Path, *, providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise ImportError("OnnxPredictor needs onnxruntime: pip install 'seglab[onnx]' "
                              "(or pip install onnxruntime)") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such ONNX file")
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own (non-exported) error classes
            raise CheckpointError(f"{self.path}: onnxruntime cannot load it as an ONNX model ({exc})") from None
        self.metadata = decode_json_values(self.session.get_modelmeta().custom_metadata_map)
        task = self.metadata.get("task", "semantic")  # export_onnx writes "task" for detection exports only
        if task != "semantic":
            raise CheckpointError(f"{self.path}: metadata task {task!r}: OnnxPredictor runs semantic files only "
                                  "(logits [B, K, H, W]); run this detection export with onnxruntime.InferenceSession "
                                  "(one [3, H, W] image at the exported size in, per-detection outputs out)")
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            got = [(i.name, i.shape) for i in inputs]
            raise CheckpointError(f"{self.path}: expected one input image [B, 3, H, W], got {got}")
        self.input_name = inputs[0].name
        self.output_name = OUTPUT_NAME if OUTPUT_NAME in [o.name for o in outputs] else outputs[0].name
        self.mean = tuple(float(v) for v in self.metadata.get("mean", IMAGENET_MEAN))
        self.std = tuple(float(v) for v in self.metadata.get("std", IMAGENET_STD))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise CheckpointError(f"{self.path}: metadata 'mean' and 'std' must be 3 numbers each, got "
                                  f"{self.mean} and {self.std}")

    @property
    def num_classes(self) -> int | None:
        value = self.metadata.get("num_classes")
        return int(value) if value is not None else None

    @property
    def label_set(self) -> str | None:
        return self.metadata.get("label_set")

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """The model's logits ``[B, K, H, W]`` (float32) for a normalised batch ``[B, 3, H, W]``."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        out = self.session.run([self.output_name], {self.input_name: batch})[0]
        if out.ndim != 4 or out.shape[0] != batch.shape[0] or out.shape[-2:] != batch.shape[-2:]:
            raise ValueError(f"{self.path}: output must be logits [B, K, H, W] at the input's size "
                             f"{tuple(batch.shape[-2:])}, got {out.shape}")
        return out.astype(np.float32, copy=False)

    def predict_probs(self, image: Any) -> np.ndarray:
        """Class probabilities ``[K, H, W]`` (float32, softmax of the logits) for one image."""
        return softmax(self.logits(normalize(image, self.mean, self.std)[None])[0], axis=0)

    def __call__(self, image: Any) -> np.ndarray:
        """Labels ``H x W`` (int64) for one image: the argmax of :meth:`predict_probs`, as the Predictor's."""
        return self.predict_probs(image).argmax(axis=0).astype(np.int64)

    def predict_batch(self, images: Sequence[Any], batch_size: int = 8) -> list[np.ndarray]:
        """Labels for each image; up to ``batch_size`` consecutive images of one size run together."""
        inputs = [normalize(image, self.mean, self.std) for image in images]
        labels: list[np.ndarray] = []
        start = 0
        while start < len(inputs):
            stop = start + 1
            while stop < len(inputs) and stop - start < batch_size and inputs[stop].shape == inputs[start].shape:
                stop += 1
            probs = softmax(self.logits(np.stack(inputs[start:stop])), axis=1)
            labels.extend(probs.argmax(axis=1).astype(np.int64))
            start = stop
        return labels


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "OnnxPredictor", "normalize", "softmax"]
