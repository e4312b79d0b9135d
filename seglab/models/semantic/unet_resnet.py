"""U-Net with a ResNet encoder: the network of segmentation_models_pytorch's ``Unet("resnetNN")``.

Paper: Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015, arXiv 1505.04597 (the U shape: an encoder, a decoder that upsamples and fuses each encoder
feature of the same resolution by **channel concatenation**). The paper's own network is :mod:`.unet`.

This is not Ronneberger's network but smp's (segmentation_models_pytorch 0.6.0, ``decoders/unet``), the U-Net
practitioners mean when they say "U-Net with a ResNet-34 encoder":

- encoder: torchvision's ResNet (18, 34 or 50) without avgpool/fc; the skips are conv1-bn1-relu (stride 2),
  maxpool + layer1 (stride 4), layer2 (8) and layer3 (16); layer4 (stride 32) is the bottom. No centre block.
- decoder: five blocks with ``decoder_channels`` (256, 128, 64, 32, 16); each upsamples 2x by **nearest**
  interpolation (the paper: a learned 2x2 up-conv), concatenates the encoder feature of that resolution
  (none for the fifth block, which returns to the input resolution), then two 3x3 conv + **BatchNorm** + ReLU
  (conv without bias; the paper has no BatchNorm).
- head: one 3x3 conv (with bias) to the classes, no activation, no upsampling (the paper: a 1x1 conv).

Why it exists: smp-trained checkpoints load into it (:mod:`seglab.convert.smp`: same encoder keys, renamed
decoder/head keys) and the benchmark against smp compares the same network (issue 7). The one deviation from
smp: smp refuses sizes that are not multiples of 32; here the input is zero-padded at the bottom/right to a
multiple of 32 and the logits are cropped back, so any size works (at multiples of 32 the outputs are smp's).
The model returns the logits Tensor in train and eval mode (no aux head).

Parameters (``sum(p.numel())``, equal to smp 0.6.0's ``Unet(name, encoder_weights=None, classes=K)``): at 21 classes
unet_resnet18 14,331,109, unet_resnet34 24,439,269, unet_resnet50 32,524,005; at 19 classes (the setting of the smp
reference counts, which are ``paper_params``) 14,330,819, 24,438,979 and 32,523,715.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab.models.backbones.resnet import resnet_features
from seglab.models.layers import ConvBNAct, pad_to_multiple
from seglab.registry import register_model

__all__ = ["DECODER_CHANNELS", "UNetResNet", "UNetDecoderBlock", "unet_resnet18", "unet_resnet34", "unet_resnet50"]

DECODER_CHANNELS = (256, 128, 64, 32, 16)
OUTPUT_STRIDE = 32
# torchvision ResNet module -> feature name; IntermediateLayerGetter stops after layer4 (no avgpool, fc)
_RETURN_LAYERS = OrderedDict(relu="stride2", layer1="stride4", layer2="stride8", layer3="stride16", layer4="stride32")


class UNetDecoderBlock(nn.Module):
    """Nearest 2x upsampling, concatenation with the skip (if any), then two 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_channels + skip_channels, out_channels, 3)
        self.conv2 = ConvBNAct(out_channels, out_channels, 3)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)  # upsampled first, then the skip: smp's channel order
        return self.conv2(self.conv1(x))


class UNetResNet(nn.Module):
    """ResNet features (strides 2..32) -> five :class:`UNetDecoderBlock` -> 3x3 classifier; any input size."""

    def __init__(
        self,
        encoder: nn.Module,
        encoder_channels: Sequence[int],
        num_classes: int,
        decoder_channels: Sequence[int] = DECODER_CHANNELS,
    ) -> None:
        """``encoder`` returns a dict of the five features (strides 2, 4, 8, 16, 32, in that order) whose
        channels are ``encoder_channels``."""
        super().__init__()
        if len(encoder_channels) != 5 or len(decoder_channels) != 5:
            raise ValueError(
                f"expected 5 encoder and 5 decoder channel counts, got {list(encoder_channels)} and "
                f"{list(decoder_channels)}"
            )
        self.encoder = encoder
        skips = [*reversed(encoder_channels[:-1]), 0]  # stride 16, 8, 4, 2, then none at stride 1
        inputs = [encoder_channels[-1], *decoder_channels[:-1]]
        self.decoder = nn.ModuleList(
            UNetDecoderBlock(c_in, c_skip, c_out)
            for c_in, c_skip, c_out in zip(inputs, skips, decoder_channels, strict=True)
        )
        self.classifier = nn.Conv2d(decoder_channels[-1], num_classes, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        features = list(self.encoder(pad_to_multiple(x, OUTPUT_STRIDE)).values())
        y = features[-1]
        skips = [*reversed(features[:-1]), None]
        for block, skip in zip(self.decoder, skips, strict=True):
            y = block(y, skip)
        return self.classifier(y)[..., :h, :w]


def _unet_resnet(depth: int, num_classes: int, pretrained_backbone: bool | str) -> UNetResNet:
    encoder = resnet_features(depth, _RETURN_LAYERS, pretrained=pretrained_backbone)
    expansion = 4 if depth >= 50 else 1
    channels = (64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion)
    return UNetResNet(encoder, channels, num_classes)


_PAPER = {
    "task": "semantic",
    "paper": "U-Net: Convolutional Networks for Biomedical Image Segmentation (smp's ResNet-encoder variant)",
    "year": 2015,
    "input_size": (512, 512),
    "url": "https://arxiv.org/abs/1505.04597",
    "paper_kwargs": {"num_classes": 19},  # the class count of the smp reference counts
}


@register_model(**_PAPER)  # no reference count for smp Unet-r18
def unet_resnet18(*, num_classes: int = 21, pretrained_backbone: bool | str = False) -> UNetResNet:
    """U-Net with a torchvision ResNet-18 encoder (smp ``Unet("resnet18")``)."""
    return _unet_resnet(18, num_classes, pretrained_backbone)


@register_model(**_PAPER, paper_params=24_438_979)
def unet_resnet34(*, num_classes: int = 21, pretrained_backbone: bool | str = False) -> UNetResNet:
    """U-Net with a torchvision ResNet-34 encoder (smp ``Unet("resnet34")``)."""
    return _unet_resnet(34, num_classes, pretrained_backbone)


@register_model(**_PAPER, paper_params=32_523_715)
def unet_resnet50(*, num_classes: int = 21, pretrained_backbone: bool | str = False) -> UNetResNet:
    """U-Net with a torchvision ResNet-50 encoder (smp ``Unet("resnet50")``)."""
    return _unet_resnet(50, num_classes, pretrained_backbone)
