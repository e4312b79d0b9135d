"""FCN-32s / FCN-16s / FCN-8s on VGG16.

Paper: Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015,
arXiv 1411.4038 (extended version: TPAMI 2017, arXiv 1605.06211). Reference implementation: the Caffe nets
voc-fcn32s, voc-fcn16s and voc-fcn8s of shelhamer/fcn.berkeleyvision.org.

Faithful to the reference nets:

- VGG16 with ``pad=100`` on conv1_1 and max-pools that round up (Caffe pooling), so every input size works;
  fc6 a 7x7 conv (4096, no padding) and fc7 a 1x1 conv (4096), each followed by ReLU and dropout 0.5;
  score_fr a 1x1 conv to the classes. fc6/fc7 carry the ImageNet classifier weights when pretrained.
- Fusion by element-wise sum: FCN-16s adds ``upscore2`` (deconv k4 s2 of score_fr) and the cropped
  ``score_pool4`` (1x1 conv on pool4), then ``upscore16`` (k32 s16); FCN-8s adds once more
  ``upscore_pool4`` (k4 s2) and the cropped ``score_pool3``, then ``upscore8`` (k16 s8); FCN-32s only has
  ``upscore`` (k64 s32). A final crop aligns the output with the input.
- The crop offsets are those Caffe's ``Crop`` layer infers from the layers' coordinate maps (computed by
  :func:`_crop_offsets` below, not hard-coded): score_pool4c 5 and final 27 (FCN-16s); score_pool4c 5,
  score_pool3c 9 and final 31 (FCN-8s); final 19 (FCN-32s).
- The deconvolutions have no bias, are initialised to bilinear interpolation and are fixed (``lr_mult: 0``):
  here they are buffers, not parameters. ``learnable_upsampling=True`` makes them parameters, as in the
  CVPR paper (the reference README reports no significant difference).
- score_fr, score_pool4 and score_pool3 are zero-initialised (Caffe's default filler).

Deviations: inputs are normalised with ImageNet mean/std in RGB (seglab's convention, matching torchvision's
VGG16 weights), not Caffe's BGR mean subtraction; the ImageNet backbone is torchvision's VGG16 rather than
the Caffe VGG16 model. The "at-once" FCN-8s (pool4 scaled by 0.01, pool3 by 0.0001) is not provided; the
reference's staged training (FCN-16s initialised from FCN-32s, ...) is left to the training config.

Parameters at 21 classes (``sum(p.numel())``): FCN-32s 134,346,581, FCN-16s 134,357,354,
FCN-8s 134,362,751, equal to the reference nets' learnable parameters; the fixed bilinear weights add
1,806,336 / 458,640 / 127,008 buffer elements.
"""

from __future__ import annotations

from torch import Tensor, nn

from seglab.models.backbones.vgg import VGG16Encoder
from seglab.models.layers import BilinearDeconv2d
from seglab.registry import register_model

__all__ = ["FCN", "fcn8s_vgg16", "fcn16s_vgg16", "fcn32s_vgg16"]

# A blob's coordinate map: image coordinate = scale * blob coordinate + shift (Caffe's coord_map).
CoordMap = tuple[float, float]


def _through(blob: CoordMap, kernel: int, stride: int, pad: int = 0, *, transposed: bool = False) -> CoordMap:
    """The coordinate map of a layer's output, given its input's: Caffe ``coord_map`` for conv/pool/deconv."""
    scale, shift = float(stride), (kernel - 1) / 2 - pad
    if transposed:
        scale, shift = 1 / stride, -shift / stride
    return blob[0] * scale, blob[0] * shift + blob[1]


def _crop_offset(blob: CoordMap, reference: CoordMap) -> int:
    """The offset Caffe's ``Crop`` uses to align ``blob`` with ``reference`` (both at the same scale)."""
    if blob[0] != reference[0]:
        raise ValueError(f"cannot crop between scales {blob[0]} and {reference[0]}")
    offset = (reference[1] - blob[1]) / blob[0]
    if not offset.is_integer() or offset < 0:
        raise ValueError(f"crop offset {offset} is not a non-negative integer")
    return int(offset)


def _crop_offsets(num_skips: int) -> dict[str, int]:
    """Crop offsets of score_pool4c, score_pool3c and the final crop, from the nets' layer geometry.

    All 3x3 convs (pad 1) and 1x1 convs map coordinates to themselves; what moves them is conv1_1's pad of
    100, the 2x2 pools (stride 2), fc6 (7x7, pad 0) and the deconvolutions.
    """
    image = (1.0, 0.0)
    pool = _through(image, 3, 1, 100)  # conv1_1
    pools = {}
    for name in ("pool1", "pool2", "pool3", "pool4", "pool5"):
        pool = _through(pool, 2, 2)
        pools[name] = pool
    score = _through(pools["pool5"], 7, 1)  # fc6; fc7 and score_fr are 1x1
    offsets = {}
    for skip in ("pool4", "pool3")[:num_skips]:
        score = _through(score, 4, 2, transposed=True)  # upscore2 / upscore_pool4
        offsets[f"score_{skip}c"] = _crop_offset(pools[skip], score)
    stride = 32 // 2**num_skips
    score = _through(score, 2 * stride, stride, transposed=True)  # upscore / upscore16 / upscore8
    offsets["final"] = _crop_offset(score, image)
    return offsets


