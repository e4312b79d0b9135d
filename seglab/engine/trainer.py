"""Training loop for semantic and instance models, in one process or data-parallel under torchrun.

One loop for every model. A semantic model's outputs (a tensor, or a dict with ``out`` and ``aux``) go
to :class:`~seglab.losses.SegmentationLoss`; an instance model (the torchvision detection contract)
takes lists of images and targets and returns its own dict of losses, which are summed and each logged.
The run folder ``runs/<name>/`` receives config.yaml, metrics.jsonl (one JSON object per log or eval
line), checkpoints/{last,best}.safetensors, last_state.pt (model, optimiser, scheduler, RNG, position
in the data order, in one atomically written file) and curves.png. The best checkpoint is chosen by val
mIoU (semantic) or mask AP (instance).

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
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import random
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
from seglab.engine import distributed as dist_utils
from seglab.errors import ConfigError, TrainingError
from seglab.losses import SegmentationLoss
from seglab.registry import create_model, model_info
from seglab.utils import atomic_write_text, resolve_device, seed_everything

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


class _SeededSamples(torch.utils.data.Dataset):
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


CLASS_WEIGHTINGS = ("none", "median_frequency")
PRECISIONS = ("fp32", "bf16", "fp16")
LOGGERS = ("jsonl", "tensorboard")


def resolve_precision(cfg: Config, device: torch.device) -> str:
    """``train.precision`` checked against the device, with the deprecated ``train.amp: true`` read as bf16."""
    precision = cfg.train.precision
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision: unknown value {precision!r}; expected one of: {', '.join(PRECISIONS)}")
    if cfg.train.amp:
        if precision == "fp32":
            log.warning("train.amp is deprecated: use train.precision: bf16 (taken as bf16)")
            precision = "bf16"
        elif precision != "bf16":
            raise ConfigError(f"train.amp: true (bf16) conflicts with train.precision: {precision}; "
                              "drop train.amp (deprecated)")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision: fp16 needs a CUDA device (GradScaler), got {device.type}; "
                          "use bf16 on the CPU")
    return precision


def median_frequency_class_weights(dataset: Any, num_classes: int) -> torch.Tensor:
    """SegNet's median frequency weights from ``dataset``'s label files, read without augmentation."""
    from seglab.data.io import read_label
    from seglab.losses import class_pixel_counts, median_frequency_weights

    read = getattr(dataset, "load_label", read_label)  # VOC datasets also read SBD .mat labels
    labels = (read(path) for path in dataset.label_paths)
    counts, image_pixels = class_pixel_counts(labels, num_classes)
    return median_frequency_weights(counts, image_pixels).float()


class Trainer:
    """Trains ``cfg.model`` on ``cfg.data``, evaluating and checkpointing as the config says."""

    def __init__(self, cfg: Config, *, resume: bool = False, progress: bool = False) -> None:
        from seglab.data import build_dataset
        from seglab.data.palettes import get_label_set
        self.cfg = cfg
        t = cfg.train
        self.dist, self.device = dist_utils.init_from_env(resolve_device(t.device))
        self.is_main = self.dist.is_main
        self.progress = progress and self.is_main
        self.precision = resolve_precision(cfg, self.device)
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
        self.label_set = get_label_set(cfg.data.palette)
        self.task = model_info(cfg.model.name).task
        # lists of images and target dicts in, a dict of losses out: instance models and Parsing R-CNN
        self.detection = model_info(cfg.model.name).detection_contract
        data_task = "instance" if self.detection else self.task
        self.model = create_model(cfg.model.name, num_classes=cfg.model.num_classes, **cfg.model.kwargs)
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
        self.train_set = build_dataset(cfg.data, cfg.data.train_split, train=True, task=data_task)
        self.val_set = build_dataset(eval_data_config(cfg.data), cfg.data.val_split, train=False, task=data_task)
        if len(self.train_set) < cfg.data.batch_size:
            raise ConfigError(
                f"data.batch_size={cfg.data.batch_size} exceeds the {len(self.train_set)} training images"
            )
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda it: lr_factor(cfg, it))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self._logger = None
        self.criterion = None  # detection-contract models compute their own losses
        if not self.detection:
            if cfg.train.loss == "ce":
                self.criterion = SegmentationLoss(
                    aux_weights=cfg.train.aux_weights,
                    class_weights=self._class_weights(),
                    bootstrap_top_k=_top_k(cfg.train.bootstrap_top_k),
                )
            else:
                self.criterion = build_parsing_criterion(cfg)
            self.criterion.to(self.device)
        self.iteration = 0
        self.best_score = -1.0  # val mIoU (semantic) or mask AP (instance)
        self.history: list[dict[str, Any]] = []
        if resume:
            self._resume()

    def _class_weights(self) -> torch.Tensor | None:
        """``train.class_weights`` if given, else the ``train.class_weighting`` scheme's weights (or None)."""
        cfg = self.cfg
        scheme = cfg.train.class_weighting
        if scheme not in CLASS_WEIGHTINGS:
            raise ConfigError(
                f"train.class_weighting: unknown value {scheme!r}; expected one of: {', '.join(CLASS_WEIGHTINGS)}"
            )
        if cfg.train.class_weights:
            if scheme != "none":
                log.info("train.class_weights given: train.class_weighting=%s is not used", scheme)
            return torch.tensor(cfg.train.class_weights)
        if scheme == "none":
            return None
        weights = median_frequency_class_weights(self.train_set, cfg.model.num_classes)
        log.info("median frequency class weights: %s", [round(float(w), 4) for w in weights])
        return weights

    # -- checkpoints -------------------------------------------------------------------------------
    def weights_metadata(self) -> dict[str, Any]:
        """What ``seglab predict`` needs to rebuild the model from the weights file alone."""
        meta = {
            "model": self.cfg.model.name,
            "num_classes": self.cfg.model.num_classes,
            "model_kwargs": self.cfg.model.kwargs,
            "label_set": self.cfg.data.palette,
            "iteration": self.iteration,
        }
        if self.task == "instance":  # the dataset's category names and ids, for COCO results
            meta["classes"] = list(self.train_set.classes)
            meta["label_to_cat_id"] = {str(k): int(v) for k, v in self.train_set.label_to_cat_id.items()}
        return meta

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
        collate = None
        if self.detection:
            from seglab.data.instance_transforms import collate_instances as collate
        while True:
            sampler = _EpochSampler(
                len(self.train_set), self.cfg.train.seed, epoch, start * bs, batch_size=bs, rank=self.dist.rank,
                world_size=self.dist.world_size,
            )
            loader = DataLoader(
                _SeededSamples(self.train_set, self.cfg.train.seed, epoch),
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

    def _forward_loss(self, images, targets) -> tuple[torch.Tensor, dict[str, float]]:
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        autocast = torch.autocast(self.device.type, dtype=dtype, enabled=self.precision != "fp32")
        if self.detection:
            images = [im.to(self.device, non_blocking=True) for im in images]
            targets = [{k: _plain(v).to(self.device) for k, v in t.items()} for t in targets]
            with autocast:
                losses = self.train_model(images, targets)
            losses = {k: v.float() for k, v in losses.items()}
            loss = sum(losses.values())
            return loss, {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}
        images = images.to(self.device, non_blocking=True)
        if isinstance(targets, dict):  # parsing targets with extras (pose joints, person ids)
            targets = {k: v.to(self.device, non_blocking=True) for k, v in targets.items()}
            if isinstance(self.criterion, SegmentationLoss):
                targets = targets["mask"]
        else:
            targets = targets.to(self.device, non_blocking=True)
        if self.cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast:
            outputs = self.train_model(images)
        outputs = {k: _to_float(v) for k, v in outputs.items()} if isinstance(outputs, dict) else outputs.float()
        return self.criterion(outputs, targets)

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
                loss, parts = self._forward_loss(images, targets)
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

    def _val_shard(self):
        """This rank's part of the val set: every ``world_size``-th batch of ``eval.batch_size`` images,
        so each rank's batches are exactly the batches a single process would run (same numbers)."""
        if not self.dist.distributed:
            return self.val_set
        bs, n = self.cfg.eval.batch_size, len(self.val_set)
        starts = range(self.dist.rank * bs, n, self.dist.world_size * bs)
        return torch.utils.data.Subset(self.val_set, [i for b in starts for i in range(b, min(b + bs, n))])

    def eval_model(self) -> torch.nn.Module:
        """The model that is evaluated and saved as best.safetensors (methods that keep another model, such as
        self-correction's aggregated model, override this)."""
        return self.model

    def evaluate(self):
        """Validation metrics: SegMetrics (semantic) or InstanceMetrics with COCO AP (instance).

        Distributed: every rank must call it; each evaluates its shard, the confusion matrices are summed
        (or the COCO results gathered), and every rank returns the single-process metrics.
        """
        if self.task == "instance":
            from seglab.engine.coco_eval import evaluate_instances

            return evaluate_instances(  # shards and gathers by itself under torch.distributed
                self.eval_model(), self.val_set, device=self.device, batch_size=self.cfg.eval.batch_size,
                results_dir=self.run_dir / "coco_results" if self.is_main else None,
            )
        if self.detection:  # Parsing R-CNN: AP^p, PCP and the merged maps' mIoU (every rank evaluates all)
            from seglab.engine.parsing_eval import evaluate_person_parsing

            return evaluate_person_parsing(self.eval_model(), self.val_set, num_classes=self.cfg.model.num_classes,
                                           device=self.device, absent=self.cfg.eval.absent)
        from seglab.engine.evaluator import evaluate_confusion

        e = self.cfg.eval
        return evaluate_confusion(
            self.eval_model(),
            self._val_shard(),
            num_classes=self.cfg.model.num_classes,
            mode=e.mode,
            crop_size=tuple(e.crop_size),
            stride=tuple(e.stride),
            scales=tuple(e.scales),
            flip=e.flip,
            flip_pairs=self.label_set.flip_pairs,
            device=self.device,
            batch_size=e.batch_size,
            progress=False,
        ).all_reduce().compute(absent=e.absent)

    def fit(self, stop_at: int | None = None):
        """Train to ``cfg.train.iters``; returns the final validation metrics.

        ``stop_at`` ends the run early after that iteration, with a checkpoint written there, as an
        interrupted run would be; ``--resume`` then continues it to ``cfg.train.iters``.
        """
        cfg = self.cfg
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            from seglab.engine.run_logger import RunLogger

            self._logger = RunLogger(self.run_dir, backend=cfg.train.logger)  # fails now if tensorboard is missing
        try:
            return self._fit(stop_at)
        finally:
            self._close_logger()

    def _fit(self, stop_at: int | None):
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
                    score_name, score = _score(metrics)
                    if score > self.best_score:  # the same on every rank: the metrics are global
                        self.best_score = score
                        if self.is_main:
                            save_weights(
                                self.ckpt_dir / "best.safetensors",
                                self.eval_model().state_dict(),
                                {**self.weights_metadata(), score_name: score},
                            )
                if self.iteration % cfg.train.checkpoint_interval == 0 or self.iteration in (total, stop_at):
                    self.save_checkpoint()
        if stop_at is not None and self.iteration < total:
            return metrics
        if metrics is None:  # resumed a finished run
            metrics = self.evaluate()
        if not self.is_main:
            return metrics
        atomic_write_text(self.run_dir / "final_metrics.json", json.dumps(metrics.to_dict(), indent=2))
        try:
            from seglab.visualize import plot_curves

            plot_curves(self.run_dir / "metrics.jsonl", self.run_dir / "curves.png")
        except ImportError as exc:  # matplotlib is a dependency; only a broken install gets here
            log.warning("curves.png not drawn: %s", exc)
        return metrics


PARSING_LOSSES = ("ce", "ce2p", "jppnet", "ss_jppnet", "pgn")


def build_parsing_criterion(cfg: Config) -> torch.nn.Module:
    """The loss ``train.loss`` names for a parsing model (each reads its model's train-mode output dict):
    ``ce2p`` SCHP's CE2P loss (Lovasz + CE, edge, consistency), ``jppnet`` JPPNet's parsing CE + pose L2,
    ``ss_jppnet`` SS-JPPNet's structure-sensitive loss, ``pgn`` PGN's parsing + instance-edge loss."""
    name, k = cfg.train.loss, cfg.model.num_classes
    if name == "ce2p":
        from seglab.losses import CE2PLoss

        return CE2PLoss(k)
    if name == "jppnet":
        from seglab.models.parsing.pose import JPPNetLoss

        return JPPNetLoss()
    if name == "ss_jppnet":
        from seglab.models.parsing.pose import SSJPPNetLoss

        return SSJPPNetLoss()
    if name == "pgn":
        from seglab.models.parsing.pgn import PGNLoss

        return PGNLoss()
    raise ConfigError(f"train.loss: unknown loss {name!r}; expected one of: {', '.join(PARSING_LOSSES)}")


def eval_data_config(data):
    """The data section for validation: parsing extras (pose joints, person ids) are training targets only."""
    import dataclasses

    extras = {f: False for f in ("with_pose", "with_humans") if getattr(data, f, False)}
    return dataclasses.replace(data, **extras) if extras else data


def _score(metrics) -> tuple[str, float]:
    """The number the best checkpoint is chosen by: mask AP for instance models, else mIoU."""
    if hasattr(metrics, "segm_AP"):
        return "segm_AP", float(metrics.segm_AP)
    return "mIoU", float(metrics.mIoU)


def _plain(value):
    """A tv_tensors subclass as a plain tensor (models index and concatenate them freely)."""
    return value.as_subclass(torch.Tensor) if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def _top_k(value: float) -> float | int | None:
    """``train.bootstrap_top_k`` as the loss takes it: None (off), a pixel count, or a fraction."""
    if value < 0:
        raise ConfigError(f"train.bootstrap_top_k must be >= 0, got {value}")
    if value == 0:
        return None
    return int(value) if value >= 1 else float(value)


def _to_float(v):
    if isinstance(v, torch.Tensor):
        return v.float()
    if isinstance(v, (list, tuple)):
        return [_to_float(x) for x in v]
    return v


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


def build_trainer(cfg: Config, *, resume: bool = False, progress: bool = False) -> Trainer:
    """A :class:`Trainer` for ``cfg``, or SCHP's SelfCorrectionTrainer when ``self_correction.enabled``."""
    sc = cfg.self_correction
    if not sc.enabled:
        return Trainer(cfg, resume=resume, progress=progress)
    from seglab.methods.self_correction import SelfCorrectionOptions, SelfCorrectionTrainer

    options = SelfCorrectionOptions(
        cycle_start=sc.cycle_start, cycle_len=sc.cycle_len, bn_batches=sc.bn_batches, lambda_s=sc.lambda_s,
        lambda_e=sc.lambda_e, lambda_c=sc.lambda_c,
    )
    return SelfCorrectionTrainer(cfg, options, resume=resume, progress=progress)


def train(cfg: Config, *, resume: bool = False, progress: bool = False):
    """Build the trainer for ``cfg`` (:func:`build_trainer`) and run it; returns the final validation metrics."""
    trainer = build_trainer(cfg, resume=resume, progress=progress)
    try:
        return trainer.fit()
    finally:
        dist_utils.cleanup()


__all__ = ["Trainer", "build_optimizer", "build_trainer", "lr_factor", "train"]
