"""Which model (or CAM method) is best, and is the difference real? Paired comparisons.

Every comparison is *paired* (all contenders are scored on the same images, or the same boxes) and,
except DeLong's test, *patient-clustered*: ChestX-ray14's test split has ~9 images per patient, and
treating them as independent makes differences look more certain than they are.

* :func:`paired_auc_bootstrap`: per-class and macro AUC differences of every pair of models, with
  percentile intervals, bootstrap p-values and Holm adjustments. Each replicate draws patients
  once (with :mod:`cxr_core.evaluate.metrics`' own draw, so one seed gives the same replicates as
  the test stage's CIs) and scores every model on that one draw.
* :func:`auc_change_bootstrap`: the same for one model's change between two versions (a pull
  request's base and head), for the mean over its seeds and for each seed alone.
* :func:`delong`: DeLong's asymptotic test for two correlated AUCs (image-level), as a cross-check.
* :func:`paired_rate_bootstrap`: the same bootstrap for paired 0/1 hit rates (pointing game, box
  accuracy), overall and as the mean of per-class rates that the localise stage reports.
* :func:`holm`, :func:`bootstrap_p_value` and :func:`comparison_summary` (JSON-ready, no dots in keys).

The bootstrap p-value, used throughout: with B replicates d*_1..d*_B of a difference that are
defined (a replicate that lacks a class's positives or negatives is left out),

    p = min(1, 2 * min(1 + #{r: d*_r <= 0}, 1 + #{r: d*_r >= 0}) / (B + 1))

that is, twice the smaller share of the bootstrap distribution on either side of 0, with the usual
+1 correction, so a finite bootstrap never claims p = 0 (the smallest value is 2 / (B + 1)). It is
the two-sided test that the percentile interval inverts: p <= alpha about when the 1 - alpha
interval excludes 0. A model compared with itself has every d*_r = 0, so both counts are B and p = 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.stats import rankdata

from cxr_core.evaluate.metrics import (
    _check_ci,
    _check_scores,
    _defined,
    _patient_counts,
    _percentile_interval,
    per_class_auc,
)
from cxr_core.labels import LABEL_INDEX, LABELS

#: Replicates per sparse product: the P x 64 block of draw counts stays in cache (measured fastest).
_CHUNK_REPLICATES = 64

# --------------------------------------------------------------------------------------------
# p-values and multiplicity


def bootstrap_p_value(replicates: Any) -> float:
    """Two-sided bootstrap p of "difference = 0" (definition in the module docstring); NaN if no
    replicate is defined."""
    d = np.asarray(replicates, dtype=np.float64).reshape(-1)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    below = 1 + int((d <= 0).sum())
    above = 1 + int((d >= 0).sum())
    return min(1.0, 2.0 * min(below, above) / (d.size + 1))


def holm(pvalues: Any) -> np.ndarray:
    """Holm's step-down adjustment (family-wise error), same shape as ``pvalues``.

    Sorted ascending, p_(j) becomes max over i <= j of min(1, (m - i + 1) p_(i)), so the adjusted
    values keep the order of the raw ones. Every finite entry is in the one family of m tests;
    NaN (an undefined test) stays NaN and is not counted in m.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    finite = np.isfinite(p)
    if (np.isinf(p) | (finite & ((p < 0) | (p > 1)))).any():
        raise ValueError(f"pvalues must lie in [0, 1] (or be NaN), got {p[~np.isnan(p)].tolist()[:5]}")
    out = np.full(p.shape, np.nan)
    values = p[finite]
    m = values.size
    if m:
        order = np.argsort(values, kind="stable")
        stepped = np.maximum.accumulate((m - np.arange(m)) * values[order])
        adjusted = np.empty(m)
        adjusted[order] = np.minimum(stepped, 1.0)
        out[finite] = adjusted
    return out


def _interval_and_p(replicates: np.ndarray, ci: float) -> dict[str, Any]:
    """Percentile interval, bootstrap p and the number of defined replicates of one difference."""
    low, high = _percentile_interval(replicates, ci)
    return {
        "ci_low": low,
        "ci_high": high,
        "p": bootstrap_p_value(replicates),
        "n_valid": int(np.isfinite(replicates).sum()),
    }


# --------------------------------------------------------------------------------------------
# AUC: the paired patient bootstrap