def _crop(x: Tensor, offset: int, size: tuple[int, int]) -> Tensor:
    return x[:, :, offset : offset + size[0], offset : offset + size[1]]


class FCN(nn.Module):
    """FCN on VGG16 fusing the scores of ``num_skips`` pools (0: FCN-32s, 1: FCN-16s, 2: FCN-8s)."""

    def __init__(
        self,
        *,
        num_classes: int,
        num_skips: int,
        pretrained_backbone: bool | str = False,
        learnable_upsampling: bool = False,
    ) -> None:
        super().__init__()
        if num_skips not in (0, 1, 2):
            raise ValueError(f"num_skips must be 0, 1 or 2, got {num_skips}")
        self.num_skips = num_skips
        self.crop_offsets = _crop_offsets(num_skips)
        self.encoder = VGG16Encoder(
            pretrained=pretrained_backbone, conv1_padding=100, ceil_mode=True, fully_convolutional=True
        )
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        scores = [self.score_fr]
        if num_skips >= 1:
            self.upscore2 = BilinearDeconv2d(num_classes, 4, 2, learnable=learnable_upsampling)
            self.score_pool4 = nn.Conv2d(512, num_classes, 1)
            scores.append(self.score_pool4)
        if num_skips == 2:
            self.upscore_pool4 = BilinearDeconv2d(num_classes, 4, 2, learnable=learnable_upsampling)
            self.score_pool3 = nn.Conv2d(256, num_classes, 1)
            scores.append(self.score_pool3)
        stride = 32 // 2**num_skips
        # The reference's names: upscore (FCN-32s), upscore16 (FCN-16s), upscore8 (FCN-8s).
        self.final_upscore = "upscore" if stride == 32 else f"upscore{stride}"
        final = BilinearDeconv2d(num_classes, 2 * stride, stride, learnable=learnable_upsampling)
        self.add_module(self.final_upscore, final)
        for layer in scores:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        features = self.encoder(x)
        score = self.score_fr(features["fc7"])
        if self.num_skips >= 1:
            upscore2 = self.upscore2(score)
            score_pool4c = _crop(
                self.score_pool4(features["pool4"]), self.crop_offsets["score_pool4c"], upscore2.shape[-2:]
            )
            score = upscore2 + score_pool4c  # fuse_pool4
        if self.num_skips == 2:
            upscore_pool4 = self.upscore_pool4(score)
            score_pool3c = _crop(
                self.score_pool3(features["pool3"]), self.crop_offsets["score_pool3c"], upscore_pool4.shape[-2:]
            )
            score = upscore_pool4 + score_pool3c  # fuse_pool3
        upscore = getattr(self, self.final_upscore)(score)
        return _crop(upscore, self.crop_offsets["final"], x.shape[-2:])


_PAPER = {
    "task": "semantic",
    "paper": "Fully Convolutional Networks for Semantic Segmentation",
    "year": 2015,
    "input_size": (500, 500),
    "url": "https://arxiv.org/abs/1411.4038",
    "paper_kwargs": {"num_classes": 21},
}


@register_model(**_PAPER, paper_params=134_346_581)
def fcn32s_vgg16(
    *, num_classes: int = 21, pretrained_backbone: bool | str = False, learnable_upsampling: bool = False
) -> FCN:
    """FCN-32s: score_fr upsampled 32x (voc-fcn32s)."""
    return FCN(
        num_classes=num_classes, num_skips=0, pretrained_backbone=pretrained_backbone,
        learnable_upsampling=learnable_upsampling,
    )


@register_model(**_PAPER, paper_params=134_357_354)
def fcn16s_vgg16(
    *, num_classes: int = 21, pretrained_backbone: bool | str = False, learnable_upsampling: bool = False
) -> FCN:
    """FCN-16s: 2x-upsampled score_fr + score_pool4, upsampled 16x (voc-fcn16s)."""
    return FCN(
        num_classes=num_classes, num_skips=1, pretrained_backbone=pretrained_backbone,
        learnable_upsampling=learnable_upsampling,
    )


@register_model(**_PAPER, paper_params=134_362_751)
def fcn8s_vgg16(
    *, num_classes: int = 21, pretrained_backbone: bool | str = False, learnable_upsampling: bool = False
) -> FCN:
    """FCN-8s: fuses pool4 then pool3, upsampled 8x (voc-fcn8s)."""
    return FCN(
        num_classes=num_classes, num_skips=2, pretrained_backbone=pretrained_backbone,
        learnable_upsampling=learnable_upsampling,
    )
