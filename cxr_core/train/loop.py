"""The paper's training recipe (section 3.3) as one small loop, resumable and reproducible.

Recipe: Adam at ``lr``; ReduceLROnPlateau on the validation loss (``plateau_factor``,
``plateau_patience``); early stop after ``early_stop_patience`` epochs without a lower validation
loss; at most ``epochs`` epochs; the best-validation-loss weights are kept.

Why it looks the way it does:

* Reproducible and resumable. Every epoch's randomness is a function of ``(seed, epoch)`` only:
  the batch order (``CacheBatches``), the augmentation draws (a ``torch.Generator``) and the
  global torch RNG (dropout, drop-path) are re-seeded at the start of each epoch. With the model,
  optimiser, scheduler and early-stop counters saved in ``last.pt`` after every epoch, a run killed
  after epoch k and started again continues at epoch k + 1 and ends, on CPU, with bit-identical
  weights to a run that was never interrupted. ``last.pt`` also records the settings it was
  trained with; a ``last.pt`` from other settings (``dvc exp run -S lr=...``) is not resumed.
* Fast. uint8 batches from the memmap cache are augmented and normalised on the device
  (``cxr_core.data.batches``). The loss is summed on the device and read once per epoch, so there is
  no host synchronisation per step. On CUDA: bf16 autocast, pinned memory, optional
  ``torch.compile``; channels_last for the CNNs.
* Validation loss is the loss of the whole validation set computed at once from its logits. The
  class-averaged BCE depends on which images share a batch, so a mean over batches would change
  with ``eval_batch_size`` and with sharding; the whole-set value does not.
* Multi-GPU / multi-process is torchrun + DistributedDataParallel: ``train.batch_size`` is the
  global batch, split evenly over the processes; rank 0 validates the exact weights it
  checkpoints (so logged metrics equal a single-process evaluation of the checkpoint) and
  broadcasts the result so every rank takes the same scheduler and early-stop decisions; only
  rank 0 writes checkpoints and the DVCLive log.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from cxr_core.data.batches import CacheBatches, prepare_batch, to_device
from cxr_core.evaluate.metrics import per_class_auc
from cxr_core.labels import LABELS, NUM_CLASSES
from cxr_core.models.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from cxr_core.models.registry import create_model, get_spec
from cxr_core.train.losses import LossFn, get_loss

logger = logging.getLogger(__name__)

BEST_FILE = "best.pt"
LAST_FILE = "last.pt"
CHECKPOINT_FORMAT = 1

#: Per-epoch values logged to DVCLive and kept in the history, in this order.
EPOCH_METRICS: tuple[str, ...] = (
    "train_loss",
    "val_loss",
    "val_macro_auc",
    "lr",
    "epoch_seconds",
    "images_per_second",
)
#: History keys that measure the machine, not the model (they differ between identical runs).
TIMING_KEYS: tuple[str, ...] = ("epoch_seconds", "images_per_second")

# Independent random streams derived from (seed, epoch, stream, rank).
_STREAM_AUGMENT = 1
_STREAM_TORCH = 2


class TrainingError(RuntimeError):
    """Training cannot start or went wrong; the message says what to change."""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting the loop uses: top-level ``lr`` / ``seed`` and the ``train`` section of params.yaml."""

    model: str
    image_size: int
    lr: float
    seed: int
    epochs: int
    batch_size: int
    eval_batch_size: int
    loss: str
    plateau_factor: float
    plateau_patience: int
    early_stop_patience: int
    hflip_p: float
    rotate_p: float
    max_degrees: float
    pretrained: bool = False
    weights: str | None = None
    device: str = "auto"
    amp: str = "bf16"
    channels_last: bool = True
    compile: bool = False

    @classmethod
    def from_params(cls, params: Mapping[str, Any], model: str, image_size: int) -> TrainConfig:
        """Build from a validated params dict (``cxr_core.params.load_params``)."""
        t = params["train"]
        return cls(
            model=model,
            image_size=int(image_size),
            lr=float(params["lr"]),
            seed=int(params["seed"]),
            epochs=t["epochs"],
            batch_size=t["batch_size"],
            eval_batch_size=t["eval_batch_size"],
            loss=t["loss"],
            plateau_factor=t["plateau_factor"],
            plateau_patience=t["plateau_patience"],
            early_stop_patience=t["early_stop_patience"],
            hflip_p=t["augment"]["hflip_p"],
            rotate_p=t["augment"]["rotate_p"],
            max_degrees=t["augment"]["max_degrees"],
            pretrained=t["pretrained"],
            weights=t["weights"],
            device=t["device"],
            amp=t["amp"],
            channels_last=t["channels_last"],
            compile=t["compile"],
        )

    @property
    def augment(self) -> dict[str, float]:
        return {"hflip_p": self.hflip_p, "rotate_p": self.rotate_p, "max_degrees": self.max_degrees}


