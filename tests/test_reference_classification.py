"""Differential tests: every published classification, calibration and clinical metric against an
independent, maintained implementation from PyPI (scikit-learn, torchmetrics, torch, scipy,
statsmodels, pandas), never against another part of this project.

Each test names its reference. Where our definition differs on purpose (NaN for an undefined class,
equal-mass bins, ``>=`` calls, ties broken towards the higher threshold), the test lines the
reference up with ours and says in one comment how ours differs. Inputs are seeded and random,
always with score ties, unequal class sizes and degenerate classes (no positives, no negatives,
constant scores).
"""

from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import explicit_resamples
from scipy.optimize import minimize_scalar
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    cohen_kappa_score,
    confusion_matrix,
    log_loss,
    precision_recall_curve,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from statsmodels.stats.inter_rater import cohens_kappa
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_calibration_error,
    multilabel_auroc,
    multilabel_average_precision,
)

from cxr_core.audit.subgroups import _kappa, adjudicated_scores, subgroup_audit
from cxr_core.data.adjudicated import ADJUDICATED_MAP, nih_columns
from cxr_core.evaluate.calibration import (
    apply_temperature,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    mean_bce,
    reliability_curve,
)
from cxr_core.evaluate.metrics import (
    bootstrap_auc_ci,
    macro_auc,
    per_class_auc,
    per_class_auprc,
    summarise,
    weighted_auc,
)
from cxr_core.evaluate.operating import choose_thresholds, operating_metrics
from cxr_core.labels import LABELS
from cxr_core.train.loop import validation_metrics
from cxr_core.train.losses import bce, class_averaged_bce

#: Hypothesis: few examples, no deadline, no example database (keeps the file fast and stateless).
QUICK = settings(max_examples=40, deadline=None, database=None)

#: A 95% interval's percentile levels, written out (not derived from ``ci``) so a wrong level fails.
Q95 = [0.025, 0.975]

# --------------------------------------------------------------------------------------------
# data


def scored(seed: int, n: int = 240) -> tuple[np.ndarray, np.ndarray]:
    """N x 6 targets and probabilities: common / moderate / rare findings with tied scores, one
    class without positives, one with constant scores and one without negatives."""
    rng = np.random.default_rng(seed)
    t = np.zeros((n, 6), dtype=np.uint8)
    t[:, 0] = rng.random(n) < 0.35
    t[:, 1] = rng.random(n) < 0.12
    t[rng.choice(n, 3, replace=False), 2] = 1  # 3 positives
    t[:, 4] = rng.random(n) < 0.2
    t[:, 5] = 1
    p = np.clip(0.3 * t + 0.7 * rng.random((n, 6)), 0, 1)
    p[:, 0] = np.round(p[:, 0], 1)  # heavy ties
    p[:, 1] = np.round(p[:, 1], 2)
    p[:, 2] = np.round(p[:, 2], 1)
    p[:, 4] = 0.3  # constant scores: AUC 0.5
    return t, p


def clustered(seed: int, n_patients: int = 45) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-5 images per patient, 3 classes (the last rare), scores tied at 0.1 steps."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(n_patients) * 7 + 3, rng.integers(1, 6, n_patients))
    n = patients.shape[0]
    t = (rng.random((n, 3)) < [0.4, 0.2, 0.05]).astype(np.uint8)
    p = np.round(np.clip(0.3 * t + 0.7 * rng.random((n, 3)), 0, 1), 1)
    return t, p, patients


def defined(column: np.ndarray) -> bool:
    return 0 < int(column.sum()) < column.shape[0]


