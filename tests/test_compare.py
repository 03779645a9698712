"""Paired model comparisons: bootstrap against slow references, DeLong by hand and O(n^2), Holm."""

from __future__ import annotations

import json
import math
from itertools import combinations

import numpy as np
import pytest
from oracles import explicit_resamples
from sklearn.metrics import roc_auc_score

from cxr_core.compare.paired import (
    bootstrap_p_value,
    comparison_summary,
    delong,
    delong_per_class,
    holm,
    paired_auc_bootstrap,
    paired_auc_replicates,
    paired_rate_bootstrap,
    pairwise_rate_bootstrap,
)
from cxr_core.evaluate.metrics import bootstrap_auc_replicates
from cxr_core.files import write_json

# --------------------------------------------------------------------------------------------
# data and slow references


def clustered_data(n_patients: int = 30, n_models: int = 3, seed: int = 1) -> tuple:
    """1-6 images per patient, 3 classes (the last rare: some replicates lack it), tied scores."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"p{k:03d}" for k in range(n_patients)], rng.integers(1, 7, n_patients))
    n = groups.shape[0]
    targets = np.zeros((n, 3), dtype=np.uint8)
    targets[:, 0] = rng.random(n) < 0.4
    targets[:, 1] = rng.random(n) < 0.2
    targets[np.flatnonzero(np.isin(groups, ["p003", "p017"]))[:3], 2] = 1
    probs = {}
    for m in range(n_models):
        p = 0.3 * m * targets + rng.random((n, 3))
        probs[f"model{m}"] = np.round(p, 1) if m == 1 else p  # model1: many tied scores
    return targets, probs, groups


def sklearn_auc(y: np.ndarray, s: np.ndarray) -> float:
    return roc_auc_score(y, s) if 0 < y.sum() < y.shape[0] else float("nan")


def reference_p(d: np.ndarray) -> float:
    d = d[np.isfinite(d)]
    return min(1.0, 2 * min(1 + np.sum(d <= 0), 1 + np.sum(d >= 0)) / (d.size + 1))


def reference_ci(d: np.ndarray, ci: float) -> list[float]:
    d = d[np.isfinite(d)]
    return list(np.quantile(d, [(1 - ci) / 2, (1 + ci) / 2]))


# --------------------------------------------------------------------------------------------
# paired AUC bootstrap


def test_paired_bootstrap_matches_slow_sklearn_loop() -> None:
    targets, probs, groups = clustered_data()
    n_boot, ci = 120, 0.9
    result = paired_auc_bootstrap(targets, probs, groups, n_boot=n_boot, ci=ci, seed=7)
    defined = [0, 1, 2]
    ref = {
        name: np.array(
            [
                [sklearn_auc(targets[idx, c], p[idx, c]) for c in range(3)]
                for idx in explicit_resamples(groups, n_boot, 7)
            ]
        )
        for name, p in probs.items()
    }
    assert np.isnan(ref["model0"][:, 2]).any() and np.isfinite(ref["model0"][:, 2]).any()  # rare class
    for name in probs:
        np.testing.assert_allclose(result["replicates"][name], ref[name], rtol=0, atol=1e-12)
    assert [(pr["a"], pr["b"]) for pr in result["pairs"]] == list(combinations(probs, 2))
    for pair in result["pairs"]:
        d = ref[pair["a"]] - ref[pair["b"]]
        np.testing.assert_allclose(pair["replicates"], d, rtol=0, atol=1e-12)
        for c in range(3):
            np.testing.assert_allclose(
                [pair["ci_low"][c], pair["ci_high"][c]], reference_ci(d[:, c], ci), atol=1e-12
            )
            assert pair["p"][c] == pytest.approx(reference_p(d[:, c]), abs=1e-12)
            assert pair["n_valid"][c] == np.isfinite(d[:, c]).sum()
            full = sklearn_auc(targets[:, c], probs[pair["a"]][:, c]) - sklearn_auc(
                targets[:, c], probs[pair["b"]][:, c]
            )
            assert pair["diff"][c] == pytest.approx(full, abs=1e-12)
        macro_d = ref[pair["a"]][:, defined].mean(axis=1) - ref[pair["b"]][:, defined].mean(axis=1)
        np.testing.assert_allclose(pair["macro"]["replicates"], macro_d, rtol=0, atol=1e-12)
        assert pair["macro"]["p"] == pytest.approx(reference_p(macro_d), abs=1e-12)
        np.testing.assert_allclose(
            [pair["macro"]["ci_low"], pair["macro"]["ci_high"]], reference_ci(macro_d, ci), atol=1e-12
        )


def test_replicates_are_the_test_stage_bootstrap() -> None:
    """Same seed -> bit-identical replicates to metrics.bootstrap_auc_replicates (one draw path)."""
    targets, probs, groups = clustered_data(seed=3)
    ours = paired_auc_replicates(targets, probs, groups, n_boot=50, seed=11)
    for name, p in probs.items():
        theirs = bootstrap_auc_replicates(targets, p, groups, n_boot=50, seed=11)
        np.testing.assert_array_equal(ours[name], theirs)


def test_replicates_exact_when_float32_sums_would_not_be() -> None:
    """P x (largest patient) >= 2**24 images per replicate possible -> the float64 path, still exact."""
    rng = np.random.default_rng(0)
    groups = np.r_[np.zeros(10_000, int), np.arange(1, 1_700)]
    targets = (rng.random((groups.size, 1)) < 0.3).astype(np.uint8)
    probs = {"a": rng.random((groups.size, 1)), "b": np.round(rng.random((groups.size, 1)), 2)}
    ours = paired_auc_replicates(targets, probs, groups, n_boot=8, seed=3)
    for name, p in probs.items():
        np.testing.assert_array_equal(
            ours[name], bootstrap_auc_replicates(targets, p, groups, n_boot=8, seed=3)
        )


def test_pairs_share_one_patient_draw_per_replicate() -> None:
    targets, probs, groups = clustered_data(seed=5)
    result = paired_auc_bootstrap(targets, probs, groups, n_boot=80, seed=2)
    d = {(pr["a"], pr["b"]): pr for pr in result["pairs"]}
    ab, bc, ac = d[("model0", "model1")], d[("model1", "model2")], d[("model0", "model2")]
    assert np.nanstd(ab["replicates"][:, 0]) > 0.01  # the replicates do vary
    np.testing.assert_allclose(ac["replicates"], ab["replicates"] + bc["replicates"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        ac["macro"]["replicates"], ab["macro"]["replicates"] + bc["macro"]["replicates"], rtol=0, atol=1e-12
    )


def test_model_against_itself_or_a_renamed_copy_is_exactly_zero() -> None:
    targets, probs, groups = clustered_data(seed=2)
    p = probs["model1"]
    result = paired_auc_bootstrap(
        targets, {"a": p, "a_copy": p.copy(), "b": probs["model2"]}, groups, n_boot=60
    )
    same = result["pairs"][0]
    assert (same["a"], same["b"]) == ("a", "a_copy")
    for key in ("diff", "ci_low", "ci_high"):
        assert np.all(same[key] == 0.0), key
    for key in ("p", "p_holm", "p_holm_classes"):
        assert np.all(same[key] == 1.0), key
    assert np.all(np.nan_to_num(same["replicates"]) == 0.0)
    macro = same["macro"]
    assert (macro["diff"], macro["ci_low"], macro["ci_high"], macro["p"], macro["p_holm"]) == (0, 0, 0, 1, 1)
    np.testing.assert_array_equal(result["pairs"][1]["replicates"], result["pairs"][2]["replicates"])


def test_separating_model_beats_random_one_significantly() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 4)
    targets = (rng.random((240, 2)) < 0.3).astype(np.uint8)
    good = targets + 0.6 * rng.random((240, 2))
    noise = rng.random((240, 2))
    result = paired_auc_bootstrap(targets, {"good": good, "noise": noise}, groups, n_boot=400, seed=1)
    pair = result["pairs"][0]
    assert pair["macro"]["diff"] > 0.3 and pair["macro"]["ci_low"] > 0
    assert pair["macro"]["p"] < 0.01 and np.all(pair["p"] < 0.01) and np.all(pair["diff"] > 0)
    flipped = paired_auc_bootstrap(targets, {"noise": noise, "good": good}, groups, n_boot=400, seed=1)
    assert flipped["pairs"][0]["macro"]["diff"] == -pair["macro"]["diff"]
    assert flipped["pairs"][0]["macro"]["ci_high"] < 0 and flipped["pairs"][0]["macro"]["p"] < 0.01


def test_class_without_positives_is_nan_not_an_error() -> None:
    targets, probs, groups = clustered_data(seed=4)
    targets[:, 2] = 0
    result = paired_auc_bootstrap(targets, probs, groups, n_boot=30)
    pair = result["pairs"][0]
    assert np.isnan(pair["diff"][2]) and np.isnan(pair["p"][2]) and np.isnan(pair["p_holm_classes"][2])
    assert np.isfinite(pair["p_holm_classes"][:2]).all() and math.isfinite(pair["macro"]["p"])
    assert list(result["defined"]) == [True, True, False]


def test_bootstrap_p_value_definition() -> None:
    # 1 replicate <= 0, 3 >= 0, B = 4: 2 * min(1 + 1, 1 + 3) / 5
    assert bootstrap_p_value([1.0, 2.0, 3.0, -1.0]) == pytest.approx(0.8)
    assert bootstrap_p_value([0.5] * 99) == pytest.approx(2 / 100)  # never 0
    assert bootstrap_p_value([0.0, 0.0, float("nan")]) == 1.0
    assert math.isnan(bootstrap_p_value([float("nan")]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"probs": {"only": None}}, "probs"),
        ({"probs": {"a": np.zeros((5, 2)), "b": np.zeros((4, 2))}}, r"probs\['b'\]"),
        ({"groups": np.arange(3)}, "groups"),
        ({"ci": 1.5}, "ci"),
        ({"n_boot": 0}, "n_boot"),
    ],
)
def test_bad_input_names_the_argument(kwargs: dict, match: str) -> None:
    args = {
        "targets": np.array([[0, 1], [1, 0], [0, 1], [1, 1], [0, 0]]),
        "probs": {"a": np.zeros((5, 2)), "b": np.ones((5, 2))},
        "groups": np.arange(5),
        "n_boot": 10,
        "ci": 0.95,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        paired_auc_bootstrap(args.pop("targets"), args.pop("probs"), args.pop("groups"), **args)


# --------------------------------------------------------------------------------------------
# DeLong


def test_delong_hand_example() -> None:
    # 3 positives, 3 negatives. A: pos (.9, .8, .4), neg (.7, .3, .2); B: pos (.9, .3, .6), neg (.8, .5, .1).
    # V10 (share of negatives below each positive): A (1, 1, 2/3), B (1, 1/3, 2/3) -> AUC 8/9, 2/3.
    # V01 (share of positives above each negative): A (2/3, 1, 1), B (1/3, 2/3, 1) -> means 8/9, 2/3.
    # S10 = cov(V10) = [[1/27, 0], [0, 1/9]];  S01 = cov(V01) = [[1/27, 1/18], [1/18, 1/9]] (ddof 1)
    # S = S10/3 + S01/3 = [[2/81, 1/54], [1/54, 2/27]]
    # var(diff) = S_aa + S_bb - 2 S_ab = 2/81 + 6/81 - 3/81 = 5/81
    #   (= var(V10_A - V10_B)/3 + var(V01_A - V01_B)/3 = (4/27)/3 + (1/27)/3)
    # diff = 8/9 - 2/3 = 2/9, z = (2/9) / (sqrt(5)/9) = 2/sqrt(5) = 0.894, p = erfc(z/sqrt(2)) = 0.371
    y = np.array([1, 1, 1, 0, 0, 0])
    a = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2])
    b = np.array([0.9, 0.3, 0.6, 0.8, 0.5, 0.1])
    auc_a, auc_b, diff, var, z, p = delong(y, a, b)
    assert (auc_a, auc_b, diff) == pytest.approx((8 / 9, 2 / 3, 2 / 9), abs=1e-15)
    assert var == pytest.approx(5 / 81, abs=1e-15)
    assert z == pytest.approx(2 / math.sqrt(5), abs=1e-12)
    assert p == pytest.approx(0.37109336952269756, abs=1e-12)


def delong_reference(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """DeLong's variance the textbook way: psi over all m x n (positive, negative) pairs."""

    def components(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, z = s[y == 1][:, None], s[y == 0][None, :]
        psi = (x > z) + 0.5 * (x == z)
        return psi.mean(axis=1), psi.mean(axis=0)

    (v10a, v01a), (v10b, v01b) = components(a), components(b)
    s = np.cov(np.stack([v10a, v10b])) / v10a.size + np.cov(np.stack([v01a, v01b])) / v01a.size
    return v10a.mean(), v10b.mean(), s[0, 0] + s[1, 1] - 2 * s[0, 1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_quadratic_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(300) < 0.3).astype(int)
    a = np.round(y * 0.5 + rng.random(300), 1)  # ties within and across classes
    b = y * 0.2 + rng.random(300)
    auc_a, auc_b, diff, var, z, p = delong(y, a, b)
    ref_a, ref_b, ref_var = delong_reference(y, a, b)
    assert (auc_a, auc_b) == pytest.approx((ref_a, ref_b), abs=1e-12)
    assert (auc_a, auc_b) == pytest.approx((roc_auc_score(y, a), roc_auc_score(y, b)), abs=1e-12)
    assert var == pytest.approx(ref_var, rel=1e-10)
    assert z == pytest.approx((ref_a - ref_b) / math.sqrt(ref_var), rel=1e-10)
    assert p == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-12)


