"""AdapNet: a ResNet-50 with multiscale residual units and a deconvolution decoder.

Paper: Valada, Vertens, Dhall, Burgard, "AdapNet: Adaptive Semantic Segmentation in Adverse Environmental
Conditions", ICRA 2017, pp. 4644-4651 (no arXiv version). Official code: DeepSceneSeg/AdapNet (TensorFlow,
``models/AdapNet.py`` and ``models/network_base.py``), whose layer list this file follows. Only the unimodal
network is built here; the CMoDE fusion of several modalities is not.

Faithful to the official code:

- Stem: an extra 3x3 conv (3 -> 3 channels) + BN + ReLU before ResNet-50's 7x7 stride-2 conv and max-pool.
- ResNet-50 (units 3, 4, 6, 3), block strides 1, 2, 2, 1: block 4 is not downsampled, so the encoder's
  output stride is 16.
- Multiscale residual units: the bottleneck's 3x3 conv is split along its output channels into two parallel
  3x3 convs of half the channels each, concatenated (``MultiscaleConv``). The last unit of block 2 and units
  3-6 of block 3 have one half at dilation 1 and one at dilation 2; all three units of block 4 have both
  halves at dilation 2 (the official ``unit_v4``, ``both_atrous=True``). The official code uses rate 2
  everywhere, not a growing series of rates.
- Dropout (keep probability 0.3, i.e. ``p=0.7``) on the residual branch of block 4's third unit, after its
  last BN and before the sum.
- Decoder: a 1x1 conv to K classes + BN on block 4's output; a 4x4 stride-2 transposed conv to 2K + BN;
  **added** to a 1x1 conv (+ BN) of block 2's output to 2K; a 16x16 stride-8 transposed conv to K + BN, back
  to the input resolution. No conv has a bias (every conv is followed by BN).

Deviations: the backbone is torchvision's ResNet-50 (v1.5: the stride of a downsampling unit is on the 3x3
conv, where the official ResNet v1 code strides the first 1x1 conv; same parameters) so its ImageNet weights
load through ``pretrained_backbone``. The split convs are initialised from the torchvision unit's 3x3 conv,
split along its output channels (first half -> first branch, second half -> second branch), exactly as the
official code splits one kernel with ``tf.split``; random or pretrained alike. The input is zero-padded at the
bottom/right to a multiple of 16 and the logits cropped back, so any H, W works. ``forward`` returns logits
(the official softmax is left to the loss).

Parameters at 12 classes (``sum(p.numel())``): 23,623,463, equal to the analytic count from the official
layer list: ResNet-50 without its fc 23,508,032 + extra stem conv 87 + skip 12,336 + score 24,600 + 2x
deconv 4,656 + 8x deconv 73,752 (the split convs have exactly the parameters of the 3x3 convs they replace).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import Bottleneck

from seglab.models.backbones.resnet import resnet
from seglab.models.layers import ConvBNAct, pad_to_multiple
from seglab.registry import register_model

__all__ = ["AdapNet", "AdapNetDecoder", "MultiscaleConv", "adapnet"]

OUTPUT_STRIDE = 16


class MultiscaleConv(nn.Module):
    """Two parallel 3x3 convs with half the output channels each, at dilations ``rates``, concatenated."""

    def __init__(self, in_channels: int, out_channels: int, rates: tuple[int, int]) -> None:
        super().__init__()
        if out_channels % 2:
            raise ValueError(f"out_channels must be even, got {out_channels}")
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, out_channels // 2, 3, padding=rate, dilation=rate, bias=False) for rate in rates
        )

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rates: tuple[int, int]) -> MultiscaleConv:
        """Split the 3x3 ``conv``'s filters in two halves, one for each branch (as ``tf.split`` does)."""
        module = cls(conv.in_channels, conv.out_channels, rates)
        with torch.no_grad():
            for branch, weight in zip(module.branches, conv.weight.chunk(2, dim=0), strict=True):
                branch.weight.copy_(weight)
        return module

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class SkipAdd(nn.Module):
    """The sum of the upsampled scores and the block-2 skip (a module so that hooks can see both operands)."""

    def forward(self, upsampled: Tensor, skip: Tensor) -> Tensor:
        return upsampled + skip


class AdapNetDecoder(nn.Module):
    """Score block 4 (K), upsample 2x to 2K, add the block-2 skip (2K), upsample 8x to K."""

    def __init__(self, block2_channels: int, block4_channels: int, num_classes: int) -> None:
        super().__init__()
        k = num_classes
        self.score = ConvBNAct(block4_channels, k, 1, act=None)
        self.up2 = ConvBNAct(k, 2 * k, 4, stride=2, padding=1, act=None, transposed=True)
        self.skip = ConvBNAct(block2_channels, 2 * k, 1, act=None)
        self.fuse = SkipAdd()
        self.up8 = ConvBNAct(2 * k, k, 16, stride=8, padding=4, act=None, transposed=True)

    def forward(self, block2: Tensor, block4: Tensor) -> Tensor:
        return self.up8(self.fuse(self.up2(self.score(block4)), self.skip(block2)))


class AdapNet(nn.Module):
    """AdapNet; see the module docstring. ``forward`` returns logits at the input size for any H, W."""

    def __init__(self, resnet: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.conv0 = ConvBNAct(3, 3, 3)
        self.backbone = IntermediateLayerGetter(resnet, return_layers={"layer2": "block2", "layer4": "block4"})
        self.decoder = AdapNetDecoder(512, 2048, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, OUTPUT_STRIDE)
        features = self.backbone(self.conv0(x))
        logits = self.decoder(features["block2"], features["block4"])
        return logits[..., :h, :w]


def _make_multiscale(unit: Bottleneck, rates: tuple[int, int]) -> None:
    unit.conv2 = MultiscaleConv.from_conv(unit.conv2, rates)


def adapnet_resnet50(*, pretrained_backbone: bool | str = False) -> nn.Module:
    """torchvision's ResNet-50 turned into AdapNet's encoder (stride 16, multiscale units, block-4 dropout)."""
    network = resnet(50, pretrained=pretrained_backbone, output_stride=OUTPUT_STRIDE)
    _make_multiscale(network.layer2[-1], (1, 2))
    for unit in network.layer3[2:]:
        _make_multiscale(unit, (1, 2))
    for unit in network.layer4:
        _make_multiscale(unit, (2, 2))
    network.layer4[2].bn3 = nn.Sequential(network.layer4[2].bn3, nn.Dropout(p=0.7))
    return network


@register_model(
    task="semantic",
    paper="AdapNet: Adaptive Semantic Segmentation in Adverse Environmental Conditions",
    year=2017,
    input_size=(384, 768),
    url="http://deepscene.cs.uni-freiburg.de",
    paper_kwargs={"num_classes": 12},
    paper_params=23_623_463,
)
def adapnet(*, num_classes: int = 12, pretrained_backbone: bool | str = False) -> AdapNet:
    """AdapNet (unimodal); ``paper_kwargs`` is the official code's default of 12 classes (void + 11)."""
    return AdapNet(adapnet_resnet50(pretrained_backbone=pretrained_backbone), num_classes)
