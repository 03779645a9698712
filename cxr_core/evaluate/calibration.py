"""Calibration: do predicted probabilities mean what they say, and temperature scaling to fix them.

A model trained with (class-averaged) BCE ranks well but may be over- or under-confident; a
clinical reader who sees "0.8" should find the finding in about 80% of such films. Three numbers:

* **Expected calibration error** with *equal-mass* bins (Nixon et al. 2019, "Measuring Calibration
  in Deep Learning", CVPR workshops): bin edges are quantiles of the predicted probabilities, so
  every bin holds about N / bins images. Equal-width bins would leave most of ChestX-ray14's mass
  (rare findings, probabilities near 0) in the first bin and the rest nearly empty.
* **Brier score**, the mean squared error of the probability (Brier 1950).
* the **reliability curve** (per bin: mean predicted probability vs fraction positive), as a long
  table for ``dvc plots``.

Bins are sklearn's ``calibration_curve(strategy="quantile")`` bins up to one rounding step: edges
are ``np.quantile(p, linspace(0, 1, bins + 1))`` (sklearn's ``np.percentile(p, 100 q)`` can land one
ulp below an observed value that ours lands on) and a probability goes to bin ``i`` when
``edge[i] < p <= edge[i + 1]`` (the lowest value joins bin 0). So tied probabilities always share
one bin: a tie at an edge falls into the lower bin, which then holds more than its share, and
edges that coincide leave empty bins, which are dropped (they carry no weight in the ECE). "Pooled"
(``all``) statistics treat all N x C (image, finding) pairs as one sample.

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks", ICML) divides
every logit by one scalar T > 0 fitted on the *validation* split by minimising the mean BCE. One T
for all 14 findings rather than one per finding: rare findings have few validation positives
(Hernia: about 14, a tenth of its 141 train-val images in ChestX-ray14), and a per-class T would be fitted to
noise. Dividing by T is monotone, so every AUC and every threshold rule's split of the images is
unchanged; only the probabilities move.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import expit

from cxr_core.evaluate.metrics import _check_scores
from cxr_core.labels import LABELS

#: The label of the pooled (all findings together) rows of :func:`reliability_curve`.
POOLED = "all"

RELIABILITY_COLUMNS: tuple[str, ...] = ("label", "bin", "mean_predicted", "fraction_positive", "count")


def _check_probs(targets: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = _check_scores(targets, probs)
    if (p < 0).any() or (p > 1).any():
        raise ValueError(f"probs must lie in [0, 1], found values from {p.min()!r} to {p.max()!r}")
    return t, p


def _check_bins(bins: Any) -> int:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"calibration bins must be a positive integer, got {bins!r}")
    return int(bins)


def _binned(target: np.ndarray, prob: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-mass bin (``bins``,): image count, sum of probabilities, sum of targets."""
    edges = np.quantile(prob, np.linspace(0.0, 1.0, bins + 1))
    ids = np.searchsorted(edges[1:-1], prob, side="left")  # edge[i] < p <= edge[i + 1]
    count = np.bincount(ids, minlength=bins)
    return (
        count,
        np.bincount(ids, weights=prob, minlength=bins),
        np.bincount(ids, weights=target, minlength=bins),
    )


def _ece(target: np.ndarray, prob: np.ndarray, bins: int) -> float:
    """sum_b (n_b / N) |mean p_b - mean y_b| = sum_b |sum p_b - sum y_b| / N (empty bins add 0)."""
    _, sum_p, sum_y = _binned(target, prob, bins)
    return float(np.abs(sum_p - sum_y).sum() / prob.shape[0])


def expected_calibration_error(targets: Any, probs: Any, bins: int = 10) -> tuple[np.ndarray, float]:
    """Equal-mass ECE per class (C,) and pooled over all (image, finding) pairs.

    Defined for every class, also one without positives (predicting 0.3 where nothing is positive
    is miscalibrated); each class gets its own quantile bins, the pooled value its own.
    """
    bins = _check_bins(bins)
    t, p = _check_probs(targets, probs)
    per_class = np.array([_ece(t[:, c], p[:, c], bins) for c in range(t.shape[1])])
    return per_class, _ece(t.ravel(), p.ravel(), bins)


def brier_score(targets: Any, probs: Any) -> tuple[np.ndarray, float]:
    """Mean squared error of the probabilities per class (C,) and pooled (the mean of the classes)."""
    t, p = _check_probs(targets, probs)
    squared = (p - t) ** 2
    return squared.mean(axis=0), float(squared.mean())


