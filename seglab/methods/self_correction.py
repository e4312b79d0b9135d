"""SCHP's self-correction training: cyclical learning rate, online model aggregation and label refinement.

Li, Xu, Wei, Yang, "Self-Correction for Human Parsing", TPAMI 2020, doi 10.1109/TPAMI.2020.3048039
(arXiv:1910.09777), after the released code (GoGoDuck912/Self-Correction-Human-Parsing: train.py,
utils/schp.py, utils/warmup_scheduler.py, utils/criterion.py).

Implemented, as in the reference:

- the SGDR schedule (:func:`schp_lr_factor`): linear warm-up from ``min_ratio`` to 1, cosine from 1 to
  ``min_ratio`` (eta_min = lr / 100) until the first cycle starts, then cosine restarts of ``cycle_len``
  iterations from ``cycle_base`` (lr / 2) down to ``min_ratio``; counted in iterations where the reference
  counts epochs;
- online model aggregation (:func:`aggregate_`) at the end of every cycle, iterations ``cycle_start +
  k * cycle_len`` (k >= 0): the SCHP model's parameters become the running average ``(1 - a) * schp + a *
  model``, ``a = 1 / (cycle_n + 1)`` (the first one copies the model), then its BatchNorm statistics are
  re-estimated over training batches (:func:`reestimate_bn`, the reference's ``bn_re_estimate``);
- label refinement: from cycle 1 on, the SCHP model's fusion and edge logits on the same training batch
  (:func:`soft_targets`) are mixed with the one-hot labels in :class:`~seglab.losses.CE2PLoss` (KL replaces CE);
- the SCHP model is saved per cycle (``checkpoints/schp_cycle<n>.safetensors``, the reference's
  ``schp_<n>_checkpoint``, and the latest as ``checkpoints/schp.safetensors``, with ``cycle_n`` in the metadata)
  and evaluated instead of the raw model once ``cycle_n >= 1``.

Deviations: the reference runs the SCHP model in train mode when it predicts soft targets (BatchNorm on batch
statistics, which also drifts its re-estimated running statistics, and dropout on); here it predicts with its
running statistics and without dropout (train-mode outputs, so at the 1/4 resolution of the training loss).
BatchNorm is re-estimated over at most ``bn_batches`` batches instead of the whole training set.
Once cycle_n >= 1 the SCHP model is the one evaluated and written to ``checkpoints/best.safetensors``
(``eval_model``), as SCHP reports its aggregated model.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from seglab.checkpoint import load_weights, read_metadata, save_weights
from seglab.config import Config
from seglab.engine import distributed as dist_utils
from seglab.engine.trainer import SeededSamples, Trainer
from seglab.errors import CheckpointError, ConfigError
from seglab.losses import CE2PLoss

log = logging.getLogger(__name__)

_BN_EPOCH = 1_000_000  # the augmentation seeds of BN re-estimation batches: (seed, _BN_EPOCH + cycle, index)


@dataclass
class SelfCorrectionOptions:
    """Self-correction settings; iterations are optimiser steps (the reference's epochs times iterations/epoch).

    The paper's LIP recipe: 150 epochs, ``cycle_start`` = epoch 100, ``cycle_len`` = 10 epochs, warm-up 10 epochs
    (``schedule.warmup_iters`` of the config), lr 7e-3, ``min_ratio`` 0.01, ``cycle_base`` 0.5.
    """

    cycle_start: int
    cycle_len: int
    bn_batches: int = 50
    lambda_s: float = 1.0
    lambda_e: float = 1.0
    lambda_c: float = 0.1
    min_ratio: float = 0.01
    cycle_base: float = 0.5


def schp_lr_factor(
    it: int,
    *,
    total_iters: int,
    warmup_iters: int,
    cycle_start: int,
    cycle_len: int,
    min_ratio: float = 0.01,
    cycle_base: float = 0.5,
) -> float:
    """Learning-rate multiplier of SCHP's ``SGDRScheduler`` at iteration ``it`` (0-based).

    ``it < warmup_iters``: ``min_ratio + (1 - min_ratio) * it / warmup_iters``; then until ``cycle_start``:
    ``min_ratio + (1 - min_ratio) * (1 + cos(pi * (it - warmup) / (cycle_start - warmup))) / 2``; from
    ``cycle_start`` on: ``min_ratio + (cycle_base - min_ratio) * (1 + cos(pi * t / cycle_len)) / 2`` with
    ``t = (it - cycle_start) % cycle_len``. When ``cycle_start > total_iters`` (no cycle in the run) the cosine
    ends at ``total_iters`` instead.
    """
    if cycle_len < 1:
        raise ConfigError(f"self-correction cycle_len must be >= 1 iteration, got {cycle_len}")
    if not 0 <= warmup_iters <= cycle_start:
        raise ConfigError(f"self-correction needs 0 <= warmup_iters <= cycle_start, got warmup_iters={warmup_iters}, "
                          f"cycle_start={cycle_start}")
    if it < warmup_iters:
        return min_ratio + (1.0 - min_ratio) * it / warmup_iters
    cosine_end = min(cycle_start, max(total_iters, warmup_iters + 1))
    if it < cycle_start:
        progress = min((it - warmup_iters) / max(cosine_end - warmup_iters, 1), 1.0)
        return min_ratio + (1.0 - min_ratio) * (1.0 + math.cos(math.pi * progress)) / 2.0
    t = (it - cycle_start) % cycle_len
    return min_ratio + (cycle_base - min_ratio) * (1.0 + math.cos(math.pi * t / cycle_len)) / 2.0


@torch.no_grad()
def aggregate_(schp_model: nn.Module, model: nn.Module, cycle_n: int) -> None:
    """Online model aggregation, in place: ``schp = (1 - a) * schp + a * model`` with ``a = 1 / (cycle_n + 1)``,
    over the parameters only (as the reference's ``moving_average``); buffers are left to :func:`reestimate_bn`."""
    if cycle_n < 0:
        raise ValueError(f"aggregate_: cycle_n must be >= 0, got {cycle_n}")
    mine, theirs = list(schp_model.named_parameters()), list(model.named_parameters())
    if [(n, p.shape) for n, p in mine] != [(n, p.shape) for n, p in theirs]:
        raise ValueError("aggregate_: the SCHP model and the model have different parameters (names or shapes)")
    alpha = 1.0 / (cycle_n + 1.0)
    for (_, p_schp), (_, p) in zip(mine, theirs, strict=True):
        p_schp.mul_(1.0 - alpha).add_(p.detach().to(p_schp.dtype), alpha=alpha)


@torch.no_grad()
def reestimate_bn(
    model: nn.Module, loader: Iterable[Any], device: torch.device | str, max_batches: int | None = None
) -> None:
    """Re-estimate every BatchNorm's running mean and variance over ``loader`` (SCHP's ``bn_re_estimate``, after SWA).

    The running statistics are reset, then each batch of ``b`` images updates them with momentum ``b / (n + b)``
    (``n`` images seen before): the exact average over the images of the per-batch means and (unbiased) variances,
    which is torch's cumulative average (momentum None) when the batches have equal sizes. Forward passes run in
    train mode without gradients; the momenta and the model's train/eval mode are restored. A batch is an image
    tensor or a tuple whose first item is one. ``max_batches`` bounds the number of batches.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    momenta = {m: m.momentum for m in norms}
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
    model.train()
    seen = 0
    try:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            images = batch[0] if isinstance(batch, (list, tuple)) else batch
            b = images.shape[0]
            for m in norms:
                m.momentum = b / (seen + b)
            model(images.to(device))
            seen += b
    finally:
        for m in norms:
            m.momentum = momenta[m]
        model.train(was_training)


@torch.no_grad()
def soft_targets(schp_model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """The aggregated model's fusion and edge logits on ``images`` at the training outputs' resolution.

    The model runs its train-mode forward (which returns the CE2P dict, at 1/4 resolution) with BatchNorm on its
    running statistics and dropout off, without gradients. Returns ``(parsing_logits [B, C, h, w], edge_logits
    [B, 2, h, w])``: logits, because SCHP mixes them with the one-hot labels before the softmax (see
    :func:`seglab.losses.soft_target_kl`).
    """
    was_training = schp_model.training
    schp_model.train()
    for m in schp_model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)):
            m.eval()
    try:
        outputs = schp_model(images)
    finally:
        schp_model.train(was_training)
    if not isinstance(outputs, dict) or "out" not in outputs or "edge" not in outputs:
        keys = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
        raise ValueError(f"soft_targets: the model's train output must be the CE2P dict {{'out', 'edge'}}, got {keys}")
    edge = outputs["edge"]
    edge = edge[-1] if isinstance(edge, (list, tuple)) else edge
    return outputs["out"].float(), edge.float()


class SelfCorrectionTrainer(Trainer):
    """The :class:`~seglab.engine.trainer.Trainer` with SCHP's loss, schedule, model aggregation and soft targets.

    ``self.schp_model`` is the aggregated model (a copy of the model until the first cycle ends); ``self.cycle_n``
    the number of aggregations done. The model's train output must be the CE2P dict (``out``, ``aux``, ``edge``).
    """

    def __init__(
        self, cfg: Config, options: SelfCorrectionOptions, *, resume: bool = False, progress: bool = False,
        **objects: Any,
    ) -> None:
        # objects: model / train_set / val_set given as objects, as the Trainer takes them
        super().__init__(cfg, resume=False, progress=progress, **objects)  # resumed below, with SCHP's scheduler
        if self.task.detection:
            raise ConfigError(f"model.name: self-correction trains dense parsing models; {cfg.model.name!r} is a "
                              f"{self.task.name} model (the detection contract)")
        if options.cycle_len < 1 or options.cycle_start < 1:
            raise ConfigError(f"self-correction cycle_start and cycle_len must be >= 1 iteration, got "
                              f"cycle_start={options.cycle_start}, cycle_len={options.cycle_len}")
        if options.bn_batches < 1:
            raise ConfigError(f"self-correction bn_batches must be >= 1, got {options.bn_batches}")
        self.options = options
        self.cycle_n = 0
        self.schp_model = copy.deepcopy(self.model)
        for p in self.schp_model.parameters():
            p.requires_grad_(False)
        self.criterion = CE2PLoss(
            cfg.model.num_classes, options.lambda_s, options.lambda_e, options.lambda_c
        ).to(self.device)
        schedule = dict(
            total_iters=cfg.train.iters, warmup_iters=cfg.schedule.warmup_iters, cycle_start=options.cycle_start,
            cycle_len=options.cycle_len, min_ratio=options.min_ratio, cycle_base=options.cycle_base,
        )
        schp_lr_factor(0, **schedule)  # checks the settings now
        # a LambdaLR like the base trainer's, so last_state.pt's scheduler state loads into it
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda it: schp_lr_factor(it, **schedule))
        if resume:
            self._resume()
            self._resume_schp()

    # -- cycles ------------------------------------------------------------------------------------
    def cycles_done(self, iteration: int) -> int:
        """The number of cycle ends (aggregations) at or before ``iteration`` optimiser steps."""
        o = self.options
        return 0 if iteration < o.cycle_start else (iteration - o.cycle_start) // o.cycle_len + 1

    def schp_path(self, cycle_n: int | None = None):
        """``checkpoints/schp.safetensors`` (latest), or the file of cycle ``cycle_n``."""
        return self.ckpt_dir / ("schp.safetensors" if cycle_n is None else f"schp_cycle{cycle_n}.safetensors")

    def _bn_loader(self) -> DataLoader:
        """Training batches for BN re-estimation: a shuffled order drawn from (seed, cycle), each sample augmented
        with its own seeded RNG (as the training loop reads them), so a resumed run re-estimates identically."""
        seed = self.cfg.train.seed
        return DataLoader(
            SeededSamples(self.train_set, seed, _BN_EPOCH + self.cycle_n),  # apart from training epochs
            batch_size=self.local_batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.cfg.data.workers,
            generator=torch.Generator().manual_seed(seed * 100_003 + 7_919 * (self.cycle_n + 1)),
        )

    def end_cycle(self, iteration: int) -> None:
        """Aggregate the model into the SCHP model, re-estimate its BatchNorm, count the cycle and save it."""
        aggregate_(self.schp_model, self.model, self.cycle_n)
        self.cycle_n += 1
        reestimate_bn(self.schp_model, self._bn_loader(), self.device, max_batches=self.options.bn_batches)
        log.info("self-correction cycle %d ended at iteration %d: model aggregated, BatchNorm re-estimated",
                 self.cycle_n, iteration)
        if self.is_main:
            meta = {**self.weights_metadata(), "iteration": iteration, "cycle_n": self.cycle_n}
            state = self.schp_model.state_dict()
            save_weights(self.schp_path(self.cycle_n), state, meta)
            save_weights(self.schp_path(), state, meta)
        dist_utils.barrier()

    def _resume_schp(self) -> None:
        """Load the SCHP model of the resumed iteration's cycle: schp.safetensors, or its per-cycle file when the
        latest was written after the checkpoint (a run killed between a cycle end and the next checkpoint)."""
        expected = self.cycles_done(self.iteration)
        if expected == 0:
            return
        for path in (self.schp_path(), self.schp_path(expected)):
            if path.is_file() and read_metadata(path).get("cycle_n") == expected:
                load_weights(self.schp_model, path)
                self.cycle_n = expected
                log.info("resumed the SCHP model of cycle %d from %s", expected, path)
                return
        raise CheckpointError(
            f"{self.schp_path(expected)}: missing or not of cycle {expected}; resuming at iteration {self.iteration} "
            f"needs the SCHP model aggregated at the end of cycle {expected} (cycle_start={self.options.cycle_start}, "
            f"cycle_len={self.options.cycle_len})"
        )

    # -- training ----------------------------------------------------------------------------------
    def compute_loss(self, inputs: Tensor, targets: Any) -> tuple[Tensor, dict[str, float]]:
        """The CE2P loss of the training forward pass, with the SCHP model's soft targets from cycle 1 on."""
        with self.autocast():
            outputs = self.train_model(inputs)
            soft_parsing = soft_edge = None
            if self.cycle_n >= 1:
                soft_parsing, soft_edge = soft_targets(self.schp_model, inputs)
        if not isinstance(outputs, dict):
            raise ConfigError(f"model.name: {self.cfg.model.name!r} returns a {type(outputs).__name__} in train mode; "
                              "self-correction needs the CE2P dict {'out', 'aux', 'edge'}")
        outputs = {k: [x.float() for x in v] if isinstance(v, (list, tuple)) else v.float() for k, v in outputs.items()}
        return self.criterion(outputs, targets, soft_parsing, soft_edge, self.cycle_n)

    def train_step(self, micro_batches: list[tuple[Any, Any]]) -> dict[str, float]:
        parts = super().train_step(micro_batches)
        done = self.iteration + 1  # the base loop counts this step after train_step returns
        if done >= self.options.cycle_start and (done - self.options.cycle_start) % self.options.cycle_len == 0:
            self.end_cycle(done)
        return parts

    def eval_model(self) -> torch.nn.Module:
        """The SCHP (aggregated) model once a cycle has ended, the raw model before: what is evaluated and
        saved as best.safetensors."""
        return self.schp_model if self.cycle_n >= 1 else self.model


__all__ = [
    "SelfCorrectionOptions",
    "SelfCorrectionTrainer",
    "aggregate_",
    "reestimate_bn",
    "schp_lr_factor",
    "soft_targets",
]
