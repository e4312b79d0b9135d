"""VGG16 (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015, arXiv 1409.1556) as a segmentation encoder, built from ``torchvision.models.vgg16``.

The network is torchvision's own module (``weights=None``), so torchvision's ImageNet state dict
(``features.*``, ``classifier.*``; 138,357,544 parameters, 14,714,688 of them in ``features``) loads into
it unchanged. :class:`VGG16Encoder` then takes it apart: the stages ending at pool3 / pool4 / pool5
(:func:`vgg16_stages`) and, for fully convolutional use, the classifier's fc6/fc7 turned into a 7x7 and a
1x1 convolution carrying the Linear weights (:func:`classifier_to_conv`). :func:`dilated_vgg16_features` is
DeepLab-LargeFOV's output-stride-8 VGG16 (pool4/pool5 stride 1, conv5 dilated 2), for DeepLabv3-VGG16 and
SS-JPPNet; :func:`vgg16_bn` the BatchNorm variant SegNet's encoder is cut from.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.models import VGG, VGG16_BN_Weights, VGG16_Weights
from torchvision.models import vgg16 as tv_vgg16
from torchvision.models import vgg16_bn as tv_vgg16_bn
from torchvision.models._utils import IntermediateLayerGetter

from seglab.models.backbones import load_backbone_weights

__all__ = [
    "VGG16_STAGE_ENDS",
    "VGG16Encoder",
    "classifier_to_conv",
    "dilated_vgg16_features",
    "vgg16",
    "vgg16_bn",
    "vgg16_stages",
]

# End (exclusive) of each pooling stage in torchvision's ``vgg16().features``: the max-pools sit at indices
# 4, 9, 16, 23 and 30.
VGG16_STAGE_ENDS = {"pool1": 5, "pool2": 10, "pool3": 17, "pool4": 24, "pool5": 31}


def vgg16(*, pretrained: bool | str = False) -> VGG:
    """torchvision's VGG16, with ``pretrained`` weights loaded as :func:`load_backbone_weights` resolves them."""
    model = tv_vgg16(weights=None)
    load_backbone_weights(model, pretrained, torchvision_weights=VGG16_Weights)
    return model


def vgg16_bn(*, pretrained: bool | str = False) -> VGG:
    """torchvision's VGG16 with BatchNorm after every conv (``vgg16_bn``), ``pretrained`` as for :func:`vgg16`."""
    model = tv_vgg16_bn(weights=None)
    load_backbone_weights(model, pretrained, torchvision_weights=VGG16_BN_Weights)
    return model


def vgg16_stages(features: nn.Sequential, ends: Sequence[str] = ("pool3", "pool4", "pool5")) -> list[nn.Sequential]:
    """Split ``vgg16().features`` into consecutive stages ending at the named pools (the modules are shared).

    The first stage starts at conv1_1. Slicing keeps torchvision's indices as module names.
    """
    stages, start = [], 0
    for name in ends:
        end = VGG16_STAGE_ENDS[name]
        if end <= start:
            raise ValueError(f"stage ends must be increasing, got {list(ends)}")
        stages.append(features[start:end])
        start = end
    return stages


def dilated_vgg16_features(*, pretrained: bool | str = False) -> IntermediateLayerGetter:
    """torchvision's VGG16 ``features`` at output stride 8, as DeepLab-LargeFOV (v1/v2) sets them.

    pool4 and pool5 become 3x3 max-pools with stride 1 and padding 1, and conv5_1..conv5_3 are dilated 2
    (padding 2), so pool5 ("out", 512 channels) is at 1/8 of the input. The weights are torchvision's
    (``pretrained`` loads a torchvision VGG16 state dict; its classifier is dropped).
    """
    features = vgg16(pretrained=pretrained).features
    for index in (VGG16_STAGE_ENDS["pool4"] - 1, VGG16_STAGE_ENDS["pool5"] - 1):
        features[index] = nn.MaxPool2d(3, stride=1, padding=1)
    for layer in features[VGG16_STAGE_ENDS["pool4"] : VGG16_STAGE_ENDS["pool5"]]:
        if isinstance(layer, nn.Conv2d):
            layer.dilation, layer.padding = (2, 2), (2, 2)
    return IntermediateLayerGetter(features, return_layers={str(VGG16_STAGE_ENDS["pool5"] - 1): "out"})


def classifier_to_conv(classifier: nn.Sequential) -> tuple[nn.Conv2d, nn.Conv2d]:
    """fc6 and fc7 of VGG's classifier as convolutions: fc6 a 7x7 conv 512->4096, fc7 a 1x1 conv 4096->4096.

    The conv weights are the Linear weights reshaped (a view, no copy), so the convs compute exactly what the
    Linear layers compute on a 7x7 window of pool5 flattened in (C, H, W) order.
    """
    fc6, fc7 = classifier[0], classifier[3]
    if not (isinstance(fc6, nn.Linear) and isinstance(fc7, nn.Linear)):
        raise TypeError("expected torchvision's VGG classifier (Linear at indices 0 and 3)")
    convs = []
    for linear, in_channels, k in ((fc6, fc6.in_features // 49, 7), (fc7, fc7.in_features, 1)):
        conv = nn.Conv2d(in_channels, linear.out_features, k, device="meta")  # weights replaced just below
        conv.weight = nn.Parameter(linear.weight.detach().view(linear.out_features, in_channels, k, k))
        conv.bias = nn.Parameter(linear.bias.detach())
        convs.append(conv)
    return convs[0], convs[1]


class VGG16Encoder(nn.Module):
    """VGG16 returning ``{"pool3", "pool4", "pool5"[, "fc7"]}`` features (strides 8, 16, 32).

    Args:
        pretrained: ``pretrained_backbone`` (see :mod:`seglab.models.backbones`).
        conv1_padding: padding of conv1_1 (FCN uses 100).
        ceil_mode: max-pools round up, as Caffe's pooling does.
        fully_convolutional: add fc6 (7x7 conv, no padding) and fc7 (1x1 conv) from the classifier, each
            followed by ReLU and dropout ``dropout``; the output ``"fc7"`` has 4096 channels.
    """

    out_channels = {"pool3": 256, "pool4": 512, "pool5": 512, "fc7": 4096}

    def __init__(
        self,
        *,
        pretrained: bool | str = False,
        conv1_padding: int = 1,
        ceil_mode: bool = False,
        fully_convolutional: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        vgg = vgg16(pretrained=pretrained)
        vgg.features[0].padding = (conv1_padding, conv1_padding)
        for layer in vgg.features:
            if isinstance(layer, nn.MaxPool2d):
                layer.ceil_mode = ceil_mode
        self.to_pool3, self.to_pool4, self.to_pool5 = vgg16_stages(vgg.features)
        self.fully_convolutional = fully_convolutional
        if fully_convolutional:
            self.fc6, self.fc7 = classifier_to_conv(vgg.classifier)
            self.relu6, self.drop6 = nn.ReLU(inplace=True), nn.Dropout(dropout)
            self.relu7, self.drop7 = nn.ReLU(inplace=True), nn.Dropout(dropout)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        pool3 = self.to_pool3(x)
        pool4 = self.to_pool4(pool3)
        pool5 = self.to_pool5(pool4)
        out = {"pool3": pool3, "pool4": pool4, "pool5": pool5}
        if self.fully_convolutional:
            fc6 = self.drop6(self.relu6(self.fc6(pool5)))
            out["fc7"] = self.drop7(self.relu7(self.fc7(fc6)))
        return out
