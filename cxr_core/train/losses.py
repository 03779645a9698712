"""Training losses: class-averaged BCE (the paper's, section 3.3.1) and plain BCE.

Both take raw logits (never sigmoid outputs: BCE-with-logits is the numerically stable form) and
0/1 targets of shape ``B x C``, and compute in float32 even under bf16 autocast, where a 14-term
mean of small BCE values would otherwise lose digits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _elementwise_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-element BCE in float32, outside autocast."""
    if logits.shape != targets.shape:
        raise ValueError(f"logits shape {tuple(logits.shape)} != targets shape {tuple(targets.shape)}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")


def class_averaged_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per label: mean BCE over the batch's positives + mean BCE over its negatives; then mean over labels.

    This is the paper's class-averaged reading of Wang et al.'s weighted CE (W-CEL): positives and
    negatives weigh the same however rare a finding is in the batch. A half with no members adds 0
    (a batch without a Hernia case still trains Hernia's negatives). Targets must be 0/1: the
    member counts assume hard labels. Vectorised, no host sync.
    """
    loss = _elementwise_bce(logits, targets)  # B x C
    pos = targets.float()
    neg = 1.0 - pos
    n_pos = pos.sum(dim=0)
    n_neg = neg.sum(dim=0)
    # sum / count where count > 0, else 0 (the numerator is 0 there too, so clamp is exact)
    pos_mean = (loss * pos).sum(dim=0) / n_pos.clamp_min(1.0)
    neg_mean = (loss * neg).sum(dim=0) / n_neg.clamp_min(1.0)
    return (pos_mean + neg_mean).mean()


def bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Plain BCE, the mean over all ``B x C`` elements (``nn.BCEWithLogitsLoss()``)."""
    return _elementwise_bce(logits, targets).mean()


#: ``train.loss`` in params.yaml -> loss function.
LOSSES: dict[str, LossFn] = {
    "class_averaged_bce": class_averaged_bce,
    "bce": bce,
}


def get_loss(name: str) -> LossFn:
    """The loss called ``name`` in :data:`LOSSES`."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(
            f"train.loss = {name!r} is not a known loss; expected one of {list(LOSSES)}"
        ) from None