def reliability_curve(
    targets: Any, probs: Any, bins: int = 10, labels: Sequence[str] = LABELS
) -> pd.DataFrame:
    """Long table (label, bin, mean_predicted, fraction_positive, count) of every non-empty bin.

    One block per class and one labelled ``all`` for the pooled pairs; ``bin`` is the quantile
    bin's index (0 = lowest probabilities), so dropped empty bins leave gaps.
    """
    bins = _check_bins(bins)
    t, p = _check_probs(targets, probs)
    if len(labels) != t.shape[1]:
        raise ValueError(f"labels has {len(labels)} names for {t.shape[1]} classes")
    columns = [(name, t[:, c], p[:, c]) for c, name in enumerate(labels)] + [(POOLED, t.ravel(), p.ravel())]
    frames = []
    for name, target, prob in columns:
        count, sum_p, sum_y = _binned(target, prob, bins)
        keep = np.flatnonzero(count)
        frames.append(
            pd.DataFrame(
                {
                    "label": name,
                    "bin": keep,
                    "mean_predicted": sum_p[keep] / count[keep],
                    "fraction_positive": sum_y[keep] / count[keep],
                    "count": count[keep],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)[list(RELIABILITY_COLUMNS)]


def calibration_summary(
    targets: Any, probs: Any, bins: int = 10, labels: Sequence[str] = LABELS
) -> dict[str, Any]:
    """``{per_class: {label: {ece, brier}}, overall: {ece, brier}}``, JSON-ready (plain floats)."""
    t, p = _check_probs(targets, probs)
    if len(labels) != t.shape[1]:
        raise ValueError(f"labels has {len(labels)} names for {t.shape[1]} classes")
    ece, ece_all = expected_calibration_error(t, p, bins)
    brier, brier_all = brier_score(t, p)
    return {
        "per_class": {
            name: {"ece": float(ece[c]), "brier": float(brier[c])} for c, name in enumerate(labels)
        },
        "overall": {"ece": ece_all, "brier": brier_all},
    }


# --------------------------------------------------------------------------------------------
# temperature scaling (validation split)


def _check_logits(targets: Any, logits: Any) -> tuple[np.ndarray, np.ndarray]:
    try:
        return _check_scores(targets, logits)
    except ValueError as exc:
        raise ValueError(str(exc).replace("probs holds", "logits hold").replace("probs", "logits")) from None


def _check_temperature(temperature: Any) -> float:
    ok = isinstance(temperature, (int, float, np.integer, np.floating)) and not isinstance(temperature, bool)
    if not ok or not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return float(temperature)


def _bce(t: np.ndarray, z: np.ndarray) -> float:
    """Mean BCE of sigmoid(z) against 0/1 targets, as softplus(z) - y z (stable for any z)."""
    return float((np.logaddexp(0.0, z) - t * z).mean())


def mean_bce(targets: Any, logits: Any, temperature: float = 1.0) -> float:
    """Mean BCE over all (image, finding) pairs of ``sigmoid(logits / temperature)``."""
    t, z = _check_logits(targets, logits)
    return _bce(t, z / _check_temperature(temperature))


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(logits / temperature)`` in float64."""
    z = np.asarray(logits, dtype=np.float64)
    if not np.isfinite(z).all():
        raise ValueError("logits hold NaN or infinite values")
    return expit(z / _check_temperature(temperature))


def fit_temperature(
    targets_val: Any,
    logits_val: Any,
    *,
    bounds: tuple[float, float] = (0.05, 20.0),
    tol: float = 1e-6,
) -> float:
    """The one T > 0 minimising the mean validation BCE of ``sigmoid(logit / T)`` over all classes.

    Searched over log T on ``bounds`` by bounded Brent (scipy's ``minimize_scalar``): log T keeps
    T positive and treats T and 1 / T alike; ``tol`` is the absolute tolerance on log T, i.e. the
    relative tolerance on T. The BCE is convex in 1 / T, so it has a single minimum over log T too. If the optimum
    lies at a bound (e.g. validation perfectly separated, which pushes T to 0), the bound is
    returned; the caller can compare with ``bounds``.
    """
    lo, hi = (float(b) for b in bounds)
    if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 < lo < 1.0 < hi):
        raise ValueError(f"temperature bounds must satisfy 0 < low < 1 < high, got {tuple(bounds)!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise ValueError(f"temperature tolerance must be a positive number, got {tol!r}")
    t, z = _check_logits(targets_val, logits_val)
    t = t.astype(np.float64)
    result = minimize_scalar(
        lambda log_t: _bce(t, z * np.exp(-log_t)),
        bounds=(np.log(lo), np.log(hi)),
        method="bounded",
        options={"xatol": float(tol)},
    )
    return float(np.clip(np.exp(result.x), lo, hi))