def _auc_design(
    target: np.ndarray, score: np.ndarray, codes: np.ndarray, n_patients: int, dtype: Any = np.float64
) -> Any:
    """Sparse matrix that turns patient draw counts (P x R) into the sums the AUC needs (rows x R).

    In ascending score order, a *run* is a stretch of tie groups that hold positives with no
    negative between or tied with them, or one tie group holding both (a mixed run). Rows: each
    run's positives per patient (K rows), the negatives in the gap below each run (K + 1, the last
    above every positive), and the negatives tied within each mixed run (M). Every image lands in
    one row, so a chunk of replicates costs one sparse product, O(images) per replicate, instead of
    re-weighting and cumulating every image of every replicate. ``None`` without both classes.
    """
    if not _defined(target):
        return None
    order = np.argsort(score, kind="stable")
    s = score[order]
    positive = target[order] == 1
    group = np.cumsum(np.r_[True, s[1:] != s[:-1]]) - 1  # tie group of each sorted image
    has_pos = np.zeros(int(group[-1]) + 1, dtype=bool)
    has_pos[group[positive]] = True
    n_groups = int(has_pos.sum())
    seen = np.cumsum(has_pos)[group]  # positive groups at or below each image's group
    tied_neg = ~positive & has_pos[group]  # negatives sharing a score with a positive
    gap_neg = ~positive & ~has_pos[group]
    mixed = np.bincount(seen[tied_neg] - 1, minlength=n_groups) > 0  # per positive group
    gap_below = np.bincount(seen[gap_neg], minlength=n_groups + 1)[:n_groups] > 0
    starts = gap_below | mixed | np.r_[True, mixed[:-1]]  # a new run at each of these groups
    run_of_group = np.cumsum(starts) - 1
    k = int(run_of_group[-1]) + 1
    mixed_runs = run_of_group[mixed]  # mixed runs are single groups, so these are distinct
    mixed_row = np.full(k, -1)
    mixed_row[mixed_runs] = np.arange(mixed_runs.shape[0])
    run = np.r_[run_of_group, k][np.maximum(seen - 1, 0)]  # the run of a positive-holding group
    gap_run = np.r_[run_of_group, k][seen]  # the run above a gap
    row = np.where(
        positive, run, np.where(tied_neg, 2 * k + 1 + mixed_row[np.minimum(run, k - 1)], k + gap_run)
    )
    ones = np.ones(row.shape[0], dtype=dtype)
    n_rows = 2 * k + 1 + mixed_runs.shape[0]
    matrix = sp.coo_matrix((ones, (row, codes[order])), shape=(n_rows, n_patients), dtype=dtype).tocsr()
    return matrix, k, mixed_runs


def _design_aucs(design: Any, counts_t: Sequence[np.ndarray], n_boot: int) -> np.ndarray:
    """Exact AUC of every replicate, from chunks of patient draw counts (each P x r, contiguous).

    numerator = sum over runs of positives x (negatives below + half those tied), over
    W_pos W_neg. All sums are of integers (and halves) in float64, so the value is exact and equal,
    bit for bit, to :func:`cxr_core.evaluate.metrics.weighted_auc` on the same draw.
    """
    if design is None:
        return np.full(n_boot, np.nan)
    matrix, k, mixed_runs = design
    out = []
    for chunk in counts_t:
        y = (matrix @ chunk).astype(np.float64)  # integer sums, exact in the dtype the caller chose
        pos, gap, tied = y[:k], y[k : 2 * k + 1], y[2 * k + 1 :]
        below = gap[:k].copy()
        below[mixed_runs] += tied
        np.cumsum(below, axis=0, out=below)  # negatives below each run, plus its tied ones
        numerator = (pos * below).sum(axis=0) - 0.5 * (pos[mixed_runs] * tied).sum(axis=0)
        n_pos = pos.sum(axis=0)
        n_neg = below[-1] + gap[k]
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = numerator / (n_pos * n_neg)
        auc[(n_pos == 0) | (n_neg == 0)] = np.nan
        out.append(auc)
    return np.concatenate(out) if out else np.empty(0)  # n_boot = 0: no replicates


