"""The one batched forward: uint8 images -> logits / probabilities, and the predictions file.

Validation inside training, the test stage, the CAM stage (through the predictions file),
``cxr predict`` and the demo all call :func:`infer_logits` with a
:class:`~cxr_core.runtime.Runtime`, so a checkpoint gives the same probabilities whichever of them
scores an image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cxr_core.data.batches import CacheBatches, prepare_batch
from cxr_core.files import contract, malformed, read_npz, write_npz
from cxr_core.labels import LABELS
from cxr_core.runtime import Runtime


@torch.no_grad()
def infer_logits(
    model: nn.Module,
    images: np.ndarray,
    rows: Sequence[int] | np.ndarray | None = None,
    *,
    runtime: Runtime,
    batch_size: int,
) -> torch.Tensor:
    """Logits (N x C float32, on the CPU) of ``images[rows]`` (all rows when None), in order.

    ``images`` is the ``N x S x S`` uint8 cache (a memmap is read a batch at a time) or any uint8
    array of that shape. Eval mode and no grad; the model is moved to the runtime's device and
    memory format, and its train/eval mode restored afterwards.
    """
    images = np.asarray(images) if not isinstance(images, np.ndarray) else images
    if images.ndim == 2:
        images = images[None]
    rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        raise ValueError("infer_logits: no images given")
    was_training = model.training
    runtime.prepare(model).eval()
    batches = CacheBatches(images, rows, np.zeros((len(rows), 1), np.float32), batch_size)
    outs: list[torch.Tensor] = []
    try:
        for x_u8, _ in batches:
            x = prepare_batch(x_u8, runtime.device, train=False, channels_last=runtime.channels_last)
            with runtime.autocast():
                outs.append(model(x).float())
    finally:
        model.train(was_training)
    return torch.cat(outs).cpu()


def predict_probs(
    model: nn.Module,
    images: np.ndarray,
    rows: Sequence[int] | np.ndarray | None = None,
    *,
    runtime: Runtime,
    batch_size: int,
) -> np.ndarray:
    """Sigmoid probabilities (N x C float32) of ``images[rows]``: :func:`infer_logits` + sigmoid."""
    logits = infer_logits(model, images, rows, runtime=runtime, batch_size=batch_size)
    return torch.sigmoid(logits).numpy().astype(np.float32)


_PREDICTIONS_PRODUCER = "the test stage (test@<model>-<seed>)"


@contract(
    "data/predictions/<model>/seed<k>.npz",
    writer="test@<model>-<k>",
    fields=("images", "rows", "patients", "probs", "targets"),
)
@dataclass(frozen=True)
class Predictions:
    """A model's test-set probabilities, with the cache rows, images, patients and 0/1 targets."""

    images: np.ndarray  # str, N
    rows: np.ndarray  # int64 cache rows, N
    patients: np.ndarray  # int64, N
    probs: np.ndarray  # float32, N x 14
    targets: np.ndarray  # uint8, N x 14

    def __post_init__(self) -> None:
        n = len(self.rows)
        if len(self.images) != n or len(self.patients) != n:
            raise ValueError(
                f"predictions: {len(self.images)} images and {len(self.patients)} patients for {n} rows"
            )
        if self.probs.shape != (n, len(LABELS)) or self.targets.shape != (n, len(LABELS)):
            raise ValueError(
                f"predictions: probs {self.probs.shape} and targets {self.targets.shape} must be "
                f"({n}, {len(LABELS)}) for {n} rows"
            )

    def save(self, path: str | os.PathLike) -> None:
        write_npz(
            path,
            {
                "images": self.images.astype(str),
                "rows": self.rows.astype(np.int64),
                "patients": self.patients.astype(np.int64),
                "probs": self.probs.astype(np.float32),
                "targets": self.targets.astype(np.uint8),
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Predictions:
        arrays = read_npz(path, _PREDICTIONS_PRODUCER, cls.CONTRACT.fields)  # type: ignore[attr-defined]
        try:
            return cls(**{k: arrays[k] for k in cls.CONTRACT.fields})  # type: ignore[attr-defined]
        except ValueError as exc:
            raise malformed(os.fspath(path), str(exc), _PREDICTIONS_PRODUCER) from None

    def probs_for(
        self, rows: Sequence[int] | np.ndarray, path: str | os.PathLike = "predictions"
    ) -> np.ndarray:
        """Probabilities of the given cache rows, in their order (every row must be a test row)."""
        position = {int(r): i for i, r in enumerate(self.rows)}
        absent = [int(r) for r in rows if int(r) not in position]
        if absent:
            raise malformed(
                os.fspath(path),
                f"has no prediction for cache row(s) {absent[:5]} ({len(absent)} in all): the localisation "
                "images must be test images",
                _PREDICTIONS_PRODUCER,
            )
        return self.probs[[position[int(r)] for r in rows]]