#: Settings that do not change the trained weights' trajectory, so a ``last.pt`` written under
#: other values may be resumed (``epochs``: a longer run continues a shorter one exactly).
_RESUMABLE_ACROSS: frozenset[str] = frozenset(
    {"epochs", "eval_batch_size", "device", "compile", "channels_last"}
)


@dataclass(frozen=True)
class SplitArrays:
    """Cache rows and 0/1 targets (N x 14 float32) of one split."""

    rows: np.ndarray
    targets: np.ndarray

    @classmethod
    def from_table(cls, table: pd.DataFrame) -> SplitArrays:
        """From a ``data/splits/<split>.csv`` table (``row`` + the 14 label columns)."""
        missing = [c for c in ("row", *LABELS) if c not in table.columns]
        if missing:
            raise ValueError(f"split table lacks column(s) {missing}; rebuild it with the split stage")
        return cls(
            rows=table["row"].to_numpy(dtype=np.int64),
            targets=table[list(LABELS)].to_numpy(dtype=np.float32),
        )

    def digest(self) -> str:
        """Short content hash, so a checkpoint trained on other data is not resumed."""
        h = hashlib.sha256(np.ascontiguousarray(self.rows).tobytes())
        h.update(np.ascontiguousarray(self.targets).tobytes())
        return h.hexdigest()[:16]


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
    last_epoch: int
    stopped_early: bool
    resumed_from: int  # epoch of the last.pt this run started from; 0 = from scratch
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env_from_environ() -> DistEnv:
    """Rank, world size and local rank as torchrun sets them (``WORLD_SIZE`` > 1: distributed)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    return DistEnv(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``train.device``: auto -> this process's GPU if CUDA is available, else the CPU."""
    if name == "cpu":
        return torch.device("cpu")
    if name not in ("auto", "cuda"):
        raise ValueError(f"train.device = {name!r} is not allowed; expected one of ['auto', 'cpu', 'cuda']")
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise TrainingError(
                f"process {local_rank} has no GPU of its own: {torch.cuda.device_count()} visible; "
                "lower train.nproc_per_node to the number of GPUs"
            )
        return torch.device("cuda", local_rank)
    if name == "cuda":
        raise TrainingError(
            "train.device = cuda but no CUDA device is available; set train.device to auto or cpu"
        )
    return torch.device("cpu")


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


def _autocast(device: torch.device, amp: bool) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


@torch.no_grad()
def infer_logits(
    model: nn.Module,
    images: np.ndarray,
    rows: np.ndarray,
    *,
    batch_size: int,
    device: str | torch.device = "cpu",
    amp: bool = False,
    channels_last: bool = False,
) -> torch.Tensor:
    """Logits (N x C float32, on the CPU) of the cache ``rows``, in order: eval mode, no grad, bf16 on CUDA.

    The model is moved to ``device`` (a no-op when it is there) and its train/eval mode restored.
    """
    device = torch.device(device)
    was_training = model.training
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format).eval()
    rows = np.asarray(rows, dtype=np.int64)
    batches = CacheBatches(images, rows, np.zeros((len(rows), 1), np.float32), batch_size)
    outs: list[torch.Tensor] = []
    try:
        for x_u8, _ in batches:
            x = prepare_batch(x_u8, device, train=False, channels_last=channels_last)
            with _autocast(device, amp):
                outs.append(model(x).float())
    finally:
        model.train(was_training)
    if not outs:
        raise ValueError("infer_logits: no rows given")
    return torch.cat(outs).cpu()