def test_delong_identical_models_and_undefined_classes() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(50) < 0.5).astype(int)
    s = rng.random(50)
    assert delong(y, s, s.copy())[2:] == (0.0, 0.0, 0.0, 1.0)
    assert all(math.isnan(v) for v in delong(np.zeros(50, int), s, s))
    targets = np.stack([y, np.zeros(50, int)], axis=1)
    out = delong_per_class(targets, np.stack([s, s], 1), np.stack([rng.random(50), s], 1))
    assert np.isfinite(out["p"][0]) and np.isnan(out["p"][1]) and out["p_holm"][0] == out["p"][0]
    with pytest.raises(ValueError, match="score_b"):
        delong(y, s, s[:10])


# --------------------------------------------------------------------------------------------
# Holm


def test_holm_hand_example_with_nan() -> None:
    # m = 4 finite: sorted .01, .03, .04, .5 -> 4*.01 = .04, 3*.03 = .09, 2*.04 = .08 -> .09 (monotone),
    # 1*.5 = .5. NaN stays NaN and does not count.
    out = holm([0.04, float("nan"), 0.01, 0.5, 0.03])
    np.testing.assert_allclose(out, [0.09, np.nan, 0.04, 0.5, 0.09])
    assert holm([0.6, 0.7]).tolist() == [1.0, 1.0]  # capped at 1
    assert np.isnan(holm([float("nan")])).all() and holm([]).shape == (0,)
    with pytest.raises(ValueError, match="pvalues"):
        holm([0.5, 1.2])


