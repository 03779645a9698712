"""Operating points: threshold rules against brute force over sklearn, test metrics against
sklearn's confusion matrix, bootstrap CIs against explicit patient resamples, the file contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
from oracles import explicit_resamples
from sklearn.metrics import confusion_matrix, f1_score, roc_curve

from cxr_core.errors import ArtifactError
from cxr_core.evaluate.calibration import apply_temperature
from cxr_core.evaluate.metrics import bootstrap_auc_replicates
from cxr_core.evaluate.operating import (
    RATES,
    THRESHOLD_RULES,
    OperatingPoints,
    choose_thresholds,
    get_threshold_rule,
    operating_json,
    operating_metrics,
    operating_replicates,
)
from cxr_core.files import write_json
from cxr_core.labels import LABELS

# --------------------------------------------------------------------------------------------
# data and slow references


def scored(n: int = 300, n_classes: int = 4, seed: int = 0, decimals: int | None = 2) -> tuple:
    """Targets with different prevalences and noisy scores; rounding makes many ties."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, n_classes)) < np.linspace(0.1, 0.5, n_classes)).astype(np.uint8)
    probs = np.clip(0.35 * targets + 0.65 * rng.random((n, n_classes)), 0, 1)
    return targets, (np.round(probs, decimals) if decimals is not None else probs)


def clustered(n_patients: int = 30, seed: int = 1) -> tuple:
    """1-6 images per patient, 3 classes (the last rare), tied scores (as tests/test_compare.py)."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"p{k:03d}" for k in range(n_patients)], rng.integers(1, 7, n_patients))
    n = groups.shape[0]
    targets = np.zeros((n, 3), dtype=np.uint8)
    targets[:, 0] = rng.random(n) < 0.4
    targets[:, 1] = rng.random(n) < 0.2
    targets[np.flatnonzero(np.isin(groups, ["p003", "p017"]))[:3], 2] = 1
    probs = np.round(0.3 * targets + 0.7 * rng.random((n, 3)), 1)
    return targets, probs, groups


def brute_force(y: np.ndarray, p: np.ndarray, score) -> float:
    """Loop over sklearn's ROC thresholds (every distinct score, highest first); first maximum wins."""
    _, _, thresholds = roc_curve(y, p, drop_intermediate=False)
    thresholds = thresholds[np.isfinite(thresholds)]  # sklearn's leading inf calls nothing positive
    values = np.array([score(y, p, t) for t in thresholds])
    return float(thresholds[np.flatnonzero(values >= values.max() - 1e-12)[0]])


def youden_j(y: np.ndarray, p: np.ndarray, t: float) -> float:
    call = p >= t
    return call[y == 1].mean() - call[y == 0].mean()


def f1_at(y: np.ndarray, p: np.ndarray, t: float) -> float:
    return f1_score(y, (p >= t).astype(int), zero_division=0.0)


def reference_rates(y: np.ndarray, p: np.ndarray, t: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV from sklearn's confusion matrix; NaN where 0 / 0."""
    tn, fp, fn, tp = confusion_matrix(y, (p >= t).astype(int), labels=[0, 1]).ravel()

    def ratio(a: int, b: int) -> float:
        return a / (a + b) if a + b else float("nan")

    return {
        "sensitivity": ratio(tp, fn),
        "specificity": ratio(tn, fp),
        "ppv": ratio(tp, fp),
        "npv": ratio(tn, fn),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


# --------------------------------------------------------------------------------------------
# threshold rules


@pytest.mark.parametrize("decimals", [2, None])
def test_youden_is_the_brute_force_maximum_over_roc_thresholds(decimals: int | None) -> None:
    targets, probs = scored(decimals=decimals)
    chosen = choose_thresholds(targets, probs, "youden")
    for c in range(targets.shape[1]):
        assert chosen[c] == brute_force(targets[:, c], probs[:, c], youden_j)
        if decimals is None:  # no ties: also the usual recipe, argmax(tpr - fpr) on sklearn's default curve
            fpr, tpr, thr = roc_curve(targets[:, c], probs[:, c])
            assert chosen[c] == thr[np.argmax(tpr - fpr)]


def test_youden_ties_go_to_the_higher_threshold() -> None:
    # J = 0.5 at 0.9 (tp 1, fp 0) and at 0.7 (tp 2, fp 1): the higher one makes fewer positive calls.
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.1])
    assert choose_thresholds(y, p, "youden")[0] == 0.9


