"""The test predictions file: one run's test-set logits and probabilities (torch-free).

Its own module so that every reader (compare, clinical, localise, the report, the PR review) depends
on the file type and not on the forward pass that writes it (``cxr_core.evaluate.predict``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cxr_core.files import contract, malformed, read_npz, write_npz
from cxr_core.labels import LABELS

_PREDICTIONS_PRODUCER = "the test stage (test@<model>-<seed>)"


@contract(
    "data/predictions/<model>/seed<k>.npz",
    writer="test@<model>-<k>",
    fields=("images", "rows", "patients", "probs", "targets", "logits"),
)
@dataclass(frozen=True)
class Predictions:
    """A model's test-set probabilities and logits, with the cache rows, images, patients and 0/1 targets.

    ``probs`` is the forward's float32 sigmoid of ``logits``; both are kept so that readers need
    no forward pass (the clinical audit's temperature acts on the logits).
    """

    images: np.ndarray  # str, N
    rows: np.ndarray  # int64 cache rows, N
    patients: np.ndarray  # int64, N
    probs: np.ndarray  # float32, N x 14
    targets: np.ndarray  # uint8, N x 14
    logits: np.ndarray  # float32, N x 14

    def __post_init__(self) -> None:
        n = len(self.rows)
        if len(self.images) != n or len(self.patients) != n:
            raise ValueError(
                f"predictions: {len(self.images)} images and {len(self.patients)} patients for {n} rows"
            )
        shapes = {k: getattr(self, k).shape for k in ("probs", "targets", "logits")}
        if any(shape != (n, len(LABELS)) for shape in shapes.values()):
            listed = ", ".join(f"{k} {shape}" for k, shape in shapes.items())
            raise ValueError(f"predictions: {listed} must each be ({n}, {len(LABELS)}) for {n} rows")

    def save(self, path: str | os.PathLike) -> None:
        write_npz(
            path,
            {
                "images": self.images.astype(str),
                "rows": self.rows.astype(np.int64),
                "patients": self.patients.astype(np.int64),
                "probs": self.probs.astype(np.float32),
                "targets": self.targets.astype(np.uint8),
                "logits": self.logits.astype(np.float32),
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
