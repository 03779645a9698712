"""Differential tests: the published statistics against independent, maintained implementations.

Every comparison statistic (``metrics/compare.json``), sanity-check similarity and faithfulness
score (``metrics/sanity``), external-validation metric (``metrics/external``) and split count
(``metrics/split.json``) is recomputed here by code that shares nothing with ours but the inputs:

* scikit-learn ``roc_auc_score`` (every AUC, on every bootstrap replicate, replayed one by one with
  ``oracles.explicit_resamples``, which draws the same patients as the production bootstrap);
* statsmodels ``multipletests(method="holm")`` (every Holm adjustment);
* MLstatkit 0.1.91 ``Delong_test`` (DeLong's AUCs, variance, z and p);
* SciPy ``spearmanr`` and Quantus 0.6 ``correlation_spearman`` (the similarity function of its
  ``MPRT`` / ``ModelParameterRandomisation``) for the randomisation check;
* pytorch-grad-cam's metric classes (``CamMultImageConfidenceChange``, ``ROADMostRelevantFirst``,
  ``ROADLeastRelevantFirst``) for the faithfulness scores;
* pandas ``groupby`` and the standard library's ``statistics`` for counts and seed spreads.

Inputs are seeded (numpy) or drawn by hypothesis, and always hold score ties, unequal class sizes
and degenerate cases. Where our definition differs on purpose, the test lines the reference up and
one comment says how ours differs.
"""

from __future__ import annotations

import gc
import math
import statistics
import warnings
from itertools import combinations
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from MLstatkit import Delong_test
from oracles import explicit_resamples
from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from quantus.functions.similarity_func import correlation_spearman
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from statsmodels.stats.multitest import multipletests
from torch import nn

from cxr_core.audit.external import class_aucs, external_summary
from cxr_core.compare.paired import (
    bootstrap_p_value,
    comparison_summary,
    delong,
    delong_per_class,
    holm,
    paired_auc_bootstrap,
    paired_rate_bootstrap,
    pairwise_rate_bootstrap,
)
from cxr_core.compare.study import ranking, seed_spread
from cxr_core.data.external.base import MappedClass
from cxr_core.data.splits import Splits, split_stats
from cxr_core.data.tables import LOC_COLUMNS, SPLIT_COLUMNS
from cxr_core.explain.faithfulness import faithfulness_scores, road_scores
from cxr_core.explain.sanity import randomisation_check, spearman_maps
from cxr_core.labels import BOX_LABELS, LABEL_INDEX, LABELS

NAN = float("nan")


# ------------------------------------------------------------------------------------ reference helpers


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    """sklearn's ROC AUC. sklearn raises on a single-valued target; ours is NaN there (a rare finding
    is routinely absent from a replicate), so the reference returns NaN too."""
    y = np.asarray(y)
    return float(roc_auc_score(y, s)) if 0 < y.sum() < y.size else NAN


def _interval(values: np.ndarray, ci: float) -> list[float]:
    """numpy's percentile interval (default linear interpolation) of the finite replicates."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return [NAN, NAN]
    return [float(x) for x in np.percentile(v, [50.0 * (1.0 - ci), 50.0 * (1.0 + ci)])]


def _boot_p(values: np.ndarray) -> float:
    """Two-sided bootstrap p counted replicate by replicate (Davison & Hinkley's +1 form, as in the
    paired module's docstring): min(1, 2 min(1 + #{d <= 0}, 1 + #{d >= 0}) / (B + 1)) over defined d.

    sklearn's trapezoidal AUC can leave 1e-16 where the exact difference is 0 (ours is exact), so a
    difference is rounded to 12 decimals before its sign is read: any real AUC difference on these
    sizes is at least 1 / (n_pos n_neg) >> 1e-12."""
    finite = [round(float(v), 12) for v in np.ravel(values) if math.isfinite(v)]
    if not finite:
        return NAN
    below = 1 + sum(1 for v in finite if v <= 0)
    above = 1 + sum(1 for v in finite if v >= 0)
    return min(1.0, 2.0 * min(below, above) / (len(finite) + 1))


def _sm_holm(pvalues: np.ndarray) -> np.ndarray:
    """statsmodels' Holm over the finite entries. Ours leaves an undefined (NaN) test NaN and out of
    the family size m; statsmodels has no NaN rule, so it is given the finite entries only."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, NAN)
    finite = np.isfinite(p)
    if finite.any():
        # statsmodels' Holm branch ends in gc.collect(): ~0.3 s a call in a process holding torch
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(gc, "collect", lambda generation=2: 0)
            out[finite] = multipletests(p[finite], method="holm")[1]
    return out


def _close(actual, expected, atol: float = 1e-12) -> None:
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64), rtol=0, atol=atol
    )


# ------------------------------------------------------------------------------------------------ Holm

_P_VALUES = st.one_of(
    st.sampled_from([0.0, 0.001, 0.01, 0.0125, 0.02, 0.05, 0.25, 0.5, 1.0]),  # ties, 0 and 1
    st.floats(min_value=0.0, max_value=1.0),
    st.just(NAN),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_P_VALUES, min_size=1, max_size=12))
def test_holm_is_statsmodels_holm(pvalues):
    """``paired.holm`` vs ``statsmodels.stats.multitest.multipletests(method="holm")``."""
    p = np.asarray(pvalues)
    _close(holm(p), _sm_holm(p), atol=1e-15)


def test_holm_with_ties_and_p_one_is_statsmodels_holm():
    """Fixed case of the above (statsmodels): tied p-values get one adjusted value, p = 1 stays 1, and
    a Bonferroni m * p (no step-down) would differ from the second-smallest value on."""
    p = np.array([0.01, 0.04, 0.01, 1.0, NAN, 0.03, 0.04, 1.0])
    expected = _sm_holm(p)
    _close(holm(p), expected, atol=1e-15)
    assert expected[0] == expected[2] and expected[3] == 1.0 and np.isnan(holm(p)[4])
    assert holm(p)[5] < 7 * p[5]  # step-down: 0.03 is the third smallest of the 7 finite tests


# ---------------------------------------------------------------------------------------------- DeLong


