"""Subgroup audit: point values against pandas / sklearn, intervals against an explicit resample loop."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from oracles import explicit_resamples
from sklearn.metrics import roc_auc_score

from cxr_core.audit.subgroups import (
    age_band_names,
    age_bands,
    subgroup_attributes,
    subgroup_audit,
)
from cxr_core.evaluate.metrics import bootstrap_auc_ci

LABELS3 = ("A", "B", "C")
THRESHOLDS = np.array([0.5, 0.6, 0.7])


def clustered(n_patients: int = 40, seed: int = 1) -> tuple:
    """1-5 images per patient, 3 classes (C rare), sex per patient, age band and view per image."""
    rng = np.random.default_rng(seed)
    patients = np.repeat([f"p{k:03d}" for k in range(n_patients)], rng.integers(1, 6, n_patients))
    n = patients.shape[0]
    targets = np.zeros((n, 3), dtype=np.uint8)
    targets[:, 0] = rng.random(n) < 0.4
    targets[:, 1] = rng.random(n) < 0.3
    targets[:, 2] = rng.random(n) < 0.08
    probs = np.clip(0.35 * targets + 0.65 * rng.random((n, 3)), 0, 1)
    probs[:, 1] = np.round(probs[:, 1], 1)  # ties
    codes = np.unique(patients, return_inverse=True)[1]
    sex = np.array(["M", "F"])[rng.integers(0, 2, n_patients)][codes]
    age = rng.choice(["0-20", "20-40", "40+"], n)  # a patient's images fall in different bands
    view = rng.choice(["PA", "AP", "other"], n, p=[0.5, 0.4, 0.1])
    return targets, probs, patients, {"sex": sex, "age": age, "view": view}


def reference(t: np.ndarray, p: np.ndarray, mask: np.ndarray) -> dict:
    """The audit's numbers of one group, straight from sklearn and numpy (NaN where undefined)."""
    pred = p >= THRESHOLDS

    def stats(m: np.ndarray) -> dict:
        tt, pp, pr = t[m], p[m], pred[m]
        auc = np.array(
            [roc_auc_score(tt[:, c], pp[:, c]) if 0 < tt[:, c].sum() < len(tt) else np.nan for c in range(3)]
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            tpr = (tt * pr).sum(0) / tt.sum(0)
            fpr = ((1 - tt) * pr).sum(0) / (1 - tt).sum(0)
        sick = tt.any(1)
        under = (~pr[sick].any(1)).mean() if sick.any() else np.nan
        return {"auc": auc, "tpr": tpr, "fpr": fpr, "under": under}

    g, r = stats(mask), stats(~mask)
    out = {"g": g, "r": r}
    for key in ("auc", "tpr", "fpr"):
        used = np.isfinite(g[key]) & np.isfinite(r[key])
        out[key] = (g[key][used].mean(), r[key][used].mean(), used)
    return out


def test_point_values_match_pandas_and_sklearn() -> None:
    targets, probs, patients, attributes = clustered()
    result = subgroup_audit(
        targets, probs, THRESHOLDS, patients, attributes, n_boot=20, ci=0.9, seed=3, labels=LABELS3
    )
    assert list(result["attributes"]) == ["sex", "age", "view"]
    assert list(result["attributes"]["age"]) == ["0-20", "20-40", "40+"]
    assert list(result["attributes"]["view"]) == ["AP", "PA", "other"]
    frame = pd.DataFrame({"patient": patients, **attributes})
    for name, values in attributes.items():
        counts = frame.groupby(name).agg(n_images=("patient", "size"), n_patients=("patient", "nunique"))
        for group, entry in result["attributes"][name].items():
            mask = values == group
            ref = reference(targets, probs, mask)
            assert entry["n_images"] == counts.loc[group, "n_images"]
            assert entry["n_patients"] == counts.loc[group, "n_patients"]
            assert entry["n_with_finding"] == int(targets[mask].any(1).sum())
            for c, label in enumerate(LABELS3):
                for key in ("auc", "tpr", "fpr"):
                    want = ref["g"][key][c]
                    got = entry[key][label]
                    assert (got is None and np.isnan(want)) or got == pytest.approx(want, abs=1e-12)
            for key, summary in (("auc", "macro_auc"), ("tpr", "mean_tpr"), ("fpr", "mean_fpr")):
                group_mean, rest_mean, used = ref[key]
                assert entry[summary] == pytest.approx(group_mean, abs=1e-12)
                assert entry[f"{summary}_classes"] == used.sum()
                gap = entry["gap"][summary]
                assert gap["group"] == pytest.approx(group_mean, abs=1e-12)
                assert gap["rest"] == pytest.approx(rest_mean, abs=1e-12)
                assert gap["diff"] == pytest.approx(group_mean - rest_mean, abs=1e-12)
            assert entry["underdiagnosis"] == pytest.approx(ref["g"]["under"], abs=1e-12)
            assert entry["gap"]["underdiagnosis"]["diff"] == pytest.approx(
                ref["g"]["under"] - ref["r"]["under"], abs=1e-12
            )
    json.dumps(result, allow_nan=False)  # JSON-ready: NaN became None
    assert "." not in "".join(result["attributes"]["age"])


def test_intervals_match_an_explicit_resample_loop() -> None:
    """Same draws as metrics: resample patients, then each drawn patient's images go to their group."""
    targets, probs, patients, attributes = clustered(seed=5)
    n_boot, ci, seed = 80, 0.9, 11
    result = subgroup_audit(
        targets, probs, THRESHOLDS, patients, attributes, n_boot=n_boot, ci=ci, seed=seed, labels=LABELS3
    )
    resamples = explicit_resamples(patients, n_boot, seed)
    q = [(1 - ci) / 2, (1 + ci) / 2]
    for name in ("sex", "age"):  # one group per patient; groups that split a patient's images
        for group, entry in result["attributes"][name].items():
            mask = attributes[name] == group
            full = reference(targets, probs, mask)
            reps = [reference(targets[idx], probs[idx], mask[idx]) for idx in resamples]
            for key, summary in (("auc", "macro_auc"), ("tpr", "mean_tpr"), ("fpr", "mean_fpr")):
                used = full[key][2]  # the classes of the full data, as the audit uses
                g = np.array([r["g"][key][used].mean() for r in reps])
                d = g - np.array([r["r"][key][used].mean() for r in reps])
                np.testing.assert_allclose(
                    entry[f"{summary}_ci"], np.quantile(g[np.isfinite(g)], q), atol=1e-12
                )
                np.testing.assert_allclose(
                    entry["gap"][summary]["ci"], np.quantile(d[np.isfinite(d)], q), atol=1e-12
                )
            u = np.array([r["g"]["under"] for r in reps])
            du = u - np.array([r["r"]["under"] for r in reps])
            np.testing.assert_allclose(
                entry["underdiagnosis_ci"], np.quantile(u[np.isfinite(u)], q), atol=1e-12
            )
            np.testing.assert_allclose(
                entry["gap"]["underdiagnosis"]["ci"], np.quantile(du[np.isfinite(du)], q), atol=1e-12
            )


def test_one_group_of_everything_gives_the_test_stage_interval() -> None:
    """With the whole split as one group, the macro AUC interval is metrics.bootstrap_auc_ci's, same seed."""
    targets, probs, patients, _ = clustered(seed=2)
    result = subgroup_audit(
        targets,
        probs,
        THRESHOLDS,
        patients,
        {"all": np.full(len(patients), "all")},
        n_boot=200,
        ci=0.95,
        seed=7,
        labels=LABELS3,
    )
    entry = result["attributes"]["all"]["all"]
    _, _, low, high = bootstrap_auc_ci(targets, probs, patients, n_boot=200, ci=0.95, seed=7)
    np.testing.assert_allclose(entry["macro_auc_ci"], [low, high], atol=1e-12)
    assert entry["gap"]["macro_auc"]["rest"] is None and entry["gap"]["macro_auc"]["ci"] == [None, None]


def biased(noise_f: float, seed: int = 0, n_patients: int = 300) -> tuple:
    """Patients with 1-4 images; the model's scores are noisier by ``noise_f`` on women."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(n_patients), rng.integers(1, 5, n_patients))
    n = patients.shape[0]
    sex = np.where(rng.random(n_patients) < 0.5, "M", "F")[patients]
    targets = (rng.random((n, 2)) < 0.3).astype(np.uint8)
    noise = np.where(sex == "F", noise_f, 0.5)[:, None]
    probs = 1 / (1 + np.exp(-(2.0 * targets - 1 + noise * rng.standard_normal((n, 2)) * 2)))
    return targets, probs, patients, sex


def test_a_built_in_bias_is_detected_and_a_fair_model_is_not() -> None:
    targets, probs, patients, sex = biased(noise_f=2.0)
    result = subgroup_audit(
        targets, probs, [0.5, 0.5], patients, {"sex": sex}, n_boot=300, ci=0.95, seed=0, labels=("A", "B")
    )
    gap = result["attributes"]["sex"]["F"]["gap"]
    assert gap["macro_auc"]["diff"] < 0 and gap["macro_auc"]["ci"][1] < 0  # worse on women, CI excludes 0
    assert gap["underdiagnosis"]["diff"] > 0 and gap["underdiagnosis"]["ci"][0] > 0
    mirror = result["attributes"]["sex"]["M"]["gap"]["macro_auc"]
    assert mirror["diff"] == pytest.approx(-gap["macro_auc"]["diff"], abs=1e-12)
    assert mirror["ci"][0] == pytest.approx(-gap["macro_auc"]["ci"][1], abs=1e-12)  # one draw, both sides

    targets, probs, patients, sex = biased(noise_f=0.5)  # the same model on both sexes
    fair = subgroup_audit(
        targets, probs, [0.5, 0.5], patients, {"sex": sex}, n_boot=300, ci=0.95, seed=0, labels=("A", "B")
    )
    for key in ("macro_auc", "mean_tpr", "mean_fpr", "underdiagnosis"):
        low, high = fair["attributes"]["sex"]["F"]["gap"][key]["ci"]
        assert low < 0 < high, key


def test_underdiagnosis_hand_case() -> None:
    """Six images, two classes, thresholds 0.5; four have a finding; hand-counted rates."""
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 0]])
    probs = np.array([[0.2, 0.1], [0.1, 0.7], [0.4, 0.3], [0.9, 0.9], [0.6, 0.1], [0.1, 0.1]])
    #                 missed      caught       missed      no finding  caught      no finding
    group = np.array(["a", "a", "a", "b", "b", "b"])
    result = subgroup_audit(
        targets, probs, [0.5, 0.5], np.arange(6), {"g": group}, n_boot=10, ci=0.9, seed=0, labels=("X", "Y")
    )
    a, b = result["attributes"]["g"]["a"], result["attributes"]["g"]["b"]
    assert a["n_with_finding"] == 3 and a["underdiagnosis"] == pytest.approx(2 / 3)
    assert b["n_with_finding"] == 1 and b["underdiagnosis"] == 0.0
    assert a["gap"]["underdiagnosis"]["diff"] == pytest.approx(2 / 3)
    assert a["tpr"] == {"X": 0.0, "Y": 0.5} and a["fpr"] == {"X": 0.0, "Y": 0.0}
    assert b["tpr"] == {"X": 1.0, "Y": None} and b["fpr"] == {"X": 0.5, "Y": pytest.approx(1 / 3)}


def test_age_bands_and_attributes() -> None:
    assert age_band_names([0, 20, 40, 60, 80]) == ["0-20", "20-40", "40-60", "60-80", "80+"]
    bands = age_bands([0, 19, 20, 79.9, 80, 104, -1, np.nan])
    assert bands.tolist() == ["0-20", "0-20", "20-40", "60-80", "80+", "80+", "unknown", "unknown"]
    for bad in ([], [0, 17.5], [20, 20], [True, 3]):
        with pytest.raises(ValueError, match="age edges"):
            age_band_names(bad)
    table = pd.DataFrame(
        {
            "image": ["c.png", "a.png", "b.png"],
            "age": [85, 33, np.nan],
            "sex": ["F", "M", "?"],
            "view": ["AP", "PA", "LL"],
        }
    )
    attrs = subgroup_attributes(table, ["a.png", "b.png", "c.png"], age_edges=[0, 50])
    assert attrs["sex"].tolist() == ["M", "unknown", "F"]
    assert attrs["age"].tolist() == ["0-50", "unknown", "50+"]
    assert attrs["view"].tolist() == ["PA", "other", "AP"]
    with pytest.raises(ValueError, match="not in the label table"):
        subgroup_attributes(table, ["z.png"])


def test_bad_input_names_the_problem() -> None:
    targets, probs, patients, attributes = clustered()
    n = len(patients)
    kw = {"n_boot": 5, "ci": 0.9, "seed": 0, "labels": LABELS3}
    with pytest.raises(ValueError, match="hold no dot"):
        subgroup_audit(targets, probs, THRESHOLDS, patients, {"age": np.full(n, "17.5+")}, **kw)
    with pytest.raises(ValueError, match="'sex' must give"):
        subgroup_audit(targets, probs, THRESHOLDS, patients, {"sex": attributes["sex"][:-1]}, **kw)
    with pytest.raises(ValueError, match="thresholds"):
        subgroup_audit(targets, probs, [0.5, np.inf, 0.5], patients, attributes, **kw)
    with pytest.raises(ValueError, match="thresholds lack"):
        subgroup_audit(targets, probs, {"A": 0.5}, patients, attributes, **kw)
    with pytest.raises(ValueError, match="ci"):
        subgroup_audit(targets, probs, THRESHOLDS, patients, attributes, **{**kw, "ci": 1.0})


def test_no_bootstrap_gives_no_intervals() -> None:
    targets, probs, patients, attributes = clustered()
    result = subgroup_audit(
        targets, probs, THRESHOLDS, patients, attributes, n_boot=0, ci=0.9, seed=0, labels=LABELS3
    )
    entry = result["attributes"]["sex"]["F"]
    assert entry["macro_auc"] is not None and entry["macro_auc_ci"] == [None, None]
    assert entry["gap"]["underdiagnosis"]["ci"] == [None, None]


def test_a_class_without_a_threshold_is_never_called() -> None:
    """choose_thresholds gives NaN where validation lacks a class: no TPR / FPR, never predicted."""
    targets, probs, patients, attributes = clustered()
    thr = np.array([0.5, np.nan, 0.7])
    result = subgroup_audit(
        targets, probs, thr, patients, attributes, n_boot=5, ci=0.9, seed=0, labels=LABELS3
    )
    assert result["thresholds"] == {"A": 0.5, "B": None, "C": 0.7}
    for group, entry in result["attributes"]["sex"].items():
        mask = attributes["sex"] == group
        assert entry["tpr"]["B"] is None and entry["fpr"]["B"] is None
        assert entry["mean_tpr_classes"] <= 2
        pred = probs[mask][:, [0, 2]] >= thr[[0, 2]]
        sick = targets[mask].any(1)
        assert entry["underdiagnosis"] == pytest.approx((~pred[sick].any(1)).mean(), abs=1e-12)
