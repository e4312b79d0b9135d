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
- :class:`DeepStemResNet` (ResNet "v1c": three 3x3 convs in place of the 7x7 stem, layer4 dilated 2 in every
  block, output stride 16) and :func:`load_deep_stem_weights`, CSAIL's ImageNet files for it: the backbone of
  SCHP's CE2P (:mod:`seglab.models.parsing.ce2p`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

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

from seglab.checkpoint import load_into, load_state_dict
from seglab.errors import CheckpointError
from seglab.models.backbones import load_backbone_weights

__all__ = [
    "CSAIL_URL",
    "DEEP_STEM_LAYERS",
    "RESNETS",
    "DeepStemResNet",
    "deep_stem_resnet",
    "load_deep_stem_weights",
    "resnet",
    "resnet_features",
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
    """ResNet with the three-conv stem; layer4 stride 1 and dilation 2 (output stride 16).

    ``forward`` returns the outputs of layer1..layer4 (strides 4, 8, 16, 16); ``out_channels`` their widths.
    Attribute names are SCHP's (and CSAIL's deep-stem ImageNet files'): conv1..3, bn1..3, layer1..4.
    """

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(128)
        self.relu3 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._inplanes = 128
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=1, dilation=2)
        self.out_channels = tuple(w * block.expansion for w in (64, 128, 256, 512))

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1,
                    dilation: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self._inplanes, planes, stride, downsample)]
        self._inplanes = planes * block.expansion
        layers += [block(self._inplanes, planes) for _ in range(1, blocks)]
        if dilation > 1:
            # SCHP dilates every block of the layer, the first included (torchvision's replace_stride_with_dilation
            # leaves the first at 1, and its BasicBlock refuses dilation), so the 3x3 convs are dilated here.
            for layer in layers:
                for conv in layer.modules():
                    if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
                        _set_rate(conv, dilation)
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.maxpool(self.relu3(self.bn3(self.conv3(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return c2, c3, c4, self.layer4(c4)


def load_deep_stem_weights(backbone: DeepStemResNet, spec: bool | str | None, depth: int) -> None:
    """Load CSAIL's deep-stem ImageNet ResNet (``resnet{depth}-imagenet.pth``) from a local file into ``backbone``.

    ``True`` raises :class:`~seglab.errors.CheckpointError` saying where the file is published and how to pass
    it: these are not torchvision weights, and seglab does not download them. The file's ``fc.*`` is dropped.
    """
    if spec is None or spec is False:
        return
    url = CSAIL_URL.format(depth=depth)
    filename = url.rsplit("/", 1)[-1]
    if spec is True:
        raise CheckpointError(
            f"the deep-stem ResNet-{depth} ImageNet weights SCHP starts from are CSAIL's {url}, not a torchvision "
            f"model, and seglab does not download them. Download that file on a machine with network access and "
            f'pass its path: pretrained_backbone="/path/{filename}"'
        )
    if not isinstance(spec, str):
        raise TypeError(f"pretrained_backbone must be a bool or a str, got {type(spec).__name__}")
    path = Path(spec).expanduser()
    if not path.exists():
        raise CheckpointError(f"{spec}: pretrained_backbone file not found (expected CSAIL's {filename}, from {url})")
    state_dict = {k.removeprefix("module."): v for k, v in load_state_dict(path).items()}
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    load_into(backbone, state_dict, f"{path} (expected CSAIL's deep-stem {filename})")


def deep_stem_resnet(depth: int, *, pretrained: bool | str = False) -> DeepStemResNet:
    """The deep-stem ResNet-``depth`` (18, 50 or 101), CSAIL's ImageNet file loaded when ``pretrained`` names it."""
    if depth not in DEEP_STEM_LAYERS:
        raise ValueError(f"deep-stem ResNet depth must be one of {', '.join(map(str, DEEP_STEM_LAYERS))}, got {depth}")
    block, layers = DEEP_STEM_LAYERS[depth]
    backbone = DeepStemResNet(block, layers)
    load_deep_stem_weights(backbone, pretrained, depth)
    return backbone
