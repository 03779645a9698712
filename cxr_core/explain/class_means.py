"""Every localisation average, and every choice made from one, through one pair of functions.

NIH's boxes are spread unequally over the eight findings, so the paper (like Wang et al. 2017)
averages each finding's boxes first and then the findings: :func:`class_means` is that average,
used by the NIH scores, the held-out protocol and the external sets alike.

:func:`best_column` picks the best of several columns (thresholds) by that average, the lowest on
ties. Hit rates (0/1 per box) are compared as exact fractions: two thresholds with equal class-mean
counts tie, whatever the last bit of their float means says. Continuous scores (IoU) tie within
:data:`TIE_TOLERANCE`, relative to the best.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from cxr_core.labels import BOX_LABELS

#: Continuous class means within this fraction of the best one tie (and go to the lowest column).
TIE_TOLERANCE = 1e-9


def _as_columns(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v[:, None] if v.ndim == 1 else v


def present_classes(labels: np.ndarray, classes: Sequence[str] = BOX_LABELS) -> list[str]:
    """The classes of ``classes`` that have at least one box, in that order."""
    labels = np.asarray(labels)
    return [c for c in classes if (labels == c).any()]


def class_means(values: np.ndarray, labels: np.ndarray, classes: Sequence[str] = BOX_LABELS) -> dict:
    """``{class: mean over its boxes, ..., "mean": mean over those classes}`` of one score per box.

    ``values``: ``K`` numbers (or ``K x T``: then every entry is a length-``T`` array); classes
    without a box are left out, and ``mean`` is NaN when no class has one.
    """
    v = _as_columns(values)
    labels = np.asarray(labels)
    if len(v) != len(labels):
        raise ValueError(f"{len(v)} scores for {len(labels)} box labels")
    unknown = sorted(set(labels.tolist()) - set(classes))
    if unknown:
        raise ValueError(f"box labels {unknown} are not among the classes averaged over ({list(classes)})")
    out = {c: v[labels == c].mean(axis=0) for c in present_classes(labels, classes)}
    mean = np.mean(list(out.values()), axis=0) if out else np.full(v.shape[1], np.nan)
    squeeze = np.ndim(values) == 1
    result = {c: float(m[0]) if squeeze else m for c, m in out.items()}
    result["mean"] = float(mean[0]) if squeeze else mean
    return result


def _exact_means(hits: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> list[Fraction]:
    """Class means of integer scores per column as exact fractions."""
    present = present_classes(labels, classes)
    sums = [hits[labels == c].sum(axis=0).astype(np.int64) for c in present]
    counts = [int((labels == c).sum()) for c in present]
    return [
        sum((Fraction(int(s[t]), n) for s, n in zip(sums, counts, strict=True)), Fraction(0)) / len(present)
        for t in range(hits.shape[1])
    ]


def best_column(
    values: np.ndarray, labels: np.ndarray, classes: Sequence[str] = BOX_LABELS, *, hits: bool = False
) -> int:
    """Index of the column of ``values`` (``K x T``) with the best class mean; the lowest on ties.

    ``hits=True``: the values are 0/1 hits, compared as exact fractions; otherwise real scores tie
    within :data:`TIE_TOLERANCE` of the best. Columns whose mean is not finite never win; with no
    box at all, column 0.
    """
    v = _as_columns(values)
    labels = np.asarray(labels)
    if not present_classes(labels, classes):
        return 0
    if hits:
        if not np.isin(v, (0, 1)).all():
            raise ValueError("hits must be 0 or 1")
        exact = _exact_means(v.astype(np.int64), labels, classes)
        return exact.index(max(exact))
    return first_best(class_means(v, labels, classes)["mean"])


def first_best(values: Sequence[float] | np.ndarray) -> int:
    """Index of the first value within :data:`TIE_TOLERANCE` of the largest finite one (0 if none is)."""
    v = np.asarray(values, dtype=np.float64)
    v = np.where(np.isfinite(v), v, -np.inf)
    if not v.size or not np.isfinite(v.max()):
        return 0
    best = v.max()
    return int(np.flatnonzero(v >= best - TIE_TOLERANCE * abs(best))[0])
