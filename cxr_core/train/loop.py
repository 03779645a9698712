"""The paper's training recipe (section 3.3) as one small loop, resumable and reproducible.

Recipe: Adam at ``lr``; ReduceLROnPlateau on the validation loss (``plateau_factor``,
``plateau_patience``); early stop after ``early_stop_patience`` epochs without a lower validation
loss; at most ``epochs`` epochs; the best-validation-loss weights are kept.
Not in the paper, off in its config: a linear warm-up over ``warmup_epochs`` and a per-family
learning rate (``train.lr_scale``), which the phantom's from-scratch known-answer run needs; and the
label-permutation control (``train.shuffle_labels``, ``cxr_core.train.control``).

Why it looks the way it does:

* Reproducible and resumable. Every epoch's randomness is a function of ``(seed, epoch)`` only:
  the batch order (``CacheBatches``), the augmentation draws (a ``torch.Generator``) and the
  global torch RNG (dropout, drop-path) are re-seeded at the start of each epoch. With the model,
  optimiser, scheduler and early-stop counters saved in ``last.pt`` after every epoch, a run killed
  after epoch k and started again continues at epoch k + 1 and ends, on CPU, with bit-identical
  weights to a run that was never interrupted. ``last.pt`` also records the settings it was
  trained with; a ``last.pt`` from other settings (``dvc exp run -S lr=...``) is not resumed
  (``cxr_core.train.resume``).
* Fast. uint8 batches from the memmap cache are augmented and normalised on the device
  (``cxr_core.data.batches``). The loss is summed on the device and read once per epoch, so there is
  no host synchronisation per step. On CUDA: bf16 autocast, pinned memory, optional
  ``torch.compile``; channels_last for the CNNs.
* Validation loss is the loss of the whole validation set computed at once from its logits. The
  class-averaged BCE depends on which images share a batch, so a mean over batches would change
  with ``eval_batch_size`` and with sharding; the whole-set value does not.
* Multi-GPU / multi-process is torchrun + DistributedDataParallel (``cxr_core.train.distributed``):
  ``train.batch_size`` is the global batch, split evenly over the processes; rank 0 validates the
  exact weights it checkpoints (so logged metrics equal a single-process evaluation of the
  checkpoint) and broadcasts the result so every rank takes the same scheduler and early-stop
  decisions; only rank 0 writes checkpoints and the DVCLive log.
* Byte-reproducible outputs. Checkpoints and the DVCLive log hold only what the run computed;
  seconds and images per second go to the log and to an untracked timing file
  (``cxr_core.train.live``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cxr_core.data.batches import CacheBatches, prepare_batch, to_device
from cxr_core.data.tables import SplitTable
from cxr_core.errors import CxrError
from cxr_core.evaluate.metrics import macro_auc
from cxr_core.evaluate.predict import infer_logits
from cxr_core.models.checkpoints import CheckpointMeta, save_checkpoint
from cxr_core.models.registry import create_model, get_spec
from cxr_core.runtime import Runtime
from cxr_core.train.config import TrainConfig
from cxr_core.train.control import control_label_file, permuted_labels
from cxr_core.train.distributed import (
    DistEnv,
    barrier,
    broadcast_from_main,
    dist_env_from_environ,
    process_group,
    sum_over_ranks,
)
from cxr_core.train.live import EpochLog
from cxr_core.train.losses import LossFn, get_loss
from cxr_core.train.resume import BEST_FILE, LAST_FILE, load_resumable, resume_key

logger = logging.getLogger(__name__)

# Independent random streams derived from (seed, epoch, stream, rank).
_STREAM_AUGMENT = 1
_STREAM_TORCH = 2


class TrainingError(CxrError, RuntimeError):
    """Training cannot start or went wrong; the message says what to change."""


@dataclass
class Progress:
    """Best validation loss so far and the early-stop counter (saved in ``last.pt``)."""

    best_loss: float = math.inf
    best_epoch: int = 0
    best_auc: float = math.nan
    bad_epochs: int = 0

    def update(self, epoch: int, val_loss: float, val_auc: float) -> bool:
        """Record an epoch; True when its validation loss is the lowest so far (strictly)."""
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.best_auc, self.bad_epochs = val_loss, epoch, val_auc, 0
            return True
        self.bad_epochs += 1
        return False

    def should_stop(self, patience: int) -> bool:
        """Early stop: ``patience`` epochs in a row without a lower validation loss."""
        return self.bad_epochs >= patience


@dataclass
class FitResult:
    """What :func:`fit` did; ``history`` holds one dict per epoch ever trained (resumed runs included)."""

    best_epoch: int
    best_val_loss: float
    best_val_macro_auc: float
    stopped_early: bool
    resumed_from: int  # epoch of the last.pt this run started from; 0 = from scratch
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, float | int | bool]:
        """The run's totals, as the DVCLive summary (``metrics.json``) records them."""
        return {
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "best_val_macro_auc": self.best_val_macro_auc,
            "epochs_trained": len(self.history),
            "stopped_early": self.stopped_early,
        }


