"""ConvNeXt backbones (Liu, Mao, Wu, Feichtenhofer, Darrell, Xie, "A ConvNet for the 2020s", CVPR 2022,
arXiv 2201.03545) for dense prediction: torchvision's ``convnext_tiny`` / ``convnext_small`` / ``convnext_base``
``features``, returning the 4 stage outputs (strides 4, 8, 16, 32, NCHW), each through its own channels-first
LayerNorm (eps 1e-6): the ``out_indices`` norms of mmseg's / mmpretrain's ``ConvNeXt(gap_before_final_norm=False)``
and ``hidden_states_norms`` of transformers' ``ConvNextBackbone``. torchvision's classifier (its final norm and
linear layer) is dropped; its state dict loads into the network before that (``pretrained``). Used by
:mod:`seglab.models.semantic.upernet`.

Faithful: the blocks are torchvision's ``CNBlock`` (7x7 depthwise conv, LayerNorm eps 1e-6, 4x MLP with GELU,
layer scale, stochastic depth increasing linearly over the blocks), stem 4x4/4 conv + LayerNorm, downsampling
LayerNorm + 2x2/2 conv: the layers and epsilons of transformers' ``ConvNext*`` and mmpretrain's ``ConvNeXt``
(every LayerNorm there is eps 1e-6 too; transformers' ``layer_norm_eps`` 1e-12 only reaches the unused final norm
of ``ConvNextModel``). Like both, the strided convs floor odd sizes (no padding): a 500-pixel side gives 125, 62,
31, 15 tokens. The defaults are the segmentation configs' (mmseg ``configs/convnext``, ADE20K UperNet):
``drop_path_rate`` 0.4 for T and B, 0.3 for S, and ``layer_scale_init_value`` 1.0 (the layer scale's initial
value, which matters only without pretrained weights: a loaded checkpoint sets it; torchvision's default is 1e-6).
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import (
    ConvNeXt,
    ConvNeXt_Base_Weights,
    ConvNeXt_Small_Weights,
    ConvNeXt_Tiny_Weights,
    WeightsEnum,
)
from torchvision.models.convnext import CNBlockConfig, LayerNorm2d

from seglab.models.backbones import load_backbone_weights

__all__ = ["CONVNEXTS", "ConvNeXtFeatures", "convnext_features"]

# torchvision's convnext_tiny / _small / _base: (stage widths, depths, drop_path_rate of mmseg's UperNet, weights)
CONVNEXTS: dict[str, tuple[list[int], list[int], float, type[WeightsEnum]]] = {
    "t": ([96, 192, 384, 768], [3, 3, 9, 3], 0.4, ConvNeXt_Tiny_Weights),
    "s": ([96, 192, 384, 768], [3, 3, 27, 3], 0.3, ConvNeXt_Small_Weights),
    "b": ([128, 256, 512, 1024], [3, 3, 27, 3], 0.4, ConvNeXt_Base_Weights),
}


class ConvNeXtFeatures(nn.Module):
    """The 4 stage outputs of a torchvision ConvNeXt ``features``, each through its own LayerNorm2d (eps 1e-6).

    ``features`` is torchvision's Sequential (stem, stage 1, downsampling, stage 2, ..., stage 4), kept whole so
    torchvision's keys hold; the outputs are taken after the stages at ``stage_ends`` (1, 3, 5, 7).
    """

    def __init__(self, features: nn.Sequential, channels: list[int]) -> None:
        super().__init__()
        self.features = features
        self.stage_ends = (1, 3, 5, 7)
        self.out_norms = nn.ModuleList(LayerNorm2d(c, eps=1e-6) for c in channels)
        self.out_channels = list(channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.stage_ends:
                outs.append(self.out_norms[len(outs)](x))
        return outs


def convnext_features(
    variant: str,
    *,
    pretrained: bool | str = False,
    drop_path_rate: float | None = None,
    layer_scale: float = 1.0,
) -> ConvNeXtFeatures:
    """torchvision's ConvNeXt-``variant`` ("t", "s" or "b") as :class:`ConvNeXtFeatures`. ``drop_path_rate``
    (default: mmseg's UperNet config's, 0.4 / 0.3 / 0.4) is the stochastic depth, increasing linearly over the
    blocks; ``layer_scale`` the layer scale's initial value (mmseg's ``layer_scale_init_value`` 1.0)."""
    if variant not in CONVNEXTS:
        raise ValueError(f"ConvNeXt variant must be one of {', '.join(CONVNEXTS)}, got {variant!r}")
    widths, depths, default_drop_path, weights = CONVNEXTS[variant]
    setting = [
        CNBlockConfig(width, widths[i + 1] if i + 1 < len(widths) else None, depth)
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True))
    ]
    net = ConvNeXt(
        setting,
        stochastic_depth_prob=default_drop_path if drop_path_rate is None else drop_path_rate,
        layer_scale=layer_scale,
    )
    load_backbone_weights(net, pretrained, torchvision_weights=weights)
    return ConvNeXtFeatures(net.features, widths)