@pytest.mark.parametrize("decimals", [2, None])
def test_max_f1_is_the_brute_force_maximum_of_sklearn_f1(decimals: int | None) -> None:
    targets, probs = scored(decimals=decimals, seed=3)
    chosen = choose_thresholds(targets, probs, "max_f1")
    for c in range(targets.shape[1]):
        assert chosen[c] == brute_force(targets[:, c], probs[:, c], f1_at)


def test_max_f1_ties_go_to_the_higher_threshold() -> None:
    # F1 = 2/3 at 0.9 (tp 1, fp 0, fn 1) and at 0.7 (tp 2, fp 2, fn 0).
    y = np.array([1, 0, 0, 1])
    p = np.array([0.9, 0.8, 0.75, 0.7])
    assert choose_thresholds(y, p, "max_f1")[0] == 0.9


def test_sensitivity_rule_by_hand() -> None:
    pos = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.2])  # 10 positives
    neg = np.array([0.9, 0.6, 0.58, 0.5, 0.3, 0.1])
    y = np.r_[np.ones(10, int), np.zeros(6, int)]
    p = np.r_[pos, neg]
    assert choose_thresholds(y, p, "sensitivity", 0.9)[0] == 0.55  # 9 of 10 caught
    assert choose_thresholds(y, p, "sensitivity", 0.5)[0] == 0.75  # 5 of 10
    assert choose_thresholds(y, p, "sensitivity", 0.95)[0] == 0.2  # needs all 10
    assert choose_thresholds(y, p, "sensitivity", 1.0)[0] == 0.2
    assert choose_thresholds(y, p, "sensitivity", 0.05)[0] == 0.95


def test_classes_without_positives_or_negatives_have_no_threshold() -> None:
    targets, probs = scored(n=50, n_classes=3)
    targets[:, 0] = 0
    targets[:, 2] = 1
    for method in THRESHOLD_RULES:
        chosen = choose_thresholds(targets, probs, method)
        assert np.isnan(chosen[0]) and np.isnan(chosen[2]) and np.isfinite(chosen[1]), method


def test_unknown_rule_and_bad_target_sensitivity_are_named() -> None:
    targets, probs = scored(n=20, n_classes=1)
    with pytest.raises(ValueError, match=r"'yuden'.*\['youden', 'max_f1', 'sensitivity'\]"):
        choose_thresholds(targets, probs, "yuden")
    with pytest.raises(ValueError, match="not a known threshold rule"):
        get_threshold_rule(None)  # type: ignore[arg-type]
    for bad in (0.0, 1.5, True, "0.9"):
        with pytest.raises(ValueError, match="target_sensitivity"):
            choose_thresholds(targets, probs, "sensitivity", bad)  # type: ignore[arg-type]


def test_temperature_moves_thresholds_but_not_the_calls() -> None:
    """The rules use only the order of the scores: on sigmoid(logit / T) they split the images alike."""
    rng = np.random.default_rng(5)
    targets = (rng.random((400, 3)) < 0.3).astype(np.uint8)
    logits = 2.0 * targets + rng.normal(0, 1.5, (400, 3))
    val, test = slice(0, 200), slice(200, 400)
    for method in THRESHOLD_RULES:
        raw = apply_temperature(logits, 1.0)
        scaled = apply_temperature(logits, 2.7)
        t_raw = choose_thresholds(targets[val], raw[val], method)
        t_scaled = choose_thresholds(targets[val], scaled[val], method)
        assert not np.allclose(t_raw, t_scaled)
        np.testing.assert_array_equal(raw[test] >= t_raw, scaled[test] >= t_scaled)


# --------------------------------------------------------------------------------------------
# test-split metrics


def test_point_metrics_match_sklearn_confusion_matrix() -> None:
    targets, probs = scored(n=200, n_classes=4, seed=7)
    # the last is above every score: no positive call, so PPV is 0 / 0
    thresholds = np.array([0.5, 0.3, 2.0 / 3.0, probs[:, 3].max() + 0.01])
    groups = np.arange(200)
    result = operating_metrics(targets, probs, thresholds, groups, n_boot=0)
    for c in range(4):
        ref = reference_rates(targets[:, c], probs[:, c], thresholds[c])
        for key in (*RATES, "tp", "fp", "tn", "fn"):
            np.testing.assert_equal(result[key][c], ref[key], err_msg=f"class {c} {key}")
        for rate in RATES:
            assert np.isnan(result[f"{rate}_ci"][c]).all()
    assert np.isnan(result["ppv"][3]) and result["tp"][3] == result["fp"][3] == 0


