"""Building blocks shared by the model families, each defined once.

- :func:`bilinear_kernel` and :class:`BilinearDeconv2d`: the bilinear-initialised transposed convolution of
  FCN (Caffe ``Deconvolution`` + ``surgery.interp``), fixed (a buffer) or learnable (a parameter).
- :class:`ConvBNAct` and :class:`DoubleConv`: convolution (+ norm) (+ activation), and the U-Net pair of them.
- :func:`seg_output`: the output contract of the models with auxiliary outputs (eval: logits; train: a dict).
- :func:`resize_logits`: the final bilinear upsampling of class scores to the input size, in float32.

Everything here is built with torch ops only, so it can be constructed on the ``meta`` device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def bilinear_kernel(
    channels: int, kernel_size: int, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> Tensor:
    """A ``[channels, channels, k, k]`` transposed-conv weight that upsamples each channel bilinearly.

    The 2-D filter is Caffe's ``upsample_filt`` (fcn.berkeleyvision.org ``surgery.py``); it sits on the
    channel diagonal, so channel ``c`` only feeds output channel ``c``. With ``kernel_size = 2 * stride``
    it is exact bilinear interpolation with a factor of ``stride``.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float32, device=device)
    filt_1d = 1 - (og - center).abs() / factor
    filt = filt_1d[:, None] * filt_1d[None, :]
    eye = torch.eye(channels, dtype=torch.float32, device=device)
    weight = eye[:, :, None, None] * filt
    return weight if dtype is None else weight.to(dtype)