def _delong_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    m, n = int(rng.integers(4, 30)), int(rng.integers(30, 90))  # unequal class sizes
    y = np.r_[np.ones(m), np.zeros(n)].astype(int)
    rng.shuffle(y)
    a = np.round(0.9 * y + rng.normal(0.0, 0.6, y.size), 1)  # one decimal: ties within and across classes
    b = np.round(0.5 * a + 0.4 * y + rng.normal(0.0, 0.5, y.size), 1)  # correlated with a
    return y, a, b


@pytest.mark.parametrize("seed", range(8))
def test_delong_is_mlstatkit_delong(seed):
    """``paired.delong`` vs ``MLstatkit.Delong_test`` (0.1.91, midrank DeLong, the pROC convention):
    both AUCs (and sklearn's), the variance of the difference, z and the two-sided p.

    MLstatkit signs z as (AUC_B - AUC_A) / SE; ours is (AUC_A - AUC_B) / SE, so z is negated."""
    y, a, b = _delong_case(seed)
    auc_a, auc_b, diff, variance, z, p = delong(y, a, b)
    z_ref, p_ref, _, _, auc_a_ref, auc_b_ref, info = Delong_test(y, a, b, alpha=0.95)
    assert info["method"] == "delong"  # not its bootstrap fallback: the variance is positive
    assert auc_a == pytest.approx(auc_a_ref, abs=1e-12) == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert auc_b == pytest.approx(auc_b_ref, abs=1e-12) == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    assert diff == pytest.approx(auc_a_ref - auc_b_ref, abs=1e-12)
    assert variance == pytest.approx(info["var_diff"], rel=1e-10)
    assert z == pytest.approx(-z_ref, rel=1e-9, abs=1e-12)
    assert p == pytest.approx(p_ref, rel=1e-9, abs=1e-15)


def test_delong_per_class_is_mlstatkit_with_statsmodels_holm_and_degenerate_classes():
    """``paired.delong_per_class`` vs MLstatkit ``Delong_test`` per class and statsmodels Holm over the
    classes. Degenerate classes, where the two differ on purpose:

    * no positive: ours NaN everywhere (MLstatkit raises);
    * one positive: ours gives both AUCs but a NaN variance, z and p, and the class leaves the
      Holm family (MLstatkit's covariance is undefined and it falls back to an image bootstrap);
    * identical scores: ours z = 0, p = 1 (MLstatkit's bootstrap fallback reports p = 0, because
      it counts a zero difference on one side only)."""
    y0, a0, b0 = _delong_case(11)
    y1, a1, b1 = _delong_case(12)
    n = y0.size
    y1, a1, b1 = y1[:n], a1[:n], b1[:n]
    y1[:] = 0
    y1[5] = 1  # one positive
    y3, a3, _ = _delong_case(13)
    y3, a3 = y3[:n], a3[:n]
    y3[:3] = (0, 1, 1)
    targets = np.stack([y0, y1, np.zeros(n, int), y3], axis=1)
    probs_a = np.stack([a0, a1, a0, a3], axis=1)
    probs_b = np.stack([b0, b1, b0, a3], axis=1)  # class 3: identical scores
    out = delong_per_class(targets, probs_a, probs_b)

    z_ref, p_ref, _, _, auc_a_ref, auc_b_ref, info = Delong_test(y0, a0, b0)
    assert info["method"] == "delong"
    _close(
        [out[k][0] for k in ("auc_a", "auc_b", "variance", "z", "p")],
        [auc_a_ref, auc_b_ref, info["var_diff"], -z_ref, p_ref],
        atol=1e-12,
    )
    assert out["auc_a"][1] == pytest.approx(roc_auc_score(y1, a1), abs=1e-12)
    assert out["auc_b"][1] == pytest.approx(roc_auc_score(y1, b1), abs=1e-12)
    assert all(np.isnan(out[k][1]) for k in ("variance", "z", "p", "p_holm"))
    assert all(np.isnan(out[k][2]) for k in ("auc_a", "auc_b", "diff", "variance", "z", "p", "p_holm"))
    assert (out["diff"][3], out["variance"][3], out["z"][3], out["p"][3]) == (0.0, 0.0, 0.0, 1.0)
    _close(out["p_holm"], _sm_holm([p_ref, NAN, NAN, 1.0]), atol=1e-12)


# ------------------------------------------------------------------------------------- bootstrap p-value

_DIFFS = arrays(
    np.float64,
    st.integers(1, 40),
    elements=st.sampled_from([-0.3, -0.01, 0.0, 0.0, 0.02, 0.1, NAN]),  # zeros and undefined replicates
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_DIFFS)
def test_bootstrap_p_value_is_the_counted_two_sided_p(d):
    """``paired.bootstrap_p_value`` vs the p counted replicate by replicate (``_boot_p``), and its
    invariance: the sign of the difference does not matter (p(d) = p(-d))."""
    p = bootstrap_p_value(d)
    assert p == pytest.approx(_boot_p(d), abs=1e-15, nan_ok=True)
    assert p == pytest.approx(bootstrap_p_value(-d), abs=1e-15, nan_ok=True)
    if np.isfinite(d).any():
        assert 2.0 / (np.isfinite(d).sum() + 1) - 1e-15 <= p <= 1.0


# ------------------------------------------------------------------------- paired AUC bootstrap (replayed)


