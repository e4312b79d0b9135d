"""Full-Resolution Residual Networks (FRRN A and B).

Paper: Pohlen, Hermans, Mathias, Leibe, "Full-Resolution Residual Networks for Semantic Segmentation in Street
Scenes", CVPR 2017, arXiv 1611.08323. Reference implementation: the authors' Theano/Lasagne code
(TobyPDE/FRRN, ``dltools/architectures.py``, ``base_channels=48, lanes=32, multiplier=2``), whose layer list
this file follows.

Faithful:

- Stem: a 5x5 conv to 48 channels + BatchNorm + ReLU, then 3 residual units (RUs) of 48 channels. An RU is
  3x3 conv + BN + ReLU, 3x3 conv + BN, and the sum with its input (a bias-free 1x1 projection when the
  channels differ); there is no activation after the sum. Convs followed by BatchNorm have no bias.
- Two streams: the **pooling stream** (the stem's output) and the **residual stream**, a 1x1 conv 48 -> 32
  + BN (no activation) that stays at full resolution with 32 channels for the whole network.
- Full-resolution residual unit (FRRU) at scale s: the residual stream is max-pooled by s and concatenated with
  the pooling stream, then two 3x3 conv + BN + ReLU give the new pooling stream; a 1x1 conv (with bias, no BN)
  to 32 channels, upsampled (nearest) by s, is **added** to the residual stream.
- Groups (units x channels @ scale). FRRN A encoder 3x96@/2, 4x192@/4, 2x384@/8, 2x384@/16; decoder
  2x192@/8, 2x192@/4, 2x96@/2. FRRN B adds 2x384@/32 to the encoder and 2x192@/16 to the decoder. The
  pooling stream is max-pooled (2x2) before each encoder group and upsampled bilinearly by 2 before each
  decoder group and before the head.
- Head: the concatenation of the pooling and residual streams (48 + 32 channels), 3 RUs of 48 (the first with
  the 1x1 projection), and a 1x1 conv (with bias) to the classes.

Deviations: the input is replicate-padded at the bottom/right to a multiple of 16 (A) / 32 (B) and the logits
cropped back, so any H, W works. The paper's bootstrapped cross-entropy is
:class:`seglab.losses.BootstrappedCrossEntropy`, not part of the model. Weight initialisation is PyTorch's
default (the reference code uses He-uniform). The pytorch-semseg port differs from the official code (48, not
96, channels in the last decoder group: 16,559,075 / 23,567,971 parameters); this file follows the official one.

Parameters at 19 classes (Cityscapes, ``sum(p.numel())``, BatchNorm weight and bias counted): FRRN A
17,746,803 and FRRN B 24,755,699. The reference table's analytic tally of the official layer list gives
17,712,243 / 24,721,139: 34,560 fewer in both (0.2%), a term shared by A and B equal to one 3x3 conv
80 -> 48 (80 * 48 * 9). Here every conv takes the channels it actually receives, as Lasagne infers them
(e.g. the head's first RU sees 96 + 32 = 128 channels, though the code passes ``channels_in=80``, which
only decides that the RU needs a projection); which layer the analytic tally counted differently is not
pinned down. ``paper_params`` keeps the reference figure.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab.models.layers import ConvBNAct, pad_to_multiple
from seglab.registry import register_model

__all__ = ["FRRN", "FRRU", "ResidualUnit", "frrn_a", "frrn_b"]

BASE_CHANNELS = 48
RESIDUAL_CHANNELS = 32

# (units, channels, scale) of each group of FRRUs
FRRN_A_ENCODER = ((3, 96, 2), (4, 192, 4), (2, 384, 8), (2, 384, 16))
FRRN_A_DECODER = ((2, 192, 8), (2, 192, 4), (2, 96, 2))
FRRN_B_ENCODER = (*FRRN_A_ENCODER, (2, 384, 32))
FRRN_B_DECODER = ((2, 192, 16), *FRRN_A_DECODER)


class ResidualUnit(nn.Module):
    """RU: 3x3 conv + BN + ReLU, 3x3 conv + BN, plus the input (1x1 bias-free projection if channels differ)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, out_channels, 3)
        self.conv2 = ConvBNAct(out_channels, out_channels, 3, act=None)
        self.projection = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x)) + self.projection(x)