def tm(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


# --------------------------------------------------------------------------------------------
# 1. ROC AUC


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_and_macro_auc_match_sklearn_and_torchmetrics(seed: int) -> None:
    """per_class_auc / macro_auc / summarise['auc', 'macro_auc'].

    reference: sklearn.metrics.roc_auc_score, torchmetrics binary_auroc and multilabel_auroc.
    """
    t, p = scored(seed)
    ours = per_class_auc(t, p)
    usable = np.array([defined(t[:, c]) for c in range(t.shape[1])])
    assert usable.tolist() == [True, True, True, False, True, False]
    # Ours: a class without positives or without negatives is NaN and left out of the macro mean;
    # sklearn warns and returns NaN, torchmetrics returns 0 and averages it in. Lined up by
    # scoring the references on the defined classes only.
    assert np.isnan(ours[~usable]).all()
    for c in np.flatnonzero(usable):
        assert ours[c] == pytest.approx(roc_auc_score(t[:, c], p[:, c]), abs=1e-12)
        # torchmetrics' curves come back in float32: hence 1e-6
        assert ours[c] == pytest.approx(float(binary_auroc(tm(p[:, c]), tm(t[:, c]))), abs=1e-6)
    assert ours[4] == 0.5  # constant scores: every pair tied
    cols = np.flatnonzero(usable)
    tm_each = multilabel_auroc(tm(p[:, cols]), tm(t[:, cols]), num_labels=cols.size, average=None)
    np.testing.assert_allclose(ours[cols], tm_each.numpy(), atol=1e-6)
    tm_macro = float(multilabel_auroc(tm(p[:, cols]), tm(t[:, cols]), num_labels=cols.size, average="macro"))
    sk_macro = roc_auc_score(t[:, cols], p[:, cols], average="macro")
    assert macro_auc(t, p) == pytest.approx(sk_macro, abs=1e-12)
    assert macro_auc(t, p) == pytest.approx(tm_macro, abs=1e-6)
    result = summarise(t, p, np.arange(t.shape[0]), labels=LABELS[:6], n_boot=0)
    assert result["macro_auc"] == pytest.approx(sk_macro, abs=1e-12)
    for c, name in enumerate(LABELS[:6]):
        want = roc_auc_score(t[:, c], p[:, c]) if usable[c] else None
        assert result["auc"][name] == (None if want is None else pytest.approx(want, abs=1e-12))
        assert result["positives"][name] == int(t[:, c].sum())


@QUICK
@given(
    codes=st.lists(st.integers(0, 6), min_size=2, max_size=40),
    labels=st.lists(st.integers(0, 1), min_size=2, max_size=40),
    steps=st.lists(st.floats(0.01, 5.0), min_size=7, max_size=7),
)
def test_auc_is_sklearns_and_unchanged_by_a_strictly_monotone_transform(
    codes: list[int], labels: list[int], steps: list[float]
) -> None:
    """per_class_auc on a strictly increasing (and a decreasing) relabelling of tied scores.

    reference: sklearn.metrics.roc_auc_score on the original scores, plus the rank invariance.
    """
    n = min(len(codes), len(labels))
    y = np.array(labels[:n])
    s = np.array(codes[:n], dtype=np.float64)
    if not defined(y):
        assert np.isnan(per_class_auc(y, s)[0])
        return
    increasing = np.cumsum(steps)  # strictly increasing map of the 7 codes: ties stay ties
    want = roc_auc_score(y, s)
    assert per_class_auc(y, s)[0] == pytest.approx(want, abs=1e-12)
    assert per_class_auc(y, increasing[codes[:n]])[0] == pytest.approx(want, abs=1e-12)
    assert per_class_auc(y, -increasing[codes[:n]])[0] == pytest.approx(1.0 - want, abs=1e-12)


# --------------------------------------------------------------------------------------------
# 2. AUPRC


@pytest.mark.parametrize("seed", [0, 3])
def test_auprc_matches_sklearn_and_torchmetrics(seed: int) -> None:
    """per_class_auprc / summarise['auprc', 'macro_auprc'].

    reference: sklearn.metrics.average_precision_score, torchmetrics binary_average_precision and
    multilabel_average_precision (step-wise AP, no interpolation, ties as one threshold).
    """
    t, p = scored(seed)
    ours = per_class_auprc(t, p)
    usable = np.array([defined(t[:, c]) for c in range(t.shape[1])])
    # Ours: NaN where a class has one target value; sklearn gives 0 (no positives) or 1 (no
    # negatives), which would move a macro mean. Lined up by comparing the defined classes only.
    assert np.isnan(ours[~usable]).all()
    cols = np.flatnonzero(usable)
    for c in cols:
        assert ours[c] == pytest.approx(average_precision_score(t[:, c], p[:, c]), abs=1e-12)
        assert ours[c] == pytest.approx(float(binary_average_precision(tm(p[:, c]), tm(t[:, c]))), abs=1e-6)
    tm_each = multilabel_average_precision(tm(p[:, cols]), tm(t[:, cols]), num_labels=cols.size, average=None)
    np.testing.assert_allclose(ours[cols], tm_each.numpy(), atol=1e-6)
    macro = summarise(t, p, np.arange(t.shape[0]), labels=LABELS[:6], n_boot=0)["macro_auprc"]
    assert macro == pytest.approx(average_precision_score(t[:, cols], p[:, cols], average="macro"), abs=1e-12)


# --------------------------------------------------------------------------------------------
# 3. the bootstrap's weighted AUC


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_weighted_auc_is_sklearns_with_integer_sample_weights(seed: int) -> None:
    """weighted_auc: one row of integer weights = one bootstrap replicate with multiplicities.

    reference: sklearn.metrics.roc_auc_score(..., sample_weight=w) and roc_auc_score on the rows
    repeated w times.
    """
    rng = np.random.default_rng(seed)
    n = 60
    y = (rng.random(n) < 0.25).astype(np.uint8)
    y[:2] = [0, 1]
    s = np.round(rng.random(n) + 0.3 * y, 1)  # ties across the classes
    w = rng.integers(0, 4, (30, n))  # zeros: images not drawn
    w[0] = 0
    w[0, y == 0] = 2  # a replicate without positives
    ours = weighted_auc(y, s, w)
    assert np.isnan(ours[0])  # ours: NaN; sklearn warns and returns NaN
    for r in range(1, w.shape[0]):
        if not defined(np.repeat(y, w[r])):
            assert np.isnan(ours[r])
            continue
        assert ours[r] == pytest.approx(roc_auc_score(y, s, sample_weight=w[r]), abs=1e-12)
        assert ours[r] == pytest.approx(roc_auc_score(np.repeat(y, w[r]), np.repeat(s, w[r])), abs=1e-12)
    assert weighted_auc(y, s, np.ones(n)) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


# --------------------------------------------------------------------------------------------
# 4. patient-clustered bootstrap CIs


def bootstrap_reference(t: np.ndarray, p: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> tuple:
    """Per-class and macro AUC of each explicit patient resample, one sklearn call per class."""
    reps = np.full((n_boot, t.shape[1]), np.nan)
    for r, idx in enumerate(explicit_resamples(groups, n_boot, seed)):
        for c in range(t.shape[1]):
            if defined(t[idx, c]):
                reps[r, c] = roc_auc_score(t[idx, c], p[idx, c])
    full = np.array([defined(t[:, c]) for c in range(t.shape[1])])
    # a macro replicate averages exactly the classes defined on the full data, else it is dropped
    macro = reps[:, full].mean(axis=1)
    return reps, macro


def percentile(values: np.ndarray, q: list[float]) -> np.ndarray:
    """Type-7 (linear) percentile interval of the finite replicates."""
    return np.quantile(values[np.isfinite(values)], q)


def test_bootstrap_auc_ci_is_the_95_percent_percentile_interval_of_explicit_resamples() -> None:
    """bootstrap_auc_ci and summarise['auc_ci', 'macro_auc_ci'] at the default ci = 0.95.

    reference: an explicit loop over patient resamples (tests/oracles.py draws the same patients),
    sklearn.metrics.roc_auc_score per replicate, numpy's linear percentile at 2.5% / 97.5%.
    """
    t, p, groups = clustered(seed=1)  # the rare class: 3 positives
    n_boot, seed = 200, 9
    reps, macro = bootstrap_reference(t, p, groups, n_boot, seed)
    assert np.isnan(reps[:, 2]).any() and np.isfinite(reps[:, 2]).any()  # the rare class drops out
    low, high, macro_low, macro_high = bootstrap_auc_ci(t, p, groups, n_boot=n_boot, seed=seed)
    for c in range(3):
        np.testing.assert_allclose([low[c], high[c]], percentile(reps[:, c], Q95), rtol=0, atol=1e-12)
    np.testing.assert_allclose([macro_low, macro_high], percentile(macro, Q95), rtol=0, atol=1e-12)
    # a 90% interval of the same replicates would differ: the level is really checked
    assert not np.allclose(percentile(macro, Q95), percentile(macro, [0.05, 0.95]), atol=1e-3)
    result = summarise(t, p, groups, labels=LABELS[:3], n_boot=n_boot, seed=seed)
    for c, name in enumerate(LABELS[:3]):
        np.testing.assert_allclose(result["auc_ci"][name], percentile(reps[:, c], Q95), atol=1e-12)
    np.testing.assert_allclose(result["macro_auc_ci"], percentile(macro, Q95), atol=1e-12)
    assert result["n_patients"] == np.unique(groups).shape[0]


def test_bootstrap_auc_ci_honours_another_level_and_an_undefined_class() -> None:
    """bootstrap_auc_ci at ci = 0.8 with a class that has no positives.

    reference: explicit resamples + sklearn.metrics.roc_auc_score, np.quantile at 10% / 90%.
    """
    t, p, groups = clustered(seed=6)
    t[:, 2] = 0  # no positives anywhere: NaN interval, left out of the macro
    n_boot, seed = 150, 2
    reps, macro = bootstrap_reference(t, p, groups, n_boot, seed)
    low, high, macro_low, macro_high = bootstrap_auc_ci(t, p, groups, n_boot=n_boot, ci=0.8, seed=seed)
    for c in range(2):
        np.testing.assert_allclose([low[c], high[c]], percentile(reps[:, c], [0.1, 0.9]), atol=1e-12)
    assert np.isnan([low[2], high[2]]).all()
    np.testing.assert_allclose([macro_low, macro_high], percentile(macro, [0.1, 0.9]), atol=1e-12)


# --------------------------------------------------------------------------------------------
# 5. calibration


def equal_mass_uniform(rng: np.random.Generator, bins: int, per_bin: int, *, on_edges: bool) -> np.ndarray:
    """``per_bin`` probabilities in each of ``bins`` equal-width bins, tied on a coarse grid.

    Every equal-width bin holds the same count, so the quantile edges fall strictly between two
    bins and the equal-mass bins *are* the equal-width bins. ``on_edges``: every bin (a, b] also
    holds its upper edge b (bins must be a power of two so the grid is exact in binary).
    """
    grid = 16
    out = []
    for k in range(bins):
        if on_edges:  # (k + j / grid) / bins, j = 1 .. grid: the upper edge included, the lower not
            values = (k + rng.integers(1, grid + 1, per_bin) / grid) / bins
            values[:3] = (k + 1) / bins
        else:  # bin centres of a finer grid: never on an edge
            values = (k + (rng.integers(0, grid, per_bin) + 0.5) / grid) / bins
        out.append(values)
    return rng.permutation(np.concatenate(out))


def calibration_set(rng: np.random.Generator, bins: int, per_bin: int, *, on_edges: bool) -> tuple:
    """N x 3 targets / probabilities: a miscalibrated class, a rare one and one without positives."""
    p = np.stack([equal_mass_uniform(rng, bins, per_bin, on_edges=on_edges) for _ in range(3)], axis=1)
    t = np.zeros(p.shape, dtype=np.uint8)
    # under-confident: p - y changes sign across bins, so which bin a value lands in matters
    t[:, 0] = rng.random(p.shape[0]) < np.clip(2 * p[:, 0] - 0.5, 0, 1)
    t[:, 1] = rng.random(p.shape[0]) < 0.1
    return t, p


@pytest.mark.parametrize("bins", [5, 10])
def test_ece_matches_torchmetrics_where_equal_mass_bins_are_equal_width(bins: int) -> None:
    """expected_calibration_error per class and pooled.

    reference: torchmetrics binary_calibration_error(norm="l1", n_bins=bins).
    """
    rng = np.random.default_rng(bins)
    t, p = calibration_set(rng, bins, 23, on_edges=False)
    # Ours bins by equal mass (quantile edges), torchmetrics by equal width. Lined up by data in
    # which every equal-width bin holds the same count (and no value sits on an edge): then both
    # are the same bins, and both ECEs are sum_b n_b / N |mean p_b - mean y_b|.
    per_class, pooled = expected_calibration_error(t, p, bins)
    for c in range(3):
        want = float(binary_calibration_error(tm(p[:, c]), tm(t[:, c]), n_bins=bins, norm="l1"))
        assert per_class[c] == pytest.approx(want, abs=1e-6)
    want = float(binary_calibration_error(tm(p.ravel()), tm(t.ravel()), n_bins=bins, norm="l1"))
    assert pooled == pytest.approx(want, abs=1e-6)
    assert per_class[2] == pytest.approx(p[:, 2].mean(), abs=1e-12)  # no positives: ECE = mean p


def test_ece_edge_convention_lines_up_with_torchmetrics_on_flipped_probabilities() -> None:
    """expected_calibration_error with probabilities exactly on the bin edges.

    reference: torchmetrics binary_calibration_error(norm="l1") on (1 - p, 1 - y).
    """
    rng = np.random.default_rng(7)
    bins = 4
    t, p = calibration_set(rng, bins, 21, on_edges=True)
    assert np.isin(p, [0.25, 0.5, 0.75, 1.0]).any(axis=0).all()
    per_class, pooled = expected_calibration_error(t, p, bins)
    # Ours puts p in bin (edge_i, edge_i+1] (the lowest value in bin 0); torchmetrics in
    # [edge_i, edge_i+1) (torch.bucketize(right=True), p = 1 in a bin of its own). The ECE is
    # unchanged by p -> 1 - p, y -> 1 - y, and on 1 - p torchmetrics' [a, b) bins are (1 - b, 1 - a]
    # in p, i.e. ours (the grid is dyadic, so 1 - p is exact).
    for c in range(3):
        flipped = float(binary_calibration_error(tm(1 - p[:, c]), tm(1 - t[:, c]), n_bins=bins, norm="l1"))
        assert per_class[c] == pytest.approx(flipped, abs=1e-6)
    flipped = float(binary_calibration_error(tm(1 - p.ravel()), tm(1 - t.ravel()), n_bins=bins, norm="l1"))
    assert pooled == pytest.approx(flipped, abs=1e-6)
    # unflipped, the edge values change bins: the convention is really exercised
    direct = float(binary_calibration_error(tm(p[:, 0]), tm(t[:, 0]), n_bins=bins, norm="l1"))
    assert abs(per_class[0] - direct) > 1e-3


def test_ece_of_degenerate_classes_matches_torchmetrics() -> None:
    """expected_calibration_error of a class without positives, one without negatives and one
    with constant probabilities, on arbitrary (not equal-width) probabilities.

    reference: torchmetrics binary_calibration_error(norm="l1", n_bins=10);
    sklearn.calibration.calibration_curve(strategy="quantile") for the one-bin reliability curve.
    """
    rng = np.random.default_rng(4)
    n = 157
    p = np.round(rng.beta(0.5, 3.0, (n, 3)), 2)
    p[:, 2] = 0.3
    t = np.zeros((n, 3), dtype=np.uint8)
    t[:, 1] = 1
    t[:, 2] = rng.random(n) < 0.45
    # With one target value every bin errs the same way, and constant probabilities fill one bin,
    # so equal-mass (ours) and equal-width (torchmetrics) binning give the same ECE here.
    per_class, _ = expected_calibration_error(t, p, 10)
    for c in range(3):
        want = float(binary_calibration_error(tm(p[:, c]), tm(t[:, c]), n_bins=10, norm="l1"))
        assert per_class[c] == pytest.approx(want, abs=1e-6)
    assert per_class[2] == pytest.approx(abs(0.3 - t[:, 2].mean()), abs=1e-12)
    rows = reliability_curve(t, p, 10, labels=["a", "b", "c"]).query("label == 'c'")
    frac, mean = calibration_curve(t[:, 2], p[:, 2], n_bins=10, strategy="quantile")
    assert rows["count"].tolist() == [n] and rows["bin"].tolist() == [0]
    np.testing.assert_allclose(
        rows[["fraction_positive", "mean_predicted"]].to_numpy()[0], [frac[0], mean[0]]
    )


@pytest.mark.parametrize("on_edges", [False, True])
def test_reliability_curve_matches_sklearn_uniform_calibration_curve(on_edges: bool) -> None:
    """reliability_curve (mean_predicted, fraction_positive, count) per class and pooled.

    reference: sklearn.calibration.calibration_curve(strategy="uniform").
    """
    rng = np.random.default_rng(11)
    bins = 4 if on_edges else 10
    t, p = calibration_set(rng, bins, 19, on_edges=on_edges)
    table = reliability_curve(t, p, bins, labels=["a", "b", "c"])
    # Ours uses equal-mass bins; sklearn's "uniform" strategy equal-width ones with the same
    # (a, b] rule. Lined up by data whose equal-width bins hold equal counts (edge values included).
    columns = [("a", t[:, 0], p[:, 0]), ("b", t[:, 1], p[:, 1]), ("c", t[:, 2], p[:, 2])]
    for name, y, prob in [*columns, ("all", t.ravel(), p.ravel())]:
        rows = table[table["label"] == name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # class c has no positives
            frac, mean = calibration_curve(y, prob, n_bins=bins, strategy="uniform")
        np.testing.assert_allclose(rows["fraction_positive"], frac, atol=1e-12)
        np.testing.assert_allclose(rows["mean_predicted"], mean, atol=1e-12)
        assert rows["count"].tolist() == [prob.shape[0] // bins] * bins


@pytest.mark.parametrize(("bins", "n"), [(10, 308), (3, 302), (7, 290)])
def test_equal_mass_ece_and_reliability_match_sklearn_and_pandas_quantile_bins(bins: int, n: int) -> None:
    """expected_calibration_error and reliability_curve on arbitrary tied probabilities.

    reference: sklearn.calibration.calibration_curve(strategy="quantile") for the curve;
    pandas.qcut for the bins (counts) of the ECE.
    """
    rng = np.random.default_rng(bins)
    p = np.round(rng.beta(0.6, 2.0, (n, 2)), 2)  # heavy ties, most mass near 0
    t = (rng.random((n, 2)) < np.clip(1.3 * p, 0, 1)).astype(np.uint8)
    # Ours takes the edges from np.quantile(p, q). sklearn uses np.percentile(p, 100 q), an ulp
    # below it when a quantile lands exactly on an order statistic, so that value (and its ties)
    # moves up a bin; lined up by N with (N - 1) i / bins never integral. pandas.qcut drops a
    # repeated lowest edge and merges the minimum into the next bin; lined up by a minimum that
    # holds less than 1 / bins of the mass.
    assert all((n - 1) * i % bins for i in range(1, bins))
    per_class, pooled = expected_calibration_error(t, p, bins)
    table = reliability_curve(t, p, bins, labels=["a", "b"])
    for name, y, prob, ece in [
        ("a", t[:, 0], p[:, 0], per_class[0]),
        ("b", t[:, 1], p[:, 1], per_class[1]),
        ("all", t.ravel(), p.ravel(), pooled),
    ]:
        rows = table[table["label"] == name]
        assert (prob == prob.min()).mean() < 1 / bins
        frac, mean = calibration_curve(y, prob, n_bins=bins, strategy="quantile")
        np.testing.assert_allclose(rows["fraction_positive"], frac, atol=1e-12)
        np.testing.assert_allclose(rows["mean_predicted"], mean, atol=1e-12)
        ids = pd.qcut(prob, bins, labels=False, duplicates="drop")  # (a, b], lowest value included
        stats = (
            pd.DataFrame({"bin": ids, "p": prob, "y": y})
            .groupby("bin")
            .agg(n=("p", "size"), p=("p", "mean"), y=("y", "mean"))
        )
        assert rows["count"].tolist() == stats["n"].tolist()
        want = float((stats["n"] * (stats["p"] - stats["y"]).abs()).sum() / prob.shape[0])
        assert ece == pytest.approx(want, abs=1e-12)


def test_brier_matches_sklearn() -> None:
    """brier_score per class and pooled; reference: sklearn.metrics.brier_score_loss."""
    t, p = scored(5)
    per_class, pooled = brier_score(t, p)
    for c in range(t.shape[1]):  # includes no positives, no negatives and constant scores
        assert per_class[c] == pytest.approx(brier_score_loss(t[:, c], p[:, c], labels=[0, 1]), abs=1e-12)
    # pooled: all N x C pairs as one sample (equal to the mean of the classes: every class has N)
    assert pooled == pytest.approx(brier_score_loss(t.ravel(), p.ravel()), abs=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 0.4, 3.0])
def test_mean_bce_matches_torch_and_sklearn(temperature: float) -> None:
    """mean_bce and apply_temperature.

    reference: torch.nn.functional.binary_cross_entropy_with_logits (float64, any logits) and
    sklearn.metrics.log_loss on sigmoid(z / T) (moderate logits: it clips probabilities).
    """
    rng = np.random.default_rng(2)
    y = (rng.random((200, 4)) < [0.5, 0.1, 0.02, 0.0]).astype(np.uint8)  # last class: no positives
    z = rng.normal(0, 3, (200, 4))
    want = float(F.binary_cross_entropy_with_logits(tm(z / temperature), tm(y.astype(np.float64))))
    assert mean_bce(y, z, temperature) == pytest.approx(want, rel=1e-12)
    probs = torch.sigmoid(tm(z / temperature)).numpy()
    np.testing.assert_allclose(apply_temperature(z, temperature), probs, rtol=1e-12, atol=0)
    assert mean_bce(y, z, temperature) == pytest.approx(log_loss(y.ravel(), probs.ravel()), rel=1e-9)
    extreme = z * 40  # |logit| up to ~400: the stable form only
    want = float(F.binary_cross_entropy_with_logits(tm(extreme / temperature), tm(y.astype(np.float64))))
    assert mean_bce(y, extreme, temperature) == pytest.approx(want, rel=1e-12)


def torch_nll(y: np.ndarray, z: np.ndarray, temperature: float) -> float:
    return float(F.binary_cross_entropy_with_logits(tm(z / temperature), tm(y.astype(np.float64))))


@pytest.mark.parametrize("scale", [0.3, 1.0, 2.5])
def test_fit_temperature_matches_an_independent_minimisation(scale: float) -> None:
    """fit_temperature on the default bounds (0.05, 20).

    reference: scipy.optimize.minimize_scalar(method="bounded") over u = 1 / T on the torch BCE
    (convex in u, so the bounded search finds the global minimum).
    """
    rng = np.random.default_rng(int(scale * 10))
    true_logit = rng.normal(-1.0, 1.5, (400, 3))
    y = (rng.random(true_logit.shape) < torch.sigmoid(tm(true_logit)).numpy()).astype(np.uint8)
    z = true_logit * scale  # scale > 1: over-confident, T > 1; scale < 1: T < 1
    ours = fit_temperature(y, z)
    ref = minimize_scalar(
        lambda u: torch_nll(y, z, 1.0 / u),
        bounds=(1 / 20, 1 / 0.05),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert ours == pytest.approx(1.0 / ref.x, rel=1e-4)
    assert torch_nll(y, z, ours) <= ref.fun + 1e-10
    if scale != 1.0:
        assert (ours > 1) == (scale > 1)


def test_fit_temperature_stops_at_the_lower_bound_on_separable_data() -> None:
    """fit_temperature when the NLL keeps falling as T -> 0.

    reference: scipy.optimize.minimize_scalar(method="bounded") over u = 1 / T on the torch BCE.
    """
    y = np.array([[0], [0], [1], [1], [0], [1]], dtype=np.uint8)
    z = np.array([[-2.0], [-0.5], [0.3], [1.5], [-1.0], [0.1]])
    ours = fit_temperature(y, z, bounds=(0.1, 10.0), tol=1e-6)
    ref = minimize_scalar(
        lambda u: torch_nll(y, z, 1.0 / u),
        bounds=(1 / 10.0, 1 / 0.1),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert 1.0 / ref.x == pytest.approx(0.1, rel=1e-4)  # u = 1 / T ends at its upper bound
    assert ours == pytest.approx(0.1, rel=1e-4)


# --------------------------------------------------------------------------------------------
# 6. operating points


def operating_set(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """N x 4: common, moderate and rare findings with ties, and one without positives."""
    rng = np.random.default_rng(seed)
    t = (rng.random((n, 4)) < [0.3, 0.1, 0.03, 0.0]).astype(np.uint8)
    t[0, 2] = 1
    p = np.clip(0.25 * t + 0.75 * rng.random((n, 4)), 0, 1)
    p[:, [0, 2]] = np.round(p[:, [0, 2]], 1)  # heavy ties at 0.1 steps
    p[:, 1] = np.round(p[:, 1], 2)
    return t, p


def youden_reference(y: np.ndarray, s: np.ndarray) -> float:
    """Highest threshold maximising TPR - FPR, from sklearn's ROC with exact fractions."""
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    n_pos, n_neg = int(y.sum()), int(y.shape[0] - y.sum())
    best, best_j = np.nan, None
    # thr[0] is sklearn's +inf (no calls); ours only considers observed scores
    for f, r, threshold in zip(fpr[1:], tpr[1:], thr[1:], strict=True):
        j = Fraction(round(r * n_pos), n_pos) - Fraction(round(f * n_neg), n_neg)
        if best_j is None or j > best_j:  # strict: the first (highest) threshold wins a tie
            best, best_j = threshold, j
    return float(best)


def max_f1_reference(y: np.ndarray, s: np.ndarray) -> float:
    """Highest threshold maximising F1, from sklearn's precision-recall curve with exact fractions."""
    precision, recall, thr = precision_recall_curve(y, s, drop_intermediate=False)
    n_pos = int(y.sum())
    best, best_f1 = np.nan, None
    for i in range(thr.shape[0] - 1, -1, -1):  # sklearn's thresholds increase: walk them down
        tp = round(recall[i] * n_pos)
        called = round(tp / precision[i]) if tp else 0
        f1 = Fraction(2 * tp, called + n_pos)  # 2 TP / (2 TP + FP + FN)
        if best_f1 is None or f1 > best_f1:
            best, best_f1 = thr[i], f1
    return float(best)


def sensitivity_reference(y: np.ndarray, s: np.ndarray, target: float) -> float:
    """Highest threshold whose TPR reaches ``target``, from sklearn's ROC."""
    _, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    return float(thr[1:][np.flatnonzero(tpr[1:] >= target)[0]])


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_threshold_rules_match_explicit_loops_over_sklearn_curves(seed: int) -> None:
    """choose_thresholds with the youden, max_f1 and sensitivity rules.

    reference: explicit loops over sklearn.metrics.roc_curve / precision_recall_curve thresholds
    (drop_intermediate=False), comparing J and F1 as exact fractions.
    """
    t, p = operating_set(seed)
    # Ours compares J and F1 exactly and breaks ties towards the higher threshold. np.argmax of
    # sklearn's float tpr - fpr can split an exact tie by rounding and pick a lower threshold, so
    # the reference recovers the integer counts from sklearn's rates and compares fractions.
    rules = {
        "youden": youden_reference,
        "max_f1": max_f1_reference,
        "sensitivity": lambda y, s: sensitivity_reference(y, s, 0.9),
    }
    for method, reference in rules.items():
        ours = choose_thresholds(t, p, method, target_sensitivity=0.9)
        assert np.isnan(ours[3]), method  # no positives in validation: no threshold
        for c in range(3):
            assert ours[c] == reference(t[:, c], p[:, c]), (method, c)


def test_threshold_rules_break_exact_ties_like_the_exact_reference_on_small_tied_sets() -> None:
    """choose_thresholds (youden, max_f1, sensitivity) on 300 small sets with scores on a 0.1 grid,
    where equal J or F1 at two thresholds is common.

    reference: the exact-fraction loops over sklearn.metrics.roc_curve / precision_recall_curve.
    """
    rng = np.random.default_rng(2024)
    checked = ties = 0
    for _ in range(300):
        n = int(rng.integers(6, 40))
        y = (rng.random(n) < rng.uniform(0.1, 0.7)).astype(np.uint8)
        if not defined(y):
            continue
        s = np.round(rng.random(n) * 0.8 + 0.2 * y, 1)
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
        j = np.round((tpr - fpr)[1:] * y.sum() * (n - y.sum())).astype(int)
        ties += int((j == j.max()).sum() > 1)
        assert choose_thresholds(y, s, "youden")[0] == youden_reference(y, s)
        assert choose_thresholds(y, s, "max_f1")[0] == max_f1_reference(y, s)
        target = float(rng.choice([0.5, 0.75, 0.8, 0.9, 1.0]))
        assert choose_thresholds(y, s, "sensitivity", target)[0] == sensitivity_reference(y, s, target)
        checked += 1
    assert checked > 250 and ties > 10  # exact Youden ties were really exercised


def test_sensitivity_rule_counts_a_target_met_exactly() -> None:
    """choose_thresholds(method="sensitivity") when some threshold gives TPR exactly = target.

    reference: sklearn.metrics.roc_curve (tpr >= target, the highest such threshold).
    """
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(20), np.zeros(60)].astype(np.uint8)  # 18 / 20 = 0.9 exactly
    s = np.round(rng.random(80), 2)
    s[:20] = np.linspace(0.99, 0.6, 20)  # distinct positive scores: TPR steps by 0.05
    for target in (0.9, 0.85, 0.5, 1.0):
        ours = choose_thresholds(y, s, "sensitivity", target_sensitivity=target)[0]
        assert ours == sensitivity_reference(y, s, target), target
    assert choose_thresholds(y, s, "sensitivity", target_sensitivity=0.9)[0] == s[17]


def confusion(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """(tp, fp, tn, fn) of calls ``s >= threshold``; reference: sklearn.metrics.confusion_matrix."""
    tn, fp, fn, tp = confusion_matrix(y, (s >= threshold).astype(np.uint8), labels=[0, 1]).ravel()
    return int(tp), int(fp), int(tn), int(fn)


def rates(tp: int, fp: int, tn: int, fn: int) -> dict[str, float]:
    def ratio(a: int, b: int) -> float:
        return a / (a + b) if a + b else np.nan

    return {
        "sensitivity": ratio(tp, fn),
        "specificity": ratio(tn, fp),
        "ppv": ratio(tp, fp),
        "npv": ratio(tn, fn),
    }


def test_operating_metrics_match_confusion_matrix_with_ties_at_the_threshold() -> None:
    """operating_metrics point values: counts and sensitivity / specificity / PPV / NPV.

    reference: sklearn.metrics.confusion_matrix, and sklearn.metrics.roc_curve /
    precision_recall_curve, whose threshold i means "score >= thresholds[i]" (the module's rule).
    """
    t, p = operating_set(7)
    # thresholds on observed, heavily tied scores: a tie exactly at the threshold is called positive
    thresholds = np.array([0.5, p[np.argmax(t[:, 1]), 1], 0.7, np.nan])
    for c in range(3):
        assert (p[:, c] == thresholds[c]).sum() >= 2
    result = operating_metrics(t, p, thresholds, np.arange(t.shape[0]), n_boot=0)
    for c in range(3):
        tp, fp, tn, fn = confusion(t[:, c], p[:, c], thresholds[c])
        assert [result[k][c] for k in ("tp", "fp", "tn", "fn")] == [tp, fp, tn, fn]
        for name, value in rates(tp, fp, tn, fn).items():
            assert result[name][c] == pytest.approx(value, abs=1e-12), (name, c)
        fpr, tpr, thr = roc_curve(t[:, c], p[:, c], drop_intermediate=False)
        i = int(np.flatnonzero(thr == thresholds[c])[0])
        assert result["sensitivity"][c] == pytest.approx(tpr[i], abs=1e-12)
        assert result["specificity"][c] == pytest.approx(1 - fpr[i], abs=1e-12)
        precision, _, thr_pr = precision_recall_curve(t[:, c], p[:, c], drop_intermediate=False)
        j = int(np.flatnonzero(thr_pr == thresholds[c])[0])
        assert result["ppv"][c] == pytest.approx(precision[j], abs=1e-12)
    assert all(np.isnan(result[k][3]) for k in ("tp", "sensitivity", "specificity", "ppv", "npv"))


def test_operating_metric_intervals_match_explicit_resamples() -> None:
    """operating_metrics' <rate>_ci at ci = 0.95.

    reference: explicit patient resamples, sklearn.metrics.confusion_matrix per replicate, numpy's
    linear percentile at 2.5% / 97.5% over the replicates where the rate is defined.
    """
    t, p, groups = clustered(seed=8)
    thresholds = np.array([0.5, 0.6, 0.4])  # on the 0.1 grid: ties at every threshold
    n_boot, seed = 120, 5
    result = operating_metrics(t, p, thresholds, groups, n_boot=n_boot, seed=seed)
    reps = {name: np.full((n_boot, 3), np.nan) for name in ("sensitivity", "specificity", "ppv", "npv")}
    for r, idx in enumerate(explicit_resamples(groups, n_boot, seed)):
        for c in range(3):
            for name, value in rates(*confusion(t[idx, c], p[idx, c], thresholds[c])).items():
                reps[name][r, c] = value
    for name, values in reps.items():
        for c in range(3):
            np.testing.assert_allclose(result[f"{name}_ci"][c], percentile(values[:, c], Q95), atol=1e-12)


@QUICK
@given(
    codes=st.lists(st.integers(0, 5), min_size=4, max_size=40),
    labels=st.lists(st.integers(0, 1), min_size=4, max_size=40),
    steps=st.lists(st.floats(0.001, 0.1), min_size=6, max_size=6),
    method=st.sampled_from(["youden", "max_f1", "sensitivity"]),
)
def test_threshold_rules_call_the_same_images_after_a_monotone_recalibration(
    codes: list[int], labels: list[int], steps: list[float], method: str
) -> None:
    """choose_thresholds under a strictly increasing map of the scores (as temperature scaling is).

    reference: the invariance, with calls checked by sklearn.metrics.confusion_matrix.
    """
    n = min(len(codes), len(labels))
    y = np.array(labels[:n], dtype=np.uint8)
    if not defined(y):
        return
    s = np.array(codes[:n]) / 5.0
    mapped = np.cumsum(steps)[codes[:n]]  # strictly increasing in the code, within (0, 1)
    a = choose_thresholds(y, s, method, 0.8)[0]
    b = choose_thresholds(y, mapped, method, 0.8)[0]
    assert confusion(y, s, a) == confusion(y, mapped, b)


# --------------------------------------------------------------------------------------------
# 7. subgroup audit and adjudicated labels


def audit_set(seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    t, p, patients = clustered(seed, n_patients=40)
    codes = np.unique(patients, return_inverse=True)[1]
    sex = np.array(["M", "F"])[rng.integers(0, 2, codes.max() + 1)][codes]
    t[:, 2] &= sex == "F"  # the rare finding only among women: no AUC / TPR for men
    t[np.flatnonzero(sex == "F")[:2], 2] = 1
    age = rng.choice(["0-20", "20-40", "40+"], p.shape[0], p=[0.2, 0.3, 0.5])  # per image
    return t, p, patients, {"sex": sex, "age": age}


def group_reference(t: np.ndarray, p: np.ndarray, thr: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class AUC (sklearn roc_auc_score), TPR / FPR (sklearn confusion_matrix) and
    underdiagnosis of one set of images; NaN where undefined."""
    auc, tpr, fpr = (np.full(t.shape[1], np.nan) for _ in range(3))
    for c in range(t.shape[1]):
        if t.shape[0] and defined(t[:, c]):
            auc[c] = roc_auc_score(t[:, c], p[:, c])
        if np.isfinite(thr[c]) and t.shape[0]:
            tp, fp, tn, fn = confusion(t[:, c], p[:, c], thr[c])
            tpr[c] = tp / (tp + fn) if tp + fn else np.nan
            fpr[c] = fp / (fp + tn) if fp + tn else np.nan
    called = np.isfinite(thr) & (p >= np.nan_to_num(thr, nan=np.inf))
    sick = t.any(axis=1)
    under = float((~called[sick].any(axis=1)).mean()) if sick.any() else np.nan
    return {"auc": auc, "tpr": tpr, "fpr": fpr, "underdiagnosis": under}


SUMMARIES = (("auc", "macro_auc"), ("tpr", "mean_tpr"), ("fpr", "mean_fpr"))


def test_subgroup_point_values_match_sklearn_per_group() -> None:
    """subgroup_audit: per-group AUC, TPR, FPR, macro means, gaps and underdiagnosis.

    reference: sklearn.metrics.roc_auc_score and confusion_matrix on each group and on its rest.
    """
    t, p, patients, attributes = audit_set(3)
    thr = np.array([0.5, 0.4, np.nan])  # tied scores sit on the thresholds; class 3 has none
    result = subgroup_audit(t, p, thr, patients, attributes, n_boot=0, ci=0.95, seed=0, labels=LABELS[:3])
    for attribute, values in attributes.items():
        for group, entry in result["attributes"][attribute].items():
            mask = values == group
            g = group_reference(t[mask], p[mask], thr)
            r = group_reference(t[~mask], p[~mask], thr)
            for c, name in enumerate(LABELS[:3]):
                for key in ("auc", "tpr", "fpr"):
                    got, want = entry[key][name], g[key][c]
                    where = (attribute, group, key, name)
                    if np.isnan(want):
                        assert got is None, where
                    else:
                        assert got == pytest.approx(want, abs=1e-12), where
            for key, summary in SUMMARIES:
                # ours: the mean over the classes defined in the group AND in its rest
                used = np.isfinite(g[key]) & np.isfinite(r[key])
                assert entry[f"{summary}_classes"] == used.sum()
                assert entry[summary] == pytest.approx(g[key][used].mean(), abs=1e-12)
                gap = entry["gap"][summary]
                assert gap["diff"] == pytest.approx(g[key][used].mean() - r[key][used].mean(), abs=1e-12)
            assert entry["underdiagnosis"] == pytest.approx(g["underdiagnosis"], abs=1e-12)
            assert entry["gap"]["underdiagnosis"]["diff"] == pytest.approx(
                g["underdiagnosis"] - r["underdiagnosis"], abs=1e-12
            )


def test_subgroup_intervals_match_explicit_resamples() -> None:
    """subgroup_audit's 95% intervals of the macro AUC / mean TPR / FPR and of the paired gaps.

    reference: explicit patient resamples, sklearn per group and rest of each replicate, numpy's
    linear percentile at 2.5% / 97.5%.
    """
    t, p, patients, attributes = audit_set(5)
    thr = np.array([0.5, 0.4, 0.3])
    n_boot, seed = 50, 4
    result = subgroup_audit(
        t, p, thr, patients, {"sex": attributes["sex"]}, n_boot=n_boot, ci=0.95, seed=seed, labels=LABELS[:3]
    )
    mask = attributes["sex"] == "F"
    full_g, full_r = group_reference(t[mask], p[mask], thr), group_reference(t[~mask], p[~mask], thr)
    reps = []
    for idx in explicit_resamples(patients, n_boot, seed):
        in_group = mask[idx]
        reps.append(
            (
                group_reference(t[idx[in_group]], p[idx[in_group]], thr),
                group_reference(t[idx[~in_group]], p[idx[~in_group]], thr),
            )
        )
    entry = result["attributes"]["sex"]["F"]
    for key, summary in SUMMARIES:
        used = np.isfinite(full_g[key]) & np.isfinite(full_r[key])
        g = np.array([a[key][used].mean() for a, _ in reps])
        d = g - np.array([b[key][used].mean() for _, b in reps])
        np.testing.assert_allclose(entry[f"{summary}_ci"], percentile(g, Q95), atol=1e-12)
        np.testing.assert_allclose(entry["gap"][summary]["ci"], percentile(d, Q95), atol=1e-12)
    u = np.array([a["underdiagnosis"] for a, _ in reps])
    du = u - np.array([b["underdiagnosis"] for _, b in reps])
    np.testing.assert_allclose(entry["underdiagnosis_ci"], percentile(u, Q95), atol=1e-12)
    np.testing.assert_allclose(entry["gap"]["underdiagnosis"]["ci"], percentile(du, Q95), atol=1e-12)


@QUICK
@given(pairs=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), min_size=1, max_size=60))
def test_kappa_matches_sklearn_and_statsmodels(pairs: list[tuple[int, int]]) -> None:
    """audit.subgroups._kappa (the adjudicated ``kappa``).

    reference: sklearn.metrics.cohen_kappa_score and statsmodels.stats.inter_rater.cohens_kappa.
    """
    a = np.array([x for x, _ in pairs], dtype=np.uint8)
    b = np.array([y for _, y in pairs], dtype=np.uint8)
    ours = _kappa(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both raters constant and equal: sklearn says undefined
        want = cohen_kappa_score(a, b, labels=[0, 1])
    if np.isnan(want):  # ours: NaN exactly when chance agreement is 1 (sklearn: 0 / 0)
        assert np.isnan(ours)
        return
    assert ours == pytest.approx(want, abs=1e-12)
    table = confusion_matrix(a, b, labels=[0, 1])
    chance_below_one = not (a.min() == a.max() == b.min() == b.max())
    if chance_below_one:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its standard errors are 0 / 0 for a constant rater
            assert ours == pytest.approx(cohens_kappa(table).kappa, abs=1e-12)


def test_adjudicated_scores_match_sklearn() -> None:
    """adjudicated_scores: AUC against adjudicated and NIH labels, kappa, nih_confirmed, the 95%
    intervals of the AUCs and of their paired difference.

    reference: sklearn roc_auc_score, cohen_kappa_score, recall_score; explicit patient resamples.
    """
    rng = np.random.default_rng(12)
    n = 150
    images = np.array([f"{i:08d}_000.png" for i in range(n)])
    patients = np.arange(n) // 3
    t = (rng.random((n, len(LABELS))) < 0.25).astype(np.uint8)
    p = np.round(np.clip(0.35 * t + 0.65 * rng.random(t.shape), 0, 1), 1)  # ties
    truth = t.copy()
    truth[rng.random(t.shape) < 0.2] ^= 1
    cols = {name: nih_columns(m) for name, m in ADJUDICATED_MAP.items()}
    scored_rows = np.sort(rng.choice(n, 110, replace=False))
    table = pd.DataFrame(
        {
            "image": images[scored_rows],
            "set": "test",
            **{name: truth[scored_rows][:, c].max(axis=1).astype(float) for name, c in cols.items()},
            "fracture": 0.0,
        }
    )
    n_boot, seed = 60, 3
    result = adjudicated_scores(images, t, p, table, patients, n_boot=n_boot, ci=0.95, seed=seed)
    keep = np.zeros(n, dtype=bool)
    keep[scored_rows] = True
    resamples = explicit_resamples(patients, n_boot, seed)
    for name, c in cols.items():
        entry = result["findings"][name]
        # ours: the finding's score is the max of its mapped probabilities, a label the max of labels
        y_adj, y_nih, score = truth[keep][:, c].max(1), t[keep][:, c].max(1), p[keep][:, c].max(1)
        assert entry["auc_adjudicated"] == pytest.approx(roc_auc_score(y_adj, score), abs=1e-12)
        assert entry["auc_nih"] == pytest.approx(roc_auc_score(y_nih, score), abs=1e-12)
        assert entry["kappa"] == pytest.approx(cohen_kappa_score(y_nih, y_adj), abs=1e-12)
        assert entry["nih_confirmed"] == pytest.approx(recall_score(y_nih, y_adj), abs=1e-12)
        reps = []
        for idx in resamples:
            idx = idx[keep[idx]]
            s = p[idx][:, c].max(1)
            reps.append((roc_auc_score(truth[idx][:, c].max(1), s), roc_auc_score(t[idx][:, c].max(1), s)))
        reps = np.array(reps)
        np.testing.assert_allclose(entry["auc_adjudicated_ci"], percentile(reps[:, 0], Q95), atol=1e-12)
        np.testing.assert_allclose(entry["auc_nih_ci"], percentile(reps[:, 1], Q95), atol=1e-12)
        np.testing.assert_allclose(entry["diff_ci"], percentile(reps[:, 0] - reps[:, 1], Q95), atol=1e-12)


# --------------------------------------------------------------------------------------------
# the train loop's validation metrics


def test_validation_macro_auc_and_loss_match_torchmetrics_and_torch() -> None:
    """train.loop.validation_metrics: the val_macro_auc and val_loss of every epoch.

    reference: torchmetrics multilabel_auroc(average="macro") and sklearn roc_auc_score; the loss
    against torch.nn.functional.binary_cross_entropy_with_logits (bce) and sklearn log_loss per
    label half (class_averaged_bce).
    """
    rng = np.random.default_rng(0)
    y = (rng.random((300, 5)) < [0.3, 0.1, 0.02, 0.0, 0.5]).astype(np.uint8)  # class 3: no positives
    logits = torch.from_numpy(np.round(rng.normal(0, 2, y.shape) + 1.5 * y, 1).astype(np.float32))
    loss, auc = validation_metrics(logits, y, bce)
    # Ours scores float32 sigmoid probabilities, the test stage's own scores; the references get
    # the same ones. A class without positives is left out of our mean (torchmetrics: 0, averaged in).
    probs = torch.sigmoid(logits)
    cols = [0, 1, 2, 4]
    want = float(multilabel_auroc(probs[:, cols], tm(y[:, cols]), num_labels=4, average="macro"))
    assert auc == pytest.approx(want, abs=1e-6)
    assert auc == pytest.approx(np.mean([roc_auc_score(y[:, c], probs[:, c]) for c in cols]), abs=1e-12)
    # float32 sigmoid is exactly 1.0 above a logit of ~16.6: such images tie in ours (as in the test
    # stage's float32 probabilities) where the logits would still rank them. Lined up likewise.
    confident = torch.from_numpy((rng.normal(12, 4, (300, 1)) + 4 * y[:, :1]).astype(np.float32))
    _, auc = validation_metrics(confident, y[:, :1], bce)
    saturated = torch.sigmoid(confident)[:, 0]
    assert auc == pytest.approx(float(binary_auroc(saturated, tm(y[:, 0]))), abs=1e-6)
    assert auc < roc_auc_score(y[:, 0], confident[:, 0].numpy()) - 1e-3  # the ties are exercised
    want_loss = F.binary_cross_entropy_with_logits(logits.double(), tm(y.astype(np.float64)))
    assert loss == pytest.approx(float(want_loss), rel=1e-6)
    loss, _ = validation_metrics(logits, y, class_averaged_bce)
    p64 = torch.sigmoid(logits.double()).numpy()
    per_label = []
    for c in range(y.shape[1]):  # mean BCE over the positives + over the negatives (0 if none)
        halves = [y[:, c] == 1, y[:, c] == 0]
        per_label.append(sum(log_loss(y[h, c], p64[h, c], labels=[0, 1]) if h.any() else 0.0 for h in halves))
    assert loss == pytest.approx(float(np.mean(per_label)), rel=1e-5)
