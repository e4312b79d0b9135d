"""Test-time inference for semantic models: whole image or sliding window, multi-scale and flip.

:func:`infer_probs` is the one place where an image batch becomes per-pixel class probabilities;
evaluation, prediction and export all go through it, so a metric and a saved mask always come from
the same computation. :func:`infer_labels` gives its argmax, skipping the softmax where a single forward pass
decides (the argmax of logits is the argmax of their softmax). :class:`Predictor` wraps them for single images
(numpy, PIL or tensors).

- **whole**: one forward pass over the full image.
- **slide** (mmsegmentation's semantics): windows of ``crop_size`` every ``stride`` pixels, the
  last window in each direction aligned to the image border so every pixel is covered; an image
  smaller than the crop is zero-padded (bottom/right; zero is the mean colour after normalisation)
  to the crop and the result cropped back. Each window's *softmax probabilities* are accumulated
  and divided by the per-pixel window count. Probabilities rather than logits: every other
  averaging here (over scales and flips) is over probabilities too, so overlapping windows, scales
  and flips are all combined the same way, and a window with large logits cannot outvote its
  neighbours. (mmsegmentation averages logits; argmax agrees wherever the windows agree.)
- **scales**: the image is resized bilinearly (``align_corners=False``) by each factor, inferred
  (whole or slide), and the probabilities resized back to the input size and averaged.
- **flip**: the horizontally flipped image is inferred too; its output is flipped back and its
  channels swapped by ``flip_pairs`` (e.g. left arm <-> right arm) before averaging.
- **affine** (SCHP's test-time procedure, seglab.engine.affine): the image is warped, aspect kept, to the
  network's input size ``crop_size`` around its centre, inferred there (with ``scales`` and ``flip``, logits
  averaged as SCHP's evaluate.py does) and the result warped back by nearest neighbour. For parsing models
  scored as SCHP scores them.
- **bounded memory**: with ``max_whole_pixels`` set (the :class:`Predictor` sets 2048 x 2048 by
  default), a whole-mode pass over an image (at a given scale) larger than that many pixels runs as
  a sliding window with the given ``crop_size``/``stride`` instead, logged at INFO, so a huge photo
  cannot exhaust memory in one forward pass. Evaluation keeps the exact mode it is asked for.

Model outputs may be a ``[B, K, h, w]`` tensor or a dict with ``"out"``; logits at another size
than their input are resized bilinearly (``align_corners=False``) to it. :func:`infer_probs` does
not change the grad mode: callers run it under ``torch.inference_mode`` (evaluate and Predictor do).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seglab.engine.forward import flip_permutation, forward_logits, model_device

if TYPE_CHECKING:
    from seglab.config import EvalConfig

log = logging.getLogger(__name__)

MODES = ("whole", "slide", "affine")
DEFAULT_MAX_WHOLE_PIXELS = 2048 * 2048


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    pair = tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{name} must be two integers (height, width), got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return int(pair[0]), int(pair[1])


def check_infer_args(
    mode: str, crop_size: int | Sequence[int], stride: int | Sequence[int], scales: Sequence[float]
) -> tuple[tuple[int, int], tuple[int, int], tuple[float, ...]]:
    """Validate the inference options; returns (crop_size, stride, scales) normalised to tuples."""
    if mode not in MODES:
        raise ValueError(f"inference mode must be one of {', '.join(MODES)}; got {mode!r}")
    crop = _pair(crop_size, "crop_size")
    step = _pair(stride, "stride")
    scale_list = tuple(float(s) for s in scales)
    if not scale_list:
        raise ValueError("scales must not be empty; use (1.0,) for single-scale inference")
    if any(not s > 0 for s in scale_list):
        raise ValueError(f"scales must be positive, got {scale_list}")
    return crop, step, scale_list


def sliding_windows(
    size: tuple[int, int], crop_size: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """The ``(y0, y1, x0, x1)`` windows that slide inference uses on an image of ``size``.

    mmsegmentation's grid: ``max(H - crop + stride - 1, 0) // stride + 1`` rows (likewise columns),
    window ``i`` starting at ``i * stride`` and shifted back so that it ends inside the image (the
    last one ends at the border). Windows are ``crop`` wide unless the image is smaller.
    """
    (h, w), (ch, cw), (sh, sw) = size, crop_size, stride
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    windows = []
    for r in range(rows):
        y1 = min(r * sh + ch, h)
        y0 = max(y1 - ch, 0)
        for c in range(cols):
            x1 = min(c * sw + cw, w)
            x0 = max(x1 - cw, 0)
            windows.append((y0, y1, x0, x1))
    return windows


def _slide_probs(
    model: nn.Module, images: torch.Tensor, crop_size: tuple[int, int], stride: tuple[int, int],
    window_batch: int = 1,
) -> torch.Tensor:
    b, _, h, w = images.shape
    pad_h, pad_w = max(crop_size[0] - h, 0), max(crop_size[1] - w, 0)
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h))
    hp, wp = images.shape[-2:]
    probs: torch.Tensor | None = None
    count = torch.zeros(1, 1, hp, wp, device=images.device)
    windows = sliding_windows((hp, wp), crop_size, stride)  # all of one size: the image is padded to the crop
    for start in range(0, len(windows), window_batch):
        group = windows[start:start + window_batch]
        tiles = torch.cat([images[:, :, y0:y1, x0:x1] for y0, y1, x0, x1 in group])
        out = forward_logits(model, tiles).softmax(dim=1)
        if probs is None:
            probs = images.new_zeros(b, out.shape[1], hp, wp, dtype=torch.float32)
        for i, (y0, y1, x0, x1) in enumerate(group):
            probs[:, :, y0:y1, x0:x1] += out[i * b:(i + 1) * b]
            count[:, :, y0:y1, x0:x1] += 1
    assert probs is not None  # sliding_windows always yields at least one window
    return probs.div_(count)[:, :, :h, :w]  # in place: the full-size map is the memory a huge image costs


def check_max_whole_pixels(value: int | None) -> int | None:
    """Validate ``max_whole_pixels``: None (never switch to slide) or a positive integer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"max_whole_pixels must be a positive integer or None, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class InferenceOptions:
    """How a semantic model is run over an image: one value passed from the config or the command line
    down to :func:`infer_probs` (instead of six keywords at every call site).

    ``mode`` whole, slide or affine, ``crop_size`` and ``stride`` of the sliding window (H, W; in affine mode
    ``crop_size`` is the network's input size, SCHP's 473 x 473 on LIP), ``scales`` and ``flip``
    (with ``flip_pairs``, the label set's left/right pairs swapped on the flipped pass) for test-time
    augmentation, ``max_whole_pixels`` the whole-mode size above which a sliding window runs instead (None:
    never), ``window_batch`` how many sliding windows run through the model as one batch (a server batches a
    large image's tiles; 1, the default, runs them one by one). Checked and normalised to tuples when built;
    :meth:`from_config` reads a config's ``eval`` section, :meth:`with_tta` applies a TTA spec such as
    ``"flip,scales=0.75,1,1.25"``.
    """

    mode: str = "whole"
    crop_size: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    flip_pairs: tuple[tuple[int, int], ...] = ()
    max_whole_pixels: int | None = None
    window_batch: int = 1

    def __post_init__(self) -> None:
        crop, step, scales = check_infer_args(self.mode, self.crop_size, self.stride, self.scales)
        object.__setattr__(self, "crop_size", crop)
        object.__setattr__(self, "stride", step)
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "flip", bool(self.flip))
        object.__setattr__(self, "flip_pairs", tuple((int(a), int(b)) for a, b in self.flip_pairs))
        object.__setattr__(self, "max_whole_pixels", check_max_whole_pixels(self.max_whole_pixels))
        if isinstance(self.window_batch, bool) or not isinstance(self.window_batch, (int, np.integer)) \
                or self.window_batch < 1:
            raise ValueError(f"window_batch must be a positive integer, got {self.window_batch!r}")

    @classmethod
    def from_config(cls, eval_cfg: EvalConfig, flip_pairs: Sequence[tuple[int, int]] = (), **changes: Any
                    ) -> InferenceOptions:
        """The options of a config's ``eval`` section (mode, crop_size, stride, scales, flip), with ``changes``."""
        e = eval_cfg
        values = dict(mode=e.mode, crop_size=tuple(e.crop_size), stride=tuple(e.stride), scales=tuple(e.scales),
                      flip=e.flip, flip_pairs=tuple(flip_pairs))
        return cls(**{**values, **changes})

    def with_tta(self, tta: str | Sequence[str] | None) -> InferenceOptions:
        """These options with flip turned on and the scales replaced as ``tta`` says (see :func:`parse_tta`)."""
        if not tta:
            return self
        flip, scales = parse_tta(tta)
        return dataclasses.replace(self, flip=self.flip or flip, scales=scales if scales is not None else self.scales)

    def replace(self, **changes: Any) -> InferenceOptions:
        """A copy with ``changes`` (checked like the original)."""
        return dataclasses.replace(self, **changes) if changes else self

    @classmethod
    def build(cls, options: InferenceOptions | None = None, **keywords: Any) -> InferenceOptions:
        """``options`` with the keyword changes, or options made from the keywords alone (the functions that
        take options also take their fields as keywords, for calls from Python)."""
        return cls(**keywords) if options is None else options.replace(**keywords)


