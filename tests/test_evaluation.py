"""Known-answer tests for cxr_core.evaluate.metrics (AUC, AUPRC, patient bootstrap, ROC points, summary)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from oracles import explicit_resamples
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr_core.evaluate.metrics import (
    bootstrap_auc_ci,
    bootstrap_auc_replicates,
    patient_multiplicities,
    per_class_auc,
    per_class_auprc,
    roc_points,
    summarise,
    weighted_auc,
)
from cxr_core.labels import LABELS


def _realistic(n_patients: int = 150, per_patient: int = 4, n_classes: int = 3, seed: int = 1):
    """Images clustered in patients, a patient-level effect shared by the patient's images."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_patients), per_patient)
    patient_y = rng.random((n_patients, n_classes)) < 0.3
    targets = (patient_y[groups] ^ (rng.random((groups.size, n_classes)) < 0.05)).astype(np.uint8)
    probs = 1 / (1 + np.exp(-(1.5 * targets + rng.normal(size=targets.shape))))
    return targets, probs.astype(np.float32), groups


# --- point estimates ---------------------------------------------------------------------------


def test_auc_hand_made_and_ties():
    # Column 0: classic example, pairs (pos, neg): (0.35, 0.1) win, (0.35, 0.4) loss, (0.8, .) 2 wins -> 3/4.
    # Column 1: pos {0.5, 0.9} vs neg {0.5, 0.2}: tie 0.5 + 1 + 1 + 1 = 3.5 of 4 pairs -> 0.875.
    targets = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.uint8)
    probs = np.array([[0.1, 0.5], [0.4, 0.5], [0.35, 0.2], [0.8, 0.9]])
    np.testing.assert_array_equal(per_class_auc(targets, probs), [0.75, 0.875])


def test_auc_equals_sklearn_on_random_scores_with_ties():
    rng = np.random.default_rng(0)
    targets = (rng.random((300, 5)) < 0.2).astype(np.uint8)
    probs = np.round(rng.random((300, 5)) + 0.3 * targets, 1)  # 1 decimal: many ties
    expected = [roc_auc_score(targets[:, c], probs[:, c]) for c in range(5)]
    np.testing.assert_array_equal(per_class_auc(targets, probs), expected)
    # the rank-based weighted AUC with unit weights is the same number (to rounding)
    ours = [weighted_auc(targets[:, c], probs[:, c], np.ones(300)) for c in range(5)]
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)


def test_auc_and_auprc_nan_for_single_valued_class():
    targets = np.array([[0, 1, 0], [0, 1, 1], [0, 1, 0]], dtype=np.uint8)
    probs = np.array([[0.2, 0.3, 0.1], [0.5, 0.6, 0.9], [0.1, 0.2, 0.3]])
    auc = per_class_auc(targets, probs)
    ap = per_class_auprc(targets, probs)
    assert np.isnan(auc[0]) and np.isnan(auc[1]) and auc[2] == 1.0
    assert np.isnan(ap[0]) and np.isnan(ap[1]) and ap[2] == 1.0


def test_auprc_equals_sklearn():
    rng = np.random.default_rng(3)
    targets = (rng.random((200, 4)) < 0.25).astype(np.uint8)
    probs = np.round(rng.random((200, 4)) + 0.4 * targets, 2)
    expected = [average_precision_score(targets[:, c], probs[:, c]) for c in range(4)]
    np.testing.assert_array_equal(per_class_auprc(targets, probs), expected)


@pytest.mark.parametrize(
    ("targets", "probs", "match"),
    [
        (np.zeros((3, 2)), np.zeros((3, 3)), "probs shape"),
        (np.full((3, 2), 2), np.zeros((3, 2)), "only 0/1"),
        (np.zeros((3, 2)), np.full((3, 2), np.nan), "NaN"),
        (np.zeros((0, 2)), np.zeros((0, 2)), "empty"),
    ],
)
def test_bad_inputs_raise(targets, probs, match):
    with pytest.raises(ValueError, match=match):
        per_class_auc(targets, probs)


# --- weighted AUC / bootstrap -------------------------------------------------------------------


def test_weighted_auc_hand_computed():
    # weights [1, 2, 1, 1] mean rows: neg 0.1, pos 0.2 (x2), neg 0.3, pos 0.4.
    # pos 0.2 beats 0.1, loses to 0.3 -> 2 x 1 = 2 wins; pos 0.4 beats both -> 2; AUC = 4 / (3 * 2) = 2/3.
    y = np.array([0, 1, 0, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4])
    assert weighted_auc(y, s, np.array([1, 2, 1, 1])) == pytest.approx(2 / 3, abs=1e-15)
    # no weighted negatives -> undefined
    assert np.isnan(weighted_auc(y, s, np.array([0, 1, 0, 1])))