def evaluate(
    model: nn.Module,
    images: np.ndarray,
    rows: np.ndarray,
    *,
    batch_size: int,
    device: str | torch.device = "cpu",
    amp: bool = False,
    channels_last: bool = False,
) -> np.ndarray:
    """Sigmoid probabilities (N x C float32) of the cache ``rows``: shared by validation and the test stage."""
    logits = infer_logits(
        model, images, rows, batch_size=batch_size, device=device, amp=amp, channels_last=channels_last
    )
    return torch.sigmoid(logits).numpy().astype(np.float32)


def macro_auc(targets: np.ndarray, probs: np.ndarray) -> float:
    """Mean ROC AUC over the classes that have both positives and negatives (NaN if none has)."""
    auc = per_class_auc(targets, probs)
    return float(np.nanmean(auc)) if np.isfinite(auc).any() else math.nan


def validation_metrics(logits: torch.Tensor, targets: np.ndarray, loss_fn: LossFn) -> tuple[float, float]:
    """(loss of the whole set at once, macro AUC): independent of batch size and sharding."""
    y = torch.as_tensor(targets, dtype=torch.float32)
    loss = float(loss_fn(logits, y))
    return loss, macro_auc(targets, torch.sigmoid(logits).numpy())


def _resume_key(
    cfg: TrainConfig, env: DistEnv, train: SplitArrays, val: SplitArrays, images: np.ndarray
) -> dict:
    key = {k: v for k, v in asdict(cfg).items() if k not in _RESUMABLE_ACROSS}
    key.update(
        world_size=env.world_size,
        train_data=train.digest(),
        val_data=val.digest(),
        cache_shape=list(images.shape),
        cache_pixels=pixel_digest(images, np.concatenate([train.rows, val.rows])),
    )
    return key


def pixel_digest(images: np.ndarray, rows: np.ndarray, sample: int = 256) -> str:
    """Hash of the pixels of up to ``sample`` evenly spread cache rows.

    A re-generated or re-preprocessed cache keeps its shape and row order, so the resume check
    must look at pixels; a sample catches a changed cache without reading 5 GB at every start.
    """
    rows = np.unique(np.asarray(rows))
    picked = rows[np.linspace(0, len(rows) - 1, min(sample, len(rows))).astype(int)] if len(rows) else rows
    return hashlib.sha256(np.ascontiguousarray(images[picked]).tobytes()).hexdigest()[:16]


def _load_resumable(out_dir: Path, key: dict, epochs: int, *, verbose: bool = True) -> dict[str, Any] | None:
    """``last.pt`` if it continues this exact run, else None (with the reason logged when ``verbose``)."""
    warn = logger.warning if verbose else logger.debug
    last = out_dir / LAST_FILE
    if not last.is_file():
        return None
    try:
        ckpt = load_checkpoint(last)
    except CheckpointError as exc:
        warn("%s; training from scratch", exc)
        return None
    old = ckpt.get("resume_key")
    if not isinstance(old, dict) or old != key:
        old = old if isinstance(old, dict) else {}
        changed = sorted(k for k in set(key) | set(old) if old.get(k) != key.get(k))
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {key.get(k)!r}" for k in changed[:6])
        warn("%s was trained with other settings (%s); training from scratch", last, shown)
        return None
    if ckpt["epoch"] > epochs:
        warn(
            "%s is at epoch %d, beyond train.epochs = %d; training from scratch", last, ckpt["epoch"], epochs
        )
        return None
    if not (out_dir / BEST_FILE).is_file():
        warn("%s has no %s beside it; training from scratch", last, BEST_FILE)
        return None
    return ckpt


