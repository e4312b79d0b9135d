"""The model behind the server: one runner per kind of model, each turning a batch of decoded images into
results (:meth:`run`, on the inference thread) and a result into the response's fields (:meth:`encode`, on an
encoding thread).

- :class:`SemanticRunner` (semantic and parsing models, torch): seglab's fast path (BatchNorm folded,
  channels-last, optional bf16) through :func:`seglab.engine.inference.infer_labels`, so whole, sliding-window,
  multi-scale and flip inference are the Predictor's; images of one size and options run as one batch, and a
  large image's sliding-window tiles run ``max_batch`` at a time.
- :class:`OnnxRunner` (semantic ONNX files, onnxruntime): whole images only, **no torch imported**.
- :class:`InstanceRunner` (Mask R-CNN family): a batch is a list of images of any size, as torchvision's
  detectors take them; per instance its class, score, box and mask.
- :class:`PeopleRunner` (PGN, Parsing R-CNN): one image at a time through
  :class:`seglab.engine.people.PeopleParser`; the part map and each person's box, score and pixels.

:func:`load_runner` picks one for a model folder, Hub id, weights file or ONNX file. torch is imported only by
the torch runners.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seglab.data.palettes import LabelSet
from seglab.errors import ConfigError
from seglab.serve.encode import (
    InputError,
    b64,
    class_counts,
    class_segments,
    label_png,
    mask_outputs,
    overlay_png,
    png_bytes,
)

MAX_SCALES = 4
SCALE_RANGE = (0.25, 2.0)


@dataclass(frozen=True)
class RequestOptions:
    """A request's inference options: ``mode`` whole or slide, ``flip``, ``scales`` (test-time augmentation),
    ``alpha`` of the overlay. Hashable: requests batch together only when their options are equal."""

    mode: str = "whole"
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    alpha: float = 0.5

    @property
    def tta(self) -> bool:
        return self.flip or self.scales != (1.0,)


def parse_scales(text: str) -> tuple[float, ...]:
    """``"0.75,1,1.25"`` as a tuple of scales, checked against the server's limits (InputError 400 otherwise)."""
    try:
        scales = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(400, f"scales={text!r}: expected comma-separated numbers such as 0.75,1,1.25") from None
    lo, hi = SCALE_RANGE
    if not scales or len(scales) > MAX_SCALES or not all(lo <= s <= hi for s in scales):
        raise InputError(400, f"scales={text!r}: give 1 to {MAX_SCALES} scales, each in [{lo}, {hi}]")
    return scales


class Runner:
    """What the server calls. Subclasses set ``task`` and ``modes`` and implement :meth:`run` and :meth:`encode`."""

    task = "semantic"
    backend = "torch"
    modes: tuple[str, ...] = ("whole",)
    tta = False  # flip and scales accepted
    outputs: tuple[str, ...] = ("png", "rle", "polygons", "overlay")

    def __init__(self, name: str, label_set: LabelSet, *, precision: str = "fp32",
                 preprocessing: dict[str, Any] | None = None) -> None:
        self.name = name
        self.label_set = label_set
        self.precision = precision
        self.preprocessing = dict(preprocessing or {})
        self._palette = label_set.palette_bytes()

    @property
    def default_mode(self) -> str:
        """The mode a request gets when it names none: the model folder's evaluation mode where this runner can
        run it (a Cityscapes model evaluated by sliding window is served by sliding window), else whole."""
        mode = self.preprocessing.get("mode", "whole")
        return mode if mode in self.modes else "whole"

    def check(self, options: RequestOptions) -> None:
        """Refuse options this model or backend cannot honour (InputError 400)."""
        if options.mode not in self.modes:
            raise InputError(400, f"mode={options.mode!r}: this {self.task} model ({self.backend}) runs "
                                  f"{' or '.join(self.modes)}")
        if options.tta and not self.tta:
            raise InputError(400, f"flip and scales (test-time augmentation) do not apply to this {self.task} model "
                                  f"({self.backend})")

    def key(self, image: np.ndarray, options: RequestOptions) -> Hashable:
        """Requests whose keys are equal may run as one batch (default: same size and options)."""
        return image.shape[:2], options.mode, options.flip, options.scales

    def run(self, images: list[np.ndarray], options: RequestOptions) -> list[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, image: np.ndarray, result: Any, outputs: Sequence[str], options: RequestOptions
               ) -> dict[str, Any]:
        """The response fields for one semantic result (an ``H x W`` label map): ``classes_present`` always,
        ``png`` (index PNG, base64), ``overlay`` (PNG, base64) and ``segments`` (per class ``rle`` and/or
        ``polygons``) as ``outputs`` ask."""
        label = result
        body: dict[str, Any] = {"height": int(label.shape[0]), "width": int(label.shape[1])}
        counts = class_counts(label, self.label_set.num_classes)
        body["classes_present"] = [int(c) for c in np.flatnonzero(counts)]
        if "png" in outputs:
            body["png"] = b64(label_png(label, self._palette))
        if "overlay" in outputs:
            body["overlay"] = b64(overlay_png(image, label, self.label_set.colors, options.alpha))
        if "rle" in outputs or "polygons" in outputs:
            body["segments"] = class_segments(label, self.label_set.classes, outputs)
        return body

    def card(self) -> dict[str, Any]:
        """``GET /v1/model``: the model, its task, classes and colours, and how it takes images."""
        return {
            "name": self.name, "task": self.task, "backend": self.backend, "precision": self.precision,
            "num_classes": self.label_set.num_classes, "label_set": self.label_set.name,
            "classes": list(self.label_set.classes), "colors": [list(c) for c in self.label_set.colors],
            "input": self.preprocessing, "modes": list(self.modes), "default_mode": self.default_mode, "tta": self.tta,
            "outputs": list(self.outputs),
        }