def test_class_without_threshold_is_undefined_throughout() -> None:
    targets, probs = scored(n=40, n_classes=2)
    result = operating_metrics(targets, probs, [np.nan, 0.5], np.arange(40) // 2, n_boot=20)
    for key in (*RATES, "tp", "fp", "tn", "fn"):
        assert np.isnan(result[key][0]) and np.isfinite(result[key][1]), key
    assert np.isnan(result["sensitivity_ci"][0]).all() and np.isfinite(result["sensitivity_ci"][1]).all()


def test_bootstrap_matches_explicit_patient_resamples() -> None:
    targets, probs, groups = clustered()
    thresholds = choose_thresholds(targets, probs, "youden")
    n_boot, seed, ci = 300, 11, 0.9
    reps = operating_replicates(targets, probs, thresholds, groups, n_boot=n_boot, seed=seed)
    ref = {rate: np.empty((n_boot, 3)) for rate in RATES}
    for r, idx in enumerate(explicit_resamples(groups, n_boot, seed)):
        for c in range(3):
            rates = reference_rates(targets[idx, c], probs[idx, c], thresholds[c])
            for rate in RATES:
                ref[rate][r, c] = rates[rate]
    assert np.isnan(ref["sensitivity"][:, 2]).any() and np.isfinite(ref["sensitivity"][:, 2]).any()
    result = operating_metrics(targets, probs, thresholds, groups, n_boot=n_boot, ci=ci, seed=seed)
    for rate in RATES:
        np.testing.assert_allclose(reps[rate], ref[rate], rtol=0, atol=1e-12, err_msg=rate)
        for c in range(3):
            finite = ref[rate][:, c][np.isfinite(ref[rate][:, c])]
            expected = np.quantile(finite, [(1 - ci) / 2, (1 + ci) / 2])
            np.testing.assert_allclose(result[f"{rate}_ci"][c], expected, rtol=0, atol=1e-12)


def test_same_seed_same_patient_draws_as_the_auc_bootstrap() -> None:
    """Replicate r of the operating bootstrap and of the AUC bootstrap resample the same patients."""
    targets, probs, groups = clustered()
    n_boot, seed = 50, 4
    auc = bootstrap_auc_replicates(targets, probs, groups, n_boot=n_boot, seed=seed)
    resamples = explicit_resamples(groups, n_boot, seed)
    from sklearn.metrics import roc_auc_score

    for r in (0, 17, 49):
        idx = resamples[r]
        assert auc[r, 0] == pytest.approx(roc_auc_score(targets[idx, 0], probs[idx, 0]), abs=1e-12)
    reps = operating_replicates(targets, probs, [0.5, 0.5, 0.5], groups, n_boot=n_boot, seed=seed)
    idx = resamples[17]
    assert reps["specificity"][17, 0] == pytest.approx(
        reference_rates(targets[idx, 0], probs[idx, 0], 0.5)["specificity"], abs=1e-12
    )


def test_separable_class_is_perfect_with_a_degenerate_interval() -> None:
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(40), 3)
    y = (rng.random(120) < 0.3).astype(np.uint8)
    p = np.where(y == 1, 0.6 + 0.4 * rng.random(120), 0.5 * rng.random(120))
    threshold = choose_thresholds(y, p, "youden")
    assert threshold[0] == p[y == 1].min()
    result = operating_metrics(y, p, threshold, groups, n_boot=200, seed=0)
    for rate in RATES:
        assert result[rate][0] == 1.0
        assert list(result[f"{rate}_ci"][0]) == [1.0, 1.0]


def test_bad_inputs_are_named() -> None:
    targets, probs = scored(n=20, n_classes=2)
    with pytest.raises(ValueError, match=r"thresholds must have shape \(2,\)"):
        operating_metrics(targets, probs, [0.5], np.arange(20))
    with pytest.raises(ValueError, match="finite or NaN"):
        operating_metrics(targets, probs, [0.5, np.inf], np.arange(20))
    with pytest.raises(ValueError, match="groups"):
        operating_metrics(targets, probs, [0.5, 0.5], np.arange(19))
    with pytest.raises(ValueError, match="ci must be"):
        operating_metrics(targets, probs, [0.5, 0.5], np.arange(20), ci=1.0)