def infer_probs(
    model: nn.Module, images: torch.Tensor, options: InferenceOptions | None = None, **keywords: Any
) -> torch.Tensor:
    """Softmax probabilities ``[B, K, H, W]`` for normalised ``images [B, 3, H, W]``, at their size.

    Runs as ``options`` say (keywords such as ``mode="slide"`` build or change them): averages over
    ``scales`` x (unflipped, flipped if ``flip``); see the module docstring. In whole mode, a (scaled) image
    of more than ``max_whole_pixels`` pixels is inferred by sliding window.
    """
    o = InferenceOptions.build(options, **keywords)
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"infer_probs: images must be a float tensor [B, 3, H, W], got "
                         f"{images.dtype} {tuple(images.shape)}")
    if o.mode == "affine":
        from seglab.engine.affine import affine_probs

        return affine_probs(model, images, o.crop_size, o.scales, o.flip, o.flip_pairs)
    h, w = images.shape[-2:]
    total: torch.Tensor | None = None
    runs = 0
    for scale in o.scales:
        size = (max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5)))
        scaled = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        slide = o.mode == "slide"
        if not slide and o.max_whole_pixels is not None and size[0] * size[1] > o.max_whole_pixels:
            log.info("image of %dx%d pixels exceeds max_whole_pixels=%d: sliding window %s, stride %s instead of "
                     "a whole-image pass", size[0], size[1], o.max_whole_pixels, o.crop_size, o.stride)
            slide = True
        for flipped in (False, True) if o.flip else (False,):
            x = scaled.flip(-1) if flipped else scaled
            if slide:
                probs = _slide_probs(model, x, o.crop_size, o.stride, o.window_batch)
            else:
                probs = forward_logits(model, x).softmax(dim=1)
            if flipped:
                probs = probs.flip(-1)[:, flip_permutation(o.flip_pairs, probs.shape[1])]
            if probs.shape[-2:] != (h, w):
                probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
            # in place (every probs here is a new tensor): one full-size map alive, not three
            total = probs if total is None else total.add_(probs)
            runs += 1
    assert total is not None
    return total if runs == 1 else total.div_(runs)


