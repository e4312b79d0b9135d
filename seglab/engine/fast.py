"""The fast inference path: BatchNorm folded into convolutions, channels-last, bf16 autocast, ONNX Runtime.

What the :class:`~seglab.engine.inference.Predictor` and ``seglab predict`` run by default on the CPU (issue 7,
item 2). Each step keeps the model's function; only float rounding changes:

- :func:`fold_batchnorm`: a copy of the model in eval mode in which every ``BatchNorm2d`` that directly
  consumes a ``Conv2d``'s output (and is that output's only user) is folded into the conv's weight and bias
  (``torch.nn.utils.fusion.fuse_conv_bn_eval``) and replaced by ``nn.Identity``: one pass over the feature map
  less per conv. The pairs are found with ``torch.fx.symbolic_trace`` on the copy, so the graph proves that the
  BN reads the conv directly; the folding is done in place in the copy, which keeps the model's class (its
  methods, attributes, ONNX export and train-mode dict outputs stay as they were). A model fx cannot trace
  (control flow on tensor values) falls back to a module walk that folds only pairs whose order is certain:
  consecutive ``(Conv2d, BatchNorm2d)`` children of an ``nn.Sequential`` (seglab's ConvBNAct, torchvision's
  Conv2dNormActivation, ResNet's downsample) and torchvision ResNet blocks' ``convN``/``bnN``. Shared convs
  (called more than once), BNs without running statistics and BNs in training mode are never folded.
- :func:`prepare_fast`: folding, then channels-last weights and inputs (oneDNN's preferred layout on CPU for most
  convolutions; a model whose class sets ``channels_last_inference = False`` is kept in NCHW by the Predictor,
  see :func:`wants_channels_last`), and
  with ``precision="bf16"`` ``torch.autocast(dtype=torch.bfloat16)`` around the forward (``"fp16"``: float16, CUDA
  only), the logits returned as float32 so softmax and argmax run in float32. The precision is checked by
  :func:`seglab.engine.precision.resolve_precision` (bf16 only where the device supports it, else fp32 with a
  warning). For bf16 the weights of the convolution and linear layers
  are stored in bf16 once (:func:`cast_matmul_weights`): autocast would otherwise cast every weight on every
  call (the same rounding, so the outputs are bit-identical); the other layers (normalisation, the ops autocast
  keeps in float32) keep float32 parameters. seglab's models resize their final logits in float32
  (:func:`seglab.models.layers.resize_logits`): bf16 bilinear upsampling of a full-size logit map is slower
  on the CPU than float32 and would round the scores that the argmax compares.
- ``compile=True``: the prepared model also goes through ``torch.compile`` (Inductor, with ``freezing``: the
  weights become constants, convolutions get oneDNN's pre-packed weights and fused element-wise epilogues).
  It pays for itself when many images of one size are inferred (sliding windows, a resized stream): the first
  call at each input size compiles (tens of seconds), and Inductor needs a C++ compiler. Where compilation
  fails the module warns once and runs eagerly.
- :class:`OnnxRuntimeModule`: an onnxruntime session (from an ONNX file or a model exported to a temporary
  one with :func:`seglab.export.onnx.export_onnx`) behind an ``nn.Module`` forward, so whole, slide, scales
  and flip inference run through the same :func:`~seglab.engine.inference.infer_probs`.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from seglab.engine.forward import model_device
from seglab.engine.precision import AUTOCAST_DTYPES, resolve_precision

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime")


def count_batchnorm(model: nn.Module) -> int:
    """The number of ``BatchNorm2d`` modules in ``model``."""
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and type(bn) is nn.BatchNorm2d
        and not bn.training
        and not conv.training
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.running_var is not None
        and bn.num_features == conv.out_channels
    )


def _pairs_fx(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv_name, bn_name)`` pairs where the graph applies the BN directly to the conv's only output use."""
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        if len(node.args) != 1 or node.kwargs:
            continue
        source = node.args[0]
        if not isinstance(source, torch.fx.Node) or source.op != "call_module" or len(source.users) != 1:
            continue
        if calls[source.target] != 1 or calls[node.target] != 1:
            continue  # a shared module: folding would change its other uses
        if _foldable(modules[source.target], modules[node.target]):
            pairs.append((source.target, node.target))
    return pairs