def _log_epoch(live: Any, row: Mapping[str, float]) -> None:
    live.step = int(row["epoch"])
    for name in EPOCH_METRICS:
        value = row.get(name)
        if value is not None and math.isfinite(value):
            live.log_metric(name, float(value))
    live.next_step()


def _finish_live(live: Any, progress: Progress, history: list[dict[str, float]], stopped: bool) -> None:
    extra = {
        "best_epoch": progress.best_epoch,
        "best_val_loss": progress.best_loss,
        "best_val_macro_auc": progress.best_auc,
        "epochs_trained": len(history),
        "stopped_early": stopped,
    }
    live.summary.update({k: v for k, v in extra.items() if not isinstance(v, float) or math.isfinite(v)})
    live.end()


def fit(
    cfg: TrainConfig,
    images: np.ndarray,
    train: SplitArrays,
    val: SplitArrays,
    out_dir: str | os.PathLike,
    live_dir: str | os.PathLike | None = None,
    *,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
) -> FitResult:
    """Train ``cfg.model`` on the cache rows of ``train``; writes ``best.pt`` and ``last.pt`` in ``out_dir``.

    Resumes from ``out_dir/last.pt`` when it continues this run. Under torchrun (``WORLD_SIZE`` > 1)
    it joins / starts the process group (gloo on CPU, nccl on CUDA) and trains with DDP.
    ``on_epoch_end`` is called on every rank with the epoch's history row after the checkpoints are
    written (an exception there stops training like a kill would).
    """
    out_dir = Path(out_dir)
    env = dist_env_from_environ()
    device = resolve_device(cfg.device, env.local_rank)
    own_group = env.world_size > 1 and not dist.is_initialized()
    if own_group:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return _fit(cfg, images, train, val, out_dir, live_dir, env, device, on_epoch_end)
    finally:
        if own_group:
            dist.destroy_process_group()


@dataclass
class _Run:
    """One training run's moving parts; methods are the steps of an epoch."""

    cfg: TrainConfig
    env: DistEnv
    device: torch.device
    images: np.ndarray
    val: SplitArrays
    batches: CacheBatches
    model: nn.Module  # the bare model: validated and checkpointed
    train_model: nn.Module  # what the steps call: DDP- and/or compile-wrapped model
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    loss_fn: LossFn
    amp: bool
    channels_last: bool

    def train_epoch(self, epoch: int) -> float:
        """One pass over this rank's shuffled batches; mean batch loss over all ranks (one host sync)."""
        cfg, env, device = self.cfg, self.env, self.device
        self.batches.set_epoch(epoch)
        torch.manual_seed(epoch_seed(cfg.seed, epoch, _STREAM_TORCH, env.rank))  # dropout, drop-path
        generator = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, _STREAM_AUGMENT, env.rank))
        self.train_model.train()
        loss_sum = torch.zeros((), device=device)
        desc = f"{cfg.model} epoch {epoch}/{cfg.epochs}"
        for x_u8, y in tqdm(
            self.batches, desc=desc, unit="batch", leave=False, disable=None if env.is_main else True
        ):
            x = prepare_batch(
                x_u8, device, train=True, generator=generator, channels_last=self.channels_last, **cfg.augment
            )
            with _autocast(device, self.amp):
                logits = self.train_model(x)
            loss = self.loss_fn(logits, to_device(y, device))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.detach()
        if env.world_size > 1:
            dist.all_reduce(loss_sum)
        return loss_sum.item() / (len(self.batches) * env.world_size)

    def validate(self) -> tuple[float, float]:
        """(val loss, val macro AUC) of the bare model, scored on rank 0 and broadcast to every rank."""
        values = [math.nan, math.nan]
        if self.env.is_main:
            logits = infer_logits(
                self.model,
                self.images,
                self.val.rows,
                batch_size=self.cfg.eval_batch_size,
                device=self.device,
                amp=self.amp,
                channels_last=self.channels_last,
            )
            values = list(validation_metrics(logits, self.val.targets, self.loss_fn))
        if self.env.world_size > 1:
            t = torch.tensor(values, dtype=torch.float64, device=self.device)
            dist.broadcast(t, src=0)
            values = t.tolist()
        return values[0], values[1]

    def restore(self, ckpt: Mapping[str, Any]) -> tuple[Progress, list[dict[str, float]]]:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        return Progress(**ckpt["progress"]), [dict(row) for row in ckpt["history"]]

    def save(
        self, out_dir: Path, meta: dict[str, Any], row: Mapping[str, float], improved: bool, last: dict
    ) -> None:
        """``best.pt`` (weights + metadata) when improved, then the full ``last.pt``; rank 0 only."""
        weights = self.model.state_dict()
        if improved:
            best = {"epoch": row["epoch"], "val_loss": row["val_loss"], "val_macro_auc": row["val_macro_auc"]}
            save_checkpoint(out_dir / BEST_FILE, {**meta, "model": weights, **best})
        full = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        save_checkpoint(out_dir / LAST_FILE, {**meta, "model": weights, **full, **last})


