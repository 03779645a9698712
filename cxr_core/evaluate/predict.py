"""The one batched forward: uint8 images -> logits / probabilities, and the predictions file.

Validation inside training, the test stage, the CAM stage (through the predictions file),
``cxr predict`` and the demo all call :func:`infer_logits` with a
:class:`~cxr_core.runtime.Runtime`, so a checkpoint gives the same probabilities whichever of them
scores an image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from cxr_core.data.batches import CacheBatches, prepare_batch
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
    return sigmoid_probs(infer_logits(model, images, rows, runtime=runtime, batch_size=batch_size))


def sigmoid_probs(logits: torch.Tensor) -> np.ndarray:
    """The probabilities every scorer reports: torch's float32 sigmoid of the logits, as numpy."""
    return torch.sigmoid(logits).numpy().astype(np.float32)
