"""Which ``last.pt`` a run may continue: a key of everything that shapes the weights' trajectory.

A run killed after epoch k continues at k + 1 only when ``last.pt`` was written under the same
settings, data, cache pixels and world size; anything else trains from scratch (with the changed
settings logged), so ``dvc exp run -S lr=...`` never resumes another experiment's weights.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from cxr_core.data.tables import SplitTable
from cxr_core.models.checkpoints import CheckpointError, load_checkpoint
from cxr_core.runtime import Runtime
from cxr_core.train.config import _RESUMABLE_ACROSS, TrainConfig
from cxr_core.train.distributed import DistEnv

logger = logging.getLogger(__name__)

BEST_FILE = "best.pt"
LAST_FILE = "last.pt"


def resume_key(
    cfg: TrainConfig, env: DistEnv, runtime: Runtime, train: SplitTable, val: SplitTable, images: np.ndarray
) -> dict:
    """What ``last.pt`` must have been trained with to be continued (saved in it as ``resume_key``).

    The runtime as resolved (CPU or GPU, bf16 or not, memory format) is part of it: ``device: auto``
    on another machine, or channels_last toggled for a CNN, changes the float results.
    """
    key = {k: v for k, v in asdict(cfg).items() if k not in _RESUMABLE_ACROSS}
    key.update(
        compute={"device": runtime.device.type, "amp": runtime.amp, "channels_last": runtime.channels_last},
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


def load_resumable(out_dir: Path, key: dict, epochs: int, *, verbose: bool = True) -> dict[str, Any] | None:
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
