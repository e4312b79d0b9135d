"""Export seglab's semantic, parsing and detection models to ONNX, with the metadata needed to run them.

:func:`export_onnx` traces a model in eval mode with torch's TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``: it needs no onnxscript and handles every seglab model's control
flow by tracing) and writes one ONNX file, atomically:

- input ``"image"`` float32 ``[B, 3, H, W]``, RGB scaled to 0-1, normalised with the ImageNet mean/std;
- output ``"logits"`` float32 ``[B, K, H, W]`` at the input's size (a dict output contributes its ``"out"``);
- batch, height and width dynamic (``dynamic=True``); ``input_size`` is only the size traced;
- seglab's metadata in the model's ``metadata_props``, each value JSON-encoded: ``model``, ``num_classes``,
  ``label_set``, ``mean``, ``std`` and whatever else ``metadata`` adds (model_kwargs, classes, ...), so
  :class:`seglab.export.ort.OnnxPredictor` needs nothing but the file;
- the graph is checked with ``onnx.checker``. A model the exporter cannot convert (an operator without an
  ONNX symbolic at the opset) raises :class:`ExportError` naming the model and the operator.

Tracing records Python control flow on shapes as constants. Models that pad to a stride multiple compute the
padding from traced sizes, so it stays dynamic; the tests check every exported model against PyTorch at two
sizes other than the traced one.

Mask R-CNN and the other torchvision detection models export the way torchvision documents it, at a fixed
size: input ``"image"`` float32 ``[3, H, W]`` RGB in 0-1 (the model normalises and resizes inside), one image
per run, outputs ``"boxes"``, ``"labels"``, ``"scores"``, ``"masks"`` with a dynamic detection count; the
metadata says ``task: "instance"`` and ``input_size``. Checked with torch 2.14 / torchvision's exporter at opset
17: ``mask_rcnn_resnet50_fpn`` exports and onnxruntime's boxes match PyTorch's to ~2e-3 px on a 128 x 128 input.

Parsing R-CNN (``parsing_rcnn_resnet50_fpn``) exports the same way with outputs ``"boxes"``, ``"labels"``,
``"scores"``, ``"parsing"`` int64 ``[N, H, W]`` (part labels pasted at the input size), ``"parsing_scores"``, and
``task: "parsing_instance"``. It is traced through :class:`seglab.export.parsing_rcnn.ParsingRCNNExport`, the
model's eval steps in a form that keeps the detection count dynamic (its output equals the model's, bit for bit,
in PyTorch): the paste-back is a TorchScript loop (an ONNX ``Loop``, one person's ``C x H x W`` at a time) and the
parsing head runs on one extra, discarded RoI so that an image without persons runs too. Checked at 128 x 128
with 4, 1 and 0 persons: boxes within ~5e-4 px, scores within 1e-5, part labels equal on all but a pixel or so
(an argmax tie within float error may flip). Only the input size traced is supported; :class:`OnnxPredictor`
runs semantic files only and refuses a file whose metadata names another task.

Every semantic model exports at opset 17 with dynamic sizes. The two operators torch's exporter cannot convert
are avoided by the models themselves, with equal results: ENet and (Bayesian) SegNet unpool with
:func:`seglab.models.layers.max_unpool2d` (a scatter: ONNX ``ScatterElements``; torch has no ``max_unpool2d``
symbolic), UperNet's pyramid pooling uses :func:`seglab.models.layers.adaptive_avg_pool2d` (products with
averaging matrices computed from the traced size; ``aten::adaptive_avg_pool2d`` only converts for a static
input size that the output size divides). The slow sweep in tests/test_export_onnx.py checks every semantic and
parsing model.

torch is imported inside the functions only, so importing this module (or :mod:`seglab.export`) stays
torch-free.
"""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seglab.errors import CheckpointError, SeglabError
from seglab.export.ort import IMAGENET_MEAN, IMAGENET_STD, INPUT_NAME, OUTPUT_NAME
from seglab.utils import atomic_write, decode_json_values

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

MIN_OPSET = 17


class ExportError(SeglabError):
    """A model cannot be exported to ONNX (an unsupported operator or model type, a bad option)."""