class BilinearDeconv2d(nn.Module):
    """Transposed convolution (no bias) initialised to bilinear upsampling.

    ``learnable=False`` keeps the weight as a buffer: it is saved in the state dict (key ``weight``, as for a
    parameter) but is not trained or counted among the parameters, like Caffe's ``lr_mult: 0``.
    """

    weight: Tensor

    def __init__(self, channels: int, kernel_size: int, stride: int, *, learnable: bool = False) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        weight = bilinear_kernel(channels, kernel_size)
        if learnable:
            self.weight = nn.Parameter(weight)
        else:
            self.register_buffer("weight", weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose2d(x, self.weight, stride=self.stride)

    def extra_repr(self) -> str:
        learnable = isinstance(self.weight, nn.Parameter)
        return f"{self.weight.shape[0]}, kernel_size={self.kernel_size}, stride={self.stride}, learnable={learnable}"


Activation = Callable[[], nn.Module]
Norm = Callable[[int], nn.Module]


class ConvBNAct(nn.Sequential):
    """``Conv2d`` (or ``ConvTranspose2d``), then a norm layer, then an activation: the conv unit of every family.

    An ``nn.Sequential`` with the conv at index 0, the norm at 1 when there is one and the activation after, so
    the state-dict keys are ``0.weight`` (``0.bias``), ``1.weight``, ``1.running_mean`` ...; unpacking it
    (``nn.Sequential(*ConvBNAct(...), extra)``) keeps those indices in a longer Sequential.

    Args:
        kernel_size: an int or an (h, w) pair (asymmetric kernels).
        padding: ``None`` pads to keep the size at stride 1: ``dilation * (k - 1) // 2`` per axis.
        norm: a factory ``norm(out_channels)`` (``nn.BatchNorm2d`` by default, ``partial(nn.GroupNorm, 32)``, a
            fused BN + activation ...) or ``None`` for no norm layer.
        bias: the conv's bias; ``None`` gives it a bias only when there is no norm layer.
        act: ``"relu"`` (``nn.ReLU(inplace=True)``, the default), ``None`` for no activation, or a factory called
            with no argument (``nn.PReLU``, ``partial(nn.LeakyReLU, 0.01, inplace=True)`` ...).
        transposed: a ``ConvTranspose2d`` (learned upsampling) instead of a ``Conv2d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        *,
        stride: int = 1,
        padding: int | tuple[int, int] | None = None,
        dilation: int = 1,
        groups: int = 1,
        norm: Norm | None = nn.BatchNorm2d,
        bias: bool | None = None,
        act: str | Activation | None = "relu",
        transposed: bool = False,
    ) -> None:
        if padding is None:
            kernel = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
            padding = tuple(dilation * (k - 1) // 2 for k in kernel)
        if bias is None:
            bias = norm is None
        conv_type = nn.ConvTranspose2d if transposed else nn.Conv2d
        layers: list[nn.Module] = [
            conv_type(
                in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                groups=groups, bias=bias,
            )
        ]
        if norm is not None:
            layers.append(norm(out_channels))
        if act == "relu":
            layers.append(nn.ReLU(inplace=True))
        elif isinstance(act, str):
            raise ValueError(f"act must be 'relu', None or a module factory, got {act!r}")
        elif act is not None:
            layers.append(act())
        super().__init__(*layers)


class DoubleConv(nn.Sequential):
    """Two 3x3 :class:`ConvBNAct`: the unit of each U-Net level. ``padding=False`` makes them valid (-4 px)."""

    def __init__(self, in_channels: int, out_channels: int, *, padding: bool = True, batch_norm: bool = True) -> None:
        pad = 1 if padding else 0
        norm = nn.BatchNorm2d if batch_norm else None
        super().__init__(
            ConvBNAct(in_channels, out_channels, 3, padding=pad, norm=norm),
            ConvBNAct(out_channels, out_channels, 3, padding=pad, norm=norm),
        )


def seg_output(
    out: Tensor, aux: Sequence[Tensor] | None = None, *, training: bool, **extra: Tensor | list[Tensor]
) -> Tensor | dict[str, Tensor | list[Tensor]]:
    """seglab's output contract of a semantic (or parsing) network with auxiliary outputs.

    Eval mode: the logits ``out``. Train mode: ``{"out": out, "aux": list(aux), **extra}`` (no ``"aux"`` when
    ``aux`` is None), or ``out`` alone when there is neither ``aux`` nor ``extra`` (a model built without its
    aux head). The losses (:mod:`seglab.losses`) read that dict.
    """
    if not training or (aux is None and not extra):
        return out
    outputs: dict[str, Tensor | list[Tensor]] = {"out": out}
    if aux is not None:
        outputs["aux"] = list(aux)
    outputs.update(extra)
    return outputs


def resize_logits(logits: Tensor, size: tuple[int, int] | torch.Size, align_corners: bool = False) -> Tensor:
    """Bilinear resize of class scores to ``size`` (the input's), computed in float32.

    Under bf16 autocast the last conv returns bf16 scores; resizing them in float32 gives the argmax
    full-precision interpolation and is faster on the CPU than bf16 bilinear upsampling of the full-size map
    (the cast happens at the small size). In float32 it is ``F.interpolate`` unchanged.
    """
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=align_corners)


def pad_to_multiple(x: Tensor, multiple: int, mode: str = "constant") -> Tensor:
    """Pad ``x`` at the bottom/right so H and W are multiples of ``multiple`` (the model's total stride);
    models crop their logits back to the input size. ``mode`` is F.pad's (zeros by default)."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % multiple, 0, -h % multiple), mode=mode)


def max_unpool2d(x: Tensor, indices: Tensor, output_size: tuple[int, ...] | torch.Size) -> Tensor:
    """``F.max_unpool2d`` written as a scatter: each value of ``x`` goes to its flattened per-channel index in a
    zero ``[B, C, H * W]`` tensor (``output_size`` gives H, W; extra leading entries are ignored).

    Why: torch's TorchScript ONNX exporter has no symbolic for ``max_unpool2d``; a scatter exports as ONNX
    ``ScatterElements`` with dynamic sizes. The result equals ``F.max_unpool2d`` exactly (same values placed at
    the same positions, zeros elsewhere), and the gradient is the same gather.
    """
    height, width = output_size[-2], output_size[-1]
    flat = x.new_zeros(x.shape[0], x.shape[1], height * width)
    flat.scatter_(2, indices.flatten(2), x.flatten(2))  # in place on a fresh tensor: no copy of the zeros
    return flat.view(x.shape[0], x.shape[1], height, width)


def _adaptive_pool_matrix(size: int | Tensor, bins: int, like: Tensor) -> Tensor:
    """``[bins, size]`` averaging matrix of adaptive pooling along one axis: row ``i`` is ``1 / (end - start)``
    on ``[start, end)``, with torch's bin edges ``start = floor(i * size / bins)``, ``end = ceil((i + 1) * size /
    bins)``. Computed with tensor ops from ``size`` so a traced ``size`` stays dynamic in an exported graph."""
    positions = torch.arange(size, device=like.device)
    i = torch.arange(bins, device=like.device)
    start = torch.div(i * size, bins, rounding_mode="floor")
    end = torch.div((i + 1) * size + bins - 1, bins, rounding_mode="floor")
    inside = (positions[None, :] >= start[:, None]) & (positions[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


def adaptive_avg_pool2d(x: Tensor, output_size: int | tuple[int, int]) -> Tensor:
    """``F.adaptive_avg_pool2d`` as two products with averaging matrices (see :func:`_adaptive_pool_matrix`):
    ``P_h @ x @ P_w^T``, with torch's bin edges computed from ``x``'s (possibly traced) size.

    Why: the ONNX exporter converts adaptive pooling only when the output size divides a static input size;
    this formulation exports as ``MatMul`` with dynamic height and width. It equals ``F.adaptive_avg_pool2d`` to
    float rounding (the same bins and weights; the sums are taken in another order).
    """
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    if out_h == out_w == 1:  # one bin: the mean (a single fast reduction, ReduceMean in ONNX)
        return x.mean(dim=(-2, -1), keepdim=True)
    pool_h = _adaptive_pool_matrix(x.shape[-2], out_h, x)
    pool_w = _adaptive_pool_matrix(x.shape[-1], out_w, x)
    return pool_h @ x @ pool_w.transpose(0, 1)


class MaxUnpool2d(nn.MaxUnpool2d):
    """``nn.MaxUnpool2d`` (same arguments, same result) computed by :func:`max_unpool2d`, so it exports to ONNX.

    ``output_size`` is required: the models always pass the pre-pool size."""

    def forward(self, input: Tensor, indices: Tensor, output_size: tuple[int, ...] | torch.Size) -> Tensor:  # noqa: A002
        return max_unpool2d(input, indices, output_size)


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` (same arguments, same result) computed by :func:`adaptive_avg_pool2d`, so it
    exports to ONNX with a dynamic input size. ``None`` in ``output_size`` (keep the input size) is not supported."""

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        return adaptive_avg_pool2d(input, self.output_size)