def _auc_study(seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """~70 images of 24 patients (1-5 each), 4 classes: common, uncommon, rare (two patients, so many
    replicates lack it) and absent (undefined: out of the macro). Three models, scores with ties;
    ``c`` has two training seeds (S x N x C)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, 24)
    groups = np.repeat([f"p{i:02d}" for i in range(24)], sizes)
    n = groups.size
    t = np.zeros((n, 4), dtype=np.uint8)
    t[:, 0] = rng.random(n) < 0.45
    t[:, 1] = rng.random(n) < 0.2
    rare = np.flatnonzero(np.isin(groups, ["p03", "p17"]))
    t[rare, 2] = 1

    def model(strength: float) -> np.ndarray:
        return np.round(strength * t + rng.normal(0.0, 0.4, t.shape), 1)

    probs = {"a": model(0.7), "b": model(0.25), "c": np.stack([model(0.5), model(0.45)])}
    return t, groups, probs


def _replayed_aucs(t: np.ndarray, runs: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """n_boot x C: sklearn's AUC of each seed on each replayed patient draw, mean over the seeds."""
    out = np.full((n_boot, t.shape[1]), NAN)
    for r, idx in enumerate(explicit_resamples(groups, n_boot, seed)):
        for c in range(t.shape[1]):
            out[r, c] = np.mean([_auc(t[idx, c], run[idx, c]) for run in runs])
    return out


def test_paired_auc_bootstrap_is_a_replayed_sklearn_bootstrap_with_statsmodels_holm():
    """``paired.paired_auc_bootstrap`` vs an explicit loop over the same patient draws with sklearn's
    ``roc_auc_score`` per replicate and seed, numpy percentiles, the counted p and statsmodels Holm
    (over the pairs, per class and for the macro; over the classes within a pair)."""
    t, groups, probs = _auc_study(1)
    n_boot, ci, seed = 40, 0.9, 5
    res = paired_auc_bootstrap(t, probs, groups, n_boot=n_boot, ci=ci, seed=seed)
    runs = {m: (p if p.ndim == 3 else p[None]) for m, p in probs.items()}
    defined = np.array([0 < t[:, c].sum() < len(t) for c in range(t.shape[1])])
    assert defined.tolist() == [True, True, True, False] and res["defined"].tolist() == defined.tolist()

    reps = {m: _replayed_aucs(t, r, groups, n_boot, seed) for m, r in runs.items()}
    point = {
        m: np.array([np.mean([_auc(t[:, c], s[:, c]) for s in r]) for c in range(4)]) for m, r in runs.items()
    }
    for m in runs:
        _close(res["replicates"][m], reps[m])
        _close(res["auc"][m], point[m])
        assert res["macro_auc"][m] == pytest.approx(point[m][defined].mean(), abs=1e-12)
    assert 0 < np.isfinite(reps["a"][:, 2]).sum() < n_boot  # the rare class drops out of some replicates

    pairs = list(combinations(runs, 2))
    assert [(pair["a"], pair["b"]) for pair in res["pairs"]] == pairs
    class_p, macro_p = [], []
    for pair, (a, b) in zip(res["pairs"], pairs, strict=True):
        d = reps[a] - reps[b]
        _close(pair["diff"], point[a] - point[b])
        _close(np.c_[pair["ci_low"], pair["ci_high"]], [_interval(d[:, c], ci) for c in range(4)])
        p = np.array([_boot_p(d[:, c]) for c in range(4)])
        _close(pair["p"], p, atol=1e-15)
        assert pair["n_valid"].tolist() == np.isfinite(d).sum(axis=0).tolist()
        _close(pair["p_holm_classes"], _sm_holm(p), atol=1e-15)
        # the macro of a replicate: mean over the classes defined on the full data, NaN if one is missing
        macro_d = reps[a][:, defined].mean(axis=1) - reps[b][:, defined].mean(axis=1)
        macro = pair["macro"]
        assert macro["diff"] == pytest.approx(point[a][defined].mean() - point[b][defined].mean(), abs=1e-12)
        _close([macro["ci_low"], macro["ci_high"]], _interval(macro_d, ci))
        assert macro["p"] == pytest.approx(_boot_p(macro_d), abs=1e-15)
        assert macro["n_valid"] == np.isfinite(macro_d).sum()
        class_p.append(p)
        macro_p.append(macro["p"])
    class_holm = np.stack([_sm_holm(col) for col in np.stack(class_p).T], axis=1)
    for pair, p_class, p_macro in zip(res["pairs"], class_holm, _sm_holm(macro_p), strict=True):
        _close(pair["p_holm"], p_class, atol=1e-15)
        assert pair["macro"]["p_holm"] == pytest.approx(p_macro, abs=1e-15)


# ------------------------------------------------------------------------ paired rate bootstrap (replayed)

_BOX_CLASSES = {"Atelectasis": 34, "Cardiomegaly": 9, "Mass": 3}  # unequal numbers of boxes per class
_HIT_RATE = {  # per contender and class: a mean over boxes is far from the mean of the class rates
    "first": {"Atelectasis": 0.9, "Cardiomegaly": 0.2, "Mass": 0.0},
    "second": {"Atelectasis": 0.3, "Cardiomegaly": 0.7, "Mass": 1.0},
    "third": {"Atelectasis": 0.6, "Cardiomegaly": 0.5, "Mass": 0.5},
}


def _box_study(seed: int) -> pd.DataFrame:
    """One row per box: its class, patient (18 patients, Mass on two of them) and each contender's hit;
    ``third`` is a mean over two training seeds (0, 0.5 or 1)."""
    rng = np.random.default_rng(seed)
    cls = np.repeat(list(_BOX_CLASSES), list(_BOX_CLASSES.values()))
    patient = rng.integers(0, 16, cls.size).astype(str)
    patient[cls == "Mass"] = ["p16", "p17", "p17"]
    frame = pd.DataFrame({"cls": cls, "patient": patient})
    rate = frame["cls"].map(lambda c: _HIT_RATE["first"][c]).to_numpy()
    frame["first"] = (rng.random(cls.size) < rate).astype(float)
    rate = frame["cls"].map(lambda c: _HIT_RATE["second"][c]).to_numpy()
    frame["second"] = (rng.random(cls.size) < rate).astype(float)
    rate = frame["cls"].map(lambda c: _HIT_RATE["third"][c]).to_numpy()
    frame["third"] = ((rng.random(cls.size) < rate) + (rng.random(cls.size) < rate)) / 2.0
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # boxes in no class order


def _rate_diffs(frame: pd.DataFrame, a: str, b: str) -> tuple[float, pd.Series, float]:
    """pandas: overall rate difference, per-class differences (NaN for a class without boxes) and
    their mean over the classes of the full data (NaN if one is missing)."""
    per_class = frame.groupby("cls")[[a, b]].mean().reindex(list(_BOX_CLASSES))
    diff = per_class[a] - per_class[b]
    return frame[a].mean() - frame[b].mean(), diff, diff.mean(skipna=False)


def test_pairwise_rate_bootstrap_is_a_replayed_pandas_bootstrap_with_a_mean_over_classes():
    """``paired.pairwise_rate_bootstrap`` / ``paired_rate_bootstrap`` vs pandas ``groupby`` means on
    each replayed patient draw, numpy percentiles, the counted p and statsmodels Holm over the pairs.
    The class mean is a mean over classes of per-class rates, not a mean over boxes: with 34 / 9 / 3
    boxes per class the two differ (checked), so a mean over boxes fails."""
    frame = _box_study(3)
    n_boot, ci, seed = 60, 0.8, 2
    names = list(_HIT_RATE)
    hits = {name: frame[name].to_numpy() for name in names}
    res = pairwise_rate_bootstrap(
        hits, frame["patient"].to_numpy(), classes=frame["cls"].to_numpy(), n_boot=n_boot, ci=ci, seed=seed
    )
    draws = explicit_resamples(frame["patient"].to_numpy(), n_boot, seed)
    assert any(not (frame["cls"].iloc[idx] == "Mass").any() for idx in draws)  # Mass missing in some
    overall_p, class_mean_p = [], []
    for pair, (a, b) in zip(res["pairs"], combinations(names, 2), strict=True):
        assert (pair["a"], pair["b"]) == (a, b)
        overall, per_class, class_mean = _rate_diffs(frame, a, b)
        assert abs(class_mean - overall) > 0.05  # the test can tell the two means apart
        replayed = [_rate_diffs(frame.iloc[idx], a, b) for idx in draws]
        rep_overall = np.array([r[0] for r in replayed])
        rep_class = pd.DataFrame([r[1] for r in replayed]).to_numpy()
        rep_mean = np.array([r[2] for r in replayed])

        class_rates = frame.groupby("cls")[[a, b]].mean()
        entry = pair["class_mean"]
        assert entry["rate_a"] == pytest.approx(class_rates[a].mean(), abs=1e-12)
        assert entry["rate_b"] == pytest.approx(class_rates[b].mean(), abs=1e-12)
        assert entry["diff"] == pytest.approx(class_mean, abs=1e-12)
        _close(entry["replicates"], rep_mean)
        _close([entry["ci_low"], entry["ci_high"]], _interval(rep_mean, ci))
        assert entry["p"] == pytest.approx(_boot_p(rep_mean), abs=1e-15)
        assert entry["n_valid"] == np.isfinite(rep_mean).sum() < n_boot

        entry = pair["overall"]
        assert (entry["rate_a"], entry["rate_b"]) == pytest.approx(
            (frame[a].mean(), frame[b].mean()), abs=1e-12
        )
        assert entry["diff"] == pytest.approx(overall, abs=1e-12)
        _close(entry["replicates"], rep_overall)
        _close([entry["ci_low"], entry["ci_high"]], _interval(rep_overall, ci))
        assert entry["p"] == pytest.approx(_boot_p(rep_overall), abs=1e-15)

        for k, name in enumerate(_BOX_CLASSES):
            entry = pair["per_class"][name]
            assert entry["diff"] == pytest.approx(per_class[name], abs=1e-12)
            _close(entry["replicates"], rep_class[:, k])
            _close([entry["ci_low"], entry["ci_high"]], _interval(rep_class[:, k], ci))
            assert entry["p"] == pytest.approx(_boot_p(rep_class[:, k]), abs=1e-15)
        overall_p.append(_boot_p(rep_overall))
        class_mean_p.append(_boot_p(rep_mean))

        # the single-pair function on its own, without classes: the overall rate only
        alone = paired_rate_bootstrap(
            hits[a], hits[b], frame["patient"].to_numpy(), n_boot=n_boot, ci=ci, seed=seed
        )
        assert "class_mean" not in alone
        _close(alone["overall"]["replicates"], rep_overall)
    for key, p_values in (("overall", overall_p), ("class_mean", class_mean_p)):
        _close([pair[key]["p_holm"] for pair in res["pairs"]], _sm_holm(p_values), atol=1e-15)


# -------------------------------------------------------------------------------- study: seeds, ranking


def _run(targets: np.ndarray, probs: np.ndarray) -> SimpleNamespace:
    n = len(targets)
    return SimpleNamespace(rows=np.arange(n), patients=np.arange(n) // 3, probs=probs, targets=targets)


def test_seed_spread_is_statistics_mean_and_sample_stdev():
    """``study.seed_spread`` vs sklearn macro AUCs (mean of ``roc_auc_score`` over the classes with both
    values) and ``statistics.fmean`` / ``statistics.stdev`` (the sample SD, ddof 1); one seed has no
    SD (None), and a run without any defined class has no macro (NaN) and is left out of both."""
    rng = np.random.default_rng(7)
    t = np.zeros((90, 5), dtype=np.uint8)
    t[:, 0] = rng.random(90) < 0.5
    t[:, 1] = rng.random(90) < 0.1
    t[:4, 2] = 1  # four positives; classes 3 and 4 have none (undefined, out of the macro)
    seeds = [0, 1, 2]
    runs = {
        "three": [_run(t, np.round(0.6 * t + rng.random(t.shape), 1)) for _ in seeds],
        "one": [_run(t, rng.random(t.shape))],
        "undefined": [_run(np.zeros_like(t), rng.random(t.shape)) for _ in seeds],
    }
    ref_macro = {
        m: [statistics.fmean([_auc(t[:, c], r.probs[:, c]) for c in range(3)]) for r in rs]
        for m, rs in runs.items()
    }
    out = seed_spread({m: runs[m] for m in ("three", "undefined")}, seeds)
    out.update(seed_spread({"one": runs["one"]}, [0]))
    assert [out["three"]["macro_auc"][f"seed{k}"] for k in seeds] == pytest.approx(
        ref_macro["three"], abs=1e-12
    )
    assert out["three"]["mean"] == pytest.approx(statistics.fmean(ref_macro["three"]), abs=1e-12)
    assert out["three"]["sd"] == pytest.approx(statistics.stdev(ref_macro["three"]), abs=1e-12)
    assert out["one"]["mean"] == pytest.approx(ref_macro["one"][0], abs=1e-12) and out["one"]["sd"] is None
    assert all(math.isnan(v) for v in out["undefined"]["macro_auc"].values())
    assert out["undefined"]["mean"] is None and out["undefined"]["sd"] is None


def test_ranking_is_an_explicit_recomputation_from_sklearn_and_statsmodels_holm():
    """``study.ranking`` on ``comparison_summary(paired_auc_bootstrap(...))`` vs a recomputation: the best
    model by sklearn macro AUC, the order, and per other model the difference best - other, its interval
    (percentiles of the replayed best - other replicates), its Holm p (statsmodels over the pairs of the
    counted p) and ``worse`` = p_holm < alpha and the difference favours the best. The best is listed
    last, so every pair holds it as ``b`` and the signs must be flipped."""
    rng = np.random.default_rng(25)
    groups = np.repeat(np.arange(70), rng.integers(1, 5, 70))
    n = groups.size
    t = (rng.random((n, 3)) < [0.4, 0.25, 0.1]).astype(np.uint8)
    probs = {
        "noise": np.round(rng.random((n, 3)), 1),
        "close": np.round(1.0 * t + rng.normal(0.0, 0.5, t.shape), 1),
        "strong": np.round(1.2 * t + rng.normal(0.0, 0.5, t.shape), 1),
    }
    n_boot, ci, seed, alpha = 100, 0.9, 3, 0.1
    res = paired_auc_bootstrap(t, probs, groups, n_boot=n_boot, ci=ci, seed=seed)
    summary = comparison_summary(res, labels=["x", "y", "z"])
    macro = {m: statistics.fmean(_auc(t[:, c], p[:, c]) for c in range(3)) for m, p in probs.items()}
    out = ranking(summary, {m: res["macro_auc"][m] for m in probs}, alpha)

    best = max(macro, key=macro.get)
    assert best == "strong" and out["best"] == best
    assert out["order"] == sorted(macro, key=lambda m: -macro[m])
    macro_reps = {m: _replayed_aucs(t, p[None], groups, n_boot, seed).mean(axis=1) for m, p in probs.items()}
    pairs = list(combinations(probs, 2))
    p_holm = dict(
        zip(pairs, _sm_holm([_boot_p(macro_reps[a] - macro_reps[b]) for a, b in pairs]), strict=True)
    )
    for other in ("noise", "close"):
        d = macro_reps[best] - macro_reps[other]
        gap = out["gap"][other]
        assert gap["diff"] == pytest.approx(macro[best] - macro[other], abs=1e-12)
        _close(gap["ci"], _interval(d, ci))
        assert gap["p_holm"] == pytest.approx(p_holm[(other, best)], abs=1e-15)
        assert gap["worse"] == (p_holm[(other, best)] < alpha and macro[best] > macro[other])
    assert out["gap"]["noise"]["worse"] and not out["gap"]["close"]["worse"]  # both outcomes occur
    assert set(out["gap"]) == {"noise", "close"}


def test_ranking_ties_and_unscored_models_follow_the_listed_order():
    """``study.ranking``'s tie rule vs Python's stable ``sorted`` (the reference): equal scores keep the
    order the models are listed in, the first of them is best, and an undefined (None) score is not
    ranked and gets no gap."""
    summary = {
        "pairs": {
            "a_vs_b": {"a": "a", "b": "b", "macro": {"diff": 0.0, "ci": [-0.1, 0.1], "p_holm": 1.0}},
            "a_vs_c": {"a": "a", "b": "c", "macro": {"diff": None, "ci": [None, None], "p_holm": None}},
            "b_vs_d": {"a": "b", "b": "d", "macro": {"diff": 0.3, "ci": [0.1, 0.5], "p_holm": 0.01}},
            "a_vs_d": {"a": "a", "b": "d", "macro": {"diff": 0.3, "ci": [0.1, 0.5], "p_holm": 0.01}},
        }
    }
    score = {"a": 0.8, "b": 0.8, "c": None, "d": 0.5}
    out = ranking(summary, score, 0.05)
    scored = [m for m in score if score[m] is not None]
    assert out["order"] == sorted(scored, key=lambda m: -score[m]) == ["a", "b", "d"]
    assert out["best"] == "a" and set(out["gap"]) == {"b", "d"}
    assert not out["gap"]["b"]["worse"] and out["gap"]["d"]["worse"]


# ------------------------------------------------------------------------------- sanity: Spearman, MPRT


def test_spearman_maps_is_quantus_mprt_spearman_with_ties_and_constant_maps():
    """``sanity.spearman_maps`` vs Quantus's ``correlation_spearman`` (batched, as its MPRT calls it on
    flattened maps) and ``scipy.stats.spearmanr`` per map. A constant map (or one with a NaN) has no
    ranking: ours returns NaN, as scipy does (with a ConstantInputWarning); Quantus's batched call
    cannot take it at all (scipy then returns one NaN for the whole batch), so it gets the others."""
    rng = np.random.default_rng(0)
    a = np.round(rng.random((8, 6, 5)), 1)  # one decimal: many tied pixels
    b = np.round(0.6 * a + rng.random(a.shape), 1)
    b[2] = -a[2]
    b[6] = a[6] ** 3  # monotone, same ties: rho = 1
    a[3] = 0.4  # constant trained map
    b[4] = 0.0  # constant randomised map
    a[5, 1, 1] = NAN
    rho = spearman_maps(a, b)
    ok = [0, 1, 2, 6, 7]
    ref = correlation_spearman(a[ok].reshape(len(ok), -1), b[ok].reshape(len(ok), -1), batched=True)
    _close(rho[ok], ref)
    assert rho[2] == pytest.approx(-1.0) and rho[6] == pytest.approx(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's ConstantInputWarning
        for i in (3, 4, 5):
            assert np.isnan(spearmanr(a[i].ravel(), b[i].ravel()).statistic) and np.isnan(rho[i])
    assert spearman_maps(a[0], b[0]) == pytest.approx([ref[0]], abs=1e-12)  # one (H, W) map


_MAPS = arrays(np.float64, (2, 4, 5), elements=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]))


@settings(max_examples=60, deadline=None)
@given(_MAPS, _MAPS)
def test_spearman_maps_is_scipy_and_rank_invariant(a, b):
    """``sanity.spearman_maps`` vs ``scipy.stats.spearmanr`` map by map, and the rank-correlation
    invariances: symmetric, unchanged by a strictly increasing transform of either map (a Pearson
    correlation would change), negated by negating one map."""
    rho = spearman_maps(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = [spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b, strict=True)]
    _close(rho, ref)
    _close(spearman_maps(b, a), rho)
    _close(spearman_maps(np.exp(3 * a), b**3), rho)
    _close(spearman_maps(-a, b), -rho)


class TinyNet(nn.Module):
    """Two 3 x 3 convolutions, global max pooling and a linear head: 3 findings, 32 x 32 inputs.
    ``feature_info`` / ``get_classifier`` are timm's, as the cascade needs them."""

    feature_info = [{"module": "conv1"}, {"module": "conv2"}]

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(h.amax(dim=(2, 3)))


@pytest.fixture(scope="module")
def tiny() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


def test_randomisation_check_similarity_is_quantus_mprt_similarity(tiny, monkeypatch, single_thread):
    """``sanity.randomisation_check``'s per-image similarity at every cascade step vs Quantus's MPRT
    similarity function (``correlation_spearman``, batched on flattened maps) between the trained
    model's maps and the randomised copy's. The CAMs are replaced by maps that depend on the network's
    weights (a seeded draw from their sum), so each step's maps are known here.

    Quantus's MPRT keeps one similarity per sample; ours also reports their mean over the finite
    ones (a constant map has no Spearman: None, left out of the mean and of ``n_finite``)."""
    import cxr_core.explain.cams.batch_loop as methods

    base = np.round(np.random.default_rng(0).random((5, 8, 8)), 1)
    seen: list[np.ndarray] = []

    def fake_heatmaps(net, spec, images, class_indices, names, batch_size, seed, **kwargs):
        key = int(1e6 * sum(float(p.detach().double().abs().sum()) for p in net.parameters())) % 2**32
        maps = np.round(base + np.random.default_rng(key).random(base.shape), 1)
        maps[1] = 0.25  # a constant map
        seen.append(maps)
        return {name: maps.astype(np.float32) for name in names}

    monkeypatch.setattr(methods, "compute_heatmaps", fake_heatmaps)
    images = torch.zeros(5, 3, 32, 32)
    out = randomisation_check(tiny, None, images, [0, 1, 2, 0, 1], ["GradCAM"], seed=4, stages=2)["GradCAM"]
    assert out["steps"] == ["head", "head+conv2", "head+conv2+conv1"] and len(seen) == 4
    trained = seen[0].astype(np.float32).astype(np.float64).reshape(5, -1)
    ok = [0, 2, 3, 4]
    for step, maps in zip(out["steps"], seen[1:], strict=True):
        flat = maps.astype(np.float32).astype(np.float64).reshape(5, -1)
        ref = correlation_spearman(trained[ok], flat[ok], batched=True)
        per_image = out["spearman_per_image"][step]
        assert per_image[1] is None
        _close([per_image[i] for i in ok], ref)
        assert out["spearman"][step] == pytest.approx(float(np.mean(ref)), abs=1e-12)
        assert out["n_finite"][step] == len(ok)


# ------------------------------------------------------------------------------ sanity: faithfulness


class SigmoidOf:
    """The reference target: the sigmoid probability of one finding, written here (not ours)."""

    def __init__(self, category: int) -> None:
        self.category = category

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output[self.category])