def labels_from_scores(scores: torch.Tensor) -> torch.Tensor:
    """The argmax over classes of scores ``[B, K, H, W]`` (logits or probabilities): ``[B, H, W]`` int64.

    Read class-last (channels-last memory, converted if needed): the reduction then runs over the innermost,
    contiguous dimension, 2-3x faster on the CPU than over the strided class dimension of NCHW memory, conversion
    included. Ties go to the lowest class index, as ``torch.argmax``'s.
    """
    if scores.ndim == 4 and not scores.is_contiguous(memory_format=torch.channels_last):
        scores = scores.contiguous(memory_format=torch.channels_last)
    return scores.argmax(dim=1)


def infer_labels(
    model: nn.Module, images: torch.Tensor, options: InferenceOptions | None = None, **keywords: Any
) -> torch.Tensor:
    """Label maps ``[B, H, W]`` (int64): the argmax of :func:`infer_probs`'s probabilities, computed without them
    where one forward pass decides (whole mode within ``max_whole_pixels``, one scale, no flip): the argmax of
    the logits is the argmax of their softmax, so the softmax over every pixel is skipped. What the Predictor and
    the server return; evaluation keeps :func:`infer_probs`."""
    o = InferenceOptions.build(options, **keywords)
    h, w = images.shape[-2:]
    single = (o.mode == "whole" and o.scales == (1.0,) and not o.flip
              and (o.max_whole_pixels is None or h * w <= o.max_whole_pixels))
    if single and images.ndim == 4 and images.is_floating_point():
        return labels_from_scores(forward_logits(model, images))
    return labels_from_scores(infer_probs(model, images, o))


