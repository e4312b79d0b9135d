"""Training loop for semantic and instance models, in one process or data-parallel under torchrun.

One loop for every model. A semantic model's outputs (a tensor, or a dict with ``out`` and ``aux``) go
to :class:`~seglab.losses.SegmentationLoss`; an instance model (the torchvision detection contract)
takes lists of images and targets and returns its own dict of losses, which are summed and each logged.
The run folder ``runs/<name>/`` receives config.yaml, metrics.jsonl (one JSON object per log or eval
line), checkpoints/{last,best}.safetensors, last_state.pt (model, optimiser, scheduler, RNG, position
in the data order, in one atomically written file), curves.png and, at the end, model/ (the best checkpoint as a
self-describing model folder with its metrics, :func:`seglab.pretrained.save_pretrained`). The best checkpoint is
chosen by val mIoU (semantic) or mask AP (instance).

Nothing is lost when a run is killed: the data order is a permutation drawn per epoch from
``(seed, epoch)``, and each sample's augmentation is seeded from ``(seed, epoch, index)`` (whichever
process or worker reads it), so ``--resume`` continues from the same batch with the same augmentation,
and the final weights equal an uninterrupted run's bit for bit on the CPU.

Data-parallel (``torchrun --nproc_per_node=N -m seglab train CONFIG``): ``data.batch_size`` is the
global batch; every rank draws the same epoch permutation and takes its contiguous slice of each global
batch, so N processes see the same samples per step, with the same augmentation, as one process.
The model is wrapped in DistributedDataParallel (gradients averaged over ranks); only rank 0 writes
files; evaluation shards the val set over the ranks and sums the confusion matrices (or gathers the
COCO results), so every rank reports the single-process metrics. Mixed precision (``train.precision``),
gradient accumulation (``train.accumulate_steps``, an iteration is one optimiser step) and channels-last
are options of the same loop; docs/training.md describes them.

Preemption: SIGTERM or SIGINT during :meth:`Trainer.fit` ends the run at the end of the current iteration (all
ranks at the same one) with the state of that iteration written, and raises
:class:`~seglab.errors.Preempted` (the CLI exits with 75); ``--resume`` continues as after any checkpoint. A
second signal acts at once (the files written so far are complete either way). A run folder that cannot be
written is refused before training starts. Distributed: a process that dies makes the others fail their next
collective at once, one that hangs after ``train.dist_timeout_s``; either is a TrainingError naming the rank and
the last checkpoint. Under ``torchrun --max-restarts=N`` a restarted worker group resumes from that checkpoint
by itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import random
import signal
import threading
import time
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from seglab.checkpoint import (
    load_into,
    load_training_state,
    remove_stale_temp_files,
    save_training_state,
    save_weights,
)
from seglab.config import Config, save_config
from seglab.data.palettes import label_set_metadata
from seglab.engine import distributed as dist_utils
from seglab.engine.precision import autocast, resolve_precision
from seglab.errors import CheckpointError, ConfigError, Preempted, TrainingError
from seglab.models import create_model
from seglab.tasks import task_of
from seglab.utils import atomic_write_text, check_writable, resolve_device, seed_everything

log = logging.getLogger(__name__)


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    raise ConfigError(f"optim.name: unknown optimiser {o.name!r}; expected 'sgd' or 'adamw'")


def lr_factor(cfg: Config, it: int) -> float:
    """Learning-rate multiplier at iteration ``it``: linear warm-up, then poly or cosine decay."""
    s, total = cfg.schedule, max(cfg.train.iters, 1)
    if it < s.warmup_iters:
        return s.warmup_ratio + (1.0 - s.warmup_ratio) * it / s.warmup_iters
    progress = min(it / total, 1.0)
    floor = s.min_lr / cfg.optim.lr if cfg.optim.lr > 0 else 0.0
    if s.name == "poly":
        decay = (1.0 - progress) ** s.power
    elif s.name == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ConfigError(f"schedule.name: unknown schedule {s.name!r}; expected 'poly' or 'cosine'")
    return floor + (1.0 - floor) * decay


class _EpochSampler(torch.utils.data.Sampler[int]):
    """The permutation of epoch ``epoch`` drawn from ``seed``, starting at position ``start``.

    With ``world_size > 1`` (data-parallel) every rank draws the same permutation, cuts it into global
    batches of ``batch_size`` (an incomplete last batch is dropped, as the DataLoader's ``drop_last``
    does in one process) and keeps its contiguous ``batch_size / world_size`` slice of each: across the
    ranks every sample of the complete batches is read exactly once per epoch, in the same steps as a
    one-process run. This replaces torch's DistributedSampler, which strides over the whole epoch.
    """

    def __init__(
        self, n: int, seed: int, epoch: int, start: int = 0, *, batch_size: int = 1, rank: int = 0,
        world_size: int = 1,
    ) -> None:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        self.order = torch.randperm(n, generator=g)[start:].tolist()
        if world_size > 1:
            if batch_size % world_size:
                raise ConfigError(f"data.batch_size={batch_size} is not divisible by the {world_size} processes")
            per_rank = batch_size // world_size
            complete = len(self.order) // batch_size * batch_size
            self.order = [
                self.order[b + rank * per_rank + j] for b in range(0, complete, batch_size) for j in range(per_rank)
            ]

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class SeededSamples(torch.utils.data.Dataset):
    """``dataset`` whose sample ``i`` in epoch ``epoch`` is read with every RNG seeded from
    ``(seed, epoch, i)``; the caller's RNG states are left as they were."""

    def __init__(self, dataset: Any, seed: int, epoch: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        state = _rng_state()
        torch_seed, np_seed = np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(2)
        torch.manual_seed(int(torch_seed))
        np.random.seed(int(np_seed))
        random.seed(int(torch_seed))
        try:
            return self.dataset[index]
        finally:
            _set_rng_state(state)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy(), *n[2:]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


LOGGERS = ("jsonl", "tensorboard")


def resolve_train_precision(cfg: Config, device: torch.device) -> str:
    """``train.precision`` checked against the device (:func:`seglab.engine.precision.resolve_precision`), with
    the deprecated ``train.amp: true`` read as bf16."""
    precision = cfg.train.precision
    if cfg.train.amp:
        if precision == "fp32":
            log.warning("train.amp is deprecated: use train.precision: bf16 (taken as bf16)")
            precision = "bf16"
        elif precision != "bf16":
            raise ConfigError(f"train.amp: true (bf16) conflicts with train.precision: {precision}; "
                              "drop train.amp (deprecated)")
    return resolve_precision(precision, device, training=True, key="train.precision")


class Trainer:
    """Trains ``cfg.model`` on ``cfg.data``, evaluating and checkpointing as the config says.

    The model and the datasets may be given as objects (``model``, ``train_set``, ``val_set``); the config
    still names the model (for the weights files' metadata) and holds every other setting. What differs per
    task (data items, collation, loss, metrics) comes from the model's :class:`~seglab.tasks.Task`.

    Hooks for methods that change one step of the loop (self-correction overrides :meth:`compute_loss` and
    :meth:`eval_model`): :meth:`prepare_batch` (a collated batch onto the device), :meth:`compute_loss` (the
    forward pass under autocast and the loss), :meth:`evaluate` (the validation metrics) and
    :meth:`eval_model` (the model evaluated and saved as best).
    """

    def __init__(
        self,
        cfg: Config,
        *,
        model: torch.nn.Module | None = None,
        train_set: Any = None,
        val_set: Any = None,
        resume: bool = False,
        progress: bool = False,
    ) -> None:
        from seglab.data import label_set_for

        self.cfg = cfg
        t = cfg.train
        self.dist, self.device = dist_utils.init_from_env(resolve_device(t.device), t.dist_timeout_s)
        self.is_main = self.dist.is_main
        self.progress = progress and self.is_main
        self.precision = resolve_train_precision(cfg, self.device)
        if t.accumulate_steps < 1:
            raise ConfigError(f"train.accumulate_steps must be >= 1, got {t.accumulate_steps}")
        if t.logger not in LOGGERS:
            raise ConfigError(f"train.logger: unknown value {t.logger!r}; expected one of: {', '.join(LOGGERS)}")
        if cfg.data.batch_size % self.dist.world_size:
            raise ConfigError(f"data.batch_size={cfg.data.batch_size} (the global batch) is not divisible by the "
                              f"{self.dist.world_size} processes")
        self.local_batch_size = cfg.data.batch_size // self.dist.world_size
        self.run_dir = cfg.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        seed_everything(t.seed)
        self.task = task_of(cfg.model.name)
        self.label_set = label_set_for(cfg.data)
        self.task.check_classes(cfg, self.label_set)
        if model is None:
            model = create_model(cfg.model.name, num_classes=cfg.model.num_classes, **cfg.model.kwargs)
        self.model = model
        if t.sync_bn and self.dist.distributed:
            if self.device.type != "cuda":
                raise ConfigError("train.sync_bn: SyncBatchNorm runs on CUDA only in this torch version; "
                                  "set train.sync_bn: false for CPU (gloo) runs")
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(self.device)
        if t.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # train_model runs the training forward: the DDP wrapper (gradient averaging) or the model itself
        self.train_model: torch.nn.Module = self.model
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.train_model = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=t.find_unused_parameters,
            )
        self.train_set = train_set if train_set is not None else self.task.build_dataset(
            cfg.data, cfg.data.train_split, train=True)
        self.val_set = val_set if val_set is not None else self.task.build_dataset(
            cfg.data, cfg.data.val_split, train=False)
        if len(self.train_set) < cfg.data.batch_size:
            raise ConfigError(
                f"data.batch_size={cfg.data.batch_size} exceeds the {len(self.train_set)} training images"
            )
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda it: lr_factor(cfg, it))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self._logger = None
        self.criterion = self.task.build_criterion(cfg, self.train_set)  # None: the model computes its losses
        if self.criterion is not None:
            self.criterion.to(self.device)
        self.iteration = 0
        self.best_score = -1.0  # the task's score: val mIoU, or mask AP for instance models
        self.history: list[dict[str, Any]] = []
        if not resume and dist_utils.restart_count() > 0 and (self.ckpt_dir / "last_state.pt").is_file():
            # torchrun --max-restarts started this worker group again after a process failed: continue the run
            log.warning("torchrun restart %d: resuming from %s", dist_utils.restart_count(),
                        self.ckpt_dir / "last_state.pt")
            resume = True
        if resume:
            self._resume()

    # -- checkpoints -------------------------------------------------------------------------------
    def weights_metadata(self) -> dict[str, Any]:
        """What ``seglab predict`` needs to rebuild the model from the weights file alone."""
        from seglab.pretrained import transform_sizes

        meta = {
            "model": self.cfg.model.name,
            "num_classes": self.cfg.model.num_classes,
            # a detector's resize sizes as built (the factory's defaults included): a rebuilt model resizes alike
            "model_kwargs": {**self.cfg.model.kwargs, **transform_sizes(self.model)},
            **label_set_metadata(self.label_set),
            "iteration": self.iteration,
        }
        return {**meta, **self.task.weights_metadata(self.train_set)}

    def save_checkpoint(self) -> None:
        """Write last_state.pt (everything ``--resume`` needs, in one atomic file), then last.safetensors.

        Distributed: every rank must call it (the RNG states of all ranks are gathered); rank 0 writes.
        """
        rng = _rng_state()
        rng_per_rank = None
        if self.dist.distributed:  # sent as torch.save bytes: tensors inside all_gather_object fail on gloo
            buffer = io.BytesIO()
            torch.save(rng, buffer)
            blobs = dist_utils.all_gather_object(buffer.getvalue())
            rng_per_rank = [torch.load(io.BytesIO(blob), weights_only=True) for blob in blobs]
        if self.is_main:
            state = {
                "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "iteration": self.iteration,
                "best_score": self.best_score,
                "rng": rng,
            }
            if rng_per_rank is not None:
                state["rng_per_rank"] = rng_per_rank
            if self.scaler.is_enabled():
                state["scaler"] = self.scaler.state_dict()
            save_training_state(self.ckpt_dir / "last_state.pt", state)
            save_weights(self.ckpt_dir / "last.safetensors", state["model"], self.weights_metadata())
        dist_utils.barrier()  # no rank reads last_state.pt (resume) before it is complete

    def _resume(self) -> None:
        path = self.ckpt_dir / "last_state.pt"
        if self.is_main:
            for folder in (self.ckpt_dir, self.run_dir):  # a kill during an atomic write leaves its temporary file
                for stale in remove_stale_temp_files(folder):
                    log.info("removed %s, left by an interrupted write", stale)
        dist_utils.barrier()
        state = load_training_state(path)
        # the weights come from the same file as the rest of the state, so a kill between the two
        # checkpoint writes cannot pair weights of one iteration with an optimiser of another
        load_into(self.model, state["model"], str(path))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.iteration = int(state["iteration"])
        self.best_score = float(state["best_score"])
        if self.scaler.is_enabled() and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        per_rank = state.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == self.dist.world_size:
            _set_rng_state(per_rank[self.dist.rank])
        else:  # a single-process state, or another number of processes: every rank takes rank 0's
            _set_rng_state(state["rng"])
        if self.is_main:
            self._truncate_log()
        dist_utils.barrier()
        log.info("resumed from %s at iteration %d", path, self.iteration)

    def _truncate_log(self) -> None:
        """Drop metrics.jsonl lines written after the checkpoint (they will be written again)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the kill
                continue
            if record.get("iter", 0) <= self.iteration:
                kept.append(line)
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))

    # -- logging -----------------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        """Keep ``record`` in ``history``; rank 0 also appends it to metrics.jsonl (and TensorBoard)."""
        self.history.append(record)
        if not self.is_main:
            return
        if self._logger is None:
            from seglab.engine.run_logger import RunLogger

            self._logger = RunLogger(self.run_dir, backend=self.cfg.train.logger)
        self._logger.log(record)

    def _close_logger(self) -> None:
        if self._logger is not None:
            self._logger.close()
            self._logger = None

    # -- loop --------------------------------------------------------------------------------------
    def _batches(self):
        """Endless batches in the per-epoch seeded order, starting where ``self.iteration`` is."""
        bs = self.cfg.data.batch_size  # global: each rank reads its slice of every global batch
        per_epoch = len(self.train_set) // bs
        epoch, start = divmod(self.iteration * self.cfg.train.accumulate_steps, per_epoch)
        collate = self.task.collate_fn()
        while True:
            sampler = _EpochSampler(
                len(self.train_set), self.cfg.train.seed, epoch, start * bs, batch_size=bs, rank=self.dist.rank,
                world_size=self.dist.world_size,
            )
            loader = DataLoader(
                SeededSamples(self.train_set, self.cfg.train.seed, epoch),
                batch_size=self.local_batch_size,
                sampler=sampler,
                num_workers=self.cfg.data.workers,
                collate_fn=collate,
                drop_last=True,
                # its own generator: creating the iterator must not draw from the global RNG, or a
                # resumed run (which creates it at another iteration) would augment differently
                generator=torch.Generator().manual_seed(self.cfg.train.seed * 100_003 + epoch),
                pin_memory=self.device.type == "cuda",
                persistent_workers=False,
            )
            yield from loader
            epoch, start = epoch + 1, 0

    def _next_batch(self, batches):
        try:
            return next(batches)
        except RuntimeError as exc:
            if "DataLoader worker" not in str(exc):
                raise
            raise TrainingError(
                f"a data loading worker died at iteration {self.iteration + 1} ({exc}); the last good "
                f"checkpoint is {self.ckpt_dir / 'last_state.pt'} (continue with --resume; data.workers=0 "
                "reads in the main process and shows the failing file)"
            ) from None

    def prepare_batch(self, images: Any, targets: Any) -> tuple[Any, Any]:
        """Hook: a collated batch moved to the device as the task wants it (see Task.prepare_batch)."""
        return self.task.prepare_batch(images, targets, self.device, self.cfg.train.channels_last)

    def autocast(self) -> torch.autocast:
        """The autocast context of ``train.precision`` (disabled for fp32)."""
        return autocast(self.precision, self.device)

    def compute_loss(self, inputs: Any, targets: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Hook: the training forward pass under autocast, then the loss (in float32) and its logged parts."""
        with self.autocast():
            outputs = self.task.train_forward(self.train_model, inputs, targets)
        return self.task.loss(outputs, targets, self.criterion)

    def _mean_over_ranks(self, loss: torch.Tensor, parts: dict[str, float]) -> tuple[float, dict[str, float]]:
        """The loss and its parts averaged over the ranks (as logged); unchanged in a single process."""
        if not self.dist.distributed:
            return loss.item(), parts
        values = torch.tensor([loss.item(), *parts.values()], dtype=torch.float64)
        values = dist_utils.all_reduce_mean(values.to(self.device)).cpu().tolist()
        return values[0], dict(zip(parts, values[1:], strict=True))

    def train_step(self, micro_batches: list[tuple[Any, Any]]) -> dict[str, float]:
        """One optimiser step over ``train.accumulate_steps`` micro-batches (semantic: image and mask
        tensors; instance: lists); returns the loss parts averaged over micro-batches and ranks.

        Each micro-batch's loss is divided by their number, so the summed gradients are those of the
        mean loss; with DDP the gradients are averaged over the ranks at the last micro-batch only.
        """
        self.train_model.train()
        steps = len(micro_batches)
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for i, (images, targets) in enumerate(micro_batches):
            no_sync = self.dist.distributed and i < steps - 1
            with self.train_model.no_sync() if no_sync else contextlib.nullcontext():
                loss, parts = self.compute_loss(*self.prepare_batch(images, targets))
                value, parts = self._mean_over_ranks(loss, parts)  # NaN on any rank stops every rank
                if not math.isfinite(value):
                    raise TrainingError(
                        f"loss is {value} at iteration {self.iteration + 1} ({parts}); stopped, the last good "
                        f"checkpoint is {self.ckpt_dir / 'last_state.pt'} (iteration {self._saved_iteration()})"
                    )
                if steps > 1:
                    loss = loss / steps
                self.scaler.scale(loss).backward()
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + (v / steps if steps > 1 else v)
        if self.cfg.train.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return totals

    def _saved_iteration(self) -> int | None:
        path = self.ckpt_dir / "last_state.pt"
        return int(load_training_state(path)["iteration"]) if path.is_file() else None

    def eval_model(self) -> torch.nn.Module:
        """The model that is evaluated and saved as best.safetensors (methods that keep another model, such as
        self-correction's aggregated model, override this)."""
        return self.model

    def evaluate(self) -> Any:
        """Hook: the validation metrics of :meth:`eval_model` (the task's: SegMetrics, COCO AP, AP^p).

        Distributed: every rank must call it; the task shards the val set and combines the results, so every
        rank returns the single-process metrics.
        """
        return self.task.evaluate(
            self.eval_model(), self.val_set, self.cfg, self.label_set, device=self.device,
            results_dir=self.run_dir / "coco_results" if self.is_main else None,
        )

    def fit(self, stop_at: int | None = None):
        """Train to ``cfg.train.iters``; returns the final validation metrics.

        ``stop_at`` ends the run early after that iteration, with a checkpoint written there, as an
        interrupted run would be; ``--resume`` then continues it to ``cfg.train.iters``.
        """
        cfg = self.cfg
        if self.is_main:
            check_writable(self.ckpt_dir, "run folder")  # a read-only output_dir fails now, not at the first checkpoint
            save_config(cfg, self.run_dir / "config.yaml")
            from seglab.engine.run_logger import RunLogger

            self._logger = RunLogger(self.run_dir, backend=cfg.train.logger)  # fails now if tensorboard is missing
        try:
            with _StopSignals() as signals:
                return self._fit(stop_at, signals)
        except RuntimeError as exc:
            if not (self.dist.distributed and dist_utils.is_collective_failure(exc)):
                raise
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TrainingError(
                f"rank {self.dist.rank}: a collective operation failed in iteration {self.iteration + 1}: another "
                f"process died, lost its connection or hung for more than train.dist_timeout_s="
                f"{self.cfg.train.dist_timeout_s:g} s ({first_line}); the last checkpoint is "
                f"{self.ckpt_dir / 'last_state.pt'} (continue with --resume; torchrun --max-restarts does it by itself)"
            ) from None
        finally:
            self._close_logger()

    def write_model_folder(self) -> None:
        """Write ``runs/<name>/model/``: the best checkpoint (else the last) as a self-describing model folder
        (:func:`seglab.pretrained.save_pretrained`), its card giving the validation metrics it was chosen by, the
        data set and the eval section's inference. Rank 0 only (the caller's check)."""
        from seglab.checkpoint import read_metadata
        from seglab.pretrained import save_pretrained_from_weights

        best = self.ckpt_dir / "best.safetensors"
        weights = best if best.is_file() else self.ckpt_dir / "last.safetensors"
        iteration = read_metadata(weights).get("iteration")
        metrics: dict[str, Any] = {}
        log_path = self.run_dir / "metrics.jsonl"
        for line in log_path.read_text().splitlines() if log_path.is_file() else []:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("split") == "val" and record.get("iter") == iteration:
                metrics = {k: v for k, v in record.items() if k not in ("iter", "split")}
        e = self.cfg.eval
        try:
            folder = save_pretrained_from_weights(
                weights, self.run_dir / "model", metrics=metrics, dataset=self.cfg.data.dataset,
                inference={"mode": e.mode, "crop_size": e.crop_size, "stride": e.stride},
            )
        except (CheckpointError, ConfigError) as exc:  # e.g. a model given as an object that config.model does not
            # rebuild: the run's checkpoints are written; only the folder is missing, and the reason is said
            log.warning("no model folder written for %s: %s", weights, exc)
            return
        log.info("model folder: %s (from %s)", folder, weights)

    def _stop_requested(self, signals: _StopSignals) -> bool:
        """Whether any rank received SIGTERM/SIGINT (agreed by all ranks, so they stop at the same iteration)."""
        flag = signals.received is not None
        if self.dist.distributed:
            buf = torch.tensor([float(flag)], device=self.device)
            torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.MAX)
            flag = bool(buf.item())
        return flag

    def _fit(self, stop_at: int | None, signals: _StopSignals | None = None):
        cfg = self.cfg
        total = cfg.train.iters
        metrics = None
        t0, start_it = time.perf_counter(), self.iteration
        bar = _progress_bar(self.progress)
        with bar:
            task = bar.add_task("train", total=total, completed=self.iteration, loss=float("nan"), lr=0.0)
            batches = self._batches()
            while self.iteration < (total if stop_at is None else min(stop_at, total)):
                parts = self.train_step([self._next_batch(batches) for _ in range(cfg.train.accumulate_steps)])
                self.iteration += 1
                lr = self.optimizer.param_groups[0]["lr"]
                bar.update(task, advance=1, loss=parts["loss"], lr=lr)
                if self.iteration % cfg.train.log_interval == 0 or self.iteration == total:
                    rate = (self.iteration - start_it) / (time.perf_counter() - t0)
                    self._log({"iter": self.iteration, "lr": lr, **parts, "it_per_s": rate})
                evaluate_now = self.iteration == total or (
                    cfg.train.eval_interval > 0 and self.iteration % cfg.train.eval_interval == 0
                )
                if evaluate_now:
                    metrics = self.evaluate()
                    self._log({"iter": self.iteration, "split": "val", **metrics.to_dict()})
                    score_name, score = self.task.score(metrics)
                    if score > self.best_score:  # the same on every rank: the metrics are global
                        self.best_score = score
                        if self.is_main:
                            save_weights(
                                self.ckpt_dir / "best.safetensors",
                                self.eval_model().state_dict(),
                                {**self.weights_metadata(), score_name: score},
                            )
                saved = self.iteration % cfg.train.checkpoint_interval == 0 or self.iteration in (total, stop_at)
                if saved:
                    self.save_checkpoint()
                if signals is not None and self._stop_requested(signals):
                    if not saved:
                        self.save_checkpoint()
                    name = signal.Signals(signals.received).name if signals.received else "a signal on another rank"
                    raise Preempted(f"stopped by {name} after iteration {self.iteration} of {total}; its state is "
                                    f"{self.ckpt_dir / 'last_state.pt'} (continue with --resume)")
        if stop_at is not None and self.iteration < total:
            return metrics
        if metrics is None:  # resumed a finished run
            metrics = self.evaluate()
        if not self.is_main:
            return metrics
        atomic_write_text(self.run_dir / "final_metrics.json", json.dumps(metrics.to_dict(), indent=2))
        self.write_model_folder()
        try:
            from seglab.visualize import plot_curves

            plot_curves(self.run_dir / "metrics.jsonl", self.run_dir / "curves.png")
        except ImportError as exc:  # matplotlib is a dependency; only a broken install gets here
            log.warning("curves.png not drawn: %s", exc)
        return metrics


class _StopSignals:
    """SIGTERM and SIGINT, while training, set :attr:`received` instead of ending the process; the loop checks it
    after each iteration. The first signal restores the previous handlers, so a second one acts at once. Only the
    main thread can install handlers; elsewhere (a Trainer run in a thread) signals keep their usual effect."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        self._restore()
        log.warning("%s received: stopping after this iteration with its state saved (again to stop at once)",
                    signal.Signals(signum).name)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc: Any) -> None:
        self._restore()


def _progress_bar(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
    )


__all__ = ["LOGGERS", "Trainer", "build_optimizer", "lr_factor", "resolve_train_precision"]