@pytest.fixture(scope="module")
def faithfulness_case() -> tuple[torch.Tensor, np.ndarray, list[int]]:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 3, 32, 32, generator=gen)
    x[:, :, 10:18, 12:20] += 2.0
    yy, xx = np.mgrid[:32, :32]
    bump = np.exp(-((yy - 14) ** 2 + (xx - 16) ** 2) / 30.0)
    rng = np.random.default_rng(5)
    maps = np.stack([bump, np.round(rng.random((32, 32)), 1), np.round(1 - bump, 1)])  # ties in maps 1, 2
    return x, maps.astype(np.float32), [0, 2, 1]


def test_cam_mult_faithfulness_is_pytorch_grad_cams_confidence_change(tiny, faithfulness_case, single_thread):
    """``sanity.faithfulness_scores(metric="cam_mult")`` vs pytorch-grad-cam's
    ``CamMultImageConfidenceChange`` with a sigmoid target written here (and ``ClassifierOutputTarget``
    for ``target="logit"``), and vs the explicit score(image * map) - score(image). A map with a NaN
    scores NaN (pytorch-grad-cam has no rule for it)."""
    x, maps, classes = faithfulness_case
    ours = faithfulness_scores(tiny, x, classes, maps, metric="cam_mult", batch_size=2)
    ref = CamMultImageConfidenceChange()(x, maps, [SigmoidOf(c) for c in classes], tiny)
    _close(ours, ref, atol=1e-6)
    with torch.no_grad():
        before = torch.sigmoid(tiny(x))[torch.arange(3), classes]
        after = torch.sigmoid(tiny(x * torch.from_numpy(maps)[:, None]))[torch.arange(3), classes]
    _close(ours, (after - before).numpy(), atol=1e-6)
    assert np.abs(ours).max() > 1e-3  # the maps change the score: a wrong target or sign would show

    logit = faithfulness_scores(tiny, x, classes, maps, metric="cam_mult", target="logit")
    _close(
        logit,
        CamMultImageConfidenceChange()(x, maps, [ClassifierOutputTarget(c) for c in classes], tiny),
        1e-5,
    )
    nan_maps = maps.copy()
    nan_maps[1, 3, 3] = NAN
    scored = faithfulness_scores(tiny, x, classes, nan_maps, metric="cam_mult")
    assert np.isnan(scored[1]) and scored[[0, 2]] == pytest.approx(ours[[0, 2]], abs=1e-6)