def epoch_seed(seed: int, epoch: int, stream: int, rank: int = 0) -> int:
    """A 63-bit seed that depends only on (seed, epoch, stream, rank): epochs replay exactly on resume."""
    state = np.random.SeedSequence([seed, epoch, stream, rank]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam with PyTorch's defaults (betas 0.9 / 0.999), as the paper."""
    return torch.optim.Adam(model.parameters(), lr=lr)


def make_scheduler(
    optimizer: torch.optim.Optimizer, factor: float, patience: int
) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """Multiply the learning rate by ``factor`` after ``patience`` epochs without a lower val loss."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience)


def validation_metrics(logits: torch.Tensor, targets: np.ndarray, loss_fn: LossFn) -> tuple[float, float]:
    """(loss of the whole set at once, macro AUC): independent of batch size and sharding."""
    y = torch.as_tensor(targets, dtype=torch.float32)
    loss = float(loss_fn(logits, y))
    return loss, macro_auc(targets, torch.sigmoid(logits).numpy())


def fit(
    cfg: TrainConfig,
    images: np.ndarray,
    train: SplitTable,
    val: SplitTable,
    out_dir: str | os.PathLike,
    live_dir: str | os.PathLike | None = None,
    *,
    timing_log: str | os.PathLike | None = None,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
) -> FitResult:
    """Train ``cfg.model`` on the cache rows of ``train``; writes ``best.pt`` and ``last.pt`` in ``out_dir``.

    Resumes from ``out_dir/last.pt`` when it continues this run. Under torchrun (``WORLD_SIZE`` > 1)
    it joins / starts the process group (gloo on CPU, nccl on CUDA) and trains with DDP.
    ``on_epoch_end`` is called on every rank with the epoch's history row after the checkpoints are
    written (an exception there stops training like a kill would). ``timing_log``: a TSV that rank 0
    appends each epoch's seconds and images per second to (never a tracked output).
    """
    env = dist_env_from_environ()
    runtime = cfg.runtime(env.local_rank)
    with process_group(env, runtime.device):
        run = _build_run(cfg, images, train, val, env, runtime, Path(out_dir))
        resumed_from = run.resume()
        log = EpochLog(live_dir, timing_log, run.history) if env.is_main else EpochLog()
        run.announce()
        for epoch in range(resumed_from + 1, cfg.epochs + 1):
            if run.stopped:
                break
            row, improved, seconds, images_per_second = run.epoch(epoch)
            if env.is_main:
                run.checkpoint(row, improved)
                log.epoch(row, seconds, images_per_second)
                run.report(row, improved, seconds, images_per_second)
            if on_epoch_end is not None:
                on_epoch_end(dict(row))
        result = run.result(resumed_from)
        log.finish(result.summary())
        barrier(env)  # checkpoints complete before any rank returns
        return result


@dataclass
class _Run:
    """One training run's moving parts and state; methods are the steps of :func:`fit`."""

    cfg: TrainConfig
    env: DistEnv
    runtime: Runtime
    images: np.ndarray
    train: SplitTable
    val: SplitTable
    out_dir: Path
    batches: CacheBatches
    model: nn.Module  # the bare model: validated and checkpointed
    train_model: nn.Module  # what the steps call: DDP- and/or compile-wrapped model
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    loss_fn: LossFn
    key: dict  # the resume key, saved in last.pt
    progress: Progress = field(default_factory=Progress)
    history: list[dict[str, float]] = field(default_factory=list)
    stopped: bool = False

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    def _log_main(self, msg: str, *args: Any) -> None:
        (logger.info if self.env.is_main else logger.debug)(msg, *args)

    def resume(self) -> int:
        """Continue ``last.pt`` if it is this run's, else clear stale checkpoints; the epoch resumed from."""
        cfg, env = self.cfg, self.env
        ckpt = load_resumable(self.out_dir, self.key, cfg.epochs, verbose=env.is_main)
        if ckpt is not None:
            self.restore(ckpt)
            self._log_main(
                "resuming %s from %s after epoch %d", cfg.model, self.out_dir / LAST_FILE, ckpt["epoch"]
            )
        barrier(env)  # every rank has read last.pt before rank 0 may replace it
        if env.is_main and ckpt is None:
            for name in (BEST_FILE, LAST_FILE):  # stale files from other settings must not survive a kill
                (self.out_dir / name).unlink(missing_ok=True)
        return int(ckpt["epoch"]) if ckpt is not None else 0

    def restore(self, ckpt: Mapping[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.progress = Progress(**ckpt["progress"])
        self.history = [dict(row) for row in ckpt["history"]]
        self.stopped = bool(ckpt["stopped_early"])

    def announce(self) -> None:
        cfg = self.cfg
        self._log_main(
            "training %s at %d px on %s (%d process(es)): %d train / %d val images, %d steps per epoch",
            cfg.model,
            cfg.image_size,
            self.device,
            self.env.world_size,
            len(self.train.rows),
            len(self.val.rows),
            len(self.batches),
        )

    def epoch(self, epoch: int) -> tuple[dict[str, float], bool, float, float]:
        """Train and validate one epoch, then step the schedule: (history row, improved, s, images/s)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        train_loss = self.train_epoch(epoch)
        train_seconds = time.perf_counter() - t0
        val_loss, val_auc = self.validate()
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            raise TrainingError(
                f"{cfg.model} epoch {epoch}: train loss {train_loss}, val loss {val_loss}: training diverged; "
                f"lower lr (now {cfg.lr}) or check the data. {self.out_dir / LAST_FILE} keeps the last good epoch"
            )
        lr = float(self.optimizer.param_groups[0]["lr"])  # the rate of the epoch's last step
        improved = self.progress.update(epoch, val_loss, val_auc)
        self.scheduler.step(val_loss)
        self.stopped = self.progress.should_stop(cfg.early_stop_patience)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_macro_auc": val_auc,
            "lr": lr,
        }
        self.history.append(row)
        seconds = time.perf_counter() - t0
        return row, improved, seconds, len(self.batches) * cfg.batch_size / train_seconds

    def train_epoch(self, epoch: int) -> float:
        """One pass over this rank's shuffled batches; mean batch loss over all ranks (one host sync)."""
        cfg, env, device = self.cfg, self.env, self.device
        self.batches.set_epoch(epoch)
        torch.manual_seed(epoch_seed(cfg.seed, epoch, _STREAM_TORCH, env.rank))  # dropout, drop-path
        generator = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, _STREAM_AUGMENT, env.rank))
        self.train_model.train()
        loss_sum = torch.zeros((), device=device)
        desc = f"{cfg.model} epoch {epoch}/{cfg.epochs}"
        steps = tqdm(
            self.batches, desc=desc, unit="batch", leave=False, disable=None if env.is_main else True
        )
        for step, (x_u8, y) in enumerate(steps, start=(epoch - 1) * len(self.batches)):
            self.warm_up(step)
            x = prepare_batch(
                x_u8,
                device,
                train=True,
                generator=generator,
                channels_last=self.runtime.channels_last,
                **cfg.augment,
            )
            with self.runtime.autocast():
                logits = self.train_model(x)
            loss = self.loss_fn(logits, to_device(y, device))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.detach()
        sum_over_ranks(loss_sum, env)
        return loss_sum.item() / (len(self.batches) * env.world_size)

    def warm_up(self, step: int) -> None:
        """Linear warm-up: step i of the first ``warmup_epochs`` epochs trains at ``lr * (i + 1) / their steps``.

        A function of the global step alone, so a resumed run replays it exactly. It only raises the
        rate towards ``lr``; ReduceLROnPlateau's cuts apply after it (its patience counts from epoch 1).
        """
        total = self.cfg.warmup_epochs * len(self.batches)
        if step < total:
            for group in self.optimizer.param_groups:
                group["lr"] = self.cfg.lr * (step + 1) / total

    def validate(self) -> tuple[float, float]:
        """(val loss, val macro AUC) of the bare model, scored on rank 0 and broadcast to every rank."""
        values = [math.nan, math.nan]
        if self.env.is_main:
            logits = infer_logits(
                self.model,
                self.images,
                self.val.rows,
                runtime=self.runtime,
                batch_size=self.cfg.eval_batch_size,
            )
            values = list(validation_metrics(logits, self.val.targets, self.loss_fn))
        values = broadcast_from_main(values, self.env, self.device)
        return values[0], values[1]

    def checkpoint(self, row: Mapping[str, float], improved: bool) -> None:
        """``best.pt`` (weights + metadata) when improved, then the full ``last.pt``; rank 0 only."""
        cfg = self.cfg
        meta = CheckpointMeta(
            cfg.model,
            get_spec(cfg.model).timm_name,
            cfg.image_size,
            data_source=cfg.data_source,
            label_file=control_label_file(cfg.label_file, cfg.shuffle_labels),
        ).to_dict()
        weights = self.model.state_dict()
        if improved:
            best = {"epoch": row["epoch"], "val_loss": row["val_loss"], "val_macro_auc": row["val_macro_auc"]}
            save_checkpoint(self.out_dir / BEST_FILE, {**meta, "model": weights, **best})
        last = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": row["epoch"],
            "progress": asdict(self.progress),
            "stopped_early": self.stopped,
            "history": self.history,
            "resume_key": self.key,
            "config": asdict(cfg),
        }
        save_checkpoint(self.out_dir / LAST_FILE, {**meta, "model": weights, **last})

    def report(
        self, row: Mapping[str, float], improved: bool, seconds: float, images_per_second: float
    ) -> None:
        """Log the epoch (rank 0), and the early stop when it came."""
        cfg, progress = self.cfg, self.progress
        logger.info(
            "%s epoch %d/%d: train_loss %.4f val_loss %.4f val_macro_auc %.3f lr %.2e (%.1f s, %.0f img/s)%s",
            cfg.model,
            row["epoch"],
            cfg.epochs,
            row["train_loss"],
            row["val_loss"],
            row["val_macro_auc"],
            row["lr"],
            seconds,
            images_per_second,
            " *best*" if improved else "",
        )
        if self.stopped:
            logger.info(
                "%s: early stop after epoch %d (%d epochs without a lower val loss; best epoch %d)",
                cfg.model,
                row["epoch"],
                progress.bad_epochs,
                progress.best_epoch,
            )

    def result(self, resumed_from: int) -> FitResult:
        return FitResult(
            best_epoch=self.progress.best_epoch,
            best_val_loss=self.progress.best_loss,
            best_val_macro_auc=self.progress.best_auc,
            stopped_early=self.stopped,
            resumed_from=resumed_from,
            history=self.history,
        )