def _fit(
    cfg: TrainConfig,
    images: np.ndarray,
    train: SplitArrays,
    val: SplitArrays,
    out_dir: Path,
    live_dir: str | os.PathLike | None,
    env: DistEnv,
    device: torch.device,
    on_epoch_end: Callable[[dict[str, float]], None] | None,
) -> FitResult:
    run = _build_run(cfg, images, train, val, env, device)
    log_main = logger.info if env.is_main else logger.debug
    progress, history, stopped = Progress(), [], False
    key = _resume_key(cfg, env, train, val, images)
    ckpt = _load_resumable(out_dir, key, cfg.epochs, verbose=env.is_main)
    if ckpt is not None:
        progress, history = run.restore(ckpt)
        stopped = bool(ckpt["stopped_early"])
        log_main("resuming %s from %s after epoch %d", cfg.model, out_dir / LAST_FILE, ckpt["epoch"])
    resumed_from = int(ckpt["epoch"]) if ckpt is not None else 0
    if env.world_size > 1:
        dist.barrier()  # every rank has read last.pt before rank 0 may replace it
    if env.is_main and ckpt is None:
        for name in (BEST_FILE, LAST_FILE):  # stale files from other settings must not survive a kill
            (out_dir / name).unlink(missing_ok=True)

    live = None
    if env.is_main and live_dir is not None:
        from dvclive import Live

        # A fresh log replayed from last.pt's history always matches the checkpoint, wherever a
        # kill landed between writing last.pt and logging the epoch.
        live = Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, resume=False)
        for row in history:
            _log_epoch(live, row)

    meta = {
        "format": CHECKPOINT_FORMAT,
        "model_name": cfg.model,
        "timm_name": get_spec(cfg.model).timm_name,
        "image_size": cfg.image_size,
        "labels": list(LABELS),
        "num_classes": NUM_CLASSES,
    }
    log_main(
        "training %s at %d px on %s (%d process(es)): %d train / %d val images, %d steps per epoch",
        cfg.model,
        cfg.image_size,
        device,
        env.world_size,
        len(train.rows),
        len(val.rows),
        len(run.batches),
    )
    for epoch in range(resumed_from + 1, cfg.epochs + 1):
        if stopped:
            break
        t0 = time.perf_counter()
        train_loss = run.train_epoch(epoch)
        train_seconds = time.perf_counter() - t0
        val_loss, val_auc = run.validate()
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            raise TrainingError(
                f"{cfg.model} epoch {epoch}: train loss {train_loss}, val loss {val_loss}: training diverged; "
                f"lower lr (now {cfg.lr}) or check the data. {out_dir / LAST_FILE} keeps the last good epoch"
            )
        lr = float(run.optimizer.param_groups[0]["lr"])  # the rate this epoch trained with
        improved = progress.update(epoch, val_loss, val_auc)
        run.scheduler.step(val_loss)
        stopped = progress.should_stop(cfg.early_stop_patience)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_macro_auc": val_auc,
            "lr": lr,
            "epoch_seconds": time.perf_counter() - t0,
            "images_per_second": len(run.batches) * cfg.batch_size / train_seconds,
        }
        history.append(row)
        if env.is_main:
            last = {
                "epoch": epoch,
                "progress": asdict(progress),
                "stopped_early": stopped,
                "history": history,
                "resume_key": key,
                "config": asdict(cfg),
            }
            run.save(out_dir, meta, row, improved, last)
            if live is not None:
                _log_epoch(live, row)
            logger.info(
                "%s epoch %d/%d: train_loss %.4f val_loss %.4f val_macro_auc %.3f lr %.2e (%.1f s, %.0f img/s)%s",
                cfg.model,
                epoch,
                cfg.epochs,
                train_loss,
                val_loss,
                val_auc,
                lr,
                row["epoch_seconds"],
                row["images_per_second"],
                " *best*" if improved else "",
            )
        if on_epoch_end is not None:
            on_epoch_end(dict(row))
        if stopped:
            log_main(
                "%s: early stop after epoch %d (%d epochs without a lower val loss; best epoch %d)",
                cfg.model,
                epoch,
                progress.bad_epochs,
                progress.best_epoch,
            )

    if live is not None:
        _finish_live(live, progress, history, stopped)
    if env.world_size > 1:
        dist.barrier()  # checkpoints complete before any rank returns
    return FitResult(
        best_epoch=progress.best_epoch,
        best_val_loss=progress.best_loss,
        best_val_macro_auc=progress.best_auc,
        last_epoch=history[-1]["epoch"] if history else 0,
        stopped_early=stopped,
        resumed_from=resumed_from,
        history=history,
    )