def test_road_is_pytorch_grad_cams_morf_and_lerf(tiny, faithfulness_case, single_thread):
    """``sanity.road_scores`` vs pytorch-grad-cam's ``ROADLeastRelevantFirst`` and
    ``ROADMostRelevantFirst`` at each percentile: (mean LeRF change - mean MoRF change) / 2, with the
    sigmoid target written here.

    The imputation adds torch noise; ours reseeds torch's CPU generator with ``seed`` and scores batch
    by batch (LeRF at every percentile, then MoRF), so the reference replays those draws in that order
    and must agree to float32 rounding. A map with a NaN scores NaN; ours scores it as a zero map to
    keep the draws of the others, so the reference does too."""
    x, maps, classes = faithfulness_case
    maps = maps.copy()
    maps[2, 0, 0] = NAN
    percentiles, seed, batch = (20, 50, 80), 3, 2
    ours = road_scores(tiny, x, classes, maps, percentiles=percentiles, seed=seed, batch_size=batch)

    filled = np.where(np.isfinite(maps), maps, 0.0).astype(np.float32)
    filled[2] = 0.0
    ref = np.empty(len(x))
    with torch.no_grad(), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.default_generator.manual_seed(seed)
        for lo in range(0, len(x), batch):
            xs, ms, ts = (
                x[lo : lo + batch],
                filled[lo : lo + batch],
                [SigmoidOf(c) for c in classes[lo : lo + batch]],
            )
            lerf = np.mean([ROADLeastRelevantFirst(p)(xs, ms, ts, tiny) for p in percentiles], axis=0)
            morf = np.mean([ROADMostRelevantFirst(p)(xs, ms, ts, tiny) for p in percentiles], axis=0)
            ref[lo : lo + batch] = (lerf - morf) / 2
    assert np.isnan(ours[2])
    _close(ours[:2], ref[:2], atol=1e-6)
    assert np.abs(ref[:2]).max() > 1e-3  # large enough that a swapped sign or a wrong target would show