def test_bootstrap_replicate_equals_sklearn_on_repeated_rows():
    targets, probs, groups = _realistic()
    probs = np.round(probs, 2)  # ties across repeated rows too
    reps = bootstrap_auc_replicates(targets, probs, groups, n_boot=5, seed=7)
    mult = patient_multiplicities(groups, n_boot=5, seed=7)
    for k in range(5):
        for c in range(targets.shape[1]):
            y = np.repeat(targets[:, c], mult[k])
            s = np.repeat(probs[:, c], mult[k])
            assert reps[k, c] == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_multiplicities_resample_patients_not_images():
    rng = np.random.default_rng(0)
    groups = rng.permutation(np.repeat(np.array(["p1", "p2", "p3", "p4", "p5", "p6"]), [1, 2, 3, 4, 5, 6]))
    mult = patient_multiplicities(groups, n_boot=50, seed=0)
    for g in np.unique(groups):
        cols = mult[:, groups == g]
        assert (cols == cols[:, :1]).all()  # every image of a patient comes along the same number of times
    first = [np.flatnonzero(groups == g)[0] for g in np.unique(groups)]
    assert (mult[:, first].sum(axis=1) == 6).all()  # 6 patients drawn per replicate


def test_cluster_bootstrap_is_wider_than_image_bootstrap():
    # 20 patients x 10 identical images: the data hold 20 independent observations, not 200, so the
    # patient bootstrap must be about sqrt(10) ~ 3x wider than a (wrong) per-image bootstrap.
    rng = np.random.default_rng(2)
    y = np.array([0, 1] * 10)
    s = rng.random(20) + 0.5 * y
    targets = np.repeat(y, 10)[:, None]
    probs = np.repeat(s, 10)[:, None]
    patients = np.repeat(np.arange(20), 10)
    lo_p, hi_p, _, _ = bootstrap_auc_ci(targets, probs, patients, n_boot=400, seed=0)
    lo_i, hi_i, _, _ = bootstrap_auc_ci(targets, probs, np.arange(200), n_boot=400, seed=0)
    assert (hi_p[0] - lo_p[0]) > 2 * (hi_i[0] - lo_i[0])


def test_bootstrap_ci_contains_point_and_is_seeded():
    targets, probs, groups = _realistic()
    point = per_class_auc(targets, probs)
    low, high, macro_low, macro_high = bootstrap_auc_ci(targets, probs, groups, n_boot=300, seed=0)
    assert (low < point).all() and (point < high).all()
    assert macro_low < np.mean(point) < macro_high
    assert (high - low < 0.2).all()
    again = bootstrap_auc_ci(targets, probs, groups, n_boot=300, seed=0)
    for a, b in zip(again, (low, high, macro_low, macro_high), strict=True):
        np.testing.assert_array_equal(a, b)
    other = bootstrap_auc_ci(targets, probs, groups, n_boot=300, seed=1)
    assert not np.array_equal(other[0], low)


def test_bootstrap_chunking_does_not_change_results(monkeypatch):
    import cxr_core.evaluate.metrics as ev

    targets, probs, groups = _realistic(n_patients=40)
    whole = bootstrap_auc_replicates(targets, probs, groups, n_boot=50, seed=4)
    monkeypatch.setattr(ev, "_CHUNK_ELEMENTS", 7 * targets.shape[0])  # chunks of 7 replicates
    np.testing.assert_array_equal(bootstrap_auc_replicates(targets, probs, groups, n_boot=50, seed=4), whole)


def test_bootstrap_ignores_undefined_replicates():
    # class 0: a single positive patient, absent from ~1/e of replicates -> those are ignored, still a CI;
    # class 1: no positives at all -> NaN; macro over the defined class 0 only.
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(30), 2)
    targets = np.zeros((60, 2), dtype=np.uint8)
    targets[:2, 0] = 1
    probs = rng.random((60, 2))
    reps = bootstrap_auc_replicates(targets, probs, groups, n_boot=200, seed=0)
    assert 0.2 < np.isnan(reps[:, 0]).mean() < 0.55
    low, high, macro_low, macro_high = bootstrap_auc_ci(targets, probs, groups, n_boot=200, seed=0)
    assert np.isfinite([low[0], high[0], macro_low, macro_high]).all()
    assert np.isnan(low[1]) and np.isnan(high[1])
    assert (macro_low, macro_high) == (low[0], high[0])