def _build_run(
    cfg: TrainConfig,
    images: np.ndarray,
    train: SplitArrays,
    val: SplitArrays,
    env: DistEnv,
    device: torch.device,
) -> _Run:
    """Check the inputs, then make the model (seeded), optimiser, scheduler, batches and wrappers."""
    spec = get_spec(cfg.model)
    if images.ndim != 3 or images.shape[1] != cfg.image_size:
        raise TrainingError(
            f"cache images are {images.shape}, expected N x {cfg.image_size} x {cfg.image_size}"
        )
    if cfg.batch_size % env.world_size:
        raise TrainingError(
            f"train.batch_size = {cfg.batch_size} is the global batch and must divide evenly over "
            f"train.nproc_per_node = {env.world_size} processes; pick a multiple of {env.world_size}"
        )
    if len(val.rows) == 0:
        raise TrainingError("the validation split is empty; raise split.val_fraction")
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
    channels_last = cfg.channels_last and spec.channels_last

    torch.manual_seed(cfg.seed)  # same initial weights on every rank and in every run
    model = create_model(cfg.model, image_size=cfg.image_size, pretrained=cfg.pretrained, weights=cfg.weights)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    optimizer = make_optimizer(model, cfg.lr)
    train_model: nn.Module = model
    if env.world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile and device.type == "cuda":
        train_model = torch.compile(train_model)
    elif cfg.compile and env.is_main:
        logger.info("train.compile is only used on CUDA; training uncompiled on %s", device)
    return _Run(
        cfg=cfg,
        env=env,
        device=device,
        images=images,
        val=val,
        batches=batches,
        model=model,
        train_model=train_model,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, cfg.plateau_factor, cfg.plateau_patience),
        loss_fn=get_loss(cfg.loss),
        amp=cfg.amp == "bf16" and device.type == "cuda",
        channels_last=channels_last,
    )


def history_without_timing(history: list[Mapping[str, float]]) -> list[dict[str, float]]:
    """History rows without wall-clock fields: what two identical runs must agree on."""
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]