def parse_tta(tta: str | Sequence[str]) -> tuple[bool, tuple[float, ...] | None]:
    """Read ``["flip", "scales=0.75,1,1.25"]`` (or the same joined by commas) as (flip, scales).

    ``scales`` is None when the list names none.
    """
    items = [tta] if isinstance(tta, str) else list(tta)
    tokens = [t.strip() for item in items for t in str(item).split(",") if t.strip()]
    flip, scales, in_scales = False, None, False
    for token in tokens:
        try:
            if token == "flip":
                flip, in_scales = True, False
            elif token.startswith("scales="):
                scales, in_scales = [float(token.split("=", 1)[1])], True
            elif in_scales:
                scales.append(float(token))
            else:
                raise ValueError(token)
        except ValueError:
            raise ValueError(
                f"tta: cannot read {token!r} in {tta!r}; expected e.g. ['flip', 'scales=0.75,1,1.25']"
            ) from None
    return flip, (tuple(scales) if scales is not None else None)


def _to_input(image: Any) -> torch.Tensor:
    """One image as a normalised float tensor [3, H, W] (float tensors are taken as normalised)."""
    if isinstance(image, torch.Tensor):
        if image.is_floating_point():
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"Predictor: a float tensor image must be normalised [3, H, W], got "
                                 f"{tuple(image.shape)}")
            return image.float()
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"Predictor: a tensor image must be uint8 [3, H, W] or normalised float "
                             f"[3, H, W], got {image.dtype} {tuple(image.shape)}")
    else:  # an array or a PIL image
        from seglab.data.io import rgb_array

        image = rgb_array(image, "Predictor")
    from seglab.data.transforms import normalize_image

    return normalize_image(image)


