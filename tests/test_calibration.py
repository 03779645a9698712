"""Calibration: equal-mass ECE and reliability against sklearn's quantile calibration curve and a
slow loop, Brier against sklearn, temperature scaling recovering a known temperature."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, roc_auc_score

from cxr_core.evaluate.calibration import (
    RELIABILITY_COLUMNS,
    apply_temperature,
    brier_score,
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    mean_bce,
    reliability_curve,
)
from cxr_core.files import write_json
from cxr_core.labels import LABELS


def scored(n: int = 500, n_classes: int = 3, seed: int = 0, decimals: int | None = None) -> tuple:
    rng = np.random.default_rng(seed)
    probs = rng.beta(0.6, 2.0, (n, n_classes))
    targets = (rng.random((n, n_classes)) < np.clip(1.3 * probs, 0, 1)).astype(np.uint8)
    return targets, (np.round(probs, decimals) if decimals is not None else probs)


def slow_ece(y: np.ndarray, p: np.ndarray, bins: int) -> float:
    """Loop over quantile bins (edge_i, edge_i+1], the lowest value in the first."""
    edges = np.percentile(p, np.linspace(0, 100, bins + 1))
    total = 0.0
    for i in range(bins):
        inside = (p > edges[i]) & (p <= edges[i + 1])
        if i == 0:
            inside |= p <= edges[0]
        if inside.any():
            total += inside.sum() / p.size * abs(p[inside].mean() - y[inside].mean())
    return total


# --------------------------------------------------------------------------------------------
# ECE, Brier, reliability


def test_ece_by_hand() -> None:
    # bins (0.1, 0.2 | 0.3, 0.4): |0.15 - 0| / 2 + |0.35 - 1| / 2 = 0.4
    per_class, overall = expected_calibration_error([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], bins=2)
    assert per_class[0] == pytest.approx(0.4) and overall == pytest.approx(0.4)
    perfect, _ = expected_calibration_error([0, 1, 1, 0], [0.0, 1.0, 1.0, 0.0], bins=3)
    assert perfect[0] == 0.0


@pytest.mark.parametrize("decimals", [None, 1])
@pytest.mark.parametrize("bins", [1, 5, 10])
def test_ece_and_reliability_match_slow_loop_and_sklearn(decimals: int | None, bins: int) -> None:
    targets, probs = scored(decimals=decimals)
    per_class, overall = expected_calibration_error(targets, probs, bins)
    curve = reliability_curve(targets, probs, bins, labels=("a", "b", "c"))
    assert tuple(curve.columns) == RELIABILITY_COLUMNS
    columns = [(c, targets[:, c], probs[:, c]) for c in range(3)] + [("all", targets.ravel(), probs.ravel())]
    for c, y, p in columns:
        label = "all" if c == "all" else "abc"[c]
        ece = overall if c == "all" else per_class[c]
        assert ece == pytest.approx(slow_ece(y, p, bins), abs=1e-12)
        rows = curve[curve["label"] == label]
        prob_true, prob_pred = calibration_curve(y, p, n_bins=bins, strategy="quantile")
        np.testing.assert_allclose(rows["fraction_positive"], prob_true, atol=1e-12)
        np.testing.assert_allclose(rows["mean_predicted"], prob_pred, atol=1e-12)
        assert rows["count"].sum() == y.size
        weights = rows["count"] / y.size
        assert ece == pytest.approx(
            (weights * (rows["mean_predicted"] - rows["fraction_positive"]).abs()).sum()
        )


def test_ties_share_a_bin_and_empty_bins_are_dropped() -> None:
    # 6 of 8 probabilities tied at 0.2: all quartile edges but the top are 0.2, so every 0.2 lands in
    # bin 0 (the tie at the edge goes to the lower bin), bins 1 and 2 are empty, 0.8 is in bin 3.
    y = np.array([0, 0, 1, 0, 0, 0, 1, 1])
    p = np.array([0.2] * 6 + [0.8] * 2)
    curve = reliability_curve(y, p, bins=4, labels=("x",))
    x = curve[curve["label"] == "x"]
    assert x["bin"].tolist() == [0, 3] and x["count"].tolist() == [6, 2]
    np.testing.assert_allclose(x["fraction_positive"], [1 / 6, 1.0])
    prob_true, _ = calibration_curve(y, p, n_bins=4, strategy="quantile")
    np.testing.assert_allclose(x["fraction_positive"], prob_true)
    ece, _ = expected_calibration_error(y, p, bins=4)
    assert ece[0] == pytest.approx(6 / 8 * abs(0.2 - 1 / 6) + 2 / 8 * 0.2)


def test_brier_matches_sklearn() -> None:
    targets, probs = scored(seed=4)
    per_class, overall = brier_score(targets, probs)
    for c in range(3):
        assert per_class[c] == pytest.approx(brier_score_loss(targets[:, c], probs[:, c]), abs=1e-15)
    assert overall == pytest.approx(brier_score_loss(targets.ravel(), probs.ravel()), abs=1e-15)


def test_summary_is_json_ready(tmp_path) -> None:
    targets, probs = scored(n=200, n_classes=len(LABELS), seed=2)
    targets[:, 13] = 0  # no positives: still calibrated or not
    summary = calibration_summary(targets, probs, bins=10)
    assert list(summary) == ["per_class", "overall"] and list(summary["per_class"]) == list(LABELS)
    assert set(summary["per_class"]["Hernia"]) == {"ece", "brier"}
    assert summary["per_class"]["Hernia"]["ece"] == pytest.approx(probs[:, 13].mean())
    ece, ece_all = expected_calibration_error(targets, probs, 10)
    assert summary["overall"]["ece"] == ece_all and summary["per_class"]["Mass"]["ece"] == ece[4]
    write_json(tmp_path / "c.json", summary)
    assert json.loads((tmp_path / "c.json").read_text()) == summary


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([0, 1], [0.5, 1.2])
    with pytest.raises(ValueError, match="bins must be a positive integer, got 0"):
        reliability_curve([0, 1], [0.5, 0.7], bins=0)
    with pytest.raises(ValueError, match="bins"):
        expected_calibration_error([0, 1], [0.5, 0.7], bins=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels has 2 names"):
        calibration_summary(np.zeros((3, 1)), np.zeros((3, 1)), labels=("a", "b"))
    with pytest.raises(ValueError, match="0/1"):
        brier_score([0, 2], [0.1, 0.2])


# --------------------------------------------------------------------------------------------
# temperature scaling


def simulated(temperature: float, n: int = 20000, n_classes: int = 14, seed: int = 0) -> tuple:
    """Logits z and targets ~ Bernoulli(sigmoid(z / T)): the calibrated temperature is T."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.5, 3.0, (n, n_classes))
    y = (rng.random((n, n_classes)) < expit(z / temperature)).astype(np.uint8)
    return y, z


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_fit_recovers_a_known_temperature(true_t: float) -> None:
    y, z = simulated(true_t)
    assert fit_temperature(y, z) == pytest.approx(true_t, rel=0.03)


