"""Monte Carlo dropout inference (Gal & Ghahramani, ICML 2016, arXiv 1506.02142), as Bayesian SegNet uses it.

Bayesian SegNet (Kendall, Badrinarayanan, Cipolla, BMVC 2017, arXiv 1511.02680) keeps dropout on at test time
(``sample_weights_test: true``) and runs the image ``samples`` times: the prediction is the mean softmax and the
uncertainty the variance of the softmax over the samples, per class, then averaged over classes
(SegNet-Tutorial ``Scripts/test_bayesian_segnet.py``; the paper uses 50 samples).

- :func:`enable_mc_dropout`: a context manager putting the dropout layers in train mode and everything else,
  BatchNorm included, in eval mode (BN uses its running statistics, as at test time); the training flags of
  every module are restored on exit.
- :func:`mc_predict`: mean probabilities ``[B, K, H, W]``, the predictive entropy of the mean ``[B, H, W]``
  (nats, in ``[0, log K]``) and the class-averaged variance ``[B, H, W]`` (population variance over the
  samples, as ``numpy.var``). The samples run one forward pass each (the reference batches copies of the image;
  the distribution is the same, the memory lower). Randomness comes from the global RNG, or, with
  ``generator``, from a seed drawn from it, used inside :func:`torch.random.fork_rng` so that the global RNG
  is left untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from seglab.engine.forward import forward_logits

__all__ = ["DROPOUT_TYPES", "enable_mc_dropout", "mc_predict"]

DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


@contextmanager
def enable_mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block: dropout layers in train mode, all other modules in eval mode. Restores the flags after.

    Raises ValueError if ``model`` has no dropout layer (MC sampling would return the same output each time).
    """
    flags = [(module, module.training) for module in model.modules()]
    dropouts = [module for module in model.modules() if isinstance(module, DROPOUT_TYPES)]
    if not dropouts:
        raise ValueError(f"{type(model).__name__} has no dropout layers: Monte Carlo dropout needs some")
    model.eval()
    for module in dropouts:
        module.train()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def _sample(model: nn.Module, images: Tensor, samples: int) -> dict[str, Tensor]:
    total = sum_sq = None
    for _ in range(samples):
        probs = forward_logits(model, images).softmax(dim=1)
        total = probs if total is None else total + probs
        sum_sq = probs.square() if sum_sq is None else sum_sq + probs.square()
    assert total is not None and sum_sq is not None
    mean = total / samples
    variance = (sum_sq / samples - mean.square()).clamp_min(0).mean(dim=1)
    entropy = -(mean * mean.clamp_min(torch.finfo(mean.dtype).tiny).log()).sum(dim=1)
    return {"mean": mean, "entropy": entropy, "variance": variance}


def mc_predict(
    model: nn.Module, images: Tensor, samples: int, *, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """MC dropout prediction for normalised ``images [B, 3, H, W]`` over ``samples`` stochastic passes.

    Returns ``{"mean": [B, K, H, W], "entropy": [B, H, W], "variance": [B, H, W]}`` (see the module docstring).
    Runs without gradients; the model's training flags are restored afterwards.
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"mc_predict: images must be a float tensor [B, 3, H, W], got {images.dtype} "
                         f"{tuple(images.shape)}")
    with enable_mc_dropout(model), torch.no_grad():
        if generator is None:
            return _sample(model, images, samples)
        seed = int(torch.randint(2**62, (1,), generator=generator))
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return _sample(model, images, samples)