def test_holm_matches_statsmodels() -> None:
    multitest = pytest.importorskip("statsmodels.stats.multitest")  # dev-only oracle
    rng = np.random.default_rng(0)
    for size in (1, 2, 5, 14, 40):
        p = rng.random(size) ** 3
        p[: size // 3] = p[0]  # ties
        np.testing.assert_allclose(holm(p), multitest.multipletests(p, method="holm")[1], rtol=0, atol=1e-15)


# --------------------------------------------------------------------------------------------
# hit rates


def box_data(seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(25), rng.integers(1, 5, 25))
    n = groups.shape[0]
    classes = rng.choice(["Mass", "Nodule"], n, p=[0.6, 0.4]).astype(object)
    classes[groups == 3] = "Atelectasis"  # one patient's: some replicates draw none
    hits_a = rng.random(n) < 0.6
    hits_b = rng.random(n) < 0.4
    return hits_a, hits_b, groups, classes


def test_rate_bootstrap_matches_slow_loop() -> None:
    hits_a, hits_b, groups, classes = box_data()
    n_boot, ci = 150, 0.9
    result = paired_rate_bootstrap(hits_a, hits_b, groups, classes=classes, n_boot=n_boot, ci=ci, seed=4)
    names = ["Atelectasis", "Mass", "Nodule"]  # label order
    assert list(result["per_class"]) == names
    ref_overall, ref_mean = [], []
    for idx in explicit_resamples(groups, n_boot, 4):
        a, b, c = hits_a[idx], hits_b[idx], classes[idx]
        ref_overall.append(a.mean() - b.mean())
        per = [a[c == k].mean() - b[c == k].mean() if (c == k).any() else np.nan for k in names]
        ref_mean.append(np.mean(per))
    for got, ref in ((result["overall"], np.array(ref_overall)), (result["class_mean"], np.array(ref_mean))):
        np.testing.assert_allclose(got["replicates"], ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose([got["ci_low"], got["ci_high"]], reference_ci(ref, ci), atol=1e-12)
        assert got["p"] == pytest.approx(reference_p(ref), abs=1e-12)
    assert np.isnan(result["class_mean"]["replicates"]).any()  # a replicate without an Atelectasis box
    assert result["overall"]["diff"] == pytest.approx(hits_a.mean() - hits_b.mean())
    per_full = [hits_a[classes == k].mean() - hits_b[classes == k].mean() for k in names]
    assert result["class_mean"]["diff"] == pytest.approx(np.mean(per_full))
    assert result["class_mean"]["rate_a"] == pytest.approx(
        np.mean([hits_a[classes == k].mean() for k in names])
    )


def test_rate_identical_inputs_are_zero_and_p_one() -> None:
    hits_a, _, groups, classes = box_data(1)
    result = paired_rate_bootstrap(hits_a, hits_a.astype(int), groups, classes=classes, n_boot=50)
    for entry in (result["overall"], result["class_mean"], *result["per_class"].values()):
        assert (entry["diff"], entry["ci_low"], entry["ci_high"], entry["p"]) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="hits_b"):
        paired_rate_bootstrap(hits_a, hits_a[:-1], groups)
    with pytest.raises(ValueError, match="hits_a"):
        paired_rate_bootstrap(np.full(hits_a.shape, 2), hits_a, groups)


def test_pairwise_rates_share_draw_and_holm() -> None:
    hits_a, hits_b, groups, classes = box_data(2)
    hits_c = hits_a ^ (np.arange(hits_a.size) % 3 == 0)
    result = pairwise_rate_bootstrap(
        {"x": hits_a, "y": hits_b, "z": hits_c}, groups, classes=classes, n_boot=60
    )
    xy, xz, yz = result["pairs"]
    np.testing.assert_allclose(
        xz["overall"]["replicates"], xy["overall"]["replicates"] + yz["overall"]["replicates"], atol=1e-12
    )
    np.testing.assert_allclose(
        holm([pr["class_mean"]["p"] for pr in result["pairs"]]),
        [pr["class_mean"]["p_holm"] for pr in result["pairs"]],
    )


# --------------------------------------------------------------------------------------------
# JSON


def _keys(obj: object) -> list[str]:
    if isinstance(obj, dict):
        return [k for key, value in obj.items() for k in [key, *_keys(value)]]
    if isinstance(obj, list):
        return [k for value in obj for k in _keys(value)]
    return []


def test_summaries_are_json_ready_without_dots(tmp_path) -> None:
    targets, probs, groups = clustered_data()
    targets[:, 2] = 0  # an undefined class -> None
    probs = {"resnet.v2": probs["model0"], "swin_small": probs["model1"]}
    labels = ("Atelectasis", "Mass", "Hernia")
    auc = comparison_summary(paired_auc_bootstrap(targets, probs, groups, n_boot=20), labels)
    hits_a, hits_b, box_groups, classes = box_data()
    rate = comparison_summary(
        pairwise_rate_bootstrap(
            {"GradCAM": hits_a, "EigenCAM": hits_b}, box_groups, classes=classes, n_boot=20
        )
    )
    single = comparison_summary(paired_rate_bootstrap(hits_a, hits_b, box_groups, n_boot=20))
    dl = comparison_summary(delong_per_class(targets, probs["resnet.v2"], probs["swin_small"]), labels)
    for doc in (auc, rate, single, dl):
        assert not [k for k in _keys(doc) if "." in k]
        write_json(tmp_path / "x.json", doc)
        assert json.loads((tmp_path / "x.json").read_text()) == json.loads(json.dumps(doc))
    pair = auc["pairs"]["resnet_v2_vs_swin_small"]
    assert pair["a"] == "resnet.v2" and set(pair["macro"]) == {"diff", "ci", "p", "p_holm", "n_valid"}
    assert set(pair["per_class"]) == set(labels) and pair["per_class"]["Hernia"]["diff"] is None
    assert set(pair["per_class"]["Mass"]) == {"diff", "ci", "p", "p_holm", "p_holm_classes", "n_valid"}
    assert auc["auc"]["swin_small"]["per_class"]["Hernia"] is None
    assert rate["pairs"]["GradCAM_vs_EigenCAM"]["class_mean"]["p_holm"] is not None
    assert dl["Hernia"]["p"] is None and isinstance(dl["Mass"]["z"], float)
    with pytest.raises(ValueError, match="model names"):
        comparison_summary(
            paired_auc_bootstrap(
                targets, {"a.b": probs["swin_small"], "a_b": probs["resnet.v2"]}, groups, n_boot=5
            ),
            labels,
        )


# --------------------------------------------------------------------------------------------
# training seeds


def test_seed_runs_average_the_per_seed_replicates() -> None:
    """seeds x N x C: per replicate the mean of the seeds' AUCs on that draw (not an ensemble's AUC)."""
    targets, probs, groups = clustered_data(seed=4)
    seeds_a = np.stack([probs["model0"], probs["model2"]])
    one = paired_auc_replicates(targets, {"s0": probs["model0"], "s1": probs["model2"]}, groups, n_boot=50)
    both = paired_auc_replicates(targets, {"a": seeds_a, "b": probs["model1"]}, groups, n_boot=50)
    np.testing.assert_allclose(both["a"], (one["s0"] + one["s1"]) / 2, rtol=0, atol=1e-15)
    result = paired_auc_bootstrap(targets, {"a": seeds_a, "b": probs["model1"]}, groups, n_boot=50)
    per_seed = [sklearn_auc(targets[:, 0], p[:, 0]) for p in seeds_a]
    assert result["auc"]["a"][0] == pytest.approx(np.mean(per_seed), abs=1e-15)
    assert result["seeds"] == {"a": 2, "b": 1}
    single = paired_auc_bootstrap(
        targets, {"a": probs["model0"][None], "b": probs["model1"]}, groups, n_boot=50
    )
    plain = paired_auc_bootstrap(targets, {"a": probs["model0"], "b": probs["model1"]}, groups, n_boot=50)
    np.testing.assert_array_equal(single["pairs"][0]["replicates"], plain["pairs"][0]["replicates"])


def test_rates_accept_seed_mean_hits_but_not_other_values() -> None:
    hits_a, hits_b, groups, classes = box_data()
    half = (hits_a.astype(float) + hits_b) / 2  # two seeds of one model
    out = paired_rate_bootstrap(half, hits_b, groups, n_boot=30)
    assert out["overall"]["rate_a"] == pytest.approx((hits_a.mean() + hits_b.mean()) / 2)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        paired_rate_bootstrap(half + 0.6, hits_b, groups, n_boot=30)


# --------------------------------------------------------------------------------------------
# the compare stage's study (metrics/compare.json)


def _settings(n_boot: int):
    """The comparison's knobs for a small test: alpha 0.05, no noise margin, the default box point."""
    from cxr_core.compare.study import CompareSettings

    return CompareSettings(
        n_boot=n_boot, ci=0.95, seed=0, alpha=0.05, min_auc_difference=0.0, min_rate_difference=0.0,
        box_threshold=0.25, box_cutoff=0.1,
    )  # fmt: skip


def _study_inputs(seed: int = 0, n_seeds: int = 1):
    """Three models on one test set: 'good' learned the targets, 'chance' did not, 'copy' = good."""
    import pandas as pd

    from cxr_core.evaluate.predictions import Predictions
    from cxr_core.labels import BOX_LABELS, LABELS

    rng = np.random.default_rng(seed)
    n, patients = 270, np.repeat(np.arange(30), 9)
    targets = (rng.random((n, len(LABELS))) < 0.3).astype(np.uint8)
    rows = np.arange(n)
    images = np.array([f"{i:08d}_000.png" for i in rows])

    def run(signal: float) -> Predictions:
        probs = (signal * targets + rng.random(targets.shape)).astype(np.float32)
        return Predictions(images, rows, patients, probs, targets, logits=np.log(probs))  # logits unused here

    good = [run(1.0) for _ in range(n_seeds)]
    predictions = {"good": good, "chance": [run(0.0) for _ in range(n_seeds)], "copy": good}
    loc = pd.DataFrame(
        {
            "row": rows[:80],
            "label": np.resize(list(BOX_LABELS), 80),
            "patient": patients[:80],
            "subset": np.where(patients[:80] % 2 == 0, "tune", "report"),
        }
    )

    def records(p_hit: float) -> list[pd.DataFrame]:
        out = []
        for _ in range(n_seeds):
            frames = [
                loc[["row", "label", "subset"]].assign(
                    method=method,
                    pointing_hit=rng.random(80) < (0.1 if method in ("RandomCAM", "UniformMap") else p_hit),
                    box_iou_t025=rng.random(80) * (0.2 if method == "RandomCAM" else 1.0),
                    energy=rng.random(80)
                    * (0.3 if method in ("RandomCAM", "BoxPrior", "UniformMap") else p_hit),
                    iou_tuned=rng.random(80) * p_hit,
                    maxboxacc=(rng.random(80) < p_hit) / 1.0,
                )
                for method in ("GradCAM", "RandomCAM", "BoxPrior", "UniformMap")
            ]
            out.append(pd.concat(frames, ignore_index=True))
        return out

    good_boxes = records(0.8)
    boxes = {"good": good_boxes, "chance": records(0.1), "copy": good_boxes}
    return predictions, boxes, loc


def test_study_known_answer_and_copy_is_exactly_zero() -> None:
    from cxr_core.compare.study import compare_study

    predictions, boxes, loc = _study_inputs()
    settings = _settings(n_boot=300)
    doc = compare_study(predictions, boxes, loc, [0], settings)
    pairs = doc["auc"]["pairs"]
    assert set(pairs) == {"good_vs_chance", "good_vs_copy", "chance_vs_copy"}
    assert (
        pairs["good_vs_chance"]["macro"]["diff"] > 0.2
        and pairs["good_vs_chance"]["macro"]["p_holm"] == 3 * 2 / 301  # smallest p, x 3 pairs
    )
    same = pairs["good_vs_copy"]["macro"]
    assert (same["diff"], same["ci"], same["p"], same["p_holm"]) == (0.0, [0.0, 0.0], 1.0, 1.0)
    rank = doc["ranking"]
    assert rank["best"] == "good"  # first of the tied good / copy in params order
    assert rank["gap"]["chance"]["worse"] and not rank["gap"]["copy"]["worse"]
    assert rank["gap"]["copy"]["diff"] == 0.0 and rank["gap"]["chance"]["diff"] > 0.2
    assert doc["delong"]["good_vs_copy"]["Atelectasis"]["p"] == 1.0
    assert doc["seed_runs"]["good"]["sd"] is None
    point = doc["localisation"]["pointing"]
    by_method = point["models_by_method"]["GradCAM"]
    assert by_method["ranking"]["best"] == "good" and by_method["ranking"]["gap"]["chance"]["worse"]
    vs_random = point["methods_by_model"]["good"]["pairs"]["GradCAM_vs_RandomCAM"]["class_mean"]
    assert vs_random["diff"] > 0.4 and vs_random["p_holm"] < 0.01
    chance_vs_random = point["methods_by_model"]["chance"]["pairs"]["GradCAM_vs_RandomCAM"]["class_mean"]
    assert chance_vs_random["p_holm"] > 0.05  # both at chance
    box = doc["localisation"]["box_acc"]["models_by_method"]["GradCAM"]["rate"]
    assert box["good"] == box["copy"]


def test_study_seeds_give_mean_and_spread() -> None:
    from cxr_core.compare.study import compare_study
    from cxr_core.evaluate.metrics import macro_auc

    predictions, boxes, loc = _study_inputs(seed=3, n_seeds=2)
    settings = _settings(n_boot=100)
    doc = compare_study(predictions, boxes, loc, [0, 5], settings)
    spread = doc["seed_runs"]["good"]
    per_seed = [macro_auc(r.targets, r.probs) for r in predictions["good"]]
    assert spread["macro_auc"] == {"seed0": per_seed[0], "seed5": per_seed[1]}
    assert spread["mean"] == pytest.approx(np.mean(per_seed)) and spread["sd"] == pytest.approx(
        np.std(per_seed, ddof=1)
    )
    assert doc["auc"]["auc"]["good"]["macro"] == pytest.approx(np.mean(per_seed), abs=1e-12)
    rate = doc["localisation"]["pointing"]["models_by_method"]["GradCAM"]["rate"]["good"]
    hits = [r[r["method"] == "GradCAM"].groupby("label")["pointing_hit"].mean().mean() for r in boxes["good"]]
    assert rate == pytest.approx(np.mean(hits))


def test_study_refuses_runs_on_different_test_sets() -> None:
    from cxr_core.compare.study import compare_study
    from cxr_core.errors import ArtifactError
    from cxr_core.evaluate.predictions import Predictions

    predictions, boxes, loc = _study_inputs()
    bad = predictions["chance"][0]
    predictions["chance"] = [
        Predictions(bad.images, bad.rows, bad.patients[::-1].copy(), bad.probs, bad.targets, bad.logits)
    ]
    settings = _settings(n_boot=10)
    with pytest.raises(ArtifactError, match="chance.*different test images"):
        compare_study(predictions, boxes, loc, [0], settings)
    predictions, boxes, loc = _study_inputs()
    boxes["chance"][0] = boxes["chance"][0].iloc[2:]
    with pytest.raises(ArtifactError, match="different boxes"):
        compare_study(predictions, boxes, loc, [0], settings)


def test_study_with_one_model_names_it_best() -> None:
    from cxr_core.compare.study import compare_study

    predictions, boxes, loc = _study_inputs()
    settings = _settings(n_boot=10)
    doc = compare_study({"good": predictions["good"]}, {"good": boxes["good"]}, loc, [0], settings)
    assert (
        doc["ranking"] == {"best": "good", "order": ["good"], "gap": {}, "margin": 0.0} and doc["auc"] == {}
    )


def test_study_ranks_models_by_name_even_with_dots_in_them() -> None:
    """timm names such as resnet18.a1_in1k have dots; JSON keys lose them, the ranking must not."""
    from cxr_core.compare.study import compare_study

    predictions, boxes, loc = _study_inputs()
    renamed = {"good.a1_in1k": predictions["good"], "chance": predictions["chance"]}
    boxes = {"good.a1_in1k": boxes["good"], "chance": boxes["chance"]}
    settings = _settings(n_boot=50)
    doc = compare_study(renamed, boxes, loc, [0], settings)
    assert doc["ranking"]["best"] == "good.a1_in1k" and set(doc["ranking"]["gap"]) == {"chance"}
    assert doc["localisation"]["pointing"]["models_by_method"]["GradCAM"]["ranking"]["best"] == "good.a1_in1k"


def test_heldout_block_reports_the_report_half_with_baseline_gaps() -> None:
    from cxr_core.compare.study import compare_study

    predictions, boxes, loc = _study_inputs()
    settings = _settings(n_boot=300)
    doc = compare_study(predictions, boxes, loc, [0], settings)
    held = doc["localisation"]["heldout"]
    report = loc[loc["subset"] == "report"]
    assert held["n_boxes"] == len(report) and held["n_patients"] == report["patient"].nunique()
    good = held["metrics"]["energy"]["good"]
    run = boxes["good"][0]
    rows = run[(run["method"] == "GradCAM") & (run["subset"] == "report")]
    expected = rows.groupby("label")["energy"].mean().mean()  # class mean on the report half only
    assert good["value"]["GradCAM"]["value"] == pytest.approx(expected)
    low, high = good["value"]["GradCAM"]["ci"]
    assert low < expected < high
    assert set(good["vs_baseline"]) == {"GradCAM"}  # baselines are not compared with themselves
    gap = good["vs_baseline"]["GradCAM"]["BoxPrior"]
    assert gap["better"] and gap["p_holm"] >= gap["p"]  # energy up to 0.8 vs at most 0.3
    chance = held["metrics"]["energy"]["chance"]["vs_baseline"]["GradCAM"]["BoxPrior"]
    assert not chance["better"]  # up to 0.1 vs up to 0.3
    # the baselines' own pointing: the uniform map is flat; it enters the held-out block only
    assert "UniformMap" not in doc["localisation"]["pointing"]["methods_by_model"]["good"]["rate"]


def test_heldout_ignores_the_tune_half() -> None:
    from cxr_core.compare.study import compare_study

    predictions, boxes, loc = _study_inputs()
    settings = _settings(n_boot=100)
    before = compare_study(predictions, boxes, loc, [0], settings)["localisation"]["heldout"]
    changed = {}
    for model, runs in boxes.items():
        frame = runs[0].copy()
        tune = frame["subset"] == "tune"
        frame.loc[tune, ["energy", "iou_tuned", "maxboxacc"]] = 1.0
        changed[model] = [frame]
    after = compare_study(predictions, changed, loc, [0], settings)["localisation"]["heldout"]
    assert after["metrics"]["energy"] == before["metrics"]["energy"]
    assert after["metrics"]["maxboxacc"] == before["metrics"]["maxboxacc"]


def test_heldout_refuses_records_split_differently_from_loc() -> None:
    from cxr_core.compare.study import compare_study
    from cxr_core.errors import ArtifactError

    predictions, boxes, loc = _study_inputs()
    settings = _settings(n_boot=50)
    stale = loc.assign(subset=np.where(loc["subset"] == "tune", "report", "tune"))  # re-split since
    with pytest.raises(ArtifactError, match="tune / report differently from loc.csv"):
        compare_study(predictions, boxes, stale, [0], settings)


def test_ranking_treats_equal_class_mean_rates_that_differ_in_the_last_bit_as_a_tie():
    # 83/140 as two float class means (tests/test_class_means.py): the first listed is the best
    from cxr_core.compare.study import ranking

    scores = {"GradCAM": 0.5928571428571427, "HiResCAM": 0.5928571428571429, "EigenCAM": 0.3}
    result = ranking({"pairs": {}}, scores, 0.05, part="class_mean")
    assert result["best"] == "GradCAM" and result["order"] == ["GradCAM", "HiResCAM", "EigenCAM"]
    scores["HiResCAM"] = 0.6  # a real difference still wins
    assert ranking({"pairs": {}}, scores, 0.05, part="class_mean")["best"] == "HiResCAM"


def test_a_significant_lead_within_the_training_noise_margin_is_not_called() -> None:
    """Holm p < alpha is not enough: the best must also lead by more than compare.min_auc_difference."""
    from cxr_core.compare.study import ranking

    def pairs(diff: float) -> dict:
        stat = {"diff": diff, "ci": [diff - 0.01, diff + 0.01], "p_holm": 0.001}
        return {"pairs": {"a_vs_b": {"a": "a", "b": "b", "macro": stat}}}

    scores = {"a": 0.86, "b": 0.83}
    assert ranking(pairs(0.03), scores, 0.05)["gap"]["b"]["worse"]  # no margin: called
    within = ranking(pairs(0.03), scores, 0.05, margin=0.05)
    assert not within["gap"]["b"]["worse"] and within["margin"] == 0.05
    assert ranking(pairs(0.06), scores, 0.05, margin=0.05)["gap"]["b"]["worse"]
    assert not ranking(pairs(0.05), scores, 0.05, margin=0.05)["gap"]["b"]["worse"]  # strictly more