def _unsupported_op(message: str) -> str | None:
    """The operator an exporter error names (``aten::foo``), if any."""
    match = re.search(r"export of operator ([\w.:]+)", message)  # SymbolicValueError's wording
    if match:
        return match.group(1) if "::" in match.group(1) else f"aten::{match.group(1)}"
    match = re.search(r"operator '?((?:aten|prim|torchvision|quantized)::[\w.]+)'?", message)
    return match.group(1) if match else None


def _traceback_op(exc: BaseException) -> str | None:
    """The innermost ``torch.nn.functional`` function in the exception's traceback (``F.max_unpool2d``)."""
    found, tb = None, exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename.replace("\\", "/").endswith("torch/nn/functional.py") and not code.co_name.startswith("_"):
            found = f"torch.nn.functional.{code.co_name}"
        tb = tb.tb_next
    return found


def _logits_module(model: nn.Module) -> nn.Module:
    """``model`` wrapped to return only its logits tensor (the ``"out"`` of a dict output)."""
    from torch import nn

    class LogitsOnly(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, image):
            out = self.inner(image)
            return out["out"] if isinstance(out, dict) else out

    return LogitsOnly(model)


def _encode(metadata: dict[str, Any]) -> dict[str, str]:
    try:
        return {str(k): json.dumps(v) for k, v in metadata.items()}
    except TypeError as exc:
        raise ExportError(f"export metadata must be JSON-serialisable: {exc}") from None


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    input_size: Sequence[int] = (512, 512),
    opset: int = MIN_OPSET,
    dynamic: bool = True,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Export a semantic (or dense parsing) ``model`` to ONNX at ``path``; see the module docstring. Returns ``path``.

    A torchvision detection model (Mask R-CNN, Parsing R-CNN) exports at the fixed size ``input_size``
    (``dynamic`` does not apply to it) with its own outputs and ``task`` metadata.

    ``metadata`` overrides or extends the recorded facts (``model`` defaults to the class name,
    ``num_classes`` to the output's channel count, ``label_set`` to None, ``mean``/``std`` to ImageNet's).
    """
    import onnx
    import torch

    meta = dict(metadata or {})
    name = str(meta.get("model") or type(model).__name__)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ExportError(f"{name}: opset must be an integer >= {MIN_OPSET}, got {opset!r}")
    size = tuple(input_size)
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise ExportError(f"{name}: input_size must be two positive integers (height, width), got {input_size!r}")
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    was_training = model.training
    if isinstance(model, GeneralizedRCNN):
        return _export_detection(model, Path(path), name, size, opset, meta)
    wrapped = _logits_module(model).eval()
    example = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            logits = wrapped(example)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 4 or tuple(logits.shape[-2:]) != size:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ExportError(f"{name}: expected logits [B, K, {size[0]}, {size[1]}] for an input of that size, "
                              f"got {got}")
        axes = {0: "batch", 2: "height", 3: "width"}
        buffer = io.BytesIO()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", torch.jit.TracerWarning)
            torch.onnx.export(
                wrapped, (example,), buffer, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                opset_version=opset, dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes} if dynamic else None,
                do_constant_folding=True, dynamo=False,
            )
        for w in caught:
            if issubclass(w.category, torch.jit.TracerWarning):
                log.warning("%s: tracer: %s", name, w.message)
    except ExportError:
        raise
    except Exception as exc:  # the exporter raises UnsupportedOperatorError, SymbolicValueError, RuntimeError
        op = _unsupported_op(str(exc)) or _traceback_op(exc)
        what = f"operator {op} is not supported" if op else "the exporter failed"
        raise ExportError(f"{name}: cannot export to ONNX at opset {opset}: {what} ({type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from exc
    finally:
        model.train(was_training)

    proto = onnx.load_from_string(buffer.getvalue())
    facts = {"model": name, "num_classes": int(logits.shape[1]), "label_set": None,
             "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), **meta}
    for key, value in _encode(facts).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "seglab"
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{name}: the exported ONNX graph fails onnx.checker: {exc}") from None
    return atomic_write(path, lambda tmp: onnx.save(proto, str(tmp)))


def _relax_loop_shapes(proto: Any) -> None:
    """Drop the traced shapes of ``Loop`` bodies' carried values: Parsing R-CNN's paste grows one by a detection
    each iteration, and onnxruntime warns at every iteration when it outgrows the shape the trace recorded."""
    for node in proto.graph.node:
        if node.op_type != "Loop":
            continue
        body = next(a.g for a in node.attribute if a.name == "body")
        carried = {v.name for v in [*body.input[2:], *body.output[1:]]}  # after the iteration count and condition
        for info in [*body.input[2:], *body.output[1:], *(v for v in body.value_info if v.name in carried)]:
            if info.type.HasField("tensor_type"):
                info.type.tensor_type.ClearField("shape")


def _export_detection(
    model: nn.Module, path: Path, name: str, size: tuple[int, int], opset: int, meta: dict[str, Any]
) -> Path:
    """torchvision's fixed-size export of a detection model, Parsing R-CNN included (see the module docstring)."""
    import onnx
    import torch

    from seglab.models.parsing.parsing_rcnn import ParsingRCNN

    was_training = model.training
    model.eval()
    if isinstance(model, ParsingRCNN):
        from seglab.export.parsing_rcnn import OUTPUT_NAMES, ParsingRCNNExport

        traced, outputs, task = ParsingRCNNExport(model).eval(), list(OUTPUT_NAMES), "parsing_instance"
    else:
        traced, outputs, task = model, ["boxes", "labels", "scores", "masks"], "instance"
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(traced, ([image],), buffer, input_names=[INPUT_NAME], output_names=outputs,
                              opset_version=opset, dynamic_axes={k: {0: "detections"} for k in outputs},
                              do_constant_folding=True, dynamo=False)
    except Exception as exc:
        op = _unsupported_op(str(exc)) or _traceback_op(exc)
        raise ExportError(f"{name}: cannot export to ONNX at opset {opset}: "
                          f"{f'operator {op} is not supported' if op else 'the exporter failed'} "
                          f"({type(exc).__name__})") from exc
    finally:
        model.train(was_training)
    proto = onnx.load_from_string(buffer.getvalue())
    _relax_loop_shapes(proto)
    facts = {"model": name, "task": task, "input_size": list(size), **meta}
    for key, value in _encode(facts).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "seglab"
    onnx.checker.check_model(proto)
    return atomic_write(path, lambda tmp: onnx.save(proto, str(tmp)))


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The seglab metadata stored in an ONNX file's ``metadata_props`` (JSON values decoded)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends from protobuf
        raise CheckpointError(f"{path}: not a readable ONNX file ({exc})") from None
    return decode_json_values({p.key: p.value for p in proto.metadata_props})


