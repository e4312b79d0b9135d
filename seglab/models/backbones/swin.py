"""Swin Transformer backbones (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted
Windows", ICCV 2021, arXiv 2103.14030) for dense prediction: torchvision's ``swin_t`` / ``swin_s`` / ``swin_b``
``features``, returning the 4 stage outputs (strides 4, 8, 16, 32) in NCHW, each through its own LayerNorm (the
Swin segmentation repository's ``out_indices`` norms). torchvision's final ``norm`` and classifier ``head`` are
dropped; its state dict loads into the network before that (``pretrained``). Used by
:mod:`seglab.models.semantic.upernet`.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import Swin_B_Weights, Swin_S_Weights, Swin_T_Weights, SwinTransformer, WeightsEnum

from seglab.models.backbones import load_backbone_weights

__all__ = ["SWINS", "SwinFeatures", "swin_features"]

# torchvision's swin_t / swin_s / swin_b: (embed_dim, depths, num_heads, weights); patch 4, window 7 for all.
SWINS: dict[str, tuple[int, list[int], list[int], type[WeightsEnum]]] = {
    "t": (96, [2, 2, 6, 2], [3, 6, 12, 24], Swin_T_Weights),
    "s": (96, [2, 2, 18, 2], [3, 6, 12, 24], Swin_S_Weights),
    "b": (128, [2, 2, 18, 2], [4, 8, 16, 32], Swin_B_Weights),
}


class SwinFeatures(nn.Module):
    """The 4 stage outputs of a torchvision Swin ``features``, each layer-normed and permuted to NCHW.

    ``features`` is torchvision's Sequential (patch embedding, stage 1, merging, stage 2, ..., stage 4), kept
    whole so torchvision's keys hold; the outputs are taken after the blocks at ``stage_ends`` (1, 3, 5, 7).
    """

    def __init__(self, features: nn.Sequential, channels: list[int]) -> None:
        super().__init__()
        self.features = features
        self.stage_ends = (1, 3, 5, 7)
        self.out_norms = nn.ModuleList(nn.LayerNorm(c) for c in channels)
        self.out_channels = list(channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.stage_ends:
                norm = self.out_norms[len(outs)]
                outs.append(norm(x).permute(0, 3, 1, 2).contiguous())
        return outs


def swin_features(variant: str, *, pretrained: bool | str = False, drop_path_rate: float = 0.3) -> SwinFeatures:
    """torchvision's Swin-``variant`` ("t", "s" or "b") as :class:`SwinFeatures`; ``drop_path_rate`` is the
    stochastic depth, increasing linearly over the blocks (torchvision's ``stochastic_depth_prob``)."""
    if variant not in SWINS:
        raise ValueError(f"Swin variant must be one of {', '.join(SWINS)}, got {variant!r}")
    embed, depths, num_heads, weights = SWINS[variant]
    swin = SwinTransformer(
        patch_size=[4, 4], embed_dim=embed, depths=depths, num_heads=num_heads, window_size=[7, 7],
        stochastic_depth_prob=drop_path_rate,
    )
    load_backbone_weights(swin, pretrained, torchvision_weights=weights)
    return SwinFeatures(swin.features, [embed * 2**i for i in range(4)])
