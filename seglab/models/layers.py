"""Building blocks shared by the model families, each defined once.

- :func:`bilinear_kernel` and :class:`BilinearDeconv2d`: the bilinear-initialised transposed convolution of
  FCN (Caffe ``Deconvolution`` + ``surgery.interp``), fixed (a buffer) or learnable (a parameter).
- :class:`ConvBNAct` and :class:`DoubleConv`: convolution (+ BatchNorm) + ReLU, and the U-Net pair of them.

Everything here is built with torch ops only, so it can be constructed on the ``meta`` device.
"""

from __future__ import annotations

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


class ConvBNAct(nn.Sequential):
    """``Conv2d`` (+ ``BatchNorm2d``) + ``ReLU``; the conv has a bias only when there is no BatchNorm."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, *, padding: int = 1, batch_norm: bool = True
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=not batch_norm)
        ]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class DoubleConv(nn.Sequential):
    """Two 3x3 :class:`ConvBNAct`: the unit of each U-Net level. ``padding=False`` makes them valid (-4 px)."""

    def __init__(self, in_channels: int, out_channels: int, *, padding: bool = True, batch_norm: bool = True) -> None:
        pad = 1 if padding else 0
        super().__init__(
            ConvBNAct(in_channels, out_channels, 3, padding=pad, batch_norm=batch_norm),
            ConvBNAct(out_channels, out_channels, 3, padding=pad, batch_norm=batch_norm),
        )


def pad_to_multiple(x: Tensor, multiple: int, mode: str = "constant") -> Tensor:
    """Pad ``x`` at the bottom/right so H and W are multiples of ``multiple`` (the model's total stride);
    models crop their logits back to the input size. ``mode`` is F.pad's (zeros by default)."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % multiple, 0, -h % multiple), mode=mode)