class FRRU(nn.Module):
    """Full-resolution residual unit at ``scale``: returns the new pooling stream and residual stream."""

    def __init__(
        self, in_channels: int, out_channels: int, scale: int, residual_channels: int = RESIDUAL_CHANNELS
    ) -> None:
        super().__init__()
        self.scale = scale
        self.conv1 = ConvBNAct(in_channels + residual_channels, out_channels, 3)
        self.conv2 = ConvBNAct(out_channels, out_channels, 3)
        self.conv_res = nn.Conv2d(out_channels, residual_channels, 1)

    def forward(self, pooling: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        pooled = F.max_pool2d(residual, self.scale) if self.scale > 1 else residual
        pooling = self.conv2(self.conv1(torch.cat([pooling, pooled], dim=1)))
        update = self.conv_res(pooling)
        if self.scale > 1:
            update = F.interpolate(update, scale_factor=self.scale, mode="nearest")
        return pooling, residual + update


def _group(in_channels: int, units: int, channels: int, scale: int) -> nn.ModuleList:
    return nn.ModuleList(FRRU(in_channels if i == 0 else channels, channels, scale) for i in range(units))


def _upsample(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class FRRN(nn.Module):
    """FRRN; see the module docstring. ``forward`` returns logits at the input size for any H, W."""

    def __init__(
        self,
        *,
        num_classes: int,
        encoder: tuple[tuple[int, int, int], ...],
        decoder: tuple[tuple[int, int, int], ...],
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        base, lanes = BASE_CHANNELS, RESIDUAL_CHANNELS
        self.divisor = max(scale for _, _, scale in encoder)
        self.stem = nn.Sequential(
            ConvBNAct(in_channels, base, 5), *(ResidualUnit(base, base) for _ in range(3))
        )
        self.split = ConvBNAct(base, lanes, 1, act=None)
        groups, channels = [], base
        for units, out_channels, scale in encoder:
            groups.append(_group(channels, units, out_channels, scale))
            channels = out_channels
        self.encoder = nn.ModuleList(groups)
        groups = []
        for units, out_channels, scale in decoder:
            groups.append(_group(channels, units, out_channels, scale))
            channels = out_channels
        self.decoder = nn.ModuleList(groups)
        self.head = nn.Sequential(
            ResidualUnit(channels + lanes, base), ResidualUnit(base, base), ResidualUnit(base, base)
        )
        self.classifier = nn.Conv2d(base, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.divisor, mode="replicate")
        pooling = self.stem(x)
        residual = self.split(pooling)
        for group in self.encoder:
            pooling = F.max_pool2d(pooling, 2)
            for unit in group:
                pooling, residual = unit(pooling, residual)
        for group in self.decoder:
            pooling = _upsample(pooling)
            for unit in group:
                pooling, residual = unit(pooling, residual)
        x = self.head(torch.cat([_upsample(pooling), residual], dim=1))
        return self.classifier(x)[..., :h, :w]


_PAPER = {
    "task": "semantic",
    "paper": "Full-Resolution Residual Networks for Semantic Segmentation in Street Scenes",
    "year": 2017,
    "url": "https://arxiv.org/abs/1611.08323",
    "paper_kwargs": {"num_classes": 19},
}


@register_model(**_PAPER, input_size=(256, 512), paper_params=17_712_243)
def frrn_a(*, num_classes: int = 19, in_channels: int = 3) -> FRRN:
    """FRRN A (four pooling steps, trained at a quarter of Cityscapes' resolution); Cityscapes' 19 classes."""
    return FRRN(num_classes=num_classes, encoder=FRRN_A_ENCODER, decoder=FRRN_A_DECODER, in_channels=in_channels)


@register_model(**_PAPER, input_size=(512, 1024), paper_params=24_721_139)
def frrn_b(*, num_classes: int = 19, in_channels: int = 3) -> FRRN:
    """FRRN B (five pooling steps, trained at half of Cityscapes' resolution); Cityscapes' 19 classes."""
    return FRRN(num_classes=num_classes, encoder=FRRN_B_ENCODER, decoder=FRRN_B_DECODER, in_channels=in_channels)