def _pairs_walk(model: nn.Module) -> list[tuple[str, str]]:
    """The pairs whose order is known without tracing (see the module docstring)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    pairs = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (conv_name, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
                if _foldable(conv, bn):
                    pairs.append((prefix + conv_name, prefix + bn_name))
        elif type(module) in (BasicBlock, Bottleneck):
            for i in (1, 2, 3):
                conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
                if conv is not None and bn is not None and _foldable(conv, bn):
                    pairs.append((f"{prefix}conv{i}", f"{prefix}bn{i}"))
    # a module reachable under two names is shared: skip it
    seen: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        seen[id(module)] = seen.get(id(module), 0) + 1
    modules = dict(model.named_modules())
    return [(c, b) for c, b in pairs if seen[id(modules[c])] == 1 and seen[id(modules[b])] == 1]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with each BatchNorm2d that directly follows a Conv2d folded into it.

    The folded BNs become ``nn.Identity``; the original model is not modified. The returned model records
    how many were folded in its ``folded_batchnorm`` attribute and how they were found (``"fx"`` or
    ``"walk"``) in ``fold_method``. See the module docstring for which pairs are folded.
    """
    folded = copy.deepcopy(model).eval()
    try:
        pairs, method = _pairs_fx(folded), "fx"
    except Exception as exc:  # fx raises TraceError, TypeError, ... on data-dependent control flow
        log.info("fold_batchnorm: torch.fx cannot trace %s (%s: %s); folding by module walk instead",
                 type(model).__name__, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        pairs, method = _pairs_walk(folded), "walk"
    for conv_name, bn_name in pairs:
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        _set_submodule(folded, conv_name, fuse_conv_bn_eval(conv, bn))
        _set_submodule(folded, bn_name, nn.Identity())
    folded.folded_batchnorm = len(pairs)
    folded.fold_method = method
    log.info("fold_batchnorm: folded %d of %d BatchNorm2d in %s (%s)", len(pairs), count_batchnorm(model),
             type(model).__name__, method)
    return folded


def wants_channels_last(model: nn.Module) -> bool:
    """False when ``model`` or one of its submodules sets ``channels_last_inference = False`` (measured slower
    channels-last, e.g. UperNet's head), else True."""
    return all(getattr(m, "channels_last_inference", True) for m in model.modules())


def _to_float(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return {k: _to_float(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float(v) for v in out)
    return out


_MATMUL_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                  nn.Linear)


def cast_matmul_weights(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Store the weight and bias of every convolution and linear layer of ``model`` in ``dtype``, in place.

    These are the layers autocast runs in ``dtype``; cast once here, autocast finds them already cast instead
    of converting each weight on every call. Meant for a model that then only runs under autocast. Returns the
    number of layers cast.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, _MATMUL_LAYERS):
            module.to(dtype)
            count += 1
    return count


class FastModule(nn.Module):
    """``inner`` run with channels-last inputs and (for bf16) under autocast; floating outputs in float32.

    With ``compile=True`` the forward runs through ``torch.compile(inner)`` (see the module docstring); the
    eager ``inner`` stays the module's only submodule (its state dict) and is what runs if compilation fails.
    """

    def __init__(
        self, inner: nn.Module, *, precision: str = "fp32", channels_last: bool = True, compile: bool = False
    ) -> None:
        super().__init__()
        self.inner = inner
        self.precision = precision
        self.channels_last = channels_last
        # kept out of the submodules (no second copy of the parameters in state_dict / modules())
        self.__dict__["_compiled_inner"] = torch.compile(inner, dynamic=False) if compile else None

    @property
    def compiled(self) -> bool:
        """Whether the forward runs through ``torch.compile`` (False after a failed compilation)."""
        return self.__dict__["_compiled_inner"] is not None

    @property
    def takes_output_size(self) -> bool:
        """Whether ``inner``'s forward takes ``output_size`` (seglab.engine.affine), passed through here."""
        return bool(getattr(self.inner, "takes_output_size", False))

    def _run(self, images: torch.Tensor, **kwargs: Any) -> Any:
        runner = self.__dict__["_compiled_inner"]
        if runner is None:
            return self.inner(images, **kwargs)
        import torch._inductor.config
        from torch._dynamo.exc import BackendCompilerFailed

        try:
            # freezing applies when a graph compiles (the first call at a size); ``torch.compile(options=...)``
            # did not turn it on here (measured: LR-ASPP bf16 60 ms with the option, 25 ms with the patch)
            with torch._inductor.config.patch(freezing=True):
                return runner(images, **kwargs)
        except BackendCompilerFailed as exc:  # no C++ compiler, an op Inductor cannot lower
            log.warning("torch.compile failed for %s (%s); running eagerly", type(self.inner).__name__,
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            self.__dict__["_compiled_inner"] = None
            return self.inner(images, **kwargs)

    def forward(self, images: torch.Tensor, **kwargs: Any) -> Any:
        if self.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.precision != "fp32":
            with torch.autocast(images.device.type, dtype=AUTOCAST_DTYPES[self.precision]):
                return _to_float(self._run(images, **kwargs))
        return self._run(images, **kwargs)


def prepare_fast(
    model: nn.Module,
    *,
    precision: str = "fp32",
    channels_last: bool = True,
    fold_bn: bool = True,
    compile: bool = False,
) -> nn.Module:
    """A copy of ``model`` for fast inference (eval mode): BN folded, channels-last, bf16 autocast (with the
    conv/linear weights stored in bf16) if asked, ``torch.compile`` if asked.

    Returns a :class:`FastModule` wrapping the (folded) copy; ``model`` itself is not modified.
    """
    precision = resolve_precision(precision, model_device(model))
    inner = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
    if channels_last:
        inner = inner.to(memory_format=torch.channels_last)
    if precision != "fp32":
        cast_matmul_weights(inner, AUTOCAST_DTYPES[precision])
    return FastModule(inner, precision=precision, channels_last=channels_last, compile=compile).eval()


class OnnxRuntimeModule(nn.Module):
    """An onnxruntime session behind ``forward(images [B, 3, H, W]) -> logits [B, K, H, W]`` (CPU, float32).

    ``source`` is an ONNX file written by :func:`seglab.export.onnx.export_onnx` or a torch model, exported
    to a temporary file (traced at ``input_size``; height and width stay dynamic) that is deleted once the
    session has loaded it.
    """

    def __init__(self, source: nn.Module | str | Path, *, input_size: Sequence[int] = (512, 512)) -> None:
        super().__init__()
        from seglab.export.ort import OnnxPredictor

        if isinstance(source, nn.Module):
            from seglab.export.onnx import export_onnx

            with tempfile.TemporaryDirectory(prefix="seglab-ort-") as tmp:
                path = export_onnx(source, Path(tmp) / "model.onnx", input_size=tuple(input_size))
                self.predictor = OnnxPredictor(path)
        else:
            self.predictor = OnnxPredictor(source)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.predictor.logits(images.detach().cpu().float().numpy())
        return torch.from_numpy(logits).to(images.device)


__all__ = [
    "BACKENDS",
    "FastModule",
    "OnnxRuntimeModule",
    "cast_matmul_weights",
    "count_batchnorm",
    "fold_batchnorm",
    "prepare_fast",
    "wants_channels_last",
]