def _check_inputs(cfg: TrainConfig, images: np.ndarray, val: SplitTable, env: DistEnv) -> None:
    if images.ndim != 3 or images.shape[1] != cfg.image_size:
        raise TrainingError(
            f"cache images are {images.shape}, expected N x {cfg.image_size} x {cfg.image_size}"
        )
    if cfg.batch_size % env.world_size:
        raise TrainingError(
            f"train.batch_size = {cfg.batch_size} is the global batch and must divide evenly over the "
            f"{env.world_size} processes (train.nnodes x train.nproc_per_node); pick a multiple of {env.world_size}"
        )
    if len(val.rows) == 0:
        raise TrainingError("the validation split is empty; raise split.val_fraction")


def _wrap(model: nn.Module, cfg: TrainConfig, env: DistEnv, device: torch.device) -> nn.Module:
    """The model the training steps call: DDP across processes, compiled on CUDA when asked."""
    train_model: nn.Module = model
    if env.world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile and device.type == "cuda":
        train_model = torch.compile(train_model)
    elif cfg.compile and env.is_main:
        logger.info("train.compile is only used on CUDA; training uncompiled on %s", device)
    return train_model


def _build_run(
    cfg: TrainConfig,
    images: np.ndarray,
    train: SplitTable,
    val: SplitTable,
    env: DistEnv,
    runtime: Runtime,
    out_dir: Path,
) -> _Run:
    """Check the inputs, then make the model (seeded), optimiser, scheduler, batches and wrappers."""
    device = runtime.device
    _check_inputs(cfg, images, val, env)
    if cfg.shuffle_labels:
        train = permuted_labels(train, cfg.seed)
        if env.is_main:
            logger.warning(
                "train.shuffle_labels is on: a control run on permuted labels (its AUCs must stay near 0.5)"
            )
    batches = CacheBatches(
        images,
        train.rows,
        train.targets,
        cfg.batch_size // env.world_size,
        shuffle=True,
        seed=cfg.seed,
        rank=env.rank,
        world_size=env.world_size,
        drop_last=True,
    )
    if len(batches) == 0:
        raise TrainingError(
            f"the training split has {len(train.rows)} images, fewer than one batch of "
            f"train.batch_size = {cfg.batch_size}; lower train.batch_size"
        )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels

    torch.manual_seed(cfg.seed)  # same initial weights on every rank and in every run
    model = create_model(cfg.model, image_size=cfg.image_size, pretrained=cfg.pretrained, weights=cfg.weights)
    runtime.prepare(model)
    optimizer = make_optimizer(model, cfg.lr)
    return _Run(
        cfg=cfg,
        env=env,
        runtime=runtime,
        images=images,
        train=train,
        val=val,
        out_dir=out_dir,
        batches=batches,
        model=model,
        train_model=_wrap(model, cfg, env, device),
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, cfg.plateau_factor, cfg.plateau_patience),
        loss_fn=get_loss(cfg.loss),
        key=resume_key(cfg, env, runtime, train, val, images),
    )