def test_bootstrap_ci_equals_an_explicit_resampling_loop_with_sklearn():
    """Reference: sklearn roc_auc_score on every explicitly resampled replicate (tests/oracles.py),
    the default 95% percentile interval (np.quantile at 0.025 / 0.975), and the macro rule: a
    replicate in which any class defined on the full data is undefined is left out of the macro."""
    rng = np.random.default_rng(7)
    groups = np.repeat(np.arange(40), 3)
    targets = (rng.random((120, 3)) < [0.3, 0.5, 0.0]).astype(np.uint8)
    targets[:3, 2] = 1  # class 2: one positive patient, missing from about a third of the replicates
    probs = np.round(rng.random((120, 3)) + 0.4 * targets, 1)  # rounded: many ties
    reps = []
    for rows in explicit_resamples(groups, 300, seed=3):
        t, p = targets[rows], probs[rows]
        reps.append(
            [roc_auc_score(t[:, c], p[:, c]) if 0 < t[:, c].sum() < len(t) else np.nan for c in range(3)]
        )
    reps = np.asarray(reps)
    low, high, macro_low, macro_high = bootstrap_auc_ci(targets, probs, groups, n_boot=300, seed=3)
    for c in range(3):
        ok = np.isfinite(reps[:, c])
        np.testing.assert_allclose([low[c], high[c]], np.quantile(reps[ok, c], [0.025, 0.975]), rtol=1e-12)
    complete = np.isfinite(reps).all(axis=1)
    assert 0.5 < complete.mean() < 0.9
    np.testing.assert_allclose(
        [macro_low, macro_high], np.quantile(reps[complete].mean(axis=1), [0.025, 0.975]), rtol=1e-12
    )


def test_bootstrap_argument_errors():
    targets, probs, groups = _realistic(n_patients=10)
    with pytest.raises(ValueError, match="groups"):
        bootstrap_auc_ci(targets, probs, groups[:-1])
    with pytest.raises(ValueError, match="ci"):
        bootstrap_auc_ci(targets, probs, groups, ci=95)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_auc_ci(targets, probs, groups, n_boot=0)


# --- ROC points and summary ---------------------------------------------------------------------


def test_roc_points_thinned_with_ends():
    rng = np.random.default_rng(6)
    targets = (rng.random((2000, 3)) < 0.3).astype(np.uint8)
    targets[:, 2] = 0  # undefined -> left out
    probs = rng.random((2000, 3)) + 0.5 * targets
    pts = roc_points(targets, probs, max_points=50, labels=("a", "b", "c"))
    assert set(pts) == {"a", "b"}
    for fpr, tpr in pts.values():
        assert 2 <= fpr.size <= 50 and fpr.shape == tpr.shape
        assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
        assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    with pytest.raises(ValueError, match="max_points"):
        roc_points(targets, probs, max_points=1, labels=("a", "b", "c"))


def test_summarise_is_json_ready():
    rng = np.random.default_rng(8)
    n = 280
    groups = rng.integers(0, 70, n)
    targets = (rng.random((n, 14)) < 0.2).astype(np.uint8)
    targets[:, 13] = 0  # Hernia absent, as in small subsets
    probs = rng.random((n, 14)) + 0.5 * targets
    out = summarise(targets, probs, groups, n_boot=100, seed=0)
    json.dumps(out, allow_nan=False)  # no NaN anywhere
    assert set(out) == {
        "auc",
        "auc_ci",
        "auprc",
        "macro_auc",
        "macro_auc_ci",
        "macro_auprc",
        "n_images",
        "n_patients",
        "positives",
    }
    assert list(out["auc"]) == list(LABELS)
    assert out["auc"]["Hernia"] is None and out["auc_ci"]["Hernia"] == [None, None]
    assert out["auprc"]["Hernia"] is None and out["positives"]["Hernia"] == 0
    auc = per_class_auc(targets, probs)
    assert out["macro_auc"] == pytest.approx(np.nanmean(auc))
    assert out["macro_auprc"] == pytest.approx(np.nanmean(per_class_auprc(targets, probs)))
    assert out["n_images"] == n and out["n_patients"] == np.unique(groups).size
    assert out["positives"]["Atelectasis"] == int(targets[:, 0].sum())
    lo, hi = out["macro_auc_ci"]
    assert lo < out["macro_auc"] < hi
    with pytest.raises(ValueError, match="labels"):
        summarise(targets, probs, groups, labels=LABELS[:8], n_boot=10)


def test_summarise_without_bootstrap_has_null_intervals():
    rng = np.random.default_rng(0)
    targets = (rng.random((40, 14)) < 0.3).astype(np.uint8)
    out = summarise(targets, rng.random((40, 14)), np.arange(40) // 2, n_boot=0)
    assert out["macro_auc_ci"] == [None, None]
    assert all(ci == [None, None] for ci in out["auc_ci"].values())
    assert out["macro_auc"] is not None
