"""ResNet backbones (He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, arXiv
1512.03385): torchvision's ResNet, dilated for dense prediction, and the deep-stem ResNet of SCHP.

- :func:`resnet` / :func:`resnet_features`: torchvision's ``resnet18/34/50/101`` (``weights=None``, so its
  ImageNet state dict loads unchanged through ``pretrained``), at output stride 32, 16 or 8. A lower output
  stride replaces the strides of layer4 (16) or layer3 and layer4 (8) by dilation, as DeepLab does
  (``replace_stride_with_dilation``: at stride 8 layer3 runs at rate 2 and layer4 at rate 4; the first block of a
  dilated layer keeps the previous rate). ``dilate_first_block`` gives that first block the layer's rate too
  (DeepLab-v2's ResNet, as PGN's reference code); ``multi_grid`` gives layer4's blocks DeepLabv3's Multi-grid
  rates (the unit rate times the grid). :func:`resnet_features` wraps the network in torchvision's
  ``IntermediateLayerGetter``, which returns the named layers and drops what follows the last one (avgpool, fc).
- :class:`DeepStemResNet`: the ResNet "v1c" of Bag of Tricks (He et al., CVPR 2019, arXiv 1812.01187): three 3x3
  convs in place of the 7x7 stem, torchvision's blocks, per-stage strides and dilations. Two settings of it:

  - SCHP's (:func:`deep_stem_resnet`, the backbone of :mod:`seglab.models.parsing.ce2p`): stem 64-64-128, layer4 at
    stride 1 and rate 2 in every block (output stride 16); :func:`load_deep_stem_weights` loads CSAIL's ImageNet
    files for it.
  - mmsegmentation's ``ResNetV1c`` (:func:`resnet_v1c`, the backbone of its FCN, DeepLabv3 and Semantic FPN
    models): stem 32-32-64; output stride 8 ("-d8") is strides (1, 2, 1, 1) and rates (1, 1, 2, 4) with
    ``contract_dilation`` (the first block of a dilated stage at half its rate: layer3 1, 2, 2 ...; layer4 2, 4,
    4), which is the rate pattern of torchvision's ``replace_stride_with_dilation``; output stride 32 is strides
    (1, 2, 2, 2) without dilation. :func:`load_resnet_v1c_weights` loads open-mmlab's ImageNet files
    (``resnet50_v1c-2cccc1ad.pth``, ...), whose stem is a Sequential ``stem.0 .. stem.7`` (:data:`V1C_STEM_KEYS`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import Tensor, nn
from torchvision.models import (
    ResNet,
    ResNet18_Weights,
    ResNet34_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
    WeightsEnum,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
)
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, Bottleneck

from seglab.checkpoint import load_into, load_state_dict, rename_prefix
from seglab.models.backbones import load_backbone_weights, local_weights_file

__all__ = [
    "CSAIL_URL",
    "DEEP_STEM_LAYERS",
    "RESNETS",
    "MMSEG_V1C_URL",
    "V1C_STEM_KEYS",
    "DeepStemResNet",
    "deep_stem_resnet",
    "load_deep_stem_weights",
    "load_resnet_v1c_weights",
    "resnet",
    "resnet_features",
    "resnet_v1c",
    "resnet_v1c_features",
]

# depth -> (torchvision builder, its weights enum)
RESNETS: dict[int, tuple[Callable[..., ResNet], type[WeightsEnum]]] = {
    18: (resnet18, ResNet18_Weights),
    34: (resnet34, ResNet34_Weights),
    50: (resnet50, ResNet50_Weights),
    101: (resnet101, ResNet101_Weights),
}
# output stride -> torchvision's replace_stride_with_dilation (layer2, layer3, layer4) and layer4's rate
_DILATED_LAYERS = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}
_LAYER4_RATE = {32: 1, 16: 2, 8: 4}


def resnet(
    depth: int,
    *,
    pretrained: bool | str = False,
    output_stride: int = 32,
    dilate_first_block: bool = False,
    multi_grid: tuple[int, ...] | None = None,
) -> ResNet:
    """torchvision's ResNet-``depth`` at ``output_stride`` 32, 16 or 8, ``pretrained`` loaded before any change.

    ``dilate_first_block``: the first block of each dilated layer also runs at the layer's rate (DeepLab-v2;
    torchvision leaves it at the previous one). ``multi_grid`` (e.g. ``(1, 2, 4)``, one rate per layer4 block)
    sets layer4's 3x3 rates to its unit rate (4 at stride 8, 2 at 16, 1 at 32) times the grid. Dilation needs
    Bottleneck blocks (depth 50 or 101): torchvision's BasicBlock refuses it.
    """
    if depth not in RESNETS:
        raise ValueError(f"ResNet depth must be one of {', '.join(map(str, RESNETS))}, got {depth}")
    if output_stride not in _DILATED_LAYERS:
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    build, weights = RESNETS[depth]
    network = build(weights=None, replace_stride_with_dilation=_DILATED_LAYERS[output_stride])
    load_backbone_weights(network, pretrained, torchvision_weights=weights)
    if dilate_first_block:
        for layer, dilated in zip((network.layer2, network.layer3, network.layer4), _DILATED_LAYERS[output_stride],
                                  strict=True):
            if dilated:
                _set_rate(layer[0].conv2, layer[-1].conv2.dilation[0])
    if multi_grid is not None:
        blocks = list(network.layer4)
        if len(multi_grid) != len(blocks):
            raise ValueError(f"multi_grid needs {len(blocks)} rates (one per layer4 block), got {multi_grid}")
        for block, grid in zip(blocks, multi_grid, strict=True):
            _set_rate(block.conv2, _LAYER4_RATE[output_stride] * grid)
    return network


def _set_rate(conv: nn.Conv2d, rate: int) -> None:
    """Dilate a 3x3 conv at ``rate``, padded to keep its output size."""
    conv.dilation, conv.padding = (rate, rate), (rate, rate)


def resnet_features(
    depth: int,
    return_layers: Mapping[str, str],
    *,
    pretrained: bool | str = False,
    output_stride: int = 32,
    dilate_first_block: bool = False,
    multi_grid: tuple[int, ...] | None = None,
) -> IntermediateLayerGetter:
    """:func:`resnet` returning the outputs of ``return_layers`` (torchvision module name -> output key), in
    the network's order, as a dict; the modules keep torchvision's names (``layer1.0.conv1.weight`` ...)."""
    network = resnet(
        depth, pretrained=pretrained, output_stride=output_stride, dilate_first_block=dilate_first_block,
        multi_grid=multi_grid,
    )
    return IntermediateLayerGetter(network, return_layers=dict(return_layers))


# ---------------------------------------------------------------- deep-stem ResNet (SCHP)

CSAIL_URL = "http://sceneparsing.csail.mit.edu/model/pretrained_resnet/resnet{depth}-imagenet.pth"
# depth -> (block, blocks per layer) of the deep-stem ResNets
DEEP_STEM_LAYERS: dict[int, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class DeepStemResNet(nn.Module):
    """ResNet with the three-conv stem, each stage at its own stride and dilation.

    ``forward`` returns the outputs of layer1..layer4; ``out_channels`` their widths. Attribute names are SCHP's
    (and CSAIL's deep-stem ImageNet files'): conv1..3, bn1..3, layer1..4; the blocks are torchvision's.

    Args:
        stem_channels: the widths of the three stem convs (3x3, the first at stride 2; each + BN + ReLU; then a
            3x3/2 max-pool). SCHP: 64, 64, 128; mmsegmentation's ResNetV1c: 32, 32, 64.
        strides: the stride of each stage's first block (on the 3x3 conv: torchvision's "pytorch" style).
        dilations: the rate of each stage's 3x3 convs.
        contract_dilation: the first block of a stage with rate > 1 runs at half the rate (mmsegmentation's
            ``contract_dilation``); without it every block runs at the stage's rate (SCHP). The defaults are
            SCHP's network (output stride 16).
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: tuple[int, int, int, int],
        *,
        stem_channels: tuple[int, int, int] = (64, 64, 128),
        strides: tuple[int, int, int, int] = (1, 2, 2, 1),
        dilations: tuple[int, int, int, int] = (1, 1, 1, 2),
        contract_dilation: bool = False,
    ) -> None:
        super().__init__()
        c1, c2, c3 = stem_channels
        self.conv1 = nn.Conv2d(3, c1, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c3)
        self.relu3 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._inplanes = c3
        self._contract_dilation = contract_dilation
        self.layer1 = self._make_layer(block, 64, layers[0], strides[0], dilations[0])
        self.layer2 = self._make_layer(block, 128, layers[1], strides[1], dilations[1])
        self.layer3 = self._make_layer(block, 256, layers[2], strides[2], dilations[2])
        self.layer4 = self._make_layer(block, 512, layers[3], strides[3], dilations[3])
        self.out_channels = tuple(w * block.expansion for w in (64, 128, 256, 512))

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int,
                    dilation: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self._inplanes, planes, stride, downsample)]
        self._inplanes = planes * block.expansion
        layers += [block(self._inplanes, planes) for _ in range(1, blocks)]
        first_rate = dilation // 2 if self._contract_dilation and dilation > 1 else dilation
        # The rates are set on the built blocks' 3x3 convs (torchvision's BasicBlock refuses a dilation argument;
        # for it both 3x3 convs are dilated, as SCHP's ResNet-18).
        for layer, rate in zip(layers, [first_rate] + [dilation] * (blocks - 1), strict=True):
            if rate > 1:
                for conv in layer.modules():
                    if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
                        _set_rate(conv, rate)
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.maxpool(self.relu3(self.bn3(self.conv3(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return c2, c3, c4, self.layer4(c4)


def _load_stem_file(
    backbone: nn.Module, spec: bool | str | None, url: str, what: str, rename: Mapping[str, str] | None = None
) -> None:
    """Load the ImageNet file ``spec`` (a local path) published at ``url`` into ``backbone``: ``module.`` and the
    classifier ``fc.*`` dropped, module prefixes renamed by ``rename``; ``True`` raises a CheckpointError saying
    where the file is published and how to pass it (``what`` names it)."""
    filename = url.rsplit("/", 1)[-1]
    path = local_weights_file(spec, filename, url, what)
    if path is None:
        return
    state_dict = {k.removeprefix("module."): v for k, v in load_state_dict(path).items()}
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    if rename:
        state_dict = {rename_prefix(k, rename): v for k, v in state_dict.items()}
    load_into(backbone, state_dict, f"{path} (expected the {what} file {filename})")




def load_deep_stem_weights(backbone: DeepStemResNet, spec: bool | str | None, depth: int) -> None:
    """Load CSAIL's deep-stem ImageNet ResNet (``resnet{depth}-imagenet.pth``) from a local file into ``backbone``.

    ``True`` raises :class:`~seglab.errors.CheckpointError` saying where the file is published and how to pass
    it: these are not torchvision weights, and seglab does not download them. The file's ``fc.*`` is dropped.
    """
    _load_stem_file(backbone, spec, CSAIL_URL.format(depth=depth), f"deep-stem ResNet-{depth} (CSAIL's, SCHP's)")


def deep_stem_resnet(depth: int, *, pretrained: bool | str = False) -> DeepStemResNet:
    """The deep-stem ResNet-``depth`` (18, 50 or 101), CSAIL's ImageNet file loaded when ``pretrained`` names it."""
    if depth not in DEEP_STEM_LAYERS:
        raise ValueError(f"deep-stem ResNet depth must be one of {', '.join(map(str, DEEP_STEM_LAYERS))}, got {depth}")
    block, layers = DEEP_STEM_LAYERS[depth]
    backbone = DeepStemResNet(block, layers)
    load_deep_stem_weights(backbone, pretrained, depth)
    return backbone


# ---------------------------------------------------------------- mmsegmentation's ResNetV1c

# open-mmlab's ImageNet ResNetV1c files (mmseg's ``pretrained='open-mmlab://resnet50_v1c'``), by depth
MMSEG_V1C_URL = {
    50: "https://download.openmmlab.com/pretrain/third_party/resnet50_v1c-2cccc1ad.pth",
    101: "https://download.openmmlab.com/pretrain/third_party/resnet101_v1c-e67eebb6.pth",
}
# mmseg's stem Sequential (conv, BN, ReLU three times) -> DeepStemResNet's names
V1C_STEM_KEYS = {
    "stem.0": "conv1", "stem.1": "bn1", "stem.3": "conv2", "stem.4": "bn2", "stem.6": "conv3", "stem.7": "bn3",
}
# output stride -> mmseg's per-stage strides and dilations (with contract_dilation)
_V1C_STAGES = {
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
    32: ((1, 2, 2, 2), (1, 1, 1, 1)),
}


def load_resnet_v1c_weights(backbone: DeepStemResNet, spec: bool | str | None, depth: int) -> None:
    """Load open-mmlab's ImageNet ResNetV1c-``depth`` (``resnet{depth}_v1c-*.pth``) from a local file: its
    ``stem.N`` keys renamed (:data:`V1C_STEM_KEYS`), ``fc.*`` dropped; ``True`` says where the file is."""
    _load_stem_file(backbone, spec, MMSEG_V1C_URL[depth], f"ResNetV1c-{depth} (open-mmlab's)", V1C_STEM_KEYS)


def resnet_v1c(depth: int, *, pretrained: bool | str = False, output_stride: int = 8) -> DeepStemResNet:
    """mmsegmentation's ``ResNetV1c``-``depth`` (50 or 101): stem 32-32-64, at ``output_stride`` 8 (its "-d8":
    strides 1, 2, 1, 1, rates 1, 1, 2, 4, contract_dilation), 16 (strides 1, 2, 2, 1, rates 1, 1, 1, 2) or 32
    (strides 1, 2, 2, 2, no dilation); open-mmlab's ImageNet file loaded when ``pretrained`` names it."""
    if depth not in MMSEG_V1C_URL:
        raise ValueError(f"ResNetV1c depth must be one of {', '.join(map(str, MMSEG_V1C_URL))}, got {depth}")
    if output_stride not in _V1C_STAGES:
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    strides, dilations = _V1C_STAGES[output_stride]
    block, layers = DEEP_STEM_LAYERS[depth]
    backbone = DeepStemResNet(
        block, layers, stem_channels=(32, 32, 64), strides=strides, dilations=dilations, contract_dilation=True
    )
    load_resnet_v1c_weights(backbone, pretrained, depth)
    return backbone


def resnet_v1c_features(
    depth: int, return_layers: Mapping[str, str], *, pretrained: bool | str = False, output_stride: int = 8
) -> IntermediateLayerGetter:
    """:func:`resnet_v1c` returning the outputs of ``return_layers`` (``layer1`` .. ``layer4`` -> output key) as a
    dict, as :func:`resnet_features` does; the modules keep DeepStemResNet's names (``conv1.weight``, ``layer1.0.
    conv1.weight`` ...). Its children are registered in the order they run, as IntermediateLayerGetter needs."""
    network = resnet_v1c(depth, pretrained=pretrained, output_stride=output_stride)
    return IntermediateLayerGetter(network, return_layers=dict(return_layers))