# --------------------------------------------------------------------------------- external validation

_EXTERNAL = [
    MappedClass("Effusion", ("Effusion",), "Pleural Effusion"),
    MappedClass("Lung Lesion", ("Mass", "Nodule"), "Lung Lesion", "proxy"),  # max of two probabilities
    MappedClass("Opacity", ("Pneumonia", "Consolidation", "Infiltration"), "Lung Opacity", "proxy"),
    MappedClass("Hernia", ("Hernia",), "Hernia"),  # exactly min_positives external positives: in the macro
    MappedClass("Fibrosis", ("Fibrosis",), "Fibrosis"),  # two external positives: below min_positives
    MappedClass("Edema", ("Edema",), "Edema"),  # never labelled externally: no AUC
]


def _nih_like(rng: np.random.Generator, n: int, n_patients: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    groups = np.sort(rng.integers(0, n_patients, n))
    t = (rng.random((n, 14)) < np.linspace(0.05, 0.35, 14)).astype(np.uint8)
    p = np.round(1 / (1 + np.exp(-(1.5 * t + rng.normal(0.0, 1.0, t.shape) - 1.0))), 1)  # ties
    return t, p, groups


def test_external_summary_is_sklearn_on_labelled_rows_with_replayed_draws():
    """``external.class_aucs`` / ``external_summary`` vs sklearn on each class's labelled rows: proxy
    classes scored by the max of their NIH probabilities (numpy ``max``), NIH targets mapped the same
    way, both bootstraps replayed (external: seed [seed, 1]; NIH: seed, test@'s draw), percentile
    intervals of the AUCs, of the drop (external - NIH) and of the macro over the classes with at
    least ``min_positives`` positives and negatives on both sets."""
    rng = np.random.default_rng(9)
    t, p, g = _nih_like(rng, 150, 45)
    nt, npr, ng = _nih_like(rng, 180, 60)
    idx = [[LABEL_INDEX[name] for name in c.nih] for c in _EXTERNAL]
    ext_scores = np.stack([p[:, i].max(axis=1) for i in idx], axis=1)
    nih_labels = np.stack([nt[:, i].max(axis=1) for i in idx], axis=1)
    nih_scores = np.stack([npr[:, i].max(axis=1) for i in idx], axis=1)
    labels = np.stack([t[:, i].max(axis=1) for i in idx], axis=1).astype(np.float64)
    labels[rng.random(labels.shape) < 0.2] = NAN  # blank / uncertain: missing, never negative
    labels[:, 3:5] = np.where(np.isfinite(labels[:, 3:5]), 0.0, NAN)
    labels[[0, 1, 2], 3] = 1.0
    labels[[0, 1], 4] = 1.0
    labels[:, 5] = NAN
    n_boot, ci, seed, min_pos = 50, 0.8, 4, 3
    given = labels.copy()
    out = external_summary(
        _EXTERNAL, (labels, p, g), (nt, npr, ng), n_boot=n_boot, ci=ci, seed=seed, min_positives=min_pos
    )
    assert np.array_equal(labels, given, equal_nan=True)  # the caller's labels are left alone

    def replay(y, s, groups, draw_seed):
        reps = np.full((n_boot, y.shape[1]), NAN)
        for r, rows in enumerate(explicit_resamples(groups, n_boot, draw_seed)):
            for k in range(y.shape[1]):
                keep = rows[np.isfinite(y[rows, k])]
                reps[r, k] = _auc(y[keep, k], s[keep, k])
        return reps

    ext_reps = replay(labels, ext_scores, g, [seed, 1])
    nih_reps = replay(nih_labels.astype(float), nih_scores, ng, seed)
    auc, reps = class_aucs(labels, ext_scores, g, n_boot=n_boot, seed=[seed, 1])
    _close(reps, ext_reps)
    in_macro, ext_point, nih_point = [], [], []
    for k, c in enumerate(_EXTERNAL):
        ok = np.isfinite(labels[:, k])
        ext_auc = _auc(labels[ok, k], ext_scores[ok, k]) if ok.any() else NAN
        nih_auc = _auc(nih_labels[:, k], nih_scores[:, k])
        assert auc[k] == pytest.approx(ext_auc, abs=1e-12, nan_ok=True)
        row = out["classes"][c.name]
        counts = [(labels[ok, k] == 1).sum(), (labels[ok, k] == 0).sum(), nih_labels[:, k].sum()]
        counts.append(len(nih_labels) - counts[2])
        assert (row["n_labelled"], row["positives"], row["missing"], row["nih_positives"]) == (
            ok.sum(),
            counts[0],
            (~ok).sum(),
            counts[2],
        )
        assert row["auc"] == (None if np.isnan(ext_auc) else pytest.approx(ext_auc, abs=1e-12))
        assert row["nih_auc"] == pytest.approx(nih_auc, abs=1e-12)
        # ours writes an undefined number as None (JSON null), numpy gives NaN
        none = [None if np.isnan(v) else pytest.approx(v, abs=1e-12) for v in _interval(ext_reps[:, k], ci)]
        assert row["auc_ci"] == none
        assert row["nih_auc_ci"] == pytest.approx(_interval(nih_reps[:, k], ci), abs=1e-12)
        drop = _interval(ext_reps[:, k] - nih_reps[:, k], ci)
        assert row["drop_ci"] == [None if np.isnan(v) else pytest.approx(v, abs=1e-12) for v in drop]
        enough = min(counts) >= min_pos and np.isfinite(ext_auc) and np.isfinite(nih_auc)
        assert row["in_macro"] == enough
        in_macro.append(enough)
        ext_point.append(ext_auc)
        nih_point.append(nih_auc)
    keep = np.array(in_macro)
    assert keep.tolist() == [True, True, True, True, False, False]
    assert out["macro_classes"] == [c.name for c, ok in zip(_EXTERNAL, keep, strict=True) if ok]
    ext_point, nih_point = np.array(ext_point)[keep], np.array(nih_point)[keep]
    assert out["macro_auc"] == pytest.approx(ext_point.mean(), abs=1e-12)
    assert out["nih_macro_auc"] == pytest.approx(nih_point.mean(), abs=1e-12)
    assert out["macro_drop"] == pytest.approx(ext_point.mean() - nih_point.mean(), abs=1e-12)
    macro_ext, macro_nih = ext_reps[:, keep].mean(axis=1), nih_reps[:, keep].mean(axis=1)
    assert out["macro_auc_ci"] == pytest.approx(_interval(macro_ext, ci), abs=1e-12)
    assert out["nih_macro_auc_ci"] == pytest.approx(_interval(macro_nih, ci), abs=1e-12)
    assert out["macro_drop_ci"] == pytest.approx(_interval(macro_ext - macro_nih, ci), abs=1e-12)


# ----------------------------------------------------------------------------------------- split counts


def _split_table(rng: np.random.Generator, patients: list[str], row0: int) -> pd.DataFrame:
    sizes = rng.integers(1, 5, len(patients))
    patient = np.repeat(patients, sizes)
    n = patient.size
    labels = (
        rng.random((n, len(LABELS))) < np.r_[np.linspace(0.02, 0.25, len(LABELS) - 1), 0.0]
    )  # Hernia: none
    table = pd.DataFrame(
        {"row": np.arange(row0, row0 + n), "image": [f"{row0 + i:08d}_000.png" for i in range(n)]}
    )
    table["patient"] = patient
    table[list(LABELS)] = labels.astype(np.uint8)
    return table[SPLIT_COLUMNS]


def test_split_stats_is_a_pandas_groupby():
    """``splits.split_stats`` (``metrics/split.json``) vs pandas ``groupby`` counts on a synthetic table:
    images, patients, no-finding images, positives and prevalence per split, boxes per label and per
    subset, shared patients. Degenerate cases: an empty split (pandas has no group: its counts are 0,
    and ours reports prevalence 0 where the ratio is 0/0) and a finding with no positive."""
    rng = np.random.default_rng(2)
    train = _split_table(rng, [f"{i:05d}" for i in range(30)], 0)
    test = _split_table(rng, [f"{i:05d}" for i in range(29, 45)], 500)  # patient 00029 is in both
    val = train.iloc[:0]
    loc_rows = test.sample(25, replace=True, random_state=1)
    loc = pd.DataFrame({column: np.zeros(25) for column in LOC_COLUMNS})
    for column in ("row", "image", "patient"):
        loc[column] = loc_rows[column].to_numpy()
    loc["label"] = rng.choice(list(BOX_LABELS[:5]), 25, p=[0.5, 0.2, 0.15, 0.1, 0.05])  # 3 labels never boxed
    loc["label_index"] = loc["label"].map(LABEL_INDEX)
    loc["subset"] = rng.choice(["tune", "report"], 25)
    stats = split_stats(Splits(train=train, val=val, test=test, loc=loc))

    names = ["train", "val", "test"]
    every = pd.concat([train.assign(split="train"), val.assign(split="val"), test.assign(split="test")])
    by = every.groupby("split")
    images = by.size().reindex(names, fill_value=0)
    patients = by["patient"].nunique().reindex(names, fill_value=0)
    positives = by[list(LABELS)].sum().reindex(names, fill_value=0)
    no_finding = (
        (every[list(LABELS)].sum(axis=1) == 0).groupby(every["split"]).sum().reindex(names, fill_value=0)
    )
    prevalence = positives.div(images, axis=0).fillna(0.0)  # ours: 0 for an empty split (pandas: 0/0 = NaN)
    for name in names:
        got = stats[name]
        assert (got["images"], got["patients"], got["no_finding"]) == (
            images[name],
            patients[name],
            no_finding[name],
        )
        assert got["positives"] == positives.loc[name].to_dict()
        # ours rounds the prevalence to 5 decimals
        assert got["prevalence"] == pytest.approx(prevalence.loc[name].to_dict(), abs=5e-6)
    assert stats["train"]["positives"]["Hernia"] == 0 and stats["val"]["images"] == 0

    assert stats["loc"]["images"] == loc["image"].nunique() and stats["loc"]["boxes"] == len(loc)
    assert stats["loc"]["patients"] == loc["patient"].nunique()
    per_label = loc["label"].value_counts().reindex(list(BOX_LABELS), fill_value=0)
    assert stats["loc"]["boxes_per_label"] == per_label.to_dict()
    subsets = loc.groupby("subset").agg(boxes=("image", "size"), patients=("patient", "nunique"))
    for subset in ("tune", "report"):
        assert stats["loc"][subset] == subsets.loc[subset].to_dict()
    in_split = pd.crosstab(every["patient"], every["split"]).reindex(columns=names, fill_value=0) > 0
    shared = {
        f"{a}_{b}": int((in_split[a] & in_split[b]).sum())
        for a, b in (("train", "val"), ("train", "test"), ("val", "test"))
    }
    assert stats["shared_patients"] == shared == {"train_val": 0, "train_test": 1, "val_test": 0}