def test_calibrated_logits_keep_temperature_one() -> None:
    y, z = simulated(1.0, seed=1)
    fitted = fit_temperature(y, z)
    assert fitted == pytest.approx(1.0, abs=0.03)
    assert mean_bce(y, z, fitted) <= mean_bce(y, z, 1.0) <= mean_bce(y, z, fitted) + 1e-4


def test_scaling_fitted_on_val_lowers_test_ece_of_an_overconfident_model() -> None:
    y, z = simulated(1.0, n=8000, seed=2)
    logits = 3.0 * z  # three times too confident
    val, test = slice(0, 4000), slice(4000, None)
    fitted = fit_temperature(y[val], logits[val])
    assert fitted == pytest.approx(3.0, rel=0.05)
    _, before = expected_calibration_error(y[test], apply_temperature(logits[test], 1.0), bins=10)
    _, after = expected_calibration_error(y[test], apply_temperature(logits[test], fitted), bins=10)
    assert after < 0.5 * before
    # monotone: every AUC is unchanged
    for c in range(3):
        assert roc_auc_score(y[test][:, c], apply_temperature(logits[test][:, c], fitted)) == pytest.approx(
            roc_auc_score(y[test][:, c], logits[test][:, c]), abs=1e-12
        )


def test_bce_is_the_stable_logit_form() -> None:
    y = np.array([[1, 0], [0, 1]])
    z = np.array([[800.0, -800.0], [2.0, -3.0]])  # extreme logits: no overflow, no log(0)
    p = expit(z / 2.0)
    expected = np.array([[0.0, 0.0], [-np.log(1 - p[1, 0]), -np.log(p[1, 1])]]).mean()
    assert mean_bce(y, z, 2.0) == pytest.approx(expected, abs=1e-12)
    np.testing.assert_array_equal(apply_temperature(z, 1.0), expit(z))


def test_temperature_arguments_are_checked() -> None:
    y, z = simulated(1.0, n=50, n_classes=2)
    for bad in (0.0, -1.0, np.inf, True):
        with pytest.raises(ValueError, match="temperature must be a positive"):
            apply_temperature(z, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bounds"):
        fit_temperature(y, z, bounds=(1.5, 10.0))
    with pytest.raises(ValueError, match="tolerance"):
        fit_temperature(y, z, tol=0.0)
    with pytest.raises(ValueError, match="logits hold NaN"):
        fit_temperature(y, np.full_like(z, np.nan))


def test_separable_validation_hits_the_lower_bound() -> None:
    y = np.array([0, 0, 1, 1])
    z = np.array([-2.0, -1.0, 1.0, 2.0])
    assert fit_temperature(y, z, bounds=(0.05, 20.0)) == pytest.approx(0.05, rel=1e-4)
