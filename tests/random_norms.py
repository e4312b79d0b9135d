"""Random LayerNorm / BatchNorm parameters and statistics for the converter parity tests: their initial values
(weight 1, bias 0, mean 0, variance 1) would hide a mapping that swaps or drops them."""

import torch
from torch import nn


def randomize_norms(model: nn.Module) -> None:
    """Every LayerNorm's and BatchNorm2d's affine parameters, and the BatchNorms' running statistics, drawn at
    random (in place, from torch's global generator)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
