"""Classification metrics: per-class ROC AUC, AUPRC, patient-level bootstrap CIs, ROC points.

Point estimates call scikit-learn, so the numbers are the ones every other ChestX-ray14 paper
reports. The bootstrap does not: refitting sklearn 1000 x 14 times is slow, so it uses an exact
rank-based AUC with integer weights (:func:`weighted_auc`), evaluated for many replicates at once.

The bootstrap resamples *patients*, not images: ChestX-ray14's test split has ~25.6k images of
~2.8k patients, and images of one patient are correlated, so an image-level bootstrap would give
intervals that are too narrow.

A class whose targets hold a single value has no AUC; it is NaN here (``None`` in JSON), never an
exception, because small or phantom data sets routinely lack a rare finding such as Hernia.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from cxr_core.files import contract, read_csv, read_json, write_csv, write_json
from cxr_core.labels import LABELS

#: Replicates evaluated together; bounds the (replicates x images) work arrays to ~16 MB each.
_CHUNK_ELEMENTS = 2_000_000


def _check_scores(targets: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``targets`` (N x C, 0/1) and ``probs`` (N x C, finite); 1-D inputs become N x 1."""
    t = np.asarray(targets)
    p = np.asarray(probs, dtype=np.float64)
    if t.ndim == 1:
        t = t[:, None]
    if p.ndim == 1:
        p = p[:, None]
    if t.ndim != 2:
        raise ValueError(f"targets must be N x C, got shape {np.shape(targets)}")
    if p.shape != t.shape:
        raise ValueError(f"probs shape {np.shape(probs)} does not match targets shape {np.shape(targets)}")
    if t.shape[0] == 0:
        raise ValueError("targets is empty (0 images)")
    bad = ~np.isin(t, (0, 1))
    if bad.any():
        raise ValueError(f"targets must hold only 0/1, found {np.unique(t[bad])[:5].tolist()}")
    if not np.isfinite(p).all():
        raise ValueError("probs holds NaN or infinite values")
    return t.astype(np.uint8), p


def _defined(column: np.ndarray) -> bool:
    """A class has an AUC only if it has both positives and negatives."""
    n_pos = int(column.sum())
    return 0 < n_pos < column.shape[0]


def per_class_auc(targets: Any, probs: Any) -> np.ndarray:
    """ROC AUC per class (sklearn's ``roc_auc_score``); NaN where a class has one target value."""
    t, p = _check_scores(targets, probs)
    out = np.full(t.shape[1], np.nan)
    for c in range(t.shape[1]):
        if _defined(t[:, c]):
            out[c] = roc_auc_score(t[:, c], p[:, c])
    return out


def per_class_auprc(targets: Any, probs: Any) -> np.ndarray:
    """Average precision per class (sklearn's ``average_precision_score``).

    NaN where a class has one target value: with no positives AP is undefined, and with no
    negatives it is trivially 1, which would inflate a macro mean.
    """
    t, p = _check_scores(targets, probs)
    out = np.full(t.shape[1], np.nan)
    for c in range(t.shape[1]):
        if _defined(t[:, c]):
            out[c] = average_precision_score(t[:, c], p[:, c])
    return out


def weighted_auc(target: Any, score: Any, weights: Any) -> np.ndarray:
    """Exact ROC AUC of one class for many integer weightings of the same images at once.

    ``target`` and ``score`` are length N; ``weights`` is R x N (or N) non-negative counts, one row
    per replicate. Row r gives the AUC that sklearn computes on the data set in which image i is
    repeated ``weights[r, i]`` times: sum over (positive, negative) pairs of w_i w_j [s_i > s_j],
    with ties counted 0.5, over W_pos * W_neg. Rows without weighted positives or negatives are NaN.
    """
    y = np.asarray(target)
    s = np.asarray(score, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    single = w.ndim == 1
    if single:
        w = w[None, :]
    if y.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"target and score must be equal-length 1-D arrays, got {y.shape} and {s.shape}")
    if w.ndim != 2 or w.shape[1] != y.shape[0]:
        raise ValueError(f"weights must be R x N with N = {y.shape[0]}, got shape {np.shape(weights)}")
    if (w < 0).any():
        raise ValueError("weights must be non-negative")
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    positive = np.asarray(y[order] == 1)
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])  # first index of each tie group
    out = _sorted_weighted_auc(w[:, order], positive, starts)
    return out[0] if single else out