def _labels(argmax: Any) -> np.ndarray:
    """Class indices as uint8 when they fit (label PNGs hold 0..255), else int32."""
    values = np.asarray(argmax)
    return values.astype(np.uint8) if values.size == 0 or values.max() < 256 else values.astype(np.int32)


class SemanticRunner(Runner):
    """A semantic or parsing model on seglab's torch fast path (or the Predictor's onnxruntime backend)."""

    modes = ("whole", "slide")
    tta = True

    def __init__(self, model: Any, name: str, label_set: LabelSet, *, task: str = "semantic",
                 precision: str = "fp32", backend: str = "torch", window_batch: int = 8,
                 inference: dict[str, Any] | None = None, preprocessing: dict[str, Any] | None = None,
                 device: str | None = None) -> None:
        from seglab.engine.inference import InferenceOptions, Predictor

        super().__init__(name, label_set, precision=precision, preprocessing=preprocessing)
        self.task, self.backend = task, backend
        inference = dict(inference or {})
        crop = tuple(inference.get("crop_size") or (512, 512))
        stride = tuple(inference.get("stride") or (max(1, crop[0] * 2 // 3), max(1, crop[1] * 2 // 3)))
        self.predictor = Predictor(model, InferenceOptions(crop_size=crop, stride=stride), precision=precision,
                                   device=device, backend=backend)
        self.base = self.predictor.options.replace(flip_pairs=label_set.flip_pairs, window_batch=window_batch)
        self.precision = self.predictor.precision

    def run(self, images: list[np.ndarray], options: RequestOptions) -> list[np.ndarray]:
        import torch

        from seglab.data.transforms import normalize_image
        from seglab.engine.inference import DEFAULT_MAX_WHOLE_PIXELS, infer_labels

        o = self.base.replace(mode=options.mode, flip=options.flip, scales=options.scales,
                              max_whole_pixels=DEFAULT_MAX_WHOLE_PIXELS)
        batch = torch.stack([normalize_image(image) for image in images]).to(self.predictor.device)
        with torch.inference_mode():
            labels = infer_labels(self.predictor.model, batch, o).cpu().numpy()
        return [_labels(label) for label in labels]


class OnnxRunner(Runner):
    """A semantic ONNX file on onnxruntime, whole images only; imports no torch."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path) -> None:
        from seglab.data.palettes import label_set_from_metadata
        from seglab.export.ort import OnnxPredictor

        self.predictor = OnnxPredictor(path)
        meta = self.predictor.metadata
        labels = label_set_from_metadata(meta)
        super().__init__(str(meta.get("model") or Path(path).stem), labels, preprocessing={
            "input": "RGB, scaled to 0-1 and normalised with the file's mean/std", "mean": list(self.predictor.mean),
            "std": list(self.predictor.std), "resize": "none: whole images at their size", "mode": "whole"})

    def run(self, images: list[np.ndarray], options: RequestOptions) -> list[np.ndarray]:
        from seglab.export.ort import normalize

        batch = np.stack([normalize(image, self.predictor.mean, self.predictor.std) for image in images])
        return [_labels(label) for label in self.predictor.logits(batch).argmax(axis=1)]


class InstanceRunner(Runner):
    """A torchvision-contract detector (Mask R-CNN, Mask Scoring R-CNN): any sizes batch together."""

    task = "instance"

    def __init__(self, model: Any, name: str, label_set: LabelSet, class_names: Sequence[str], *,
                 score_threshold: float = 0.5, preprocessing: dict[str, Any] | None = None,
                 device: str | None = None) -> None:
        from seglab.engine.inference import InstancePredictor

        super().__init__(name, label_set, preprocessing=preprocessing)
        self.predictor = InstancePredictor(model, device=device)
        self.class_names = list(class_names)
        self.score_threshold = float(score_threshold)

    def key(self, image: np.ndarray, options: RequestOptions) -> Hashable:
        return "any"  # the detector resizes each image itself and takes a list

    def run(self, images: list[np.ndarray], options: RequestOptions) -> list[dict[str, Any]]:
        import torch

        from seglab.data.transforms import image_tensor

        inputs = [(image_tensor(image).float() / 255.0).to(self.predictor.device) for image in images]
        with torch.inference_mode():
            outputs = self.predictor.model(inputs)
        results = []
        for out in outputs:
            scores = out.get("mask_scores", out["scores"])
            keep = scores >= self.score_threshold
            results.append({
                "labels": out["labels"][keep].cpu().numpy(), "scores": scores[keep].cpu().numpy(),
                "boxes": out["boxes"][keep].cpu().numpy(),
                "masks": (out["masks"][keep][:, 0] > 0.5).cpu().numpy() if "masks" in out else None,
            })
        return results

    def _name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else str(label)

    def encode(self, image: np.ndarray, result: dict[str, Any], outputs: Sequence[str], options: RequestOptions
               ) -> dict[str, Any]:
        """``instances`` (class, score, box and the mask's ``rle``/``polygons``) by decreasing score; ``png`` the
        instance-id map (0 none, i + 1 instance i), ``overlay`` the picture with each instance drawn."""
        from seglab.visualize import draw_instances, instance_colors

        h, w = image.shape[:2]
        masks = result["masks"]
        instances = []
        for i, (label, score, box) in enumerate(zip(result["labels"], result["scores"], result["boxes"], strict=True)):
            entry: dict[str, Any] = {"id": i + 1, "class_id": int(label), "name": self._name(int(label)),
                                     "score": round(float(score), 5), "box": [round(float(v), 2) for v in box]}
            if masks is not None:
                entry.update(mask_outputs(masks[i], outputs))
            instances.append(entry)
        body: dict[str, Any] = {"height": h, "width": w, "instances": instances}
        if "png" in outputs:
            ids = np.zeros((h, w), dtype=np.uint8)
            for i in reversed(range(min(len(instances), 255)) if masks is not None else ()):  # best on top
                ids[masks[i]] = i + 1
            colors = [(0, 0, 0), *instance_colors(255)]
            body["png"] = b64(png_bytes(ids, bytes(v for c in colors for v in c)))
        if "overlay" in outputs:
            drawn = {"boxes": result["boxes"], "labels": result["labels"], "scores": result["scores"]}
            if masks is not None:
                drawn["masks"] = masks[:, None].astype(np.float32)
            body["overlay"] = b64(png_bytes(draw_instances(image, drawn, self.class_names, score_threshold=0.0,
                                                           alpha=options.alpha)))
        return body

    def card(self) -> dict[str, Any]:
        return {**super().card(), "detection_classes": self.class_names, "score_threshold": self.score_threshold}


class PeopleRunner(Runner):
    """Multi-person parsing (PGN, Parsing R-CNN): one image at a time."""

    task = "person_parsing"

    def __init__(self, model: Any, name: str, label_set: LabelSet, *, score_threshold: float = 0.5,
                 preprocessing: dict[str, Any] | None = None, device: str | None = None) -> None:
        from seglab.engine.people import PeopleParser

        super().__init__(name, label_set, preprocessing=preprocessing)
        self.parser = PeopleParser(model, score_threshold=score_threshold, device=device)
        self.score_threshold = float(score_threshold)

    def key(self, image: np.ndarray, options: RequestOptions) -> Hashable:
        return object()  # never batched: each image is grouped into people on its own

    def run(self, images: list[np.ndarray], options: RequestOptions) -> list[dict[str, Any]]:
        return [self.parser(image) for image in images]

    def encode(self, image: np.ndarray, result: dict[str, Any], outputs: Sequence[str], options: RequestOptions
               ) -> dict[str, Any]:
        """The part map as a semantic result, plus ``people``: each person's ``id``, ``score``, ``box`` and, as
        ``outputs`` ask, the ``rle``/``polygons`` of their pixels."""
        body = super().encode(image, _labels(result["parsing"]), outputs, options)
        human_ids = np.asarray(result["human_ids"])
        people = []
        for person in result["people"]:
            entry = {"id": int(person["id"]), "score": round(float(person["score"]), 5),
                     "box": [round(float(v), 2) for v in person["box"]]}
            entry.update(mask_outputs(human_ids == person["id"], outputs))
            people.append(entry)
        body["people"] = people
        return body

    def card(self) -> dict[str, Any]:
        return {**super().card(), "score_threshold": self.score_threshold}


def load_runner(model: str | Path, *, weights: str | Path | None = None, backend: str = "torch",
                precision: str = "fp32", window_batch: int = 8, device: str | None = None) -> Runner:
    """The runner for ``model``: an ONNX file (backend onnxruntime, no torch), a seglab weights file, a model
    folder or Hub id, or a registered model name with ``weights``. ``backend="onnxruntime"`` with a torch model
    runs it through the Predictor's onnxruntime backend (exported to ONNX in memory first; semantic models)."""
    path = Path(model)
    if path.suffix == ".onnx":
        if backend not in ("onnxruntime", "torch"):
            raise ConfigError(f"serve: {path} is an ONNX file; it runs on --backend onnxruntime")
        if precision != "fp32":
            raise ConfigError(f"serve: {path} runs fp32 on onnxruntime; got --precision {precision}")
        return OnnxRunner(path)
    if backend not in ("torch", "onnxruntime"):
        raise ConfigError(f"serve: unknown backend {backend!r}; expected torch or onnxruntime")

    from seglab.data.palettes import label_set_from_metadata
    from seglab.models import model_info
    from seglab.pretrained import DEFAULT_SCORE_THRESHOLD, load_any, model_reference, open_pretrained
    from seglab.tasks import task_of

    preprocessing = None
    if weights is None and path.is_file():
        loaded = load_any(None, path)
    elif weights is None and model_reference(str(model)) != "name":
        folder = open_pretrained(model)  # once: a Hub id is resolved (downloaded or read from the cache) here
        loaded = load_any(str(folder.path))
        preprocessing = folder.config.get("preprocessing")
    else:
        loaded = load_any(str(model), weights)
    info = model_info(loaded.name)
    task = task_of(info)
    labels = label_set_from_metadata(loaded.metadata)
    threshold = loaded.score_threshold if loaded.score_threshold is not None else DEFAULT_SCORE_THRESHOLD
    if backend == "onnxruntime" and (task.detection or info.people):
        raise ConfigError(f"serve: --backend onnxruntime runs semantic models; {loaded.name} is a {task.name} model")
    if task.name == "instance":
        names = list(loaded.metadata.get("classes") or labels.classes)
        return InstanceRunner(loaded.model, loaded.name, labels, names, score_threshold=threshold,
                              preprocessing=preprocessing, device=device)
    if task.name == "person_parsing" or info.people:
        return PeopleRunner(loaded.model, loaded.name, labels, score_threshold=threshold, preprocessing=preprocessing,
                            device=device)
    inference = {k: preprocessing[k] for k in ("crop_size", "stride") if k in preprocessing} if preprocessing else {}
    return SemanticRunner(loaded.model, loaded.name, labels, task=task.name, precision=precision, backend=backend,
                          window_batch=window_batch, inference=inference, preprocessing=preprocessing, device=device)


__all__ = [
    "InstanceRunner",
    "OnnxRunner",
    "PeopleRunner",
    "RequestOptions",
    "Runner",
    "SemanticRunner",
    "load_runner",
    "parse_scales",
]