def _check_models(targets: Any, probs: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Targets (N x C) and every model's scores as S x N x C: S training seeds (S = 1 for N x C)."""
    if not isinstance(probs, Mapping) or len(probs) < 2:
        raise ValueError("probs must map at least two model names to N x C (or seeds x N x C) score arrays")
    checked: dict[str, np.ndarray] = {}
    t = None
    for name, p in probs.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"probs keys must be non-empty model names, got {name!r}")
        runs = np.asarray(p, dtype=np.float64)
        runs = runs[None] if runs.ndim < 3 else runs
        if runs.ndim != 3 or runs.shape[0] == 0:
            raise ValueError(f"probs[{name!r}] must be N x C or seeds x N x C, got shape {np.shape(p)}")
        seeds = []
        for run in runs:
            try:
                t, checked_run = _check_scores(targets, run)
            except ValueError as exc:
                raise ValueError(f"probs[{name!r}]: {exc}") from None
            seeds.append(checked_run)
        checked[name] = np.stack(seeds)
    assert t is not None
    return t, checked


def paired_auc_replicates(
    targets: Any, probs: Mapping[str, Any], groups: Any, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Per-class AUC (n_boot x C) of every model on the *same* patient-bootstrap replicates.

    The draws are :func:`cxr_core.evaluate.metrics.bootstrap_auc_replicates`' (same seed, same
    replicates, same values), so these numbers and the test stage's CIs come from one bootstrap.
    A model given as seeds x N x C gets, per replicate, the mean AUC of its seeds (all scored on
    that replicate's draw): the expected AUC of one training run, not the AUC of an ensemble.
    """
    t, scores = _check_models(targets, probs)
    n, n_classes = t.shape
    codes, counts = _patient_counts(groups, n, n_boot, seed)
    n_patients = counts.shape[1]
    # float32 sums of counts are exact below 2**24; a replicate holds at most P x (largest patient) images
    exact32 = n_patients * int(np.bincount(codes).max()) < 2**24
    dtype = np.float32 if exact32 else np.float64
    chunks = [
        np.ascontiguousarray(counts[lo : lo + _CHUNK_REPLICATES].T, dtype=dtype)
        for lo in range(0, n_boot, _CHUNK_REPLICATES)
    ]
    out = {}
    for name, runs in scores.items():
        per_seed = np.empty((runs.shape[0], n_boot, n_classes))
        for s, p in enumerate(runs):
            for c in range(n_classes):
                per_seed[s, :, c] = _design_aucs(
                    _auc_design(t[:, c], p[:, c], codes, n_patients, dtype), chunks, n_boot
                )
        out[name] = per_seed.mean(axis=0)  # one seed: the values themselves, bit for bit
    return out


def _macro(values: np.ndarray, defined: np.ndarray) -> np.ndarray:
    """Mean over the classes defined on the full data (last axis); NaN where one of them is NaN."""
    if not defined.any():
        return np.full(values.shape[:-1], np.nan)
    return values[..., defined].mean(axis=-1)


def paired_auc_bootstrap(
    targets: Any,
    probs: Mapping[str, Any],
    groups: Any,
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """AUC difference A - B of every pair of models (A listed before B): per class and macro.

    ``targets`` N x C (0/1), ``probs`` model name -> N x C scores (or seeds x N x C: every AUC is
    then the mean over the seeds), ``groups`` N patient ids. Point differences use sklearn's AUC on
    all images; intervals (percentile) and p-values (module
    docstring) come from a patient-level bootstrap in which each replicate draws patients once and
    scores every model on that draw, so every pair shares it. The macro AUC is the mean over the
    classes defined on the full data; a replicate missing one of them is left out of the macro.

    Holm adjustments: ``p_holm`` over the pairs (for the macro, and per class), ``p_holm_classes``
    over the classes within a pair. Returns plain numpy (``comparison_summary`` makes it JSON):
    ``models``, ``defined`` (C,), ``auc`` / ``macro_auc`` per model, ``replicates`` (n_boot x C per
    model) and ``pairs``, a list of dicts with ``a``, ``b``, per-class ``diff``, ``ci_low``,
    ``ci_high``, ``p``, ``p_holm``, ``p_holm_classes``, ``n_valid``, ``replicates`` (n_boot x C) and
    ``macro`` (the same, scalar, without ``p_holm_classes``).
    """
    ci = _check_ci(ci)
    t, scores = _check_models(targets, probs)
    names = list(scores)
    reps = paired_auc_replicates(t, scores, groups, n_boot=n_boot, seed=seed)
    defined = np.array([_defined(t[:, c]) for c in range(t.shape[1])])
    auc = {name: np.mean([per_class_auc(t, run) for run in scores[name]], axis=0) for name in names}
    macro_auc = {name: float(_macro(auc[name], defined)) for name in names}
    macro_reps = {name: _macro(reps[name], defined) for name in names}

    pairs: list[dict[str, Any]] = []
    for a, b in combinations(names, 2):
        d = reps[a] - reps[b]
        per_class = [_interval_and_p(d[:, c], ci) for c in range(t.shape[1])]
        pair: dict[str, Any] = {
            "a": a,
            "b": b,
            "diff": auc[a] - auc[b],
            **{key: np.array([pc[key] for pc in per_class]) for key in ("ci_low", "ci_high", "p", "n_valid")},
            "replicates": d,
        }
        pair["p_holm_classes"] = holm(pair["p"])
        macro_d = macro_reps[a] - macro_reps[b]
        pair["macro"] = {
            "diff": macro_auc[a] - macro_auc[b],
            **_interval_and_p(macro_d, ci),
            "replicates": macro_d,
        }
        pairs.append(pair)
    if pairs:
        macro_holm = holm([pair["macro"]["p"] for pair in pairs])
        class_holm = np.stack([holm(col) for col in np.stack([pair["p"] for pair in pairs]).T], axis=1)
        for pair, p_macro, p_class in zip(pairs, macro_holm, class_holm, strict=True):
            pair["macro"]["p_holm"] = float(p_macro)
            pair["p_holm"] = p_class
    return {
        "kind": "auc",
        "models": names,
        "n_boot": int(n_boot),
        "ci": ci,
        "seed": seed,
        "n_images": int(t.shape[0]),
        "n_patients": int(np.unique(np.asarray(groups)).shape[0]),
        "seeds": {name: int(scores[name].shape[0]) for name in names},
        "defined": defined,
        "auc": auc,
        "macro_auc": macro_auc,
        "replicates": reps,
        "pairs": pairs,
    }


def _macro_change(
    base: np.ndarray,
    head: np.ndarray,
    base_reps: np.ndarray,
    head_reps: np.ndarray,
    defined: np.ndarray,
    ci: float,
) -> dict[str, Any]:
    """Macro AUC of both sides (per-class values and replicates in), the change, its interval and p."""
    b, h = float(_macro(base, defined)), float(_macro(head, defined))
    d = _macro(head_reps, defined) - _macro(base_reps, defined)
    return {"base": b, "head": h, "diff": h - b, **_interval_and_p(d, ci), "replicates": d}


def auc_change_bootstrap(
    targets: Any,
    base: Any,
    head: Any,
    groups: Any,
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The change in AUC of one model between two versions of it (head - base) on the same images.

    ``base`` and ``head`` are N x C scores, or seeds x N x C with the same seeds in the same order.
    Every training run of both sides is scored on each replicate of one patient bootstrap, drawn as
    :func:`paired_auc_bootstrap` draws it (same ``seed`` and patients, same replicates), so the
    numbers for the mean over the seeds equal that function's pair ``(head, base)``. A pull-request
    review also wants each seed alone, which that function cannot give without pairing every run
    with every other.

    Returns ``seeds``, ``defined`` (C,), ``classes`` (arrays (C,) of ``base``, ``head``, ``diff``,
    ``ci_low``, ``ci_high``, ``p``, ``n_valid``, and ``replicates`` n_boot x C), ``macro`` (the same,
    scalars, over the classes defined on the full data) and ``per_seed``: one ``macro`` entry per seed.
    """
    ci = _check_ci(ci)
    t, scores = _check_models(targets, {"base": base, "head": head})
    n_seeds = scores["base"].shape[0]
    if scores["head"].shape[0] != n_seeds:
        raise ValueError(f"base has {n_seeds} seeds and head {scores['head'].shape[0]}: pair the same seeds")
    runs = {f"{side}{s}": scores[side][s] for s in range(n_seeds) for side in ("base", "head")}
    reps = paired_auc_replicates(t, runs, groups, n_boot=n_boot, seed=seed)
    defined = np.array([_defined(t[:, c]) for c in range(t.shape[1])])
    auc = {name: per_class_auc(t, run) for name, run in runs.items()}

    def side(name: str, values: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.mean([values[f"{name}{s}"] for s in range(n_seeds)], axis=0)

    base_auc, head_auc = side("base", auc), side("head", auc)
    d = side("head", reps) - side("base", reps)
    per_class = [_interval_and_p(d[:, c], ci) for c in range(t.shape[1])]
    classes = {
        "base": base_auc,
        "head": head_auc,
        "diff": head_auc - base_auc,
        **{key: np.array([pc[key] for pc in per_class]) for key in ("ci_low", "ci_high", "p", "n_valid")},
        "replicates": d,
    }
    per_seed = [
        _macro_change(auc[f"base{s}"], auc[f"head{s}"], reps[f"base{s}"], reps[f"head{s}"], defined, ci)
        for s in range(n_seeds)
    ]
    macro = _macro_change(base_auc, head_auc, side("base", reps), side("head", reps), defined, ci)
    return {
        "kind": "auc_change",
        "n_boot": int(n_boot),
        "ci": ci,
        "seed": seed,
        "seeds": n_seeds,
        "defined": defined,
        "classes": classes,
        "macro": macro,
        "per_seed": per_seed,
    }


# --------------------------------------------------------------------------------------------
# AUC: DeLong


def _delong_components(target: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs (K,) and structural components V10 (K x m), V01 (K x n) of K score rows (Sun & Xu).

    With midranks Tz over all m + n images, Tx over the positives, Ty over the negatives:
    V10_i = (Tz_i - Tx_i) / n (share of negatives below positive i, ties 1/2),
    V01_j = 1 - (Tz_j - Ty_j) / m (share of positives above negative j), AUC = mean V10 = mean V01.
    Three sorts per model instead of the m x n comparisons of the textbook form.
    """
    positive = target == 1
    x, y = scores[:, positive], scores[:, ~positive]
    m, n = x.shape[1], y.shape[1]
    tz = rankdata(np.concatenate([x, y], axis=1), method="average", axis=1)
    tx = rankdata(x, method="average", axis=1)
    ty = rankdata(y, method="average", axis=1)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    return auc, v10, v01


def delong(target: Any, score_a: Any, score_b: Any) -> tuple[float, float, float, float, float, float]:
    """DeLong's test of AUC(a) = AUC(b) on one class: ``(auc_a, auc_b, diff, variance, z, p)``.

    Fast midrank algorithm of Sun & Xu (2014). ``variance`` is that of ``diff = auc_a - auc_b``,
    var(V10_a - V10_b) / m + var(V01_a - V01_b) / n (= c' S c with S = S10 / m + S01 / n,
    c = (1, -1)); z = diff / sqrt(variance), p = 2 (1 - Phi(|z|)). It treats images as independent,
    so on ChestX-ray14 (several images per patient) it is too optimistic: a cross-check of
    :func:`paired_auc_bootstrap`, not a replacement. Undefined parts are NaN: everything without
    both classes, the variance with fewer than 2 positives or negatives. A zero variance gives
    z = 0, p = 1 when diff = 0 (identical rankings) and z = +-inf, p = 0 otherwise.
    """
    y = np.asarray(target)
    a = np.asarray(score_a, dtype=np.float64)
    b = np.asarray(score_b, dtype=np.float64)
    if y.ndim != 1 or y.shape[0] == 0:
        raise ValueError(f"target must be a non-empty 1-D array, got shape {y.shape}")
    if a.shape != y.shape or b.shape != y.shape:
        raise ValueError(f"score_a {a.shape} and score_b {b.shape} must match target {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("target must hold only 0/1")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("score_a and score_b must be finite")
    nan = float("nan")
    if not _defined(y):
        return nan, nan, nan, nan, nan, nan
    auc, v10, v01 = _delong_components(y, np.stack([a, b]))
    m, n = v10.shape[1], v01.shape[1]
    diff = float(auc[0] - auc[1])
    if m < 2 or n < 2:
        return float(auc[0]), float(auc[1]), diff, nan, nan, nan
    variance = float(np.var(v10[0] - v10[1], ddof=1) / m + np.var(v01[0] - v01[1], ddof=1) / n)
    if variance > 0:
        z = diff / math.sqrt(variance)
    elif diff == 0:
        z = 0.0  # identical rankings
    else:
        z = math.copysign(math.inf, diff)
    p = math.erfc(abs(z) / math.sqrt(2.0))
    return float(auc[0]), float(auc[1]), diff, variance, z, p


def delong_per_class(targets: Any, probs_a: Any, probs_b: Any) -> dict[str, Any]:
    """:func:`delong` for every class of two models (N x C each): arrays (C,) of ``auc_a``,
    ``auc_b``, ``diff``, ``variance``, ``z``, ``p`` and ``p_holm`` (Holm over the classes)."""
    t, a = _check_scores(targets, probs_a)
    _, b = _check_scores(t, probs_b)
    rows = np.array([delong(t[:, c], a[:, c], b[:, c]) for c in range(t.shape[1])]).reshape(-1, 6)
    out: dict[str, Any] = {"kind": "delong"}
    out.update({key: rows[:, i] for i, key in enumerate(("auc_a", "auc_b", "diff", "variance", "z", "p"))})
    out["p_holm"] = holm(out["p"])
    return out


# --------------------------------------------------------------------------------------------
# hit rates (localisation)


def _check_hits(hits: Any, name: str, n: int | None) -> np.ndarray:
    h = np.asarray(hits)
    if h.ndim != 1 or h.shape[0] == 0 or (n is not None and h.shape[0] != n):
        want = "a non-empty 1-D array" if n is None else f"a 1-D array of {n} boxes"
        raise ValueError(f"{name} must be {want}, got shape {h.shape}")
    h = h.astype(np.float64)
    bad = ~(np.isfinite(h) & (h >= 0) & (h <= 1))
    if bad.any():
        raise ValueError(f"{name} must hold hits in [0, 1] (0/1, or a mean over seeds), found {h[bad][:5]}")
    return h


def _class_order(values: Sequence[Any]) -> list[Any]:
    """ChestX-ray14 findings in label order, anything else after them, sorted."""
    return sorted(values, key=lambda v: (LABEL_INDEX.get(v, len(LABEL_INDEX)), str(v)))


def _rate_stats(a: np.ndarray, b: np.ndarray, total: np.ndarray, counts: np.ndarray) -> dict[str, Any]:
    """Rates and their difference from patient-level sums (hits of a, of b, boxes) per class column.

    ``a``, ``b``, ``total`` are P x L; a replicate's sums are ``counts @`` them (exact for 0/1 hits),
    and its difference (A - B) / N has one rounding, so identical inputs give exactly 0.
    """
    n_all = total.sum(axis=0)
    rate_a, rate_b = a.sum(axis=0) / n_all, b.sum(axis=0) / n_all
    drawn = counts @ total
    with np.errstate(invalid="ignore", divide="ignore"):
        d = (counts @ a - counts @ b) / drawn  # NaN where a class drew no box
    return {"rate_a": rate_a, "rate_b": rate_b, "diff": (a - b).sum(axis=0) / n_all, "per_column": d}


def paired_rate_bootstrap(
    hits_a: Any,
    hits_b: Any,
    groups: Any,
    *,
    classes: Any = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Difference of two paired hit rates (A - B) over the same boxes, with a patient bootstrap.

    ``hits_a``, ``hits_b``: 0/1 per box (pointing hit, box accuracy at T; or the mean over training
    seeds, in [0, 1]), ``groups``: the box's patient. ``overall`` is the share of boxes hit. With ``classes`` (the box's finding) there is
    also ``per_class`` and ``class_mean``: the mean over the classes that have boxes of the
    per-class rates, the number the localise stage reports; a replicate that draws no box of one
    of them is left out of the class mean. Each entry holds ``rate_a``, ``rate_b``, ``diff``,
    ``ci_low``, ``ci_high``, ``p`` (module docstring), ``n_valid`` and ``replicates`` (n_boot,).
    The draw is the AUC bootstrap's (same seed and patients, same replicates).
    """
    ci = _check_ci(ci)
    a = _check_hits(hits_a, "hits_a", None)
    b = _check_hits(hits_b, "hits_b", a.shape[0])
    codes, counts = _patient_counts(groups, a.shape[0], n_boot, seed)
    counts = counts.astype(np.float64)
    n_patients = counts.shape[1]
    if classes is None:
        column = np.zeros(a.shape[0], dtype=np.intp)
        names: list[Any] = []
    else:
        cls = np.asarray(classes)
        if cls.ndim != 1 or cls.shape[0] != a.shape[0]:
            raise ValueError(
                f"classes must be a 1-D array of {a.shape[0]} box classes, got shape {cls.shape}"
            )
        names = _class_order(list(np.unique(cls)))
        lookup = {name: i for i, name in enumerate(names)}
        column = np.array([lookup[v] for v in cls.tolist()], dtype=np.intp) + 1
    width = len(names) + 1  # column 0: all boxes (every box is also counted there)

    def sums(values: np.ndarray) -> np.ndarray:
        out = np.zeros((n_patients, width))
        np.add.at(out, (codes, np.zeros_like(column)), values)
        if names:
            np.add.at(out, (codes, column), values)
        return out

    ones = np.ones_like(a)
    stats = _rate_stats(sums(a), sums(b), sums(ones), counts)

    def entry(rate_a: float, rate_b: float, diff: float, replicates: np.ndarray) -> dict[str, Any]:
        return {
            "rate_a": float(rate_a),
            "rate_b": float(rate_b),
            "diff": float(diff),
            **_interval_and_p(replicates, ci),
            "replicates": replicates,
        }

    d = stats["per_column"]
    out: dict[str, Any] = {
        "kind": "rate",
        "n_boot": int(n_boot),
        "ci": ci,
        "seed": seed,
        "n_boxes": int(a.shape[0]),
        "n_patients": int(n_patients),
        "overall": entry(stats["rate_a"][0], stats["rate_b"][0], stats["diff"][0], d[:, 0]),
    }
    if names:
        out["per_class"] = {
            name: entry(stats["rate_a"][i], stats["rate_b"][i], stats["diff"][i], d[:, i])
            for i, name in enumerate(names, start=1)
        }
        out["class_mean"] = entry(
            stats["rate_a"][1:].mean(),
            stats["rate_b"][1:].mean(),
            stats["diff"][1:].mean(),
            d[:, 1:].mean(axis=1),
        )
    return out


def pairwise_rate_bootstrap(
    hits: Mapping[str, Any],
    groups: Any,
    *,
    classes: Any = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`paired_rate_bootstrap` for every pair of contenders (A before B) on the same boxes.

    ``hits`` maps a name (a model, for one CAM method; or a method, for one model) to its 0/1 hits.
    Every pair uses the same seed and so the same patient draw; ``p_holm`` (Holm over the pairs)
    is added to ``overall`` and ``class_mean``.
    """
    if not isinstance(hits, Mapping) or len(hits) < 2:
        raise ValueError("hits must map at least two names to 0/1 hit arrays")
    names = list(hits)
    pairs = []
    for a, b in combinations(names, 2):
        result = paired_rate_bootstrap(
            hits[a], hits[b], groups, classes=classes, n_boot=n_boot, ci=ci, seed=seed
        )
        pairs.append({"a": a, "b": b, **result})
    for key in ("overall", "class_mean"):
        if key in pairs[0]:
            for pair, p in zip(pairs, holm([pair[key]["p"] for pair in pairs]), strict=True):
                pair[key]["p_holm"] = float(p)
    first = pairs[0]
    return {
        "kind": "rates",
        "names": names,
        **{key: first[key] for key in ("n_boot", "ci", "seed", "n_boxes", "n_patients")},
        "pairs": pairs,
    }


# --------------------------------------------------------------------------------------------
# JSON


def _key(name: Any) -> str:
    """DVC flattens metric keys on dots, so a dot in a name becomes ``_``."""
    return str(name).replace(".", "_")


def _unique_keys(names: Sequence[Any], what: str) -> list[str]:
    keys = [_key(n) for n in names]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{what} {list(names)} collide once dots become '_': {keys}")
    return keys


def _num(x: Any) -> float | int | None:
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return int(x)
    x = float(x)
    return x if math.isfinite(x) else None


def _stat(source: Mapping[str, Any], i: int | None = None, keys: Sequence[str] = ()) -> dict[str, Any]:
    """``{"diff", "ci": [low, high], "p", ...}`` of a scalar entry, or of column ``i`` of arrays."""

    def get(key: str) -> Any:
        return source[key] if i is None else source[key][i]

    out: dict[str, Any] = {}
    for key in keys:
        if key == "ci_low":
            out["ci"] = [_num(get("ci_low")), _num(get("ci_high"))]
        elif key != "ci_high":
            out[key] = _num(get(key))
    return out


_PAIR_KEYS = ("diff", "ci_low", "ci_high", "p", "p_holm", "n_valid")
_RATE_KEYS = ("rate_a", "rate_b", "diff", "ci_low", "ci_high", "p", "n_valid")


def comparison_summary(result: Mapping[str, Any], labels: Sequence[str] = LABELS) -> dict[str, Any]:
    """JSON-ready nested dicts of a comparison result; no key contains a dot, NaN becomes ``None``.

    AUC (:func:`paired_auc_bootstrap`): ``{"models", "n_boot", "ci", "seed", "n_images",
    "n_patients", "auc": {model: {"macro", "per_class": {label: auc}}}, "pairs": {"<a>_vs_<b>":
    {"a", "b", "macro": {"diff", "ci", "p", "p_holm", "n_valid"}, "per_class": {label: {...,
    "p_holm_classes"}}}}}``. Rates (:func:`pairwise_rate_bootstrap`) follow the same layout with
    ``overall`` / ``class_mean`` / ``per_class``; DeLong (:func:`delong_per_class`) gives
    ``{label: {"auc_a", "auc_b", "diff", "variance", "z", "p", "p_holm"}}``. Replicates are dropped.
    """
    kind = result.get("kind")
    if kind == "delong":
        n = len(result["p"])
        if len(labels) != n:
            raise ValueError(f"labels has {len(labels)} names for {n} classes")
        keys = ("auc_a", "auc_b", "diff", "variance", "z", "p", "p_holm")
        return {_key(lab): {k: _num(result[k][c]) for k in keys} for c, lab in enumerate(labels)}
    if kind == "auc":
        n = len(result["defined"])
        if len(labels) != n:
            raise ValueError(f"labels has {len(labels)} names for {n} classes")
        label_keys = _unique_keys(labels, "labels")
        model_keys = _unique_keys(result["models"], "model names")
        key_of = dict(zip(result["models"], model_keys, strict=True))
        pairs = {}
        for pair in result["pairs"]:
            pairs[f"{key_of[pair['a']]}_vs_{key_of[pair['b']]}"] = {
                "a": pair["a"],
                "b": pair["b"],
                "macro": _stat(pair["macro"], keys=_PAIR_KEYS),
                "per_class": {
                    lab: _stat(pair, c, (*_PAIR_KEYS, "p_holm_classes")) for c, lab in enumerate(label_keys)
                },
            }
        return {
            "models": list(result["models"]),
            **{k: _num(result[k]) for k in ("n_boot", "ci", "seed", "n_images", "n_patients")},
            "auc": {
                key_of[m]: {
                    "macro": _num(result["macro_auc"][m]),
                    "per_class": {lab: _num(result["auc"][m][c]) for c, lab in enumerate(label_keys)},
                }
                for m in result["models"]
            },
            "pairs": pairs,
        }
    if kind in ("rate", "rates"):
        single = kind == "rate"
        pair_list = [{"a": "a", "b": "b", **result}] if single else result["pairs"]
        names = ["a", "b"] if single else result["names"]
        key_of = dict(zip(names, _unique_keys(names, "names"), strict=True))
        pairs = {}
        for pair in pair_list:
            entry: dict[str, Any] = {"a": pair["a"], "b": pair["b"]}
            for part in ("overall", "class_mean"):
                if part in pair:
                    keys = (*_RATE_KEYS, "p_holm") if "p_holm" in pair[part] else _RATE_KEYS
                    entry[part] = _stat(pair[part], keys=keys)
            if "per_class" in pair:
                classes = list(pair["per_class"])
                entry["per_class"] = {
                    k: _stat(pair["per_class"][c], keys=_RATE_KEYS)
                    for c, k in zip(classes, _unique_keys(classes, "classes"), strict=True)
                }
            pairs[f"{key_of[pair['a']]}_vs_{key_of[pair['b']]}"] = entry
        head = {k: _num(result[k]) for k in ("n_boot", "ci", "seed", "n_boxes", "n_patients")}
        if single:
            return {**head, **pairs["a_vs_b"]}
        return {"names": list(names), **head, "pairs": pairs}
    raise ValueError(
        f"result must come from this module (kind auc, delong, rate or rates), got kind {kind!r}"
    )