def _sorted_weighted_auc(w_sorted: np.ndarray, positive: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Core of :func:`weighted_auc` on weights already in ascending-score order (R x N).

    One cumulative sum over all images and one over the positives; everything else is read at the
    (few) tie groups that hold positives: negatives below a group = all weight below it - positive
    weight below it. Integer weights summed in float64 stay exact far beyond any test set size.
    """
    r, n = w_sorted.shape
    pos_cols = np.flatnonzero(positive)
    if pos_cols.size == 0:
        return np.full(r, np.nan)
    cum = np.zeros((r, n + 1))  # cum[:, i] = weight of sorted images 0 .. i-1
    np.cumsum(w_sorted, axis=1, out=cum[:, 1:])
    cum_pos = np.zeros((r, pos_cols.size + 1))
    np.cumsum(w_sorted[:, pos_cols], axis=1, out=cum_pos[:, 1:])
    pos_group = np.searchsorted(starts, pos_cols, side="right") - 1  # tie group of each positive
    gp, first = np.unique(pos_group, return_index=True)  # groups holding positives, ascending
    last = np.r_[first[1:], pos_cols.size]  # one past each group's last positive
    ends = np.r_[starts[1:], n]  # one past each group's last image
    all_below = cum[:, starts[gp]]
    tot_g = cum[:, ends[gp]] - all_below
    pos_below = cum_pos[:, first]
    pos_g = cum_pos[:, last] - pos_below
    neg_g = tot_g - pos_g
    numerator = (pos_g * (all_below - pos_below + 0.5 * neg_g)).sum(axis=1)
    n_pos = cum_pos[:, -1]
    n_neg = cum[:, -1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = numerator / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def _patient_counts(groups: Any, n: int, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Patient codes (N,) and per-replicate patient draw counts (n_boot x P) from one seeded RNG."""
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != n:
        raise ValueError(f"groups must be a 1-D array of {n} patient ids, got shape {g.shape}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    _, codes = np.unique(g, return_inverse=True)
    codes = codes.reshape(-1)
    n_patients = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    # Drawing P patients with replacement == a multinomial count vector over the P patients.
    counts = rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=n_boot)
    return codes, counts.astype(np.int32)


def patient_multiplicities(groups: Any, *, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Per-image multiplicities (n_boot x N) of the cluster bootstrap that :func:`bootstrap_auc_ci` uses.

    Every image of a drawn patient comes along, so each row is constant within a patient. Exposed
    so tests (and sceptical readers) can rebuild any replicate explicitly.
    """
    g = np.asarray(groups)
    codes, counts = _patient_counts(g, g.shape[0] if g.ndim else -1, n_boot, seed)
    return counts[:, codes]


def bootstrap_auc_replicates(
    targets: Any, probs: Any, groups: Any, *, n_boot: int = 1000, seed: int = 0
) -> np.ndarray:
    """Per-class AUC of every patient-level bootstrap replicate (n_boot x C); NaN where undefined."""
    t, p = _check_scores(targets, probs)
    n, n_classes = t.shape
    codes, counts = _patient_counts(groups, n, n_boot, seed)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    out = np.empty((n_boot, n_classes))
    for c in range(n_classes):
        order = np.argsort(p[:, c], kind="stable")
        s_sorted = p[order, c]
        positive = t[order, c] == 1
        starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
        codes_sorted = codes[order]
        for lo in range(0, n_boot, chunk):  # chunks of replicates, each chunk fully vectorised
            w_sorted = counts[lo : lo + chunk][:, codes_sorted]
            out[lo : lo + chunk, c] = _sorted_weighted_auc(w_sorted, positive, starts)
    return out


def _check_ci(ci: Any) -> float:
    """An interval level in (0, 1) (``test.ci``), as a float; bools and non-numbers are refused."""
    if isinstance(ci, bool) or not isinstance(ci, (int, float, np.floating)) or not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}")
    return float(ci)


def _percentile_interval(values: np.ndarray, ci: float) -> tuple[float, float]:
    """Percentile interval of the finite values; NaNs (undefined replicates) are ignored."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(v, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_auc_ci(
    targets: Any,
    probs: Any,
    groups: Any,
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Percentile CIs of per-class and macro AUC from a patient-level (cluster) bootstrap.

    Returns ``(low (C,), high (C,), macro_low, macro_high)``. A replicate in which a class lacks
    positives or negatives is ignored for that class. The macro AUC of a replicate is the mean over
    the classes defined on the full data; a replicate missing any of them is ignored for the macro
    interval, so every macro replicate averages the same set of classes as the point estimate.
    """
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}")
    t, p = _check_scores(targets, probs)
    reps = bootstrap_auc_replicates(t, p, groups, n_boot=n_boot, seed=seed)
    low = np.full(t.shape[1], np.nan)
    high = np.full(t.shape[1], np.nan)
    for c in range(t.shape[1]):
        low[c], high[c] = _percentile_interval(reps[:, c], ci)
    defined = np.array([_defined(t[:, c]) for c in range(t.shape[1])])
    if defined.any():
        macro = reps[:, defined].mean(axis=1)  # NaN if any defined class is undefined in the replicate
        macro_low, macro_high = _percentile_interval(macro, ci)
    else:
        macro_low = macro_high = float("nan")
    return low, high, macro_low, macro_high


def _thin(n: int, max_points: int) -> np.ndarray:
    """At most ``max_points`` evenly spaced indices into n points, always keeping both ends."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(int))


def roc_points(
    targets: Any, probs: Any, max_points: int = 200, labels: Sequence[str] = LABELS
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """ROC curve per class as ``label -> (fpr, tpr)``, thinned to ``max_points`` for plotting.

    Classes without an AUC (one target value) are left out rather than plotted as a fake curve.
    """
    if isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer)) or max_points < 2:
        raise ValueError(f"max_points must be an integer >= 2, got {max_points!r}")
    t, p = _check_scores(targets, probs)
    if len(labels) != t.shape[1]:
        raise ValueError(f"labels has {len(labels)} names for {t.shape[1]} classes")
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for c, name in enumerate(labels):
        if not _defined(t[:, c]):
            continue
        fpr, tpr, _ = roc_curve(t[:, c], p[:, c])
        keep = _thin(fpr.shape[0], max_points)
        out[name] = (fpr[keep], tpr[keep])
    return out


def _json_float(value: float) -> float | None:
    """NaN has no JSON spelling; ``None`` (null) says "undefined" explicitly."""
    return None if not np.isfinite(value) else float(value)


def _nanmean(values: np.ndarray) -> float:
    """Mean over the defined (finite) entries, NaN if there are none (without a warning)."""
    v = values[np.isfinite(values)]
    return float(v.mean()) if v.size else float("nan")


def summarise(
    targets: Any,
    probs: Any,
    groups: Any,
    labels: Sequence[str] = LABELS,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Everything ``metrics/test/<model>.json`` needs, as a JSON-ready dict (NaN -> ``None``).

    Macro values are the mean over the classes that are defined on these data; ``n_boot=0``
    skips the bootstrap (intervals are ``None``).
    """
    t, p = _check_scores(targets, probs)
    if len(labels) != t.shape[1]:
        raise ValueError(f"labels has {len(labels)} names for {t.shape[1]} classes")
    auc = per_class_auc(t, p)
    auprc = per_class_auprc(t, p)
    if n_boot > 0:
        low, high, macro_low, macro_high = bootstrap_auc_ci(t, p, groups, n_boot=n_boot, ci=ci, seed=seed)
    else:  # test.bootstrap: 0 means "no intervals"
        low = high = np.full(t.shape[1], np.nan)
        macro_low = macro_high = float("nan")
    return {
        "auc": {name: _json_float(auc[c]) for c, name in enumerate(labels)},
        "auc_ci": {name: [_json_float(low[c]), _json_float(high[c])] for c, name in enumerate(labels)},
        "auprc": {name: _json_float(auprc[c]) for c, name in enumerate(labels)},
        "macro_auc": _json_float(_nanmean(auc)),
        "macro_auc_ci": [_json_float(macro_low), _json_float(macro_high)],
        "macro_auprc": _json_float(_nanmean(auprc)),
        "n_images": int(t.shape[0]),
        "n_patients": int(np.unique(np.asarray(groups)).shape[0]),
        "positives": {name: int(t[:, c].sum()) for c, name in enumerate(labels)},
    }


def macro_auc(targets: Any, probs: Any) -> float:
    """Mean ROC AUC over the classes that have both positives and negatives (NaN if none has)."""
    return _nanmean(per_class_auc(targets, probs))


#: ``metrics/test/<model>.json``: what :func:`summarise` returns (plus nothing else).
TEST_METRICS_KEYS: tuple[str, ...] = (
    "auc",
    "auc_ci",
    "auprc",
    "macro_auc",
    "macro_auc_ci",
    "macro_auprc",
    "n_images",
    "n_patients",
    "positives",
)


@contract("metrics/test/<model>/seed<k>.json", writer="test@<model>-<k>", fields=TEST_METRICS_KEYS)
class TestMetrics:
    """Per-class AUC with patient-bootstrap CIs, AUPRC and the macro means of one model."""

    @staticmethod
    def write(path: str | os.PathLike, metrics: Mapping[str, Any]) -> None:
        absent = [k for k in TEST_METRICS_KEYS if k not in metrics]
        if absent:
            raise ValueError(f"test metrics lack key(s) {absent}")
        write_json(path, {k: metrics[k] for k in TEST_METRICS_KEYS})

    @staticmethod
    def read(path: str | os.PathLike) -> dict[str, Any]:
        return read_json(path, "the test stage (test@<model>-<seed>)", TEST_METRICS_KEYS)


@contract("plots/roc/<model>/seed<k>.csv", writer="test@<model>-<k>", fields=("label", "fpr", "tpr"))
class RocTable:
    """ROC points of every class with an AUC, as one long table for ``dvc plots``."""

    COLUMNS: tuple[str, ...] = ("label", "fpr", "tpr")

    @staticmethod
    def from_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Any:
        import pandas as pd

        frames = [
            pd.DataFrame({"label": name, "fpr": fpr, "tpr": tpr}) for name, (fpr, tpr) in curves.items()
        ]
        return (
            pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(RocTable.COLUMNS))
        )

    @staticmethod
    def write(path: str | os.PathLike, table: Any) -> None:
        write_csv(path, table)

    @staticmethod
    def read(path: str | os.PathLike) -> Any:
        return read_csv(path, "the test stage (test@<model>-<seed>)", RocTable.COLUMNS)