def test_json_is_flat_per_label_and_nan_free(tmp_path) -> None:
    targets, probs = scored(n=60, n_classes=len(LABELS))
    thresholds = choose_thresholds(targets, probs, "max_f1")
    thresholds[13] = np.nan
    doc = operating_json(operating_metrics(targets, probs, thresholds, np.arange(60) // 3, n_boot=30))
    assert list(doc) == list(LABELS)
    assert set(doc["Hernia"]) == {"threshold", *RATES, *(f"{r}_ci" for r in RATES), "tp", "fp", "tn", "fn"}
    assert doc["Hernia"]["tp"] is None and doc["Hernia"]["sensitivity_ci"] == [None, None]
    assert isinstance(doc["Atelectasis"]["tp"], int)

    def keys(obj) -> list[str]:
        return [k for key, v in obj.items() for k in [key, *keys(v)]] if isinstance(obj, dict) else []

    assert not [k for k in keys(doc) if "." in k]
    write_json(tmp_path / "m.json", doc)
    assert "NaN" not in (tmp_path / "m.json").read_text()
    with pytest.raises(ValueError, match="labels has 3 names"):
        operating_json(operating_metrics(targets, probs, thresholds, np.arange(60), n_boot=0), LABELS[:3])


# --------------------------------------------------------------------------------------------
# the operating-points file


def write_points(path, **overrides) -> None:
    thresholds = np.linspace(0.1, 0.8, len(LABELS)).astype(np.float32).astype(np.float64)
    thresholds[13] = np.nan
    kwargs = {
        "model": "densenet121",
        "seed": 0,
        "method": "youden",
        "temperature": 1.3,
        "thresholds": thresholds,
    }
    OperatingPoints.write(path, **{**kwargs, **overrides})


def test_operating_points_round_trip(tmp_path) -> None:
    path = tmp_path / "data" / "operating" / "densenet121" / "seed0.json"
    write_points(path)
    doc = OperatingPoints.read(path)
    assert list(doc) == ["model", "seed", "method", "chosen_on", "temperature", "thresholds"]
    assert doc["chosen_on"] == "val" and doc["temperature"] == 1.3 and doc["thresholds"]["Hernia"] is None
    expected = np.linspace(0.1, 0.8, len(LABELS)).astype(np.float32).astype(np.float64)
    got = OperatingPoints.threshold_array(doc)
    np.testing.assert_array_equal(got[:13], expected[:13])  # float32 probabilities survive JSON exactly
    assert np.isnan(got[13])
    write_points(tmp_path / "b.json", temperature=None, thresholds=dict(doc["thresholds"]))
    assert OperatingPoints.read(tmp_path / "b.json")["temperature"] is None
    assert OperatingPoints.CONTRACT.path == "data/operating/<model>/seed<k>.json"
    assert OperatingPoints.CONTRACT.writer == "clinical@<model>-<k>"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["thresholds"].pop("Hernia"), r"lack label\(s\) \['Hernia'\]"),
        (lambda d: d["thresholds"].update(Hernai=0.5), r"unknown label\(s\) \['Hernai'\]"),
        (lambda d: d["thresholds"].update(Mass=1.5), r"thresholds\['Mass'\] = 1.5"),
        (lambda d: d["thresholds"].update(Mass="0.5"), r"thresholds\['Mass'\]"),
        (lambda d: d.update(chosen_on="test"), "chosen_on must be 'val'"),
        (lambda d: d.update(temperature=-1.0), "temperature must be a positive"),
        (lambda d: d.update(method="argmax"), "method 'argmax'"),
        (lambda d: d.update(seed="0"), "seed must be"),
        (lambda d: d.pop("thresholds"), r"lacks key\(s\) \['thresholds'\]"),
    ],
)
def test_operating_points_reader_names_the_file_and_problem(tmp_path, edit, message) -> None:
    path = tmp_path / "seed0.json"
    write_points(path)
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match=message) as err:
        OperatingPoints.read(path)
    assert str(path) in str(err.value) and "clinical@" in str(err.value)


def test_operating_points_missing_file_and_bad_writes(tmp_path) -> None:
    with pytest.raises(ArtifactError, match="not found.*clinical@"):
        OperatingPoints.read(tmp_path / "absent.json")
    with pytest.raises(ValueError, match=r"shape \(14,\)"):
        write_points(tmp_path / "a.json", thresholds=[0.5])
    with pytest.raises(ValueError, match="method 'nope'"):
        write_points(tmp_path / "a.json", method="nope")
    with pytest.raises(ValueError, match="temperature"):
        write_points(tmp_path / "a.json", temperature=0.0)
    assert not (tmp_path / "a.json").exists()
