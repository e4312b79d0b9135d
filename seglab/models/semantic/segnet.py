"""SegNet and Bayesian SegNet on VGG16 (with BatchNorm).

Papers: Badrinarayanan, Kendall, Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image
Segmentation", TPAMI 39(12) 2017, arXiv 1511.00561; Kendall, Badrinarayanan, Cipolla, "Bayesian SegNet: Model
Uncertainty in Deep Convolutional Encoder-Decoder Architectures for Scene Understanding", BMVC 2017,
arXiv 1511.02680. Reference implementation: the Caffe nets ``segnet_train.prototxt`` and
``bayesian_segnet_train.prototxt`` of alexgkendall/SegNet-Tutorial.

Faithful to the reference nets:

- Encoder: the 13 conv layers of VGG16, each conv (3x3, with bias) + BN + ReLU, and five 2x2 stride-2 max-pools
  that **store their argmax indices**; no fc layers. It is torchvision's ``vgg16_bn`` (``weights=None``) cut at
  its pools, so ``pretrained_backbone`` loads torchvision's vgg16_bn ImageNet state dict unchanged.
- Decoder: the mirror of the encoder. Each unit first max-unpools (Caffe ``Upsample`` with the pool's mask)
  with the **indices of the matching encoder pool**, to the size of the feature before that pool, then applies
  conv+BN+ReLU layers: conv5_3_D..conv5_1_D 512; conv4_3_D, conv4_2_D 512, conv4_1_D 512->256; conv3_3_D,
  conv3_2_D 256, conv3_1_D 256->128; conv2_2_D 128, conv2_1_D 128->64; conv1_2_D 64; conv1_1_D 64->classes,
  a plain conv (bias, no BN, no ReLU) giving the logits.
- Bayesian SegNet (the "central encoder-decoder" variant of bayesian_segnet_train.prototxt): dropout p=0.5 after
  pool3, pool4 and pool5 (encdrop3-5) and after conv5_1_D, conv4_1_D and conv3_1_D (decdrop5-3). Dropout adds
  no parameters. Monte Carlo dropout inference (dropout kept on at test time, mean softmax and its variance
  over samples) is :mod:`seglab.methods.mc_dropout`; in ``eval()`` the model is deterministic (weight
  averaging).
- Pools round up (Caffe pooling, ``ceil_mode=True``) and each unpool is given the pre-pool size, so any input
  size works and the logits come out at the input size.

Deviations: inputs are normalised with ImageNet mean/std in RGB (seglab's convention, matching torchvision's
weights) instead of the Caffe models' raw BGR input; the ImageNet backbone is torchvision's vgg16_bn rather
than the Caffe VGG16 (which had no BN). The median-frequency class weights of the reference loss belong to
the training config, not the model. Bayesian SegNet-Basic (4 encoders, 64 channels, 7x7 convs) is not provided.
The unpools are :class:`seglab.models.layers.MaxUnpool2d` (``nn.MaxUnpool2d`` computed as a scatter, equal
values and gradients), so the models export to ONNX.

Parameters at 11 classes (``sum(p.numel())``): 29,449,355 for both models, equal to the reference count:
encoder 14,723,136 (vgg16_bn ``features``), decoder conv+bias+BN units 14,719,872, conv1_1_D 6,347.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seglab.models.backbones.vgg import vgg16_bn
from seglab.models.layers import ConvBNAct, MaxUnpool2d
from seglab.registry import register_model

__all__ = ["SegNet", "SegNetEncoder", "bayesian_segnet_vgg16", "segnet_vgg16"]

# The decoder's conv+BN+ReLU units (in, out), per stage, in the order the Caffe net applies them:
# conv5_3_D..conv5_1_D, conv4_3_D..conv4_1_D, ..., conv1_2_D. conv1_1_D (64 -> classes) is the classifier.
DECODER_UNITS = {
    5: ((512, 512), (512, 512), (512, 512)),
    4: ((512, 512), (512, 512), (512, 256)),
    3: ((256, 256), (256, 256), (256, 128)),
    2: ((128, 128), (128, 64)),
    1: ((64, 64),),
}
# Bayesian SegNet's dropout: after these encoder pools and after these decoder stages' last unit (conv{s}_1_D).
DROPOUT_STAGES = (3, 4, 5)


class SegNetEncoder(nn.Module):
    """torchvision's vgg16_bn ``features`` split into ``stage1..stage5`` (convs) and ``pool1..pool5``.

    The pools return their argmax indices. With ``dropout`` > 0, ``encdrop3..5`` follow pool3..pool5.
    :meth:`forward` returns the (dropped-out) pool5 feature and, for pool1..pool5, the indices and the pre-pool
    size that the decoder unpools with.
    """

    def __init__(self, *, pretrained: bool | str = False, dropout: float = 0.0) -> None:
        super().__init__()
        vgg = vgg16_bn(pretrained=pretrained)
        pool_at = [i for i, layer in enumerate(vgg.features) if isinstance(layer, nn.MaxPool2d)]
        start = 0
        for stage, end in enumerate(pool_at, 1):
            # Slicing keeps torchvision's indices as module names.
            self.add_module(f"stage{stage}", vgg.features[start:end])
            self.add_module(f"pool{stage}", nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True))
            if dropout > 0 and stage in DROPOUT_STAGES:
                self.add_module(f"encdrop{stage}", nn.Dropout(dropout))
            start = end + 1

    def forward(self, x: Tensor) -> tuple[Tensor, list[tuple[Tensor, torch.Size]]]:
        pooled = []
        for stage in range(1, 6):
            x = getattr(self, f"stage{stage}")(x)
            size = x.shape[-2:]
            x, indices = getattr(self, f"pool{stage}")(x)
            if hasattr(self, f"encdrop{stage}"):
                x = getattr(self, f"encdrop{stage}")(x)
            pooled.append((indices, size))
        return x, pooled


class SegNet(nn.Module):
    """SegNet on VGG16; ``dropout`` > 0 makes it Bayesian SegNet (central encoder-decoder dropout)."""

    def __init__(self, *, num_classes: int, pretrained_backbone: bool | str = False, dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout = dropout
        self.encoder = SegNetEncoder(pretrained=pretrained_backbone, dropout=dropout)
        # decoder{s} mirrors encoder stage s: unpool with pool{s}'s indices, then its conv units.
        for stage in range(5, 0, -1):
            units = (ConvBNAct(i, o, 3, bias=True) for i, o in DECODER_UNITS[stage])  # Caffe: conv with bias + BN
            self.add_module(f"unpool{stage}", MaxUnpool2d(2, 2))  # a scatter: exports to ONNX
            self.add_module(f"decoder{stage}", nn.Sequential(*units))
            if dropout > 0 and stage in DROPOUT_STAGES:
                self.add_module(f"decdrop{stage}", nn.Dropout(dropout))  # after conv{stage}_1_D
        self.classifier = nn.Conv2d(64, num_classes, 3, padding=1)  # conv1_1_D: no BN, no ReLU

    def forward(self, x: Tensor) -> Tensor:
        x, pooled = self.encoder(x)
        for stage in range(5, 0, -1):
            indices, size = pooled[stage - 1]
            x = getattr(self, f"unpool{stage}")(x, indices, size)
            x = getattr(self, f"decoder{stage}")(x)
            if hasattr(self, f"decdrop{stage}"):
                x = getattr(self, f"decdrop{stage}")(x)
        return self.classifier(x)


_PAPER = {
    "task": "semantic",
    "year": 2017,
    "input_size": (360, 480),
    "paper_kwargs": {"num_classes": 11},
    "paper_params": 29_449_355,
}


@register_model(
    **_PAPER,
    paper="SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image Segmentation",
    url="https://arxiv.org/abs/1511.00561",
)
def segnet_vgg16(*, num_classes: int = 11, pretrained_backbone: bool | str = False) -> SegNet:
    """SegNet: VGG16-BN encoder, decoder unpooling with the encoder's indices (segnet_train.prototxt)."""
    return SegNet(num_classes=num_classes, pretrained_backbone=pretrained_backbone)


@register_model(
    **_PAPER,
    paper="Bayesian SegNet: Model Uncertainty in Deep Convolutional Encoder-Decoder Architectures for Scene "
    "Understanding",
    url="https://arxiv.org/abs/1511.02680",
)
def bayesian_segnet_vgg16(
    *, num_classes: int = 11, dropout: float = 0.5, pretrained_backbone: bool | str = False
) -> SegNet:
    """Bayesian SegNet: SegNet with dropout after pool3-5 and conv5_1_D-conv3_1_D (bayesian_segnet_train)."""
    if not dropout > 0:
        raise ValueError(f"Bayesian SegNet needs dropout > 0, got {dropout}")
    return SegNet(num_classes=num_classes, pretrained_backbone=pretrained_backbone, dropout=dropout)
