"""U-Net.

Paper: Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015, arXiv 1505.04597.

Faithful at the paper setting (``in_channels=1, num_classes=2, padding=False, batch_norm=False``):
a contracting path of ``depth`` levels, each two 3x3 valid convs + ReLU then a 2x2 max-pool, channels
64-128-256-512 and 1024 at the bottom; an expanding path of 2x2 up-convs (transposed conv k2 s2, halving
the channels), **concatenation** with the centre-cropped encoder feature, two 3x3 convs + ReLU; a final 1x1
conv to the classes. 23 conv layers, 31,030,658 parameters; a 572x572 input gives a 388x388 valid output.
Optional dropout (``dropout``) sits at the end of the contracting path, as in the paper.

Overlap-tile (``padding=False``): the input is mirror-padded so that the valid output covers it. At depth
``d`` the network loses ``6 * 2**d - 4`` pixels per side (92 at depth 4), and the padded size is rounded
up to one the valid convs and pools accept; the output is cropped back to the input. The paper tiles large
images; here the whole (padded) image is one tile.

Modern default (``padding=True, batch_norm=True``): padded 3x3 convs with BatchNorm, the input
mirror-padded at the bottom/right to a multiple of ``2**depth`` and the output cropped back. ``base_width``
scales all widths (they double per level) for slim versions. Not in the paper: the BatchNorm and padded
variant, and the weighted loss with border weight maps (the loss is the trainer's business).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab.models.layers import DoubleConv
from seglab.registry import register_model

__all__ = ["UNet", "mirror_pad", "unet"]


def mirror_pad(x: Tensor, left: int, right: int, top: int, bottom: int) -> Tensor:
    """Reflect-pad ``x`` by any amount (repeated reflection when a pad exceeds the image; replicate at size 1)."""
    while left or right or top or bottom:
        h, w = x.shape[-2:]
        step = (min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1))
        if not any(step):
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        x = F.pad(x, step, mode="reflect")
        left, right, top, bottom = (a - b for a, b in zip((left, right, top, bottom), step, strict=True))
    return x


class UNet(nn.Module):
    """U-Net with ``depth`` poolings; see the module docstring for the two padding modes."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 3,
        base_width: int = 64,
        depth: int = 4,
        padding: bool = True,
        batch_norm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        self.padding = padding
        widths = [base_width * 2**level for level in range(depth + 1)]
        conv = {"padding": padding, "batch_norm": batch_norm}
        encoder_in = [in_channels, *widths[:-2]]
        self.encoder = nn.ModuleList(
            DoubleConv(c_in, c_out, **conv) for c_in, c_out in zip(encoder_in, widths[:-1], strict=True)
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1], **conv)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Decoder levels from the bottom up: up-conv halves the channels, concatenation doubles them again.
        levels = list(reversed(range(depth)))
        self.upconvs = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in levels)
        self.decoder = nn.ModuleList(DoubleConv(2 * widths[i], widths[i], **conv) for i in levels)
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    @property
    def margin(self) -> int:
        """Pixels lost per side by the valid convolutions (0 when padded): ``6 * 2**depth - 4``."""
        return 0 if self.padding else 6 * 2**self.depth - 4

    def tile_size(self, size: int) -> int:
        """The smallest input size (>= ``size``) the network accepts and whose output covers ``size`` pixels.

        Padded: the next multiple of ``2**depth``. Unpadded: with bottom input size ``b``, the input is
        ``2**d * b + 4 * (2**d - 1)`` and the output ``2**d * (b - 4) - 4 * (2**d - 1)``; the smallest ``b``
        whose output is at least ``size`` is taken.
        """
        scale = 2**self.depth
        if self.padding:
            return -(-size // scale) * scale
        bottom = -(-(size + 4 * (scale - 1)) // scale) + 4
        return scale * bottom + 4 * (scale - 1)

    def forward_tile(self, x: Tensor) -> Tensor:
        """The network on an input already of a :meth:`tile_size`; unpadded, the output is smaller by
        :attr:`margin` on each side (572 -> 388 at depth 4)."""
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottleneck(x))
        for upconv, block, skip in zip(self.upconvs, self.decoder, reversed(skips), strict=True):
            x = upconv(x)
            dy, dx = (skip.shape[-2] - x.shape[-2]) // 2, (skip.shape[-1] - x.shape[-1]) // 2
            skip = skip[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]  # centre crop (no-op when padded)
            x = block(torch.cat([skip, x], dim=1))
        return self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        m = self.margin
        x = mirror_pad(x, m, self.tile_size(w) - w - m, m, self.tile_size(h) - h - m)
        return self.forward_tile(x)[..., :h, :w]


@register_model(
    task="semantic",
    paper="U-Net: Convolutional Networks for Biomedical Image Segmentation",
    year=2015,
    input_size=(572, 572),
    url="https://arxiv.org/abs/1505.04597",
    paper_kwargs={"in_channels": 1, "num_classes": 2, "padding": False, "batch_norm": False},
    paper_params=31_030_658,
)
def unet(*, num_classes: int = 2, **kwargs: Any) -> UNet:
    """U-Net; ``kwargs`` are :class:`UNet`'s (``in_channels``, ``base_width``, ``depth``, ``padding``,
    ``batch_norm``, ``dropout``), whose defaults are the modern padded + BatchNorm variant; ``paper_kwargs`` the
    paper's."""
    return UNet(num_classes=num_classes, **kwargs)