class Predictor:
    """Segment single images: ``Predictor(model)(image) -> HxW int64 labels``.

    ``image`` may be an HxWx3 uint8 array, a PIL image or a uint8 tensor ``[3, H, W]`` (normalised
    with seglab.data.transforms.normalize_image), or a float tensor ``[3, H, W]`` taken as already
    normalised. ``tta`` (e.g. ``["flip", "scales=0.75,1,1.25"]``) turns flip on and sets the scales.
    The model is put in eval mode on ``device`` (default: where the model already is).

    ``mc_samples > 0`` turns on Monte Carlo dropout (Bayesian SegNet, seglab.methods.mc_dropout): the
    probabilities are the mean softmax over ``mc_samples`` passes with dropout on (whole-image inference
    only), and :meth:`predict_uncertainty` also returns the entropy and variance. ``mc_seed`` makes the
    samples repeatable without touching the global RNG (default: the global RNG draws them).

    ``options`` (an :class:`InferenceOptions`) say how each image is run; keywords such as ``mode="slide"``,
    ``crop_size``, ``scales``, ``flip``, ``flip_pairs`` build or change them. ``max_whole_pixels`` bounds
    memory: in whole mode an image (at any scale) larger than this many pixels is inferred by sliding window
    with ``crop_size``/``stride`` (default 2048 x 2048 unless ``options`` are given; None: always whole).
    Monte Carlo dropout always runs whole images.

    The fast path (seglab.engine.fast): ``backend="torch"`` with ``fast=True`` (the default) runs, on the CPU, a
    copy of a model that has BatchNorm layers with them folded into the convolutions and channels-last tensors
    (except for models that set ``channels_last_inference = False``, such as UperNet; fp32 results equal eager
    ones up to float rounding; a model without BatchNorm runs as given);
    ``precision="bf16"`` adds bf16 autocast where the device supports it (fp32 with a warning elsewhere;
    ``"fp16"`` on CUDA), softmax in float32; ``compile=True`` also runs it through ``torch.compile``
    (worth it for many images of one size: each new size compiles first). ``backend="onnxruntime"`` exports the
    model to a temporary ONNX file (or takes ``model`` as the path of one) and runs it with onnxruntime on the
    CPU, fp32. ``self.model`` is the module that runs (the original model moved to ``device`` when nothing applies).
    """

    def __init__(
        self,
        model: nn.Module | str | Path,
        options: InferenceOptions | None = None,
        *,
        tta: Sequence[str] | str | None = None,
        device: str | torch.device | None = None,
        mc_samples: int = 0,
        mc_seed: int | None = None,
        precision: str = "fp32",
        fast: bool = True,
        backend: str = "torch",
        compile: bool = False,
        **option_keywords: Any,
    ) -> None:
        from seglab.engine.fast import BACKENDS, OnnxRuntimeModule, prepare_fast, wants_channels_last
        from seglab.engine.precision import resolve_precision

        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        if options is None:
            option_keywords.setdefault("max_whole_pixels", DEFAULT_MAX_WHOLE_PIXELS)
        self.options = InferenceOptions.build(options, **option_keywords).with_tta(tta)
        if backend == "onnxruntime":
            if precision != "fp32" or mc_samples or compile:
                raise ValueError(f"backend='onnxruntime' runs fp32 without Monte Carlo dropout or torch.compile; got "
                                 f"precision={precision!r}, mc_samples={mc_samples!r}, compile={compile!r}")
            if device is not None and torch.device(device).type != "cpu":
                raise ValueError(f"backend='onnxruntime' runs on the CPU; got device={device!r}")
            self.device = torch.device("cpu")
            self.precision = "fp32"
            self.model = OnnxRuntimeModule(model.cpu().eval() if isinstance(model, nn.Module) else model)
        else:
            if not isinstance(model, nn.Module):
                raise ValueError(f"backend='torch' needs an nn.Module, got {type(model).__name__}; for an ONNX "
                                 "file use backend='onnxruntime'")
            self.device = torch.device(device) if device is not None else model_device(model)
            self.model = model.to(self.device).eval()
            self.precision = resolve_precision(precision, self.device)
            # fast: models with BatchNorm only; others (no fold) keep running as the caller's own object
            on_cpu = self.device.type == "cpu" and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
            if (fast and on_cpu) or self.precision != "fp32" or compile:
                channels_last = bool(fast and on_cpu) and wants_channels_last(self.model)
                self.model = prepare_fast(self.model, precision=self.precision, channels_last=channels_last,
                                          fold_bn=bool(fast and on_cpu), compile=compile)
        self.backend = backend
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, (int, np.integer)) or mc_samples < 0:
            raise ValueError(f"mc_samples must be a non-negative integer, got {mc_samples!r}")
        self.mc_samples = int(mc_samples)
        self.mc_generator: torch.Generator | None = None
        if self.mc_samples:
            from seglab.methods.mc_dropout import DROPOUT_TYPES

            if not any(isinstance(m, DROPOUT_TYPES) for m in model.modules()):
                raise ValueError(f"mc_samples={self.mc_samples}: {type(model).__name__} has no dropout layers, so "
                                 "Monte Carlo dropout would repeat one prediction; use a model with dropout "
                                 "(e.g. bayesian_segnet_vgg16) or mc_samples=0")
            o = self.options
            if o.mode != "whole" or o.scales != (1.0,) or o.flip:
                raise ValueError("mc_samples > 0 supports whole-image inference only: it cannot be combined with "
                                 f"mode={o.mode!r}, scales={o.scales} or flip={o.flip}")
            if mc_seed is not None:
                self.mc_generator = torch.Generator().manual_seed(int(mc_seed))

    @property
    def flip(self) -> bool:
        return self.options.flip

    @property
    def scales(self) -> tuple[float, ...]:
        return self.options.scales

    @property
    def max_whole_pixels(self) -> int | None:
        return self.options.max_whole_pixels

    def _mc(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        from seglab.methods.mc_dropout import mc_predict

        return mc_predict(self.model, batch.to(self.device), self.mc_samples, generator=self.mc_generator)

    def _probs(self, batch: torch.Tensor) -> torch.Tensor:
        if self.mc_samples:
            return self._mc(batch)["mean"]
        with torch.inference_mode():
            return infer_probs(self.model, batch.to(self.device), self.options)

    def predict_probs(self, image: Any) -> torch.Tensor:
        """Class probabilities ``[K, H, W]`` (float32, on the CPU) for one image."""
        return self._probs(_to_input(image)[None])[0].cpu()

    def predict_uncertainty(self, image: Any) -> dict[str, Any]:
        """Monte Carlo dropout prediction for one image (needs ``mc_samples > 0``).

        Returns ``{"label": HxW int64, "mean": Tensor [K, H, W] (mean softmax, CPU), "entropy": HxW float32
        (predictive entropy of the mean, nats, in [0, log K]), "variance": HxW float32 (class-averaged variance
        of the softmax over the samples)}``.
        """
        if not self.mc_samples:
            raise ValueError("predict_uncertainty needs Monte Carlo dropout: create the Predictor with mc_samples > 0")
        out = self._mc(_to_input(image)[None])
        mean = out["mean"][0].cpu()
        return {
            "label": mean.argmax(dim=0).numpy().astype(np.int64),
            "mean": mean,
            "entropy": out["entropy"][0].cpu().numpy().astype(np.float32),
            "variance": out["variance"][0].cpu().numpy().astype(np.float32),
        }

    def _labels(self, batch: torch.Tensor) -> torch.Tensor:
        if self.mc_samples:
            return labels_from_scores(self._mc(batch)["mean"])
        with torch.inference_mode():
            return infer_labels(self.model, batch.to(self.device), self.options)

    def __call__(self, image: Any) -> np.ndarray:
        """Labels ``H x W`` (int64) for one image (:func:`infer_labels`: no softmax where one pass decides)."""
        return self._labels(_to_input(image)[None])[0].cpu().numpy().astype(np.int64)

    def predict_batch(self, images: Sequence[Any], batch_size: int = 8) -> list[np.ndarray]:
        """Labels for each image; up to ``batch_size`` consecutive images of one size run together."""
        inputs = [_to_input(image) for image in images]
        labels: list[np.ndarray] = []
        start = 0
        while start < len(inputs):
            stop = start + 1
            while stop < len(inputs) and stop - start < batch_size and inputs[stop].shape == inputs[start].shape:
                stop += 1
            pred = self._labels(torch.stack(inputs[start:stop])).cpu().numpy().astype(np.int64)
            labels.extend(pred)
            start = stop
        return labels


class InstancePredictor:
    """Detect and segment instances in single images: ``InstancePredictor(model)(image) -> dict``.

    For instance models (the torchvision detection contract): ``image`` is an HxWx3 uint8 array, a PIL
    image or a uint8 tensor ``[3, H, W]``; it enters the model as 0-1 RGB (the model normalises and
    resizes it itself). Returns the model's output dict for the image on the CPU: ``boxes`` (XYXY in
    image pixels), ``labels``, ``scores``, ``masks`` ``[N, 1, H, W]`` probabilities and, for Mask
    Scoring R-CNN, ``mask_scores``.
    """

    def __init__(self, model: nn.Module, *, device: str | torch.device | None = None) -> None:
        self.device = torch.device(device) if device is not None else model_device(model)
        self.model = model.to(self.device).eval()

    def __call__(self, image: Any) -> dict[str, torch.Tensor]:
        from seglab.data.transforms import image_tensor

        x = image_tensor(image).float() / 255.0
        with torch.inference_mode():
            out = self.model([x.to(self.device)])[0]
        return {k: v.cpu() for k, v in out.items() if isinstance(v, torch.Tensor)}


__all__ = [
    "DEFAULT_MAX_WHOLE_PIXELS",
    "InferenceOptions",
    "InstancePredictor",
    "Predictor",
    "check_infer_args",
    "check_max_whole_pixels",
    "infer_labels",
    "infer_probs",
    "labels_from_scores",
    "parse_tta",
    "sliding_windows",
]