def export_weights(
    path: str | Path,
    weights: str | Path | None,
    *,
    config: str | Path | None = None,
    model_name: str | None = None,
    input_size: Sequence[int] = (512, 512),
    opset: int = MIN_OPSET,
) -> Path:
    """Build a model from a config (or from the weights' metadata), load ``weights`` and export it to ``path``.

    The model, its options and the label set come from ``config`` when given, else from the metadata seglab
    stores in its weights files; ``model_name`` overrides the name, or names a model folder or Hugging Face Hub id
    to export instead of ``weights`` (:func:`seglab.pretrained.load_any`). What the CLI's ``seglab export`` runs.
    """
    from seglab.data.palettes import label_set_metadata
    from seglab.pretrained import load_any

    cfg = None
    if config is not None:
        from seglab.config import load_config

        cfg = load_config(config)
    loaded = load_any(model_name, weights, config=cfg)
    meta = loaded.metadata
    if cfg is not None and weights is not None:
        from seglab.data import label_set_for

        labels = label_set_metadata(label_set_for(cfg.data))
    else:
        labels = {k: meta[k] for k in ("label_set", "label_set_classes", "label_set_colors") if k in meta}
    extra = {"model": loaded.name, "label_set": None, **labels, "model_kwargs": loaded.kwargs}
    if meta.get("classes"):
        extra["classes"] = meta["classes"]
    return export_onnx(loaded.model, path, input_size=input_size, opset=opset, metadata=extra)


__all__ = ["MIN_OPSET", "ExportError", "export_onnx", "export_weights", "read_onnx_metadata"]
