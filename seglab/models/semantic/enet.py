"""ENet.

Paper: Paszke, Chaurasia, Kim, Culurciello, "ENet: A Deep Neural Network Architecture for Real-Time Semantic
Segmentation", arXiv 1606.02147, 2016 (no archival venue). Reference implementations: the authors' Torch code
(e-lab/ENet-training) and its PyTorch port davidtvs/PyTorch-ENet, whose layer layout this file follows.

Faithful:

- Initial block: a 3x3 stride-2 conv with 13 filters **concatenated** with a 2x2 max-pool of the input
  (3 channels), giving 16 channels at 1/2 resolution, then BatchNorm and PReLU.
- Bottlenecks with projection ratio 4: 1x1 projection (a 2x2 stride-2 conv when downsampling), the main conv
  (regular 3x3, dilated 3x3, asymmetric 5x1 then 1x5, or a 2x2 stride-2 transposed conv when upsampling),
  1x1 expansion, each followed by BatchNorm and the activation (none after the upsampling expansion), spatial
  dropout (``nn.Dropout2d``), the sum with the main branch and a final activation.
- Downsampling bottlenecks: the main branch is a 2x2 max-pool **with indices**, zero-padded in channels.
  Upsampling bottlenecks: the main branch is a 1x1 conv + BatchNorm then a max-unpool with the indices of
  the matching downsampling (stage 4 unpools with stage 2's, stage 5 with stage 1's).
- Stages: 1: downsample to 64 + 4 regular, dropout 0.01; 2: downsample to 128, then regular, dilated 2,
  asymmetric 5, dilated 4, regular, dilated 8, asymmetric 5, dilated 16, dropout 0.1; 3: stage 2 without
  the downsample; 4: upsample to 64 + 2 regular; 5: upsample to 16 + 1 regular; fullconv: a 3x3 stride-2
  transposed conv to the classes at full resolution. PReLU (one slope per layer) in the encoder, ReLU in the
  decoder, as in the reference code (``encoder_relu`` / ``decoder_relu`` switch them). Convs have no bias.

Deviations: the input is replicate-padded at the bottom/right to a multiple of 8 and the logits cropped back,
so any size works (the unpooling needs the sizes of the encoder to halve exactly). The port's initial block
uses a 3x3 stride-2 max-pool (padding 1); here it is the paper's and the Torch code's 2x2 pool (no parameters
either way). Weight initialisation is PyTorch's default. The unpooling is
:class:`seglab.models.layers.MaxUnpool2d` (``nn.MaxUnpool2d`` computed as a scatter, the same values and
gradients) so the model exports to ONNX.

Parameters at 12 classes (CamVid, ``sum(p.numel())``): 350,652, equal to the davidtvs port (351,804 at 20
classes, Cityscapes); the paper quotes 0.37M.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab.models.layers import ConvBNAct, MaxUnpool2d, pad_to_multiple
from seglab.registry import register_model

__all__ = ["ENet", "enet"]


def _activation(relu: bool) -> Callable[[], nn.Module]:
    """ENet's activation: ReLU (not in place, as the reference) or PReLU (the paper's encoder), as a factory."""
    return nn.ReLU if relu else nn.PReLU


class InitialBlock(nn.Module):
    """3x3 stride-2 conv (``out_channels - 3`` filters) concatenated with a 2x2 max-pool of the input."""

    def __init__(self, in_channels: int = 3, out_channels: int = 16, *, relu: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activation = _activation(relu)()

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


class RegularBottleneck(nn.Module):
    """Residual bottleneck: 1x1 projection, main conv (regular/dilated/asymmetric), 1x1 expansion."""

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 3,
        dilation: int = 1,
        asymmetric: bool = False,
        dropout: float = 0.0,
        relu: bool = False,
        projection_ratio: int = 4,
    ) -> None:
        super().__init__()
        internal = channels // projection_ratio
        pad = dilation * (kernel_size - 1) // 2
        act = _activation(relu)
        self.projection = ConvBNAct(channels, internal, 1, act=act)
        if asymmetric:
            self.conv = nn.Sequential(
                ConvBNAct(internal, internal, (kernel_size, 1), padding=(pad, 0), act=act),
                ConvBNAct(internal, internal, (1, kernel_size), padding=(0, pad), act=act),
            )
        else:
            self.conv = ConvBNAct(internal, internal, kernel_size, padding=pad, dilation=dilation, act=act)
        self.expansion = ConvBNAct(internal, channels, 1, act=act)
        self.dropout = nn.Dropout2d(dropout)
        self.activation = _activation(relu)()

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(x + self.dropout(self.expansion(self.conv(self.projection(x)))))


class DownsamplingBottleneck(nn.Module):
    """Halves the resolution: 2x2 stride-2 projection; main branch a max-pool with indices, zero-padded."""

    def __init__(
        self, in_channels: int, out_channels: int, *, dropout: float, relu: bool = False, projection_ratio: int = 4
    ) -> None:
        super().__init__()
        internal = in_channels // projection_ratio
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        act = _activation(relu)
        self.projection = ConvBNAct(in_channels, internal, 2, stride=2, act=act)
        self.conv = ConvBNAct(internal, internal, 3, act=act)
        self.expansion = ConvBNAct(internal, out_channels, 1, act=act)
        self.dropout = nn.Dropout2d(dropout)
        self.activation = _activation(relu)()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        main, indices = self.pool(x)
        ext = self.dropout(self.expansion(self.conv(self.projection(x))))
        main = F.pad(main, (0, 0, 0, 0, 0, ext.shape[1] - main.shape[1]))  # zero channels
        return self.activation(main + ext), indices


class UpsamplingBottleneck(nn.Module):
    """Doubles the resolution: main branch 1x1 conv + BN then max-unpool; extension a 2x2 transposed conv."""

    def __init__(
        self, in_channels: int, out_channels: int, *, dropout: float, relu: bool = True, projection_ratio: int = 4
    ) -> None:
        super().__init__()
        internal = in_channels // projection_ratio
        act = _activation(relu)
        self.main_conv = ConvBNAct(in_channels, out_channels, 1, act=None)
        self.unpool = MaxUnpool2d(2)  # nn.MaxUnpool2d as a scatter: exports to ONNX
        self.projection = ConvBNAct(in_channels, internal, 1, act=act)
        self.tconv = ConvBNAct(internal, internal, 2, stride=2, act=act, transposed=True)
        self.expansion = ConvBNAct(internal, out_channels, 1, act=None)
        self.dropout = nn.Dropout2d(dropout)
        self.activation = _activation(relu)()

    def forward(self, x: Tensor, indices: Tensor, output_size: torch.Size) -> Tensor:
        main = self.unpool(self.main_conv(x), indices, output_size)
        ext = self.dropout(self.expansion(self.tconv(self.projection(x))))
        return self.activation(main + ext)


def _stage_body(channels: int, *, dropout: float, relu: bool) -> nn.Sequential:
    """Stages 2 and 3 after the downsample: regular, dilated 2, asymmetric 5, dilated 4, regular, dilated 8,
    asymmetric 5, dilated 16."""
    kw = {"dropout": dropout, "relu": relu}
    return nn.Sequential(
        RegularBottleneck(channels, **kw),
        RegularBottleneck(channels, dilation=2, **kw),
        RegularBottleneck(channels, kernel_size=5, asymmetric=True, **kw),
        RegularBottleneck(channels, dilation=4, **kw),
        RegularBottleneck(channels, **kw),
        RegularBottleneck(channels, dilation=8, **kw),
        RegularBottleneck(channels, kernel_size=5, asymmetric=True, **kw),
        RegularBottleneck(channels, dilation=16, **kw),
    )


class ENet(nn.Module):
    """ENet; see the module docstring. ``forward`` returns logits at the input size for any H, W."""

    def __init__(
        self, *, num_classes: int, in_channels: int = 3, encoder_relu: bool = False, decoder_relu: bool = True
    ) -> None:
        super().__init__()
        enc = {"relu": encoder_relu}
        dec = {"relu": decoder_relu}
        self.initial = InitialBlock(in_channels, 16, **enc)
        self.downsample1 = DownsamplingBottleneck(16, 64, dropout=0.01, **enc)
        self.stage1 = nn.Sequential(*(RegularBottleneck(64, dropout=0.01, **enc) for _ in range(4)))
        self.downsample2 = DownsamplingBottleneck(64, 128, dropout=0.1, **enc)
        self.stage2 = _stage_body(128, dropout=0.1, **enc)
        self.stage3 = _stage_body(128, dropout=0.1, **enc)
        self.upsample4 = UpsamplingBottleneck(128, 64, dropout=0.1, **dec)
        self.stage4 = nn.Sequential(*(RegularBottleneck(64, dropout=0.1, **dec) for _ in range(2)))
        self.upsample5 = UpsamplingBottleneck(64, 16, dropout=0.1, **dec)
        self.stage5 = RegularBottleneck(16, dropout=0.1, **dec)
        self.fullconv = nn.ConvTranspose2d(16, num_classes, 3, stride=2, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, 8, mode="replicate")  # three halvings must be exact
        size = x.shape
        x = self.initial(x)
        size1 = x.shape
        x, indices1 = self.downsample1(x)
        x = self.stage1(x)
        size2 = x.shape
        x, indices2 = self.downsample2(x)
        x = self.stage3(self.stage2(x))
        x = self.stage4(self.upsample4(x, indices2, size2))
        x = self.stage5(self.upsample5(x, indices1, size1))
        x = self.fullconv(x, output_size=size[-2:])
        return x[..., :h, :w]


@register_model(
    task="semantic",
    paper="ENet: A Deep Neural Network Architecture for Real-Time Semantic Segmentation",
    year=2016,
    input_size=(360, 480),
    url="https://arxiv.org/abs/1606.02147",
    paper_kwargs={"num_classes": 12},
    paper_params=350_652,
)
def enet(
    *, num_classes: int = 12, in_channels: int = 3, encoder_relu: bool = False, decoder_relu: bool = True
) -> ENet:
    """ENet; ``paper_kwargs`` is CamVid's 12 classes (11 + unlabelled), as in the reference port."""
    return ENet(num_classes=num_classes, in_channels=in_channels, encoder_relu=encoder_relu, decoder_relu=decoder_relu)
