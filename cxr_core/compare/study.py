"""The study's answer: which model classifies and localises best, and which differences are real.

Reads every (model, seed) run's test predictions and per-box localisation records, and writes one
JSON (``metrics/compare.json``) that the report turns into its comparison tables and verdict:

* ``auc``: the paired patient bootstrap of every model pair (:func:`paired_auc_bootstrap`), per
  class and for the macro AUC, Holm-adjusted; with several training seeds a model's AUC is the
  mean over its seeds, on every replicate;
* ``seed_runs``: each model's macro AUC per training seed, their mean and standard deviation;
* ``delong``: DeLong's test per class and pair on the first seed's predictions (image-level);
* ``ranking``: the model with the highest macro AUC and, for every other, whether it is
  significantly worse (Holm-adjusted p < ``compare.alpha`` and behind the best by more than
  ``compare.min_auc_difference``: the tests are conditional on one training run per model, so a
  difference smaller than the spread between training runs is never called);
* ``localisation``: the same paired bootstrap for the pointing game and box accuracy, between
  models for each CAM method and between methods for each model, with the same ranking; and
  ``localisation.heldout``: on the report half of the boxes only (thresholds were chosen on the
  tune half), every method's MaxBoxAccV2, tuned IoU, energy and pointing rate with its patient
  bootstrap CI, and its paired difference from each baseline (random map, box prior, uniform map).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from cxr_core.compare.paired import (
    comparison_summary,
    delong_per_class,
    holm,
    paired_auc_bootstrap,
    paired_rate_bootstrap,
    pairwise_rate_bootstrap,
)
from cxr_core.errors import ArtifactError
from cxr_core.evaluate.metrics import macro_auc
from cxr_core.explain.baselines import BASELINES
from cxr_core.explain.class_means import first_best
from cxr_core.explain.scoring import threshold_key
from cxr_core.files import contract, read_json, write_json
from cxr_core.params import check_among

#: ``metrics/compare.json`` top-level keys.
COMPARE_KEYS: tuple[str, ...] = (
    "models",
    "seeds",
    "n_boot",
    "ci",
    "seed",
    "alpha",
    "seed_runs",
    "auc",
    "delong",
    "ranking",
    "localisation",
)
#: Localisation metrics compared: name -> what it counts per box (the report prints the label).
LOC_METRICS: dict[str, str] = {
    "pointing": "pointing game (maximum of the upsampled raw map inside the box; a plateau points at its centre)",
    "box_acc": "box accuracy (best heatmap box IoU >= cut-off at the heatmap threshold)",
}
#: Held-out localisation metrics: name -> the box records' column (class-mean on the report half).
HELDOUT_METRICS: dict[str, str] = {
    "maxboxacc": "maxboxacc",
    "energy": "energy",
    "iou_tuned": "iou_tuned",
    "pointing": "pointing_hit",
}
#: The anatomy-only / chance maps every held-out number is compared with, when scored.
BASELINE_METHODS: tuple[str, ...] = ("RandomCAM", *BASELINES)
_PRODUCER = "the compare stage"


class Predictions(Protocol):
    """What a run's test predictions must offer (``cxr_core.evaluate.predictions.Predictions`` does):
    the comparison needs the numbers, not the code that produced them."""

    rows: np.ndarray
    patients: np.ndarray
    probs: np.ndarray
    targets: np.ndarray


@dataclass(frozen=True)
class CompareSettings:
    """The knobs of the comparison, from params (bootstrap size and seed are the test stage's)."""

    n_boot: int
    ci: float
    seed: int
    alpha: float
    min_auc_difference: float
    min_rate_difference: float
    box_threshold: float
    box_cutoff: float

    @classmethod
    def from_params(cls, cfg: Mapping[str, Any]) -> CompareSettings:
        """From validated params; the box-accuracy point must be one the localise stage scored."""
        check_among(cfg, "compare.box_threshold", "cam.thresholds")
        check_among(cfg, "compare.box_cutoff", "cam.box_thresholds")
        compare, test = cfg["compare"], cfg["test"]
        return cls(
            n_boot=int(test["bootstrap"]),
            ci=float(test["ci"]),
            seed=int(cfg["seed"]),
            alpha=float(compare["alpha"]),
            min_auc_difference=float(compare["min_auc_difference"]),
            min_rate_difference=float(compare["min_rate_difference"]),
            box_threshold=float(compare["box_threshold"]),
            box_cutoff=float(compare["box_cutoff"]),
        )


@contract("metrics/compare.json", writer="compare", fields=COMPARE_KEYS)
class ComparisonMetrics:
    """Pairwise model / method comparisons with CIs, Holm-adjusted p-values and the ranking."""

    @staticmethod
    def write(path: str | os.PathLike, doc: Mapping[str, Any]) -> None:
        write_json(path, dict(doc))

    @staticmethod
    def read(path: str | os.PathLike) -> dict:
        return read_json(path, _PRODUCER, COMPARE_KEYS)


def _same_test_set(runs: Mapping[str, Sequence[Predictions]], seeds: Sequence[int]) -> Predictions:
    """Every run must have scored the same images in the same order with the same targets."""
    (first_name, first_runs), *_ = runs.items()
    ref = first_runs[0]
    for name, model_runs in runs.items():
        for seed, run in zip(seeds, model_runs, strict=True):
            same = (
                np.array_equal(run.rows, ref.rows)
                and np.array_equal(run.patients, ref.patients)
                and np.array_equal(run.targets, ref.targets)
            )
            if not same:
                raise ArtifactError(
                    f"the predictions of test@{name}-{seed} and test@{first_name}-{seeds[0]} cover different "
                    "test images or targets; re-run the test stages (dvc repro test) so every run scores one split"
                )
    return ref


def _same_boxes(records: Mapping[str, Sequence[pd.DataFrame]], seeds: Sequence[int]) -> None:
    """Every run's box records must cover the same (box, method) pairs."""
    (first_name, first_runs), *_ = records.items()

    def keys(frame: pd.DataFrame) -> set:
        return set(zip(frame["row"], frame["label"], frame["method"], strict=True))

    ref = keys(first_runs[0])
    for name, model_runs in records.items():
        for seed, run in zip(seeds, model_runs, strict=True):
            if keys(run) != ref:
                raise ArtifactError(
                    f"the box records of localise@{name}-{seed} and localise@{first_name}-{seeds[0]} cover "
                    "different boxes or methods; re-run the localise stages (dvc repro localise) on one "
                    "split and one cam.methods"
                )


def seed_spread(predictions: Mapping[str, Sequence[Predictions]], seeds: Sequence[int]) -> dict[str, Any]:
    """Macro AUC of every run (``seed<k>``), and per model the mean and SD (ddof 1; None for one seed)."""
    out = {}
    for model, runs in predictions.items():
        values = [macro_auc(run.targets, run.probs) for run in runs]
        finite = [v for v in values if v is not None and np.isfinite(v)]
        out[model] = {
            "macro_auc": {f"seed{k}": v for k, v in zip(seeds, values, strict=True)},
            "mean": float(np.mean(finite)) if finite else None,
            "sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
        }
    return out


def ranking(
    summary: Mapping[str, Any],
    score: Mapping[str, float | None],
    alpha: float,
    part: str | None = None,
    margin: float = 0.0,
) -> dict[str, Any]:
    """The best contender by ``score`` and, for each other, its gap to the best from the pair table.

    ``summary`` is a :func:`comparison_summary` (AUC: ``part=None`` reads ``macro``; rates: ``part``
    is ``class_mean``). The best is the first listed of those within
    :data:`cxr_core.explain.class_means.TIE_TOLERANCE` of the highest score (equal class-mean rates
    can differ in their last bit). A contender is ``worse`` when the Holm-adjusted p of its pair with the best
    is below ``alpha`` and the best is ahead by more than ``margin`` (the spread between training
    runs, which the paired test does not see); the best itself is never worse.
    """
    scored = {name: s for name, s in score.items() if s is not None}  # an undefined score is not ranked
    if not scored:
        return {"best": None, "order": [], "gap": {}, "margin": margin}
    ranked = [name for name in score if name in scored]
    best = ranked[first_best([scored[n] for n in ranked])]  # first in order on (float-noise) ties
    order = [best, *sorted((n for n in ranked if n != best), key=lambda n: (-scored[n], ranked.index(n)))]
    gap: dict[str, Any] = {}
    for pair in summary["pairs"].values():
        if best not in (pair["a"], pair["b"]):
            continue
        other = pair["b"] if pair["a"] == best else pair["a"]
        if other not in scored:
            continue
        stat = pair[part] if part else pair["macro"]
        sign = 1.0 if pair["a"] == best else -1.0
        diff = None if stat["diff"] is None else sign * stat["diff"]
        lo, hi = stat["ci"]
        ci = [None if hi is None else sign * hi, None if lo is None else sign * lo] if sign < 0 else [lo, hi]
        p_holm = stat.get("p_holm")
        worse = p_holm is not None and p_holm < alpha and diff is not None and diff > margin
        gap[other] = {"diff": diff, "ci": ci, "p_holm": p_holm, "worse": bool(worse)}
    return {"best": best, "order": order, "gap": gap, "margin": margin}


def _box_hits(records: pd.DataFrame, metric: str, settings: CompareSettings) -> pd.Series:
    if metric == "pointing":
        return records["pointing_hit"].astype(float)
    column = f"box_iou_{threshold_key(settings.box_threshold)}"
    if column not in records:
        raise ArtifactError(
            f"box records lack {column!r} (compare.box_threshold = {settings.box_threshold}); "
            "re-run the localise stages with that value in cam.thresholds"
        )
    return (records[column] >= settings.box_cutoff).astype(float)


def _hit_table(
    records: Mapping[str, Sequence[pd.DataFrame]],
    metric: str,
    settings: CompareSettings,
    values: Callable[[pd.DataFrame], pd.Series] | None = None,
) -> pd.DataFrame:
    """Seed-mean hits, one row per box (``row``, ``label``) and one column per (model, method).

    ``values(run)`` gives a run's per-record value (default: the metric's hits).
    """
    columns = {}
    for model, model_runs in records.items():
        per_seed = []
        for run in model_runs:
            hits = run.assign(hit=values(run) if values else _box_hits(run, metric, settings))
            per_seed.append(hits.pivot_table(index=["row", "label"], columns="method", values="hit"))
        mean = sum(per_seed[1:], per_seed[0]) / len(per_seed)
        mean = mean[list(dict.fromkeys(model_runs[0]["method"]))]  # cam.methods order, not sorted
        for method in mean.columns:
            columns[(model, method)] = mean[method]
    return pd.DataFrame(columns)


def _rate_block(
    hits: Mapping[str, np.ndarray],
    groups: np.ndarray,
    classes: np.ndarray,
    settings: CompareSettings,
) -> dict[str, Any] | None:
    """Pairwise rate comparison (class-mean and overall only) with its ranking; None for < 2."""
    if len(hits) < 2:
        return None
    result = pairwise_rate_bootstrap(
        hits, groups, classes=classes, n_boot=settings.n_boot, ci=settings.ci, seed=settings.seed
    )
    summary = comparison_summary(result)
    for pair in summary["pairs"].values():
        pair.pop("per_class", None)  # the localise metrics hold the per-class rates
    first = next(iter(summary["pairs"].values()))
    rates = {first["a"]: first["class_mean"]["rate_a"]}
    for pair in summary["pairs"].values():
        rates[pair["b"]] = pair["class_mean"]["rate_b"]
    summary["rate"] = rates
    summary["ranking"] = ranking(
        summary, rates, settings.alpha, part="class_mean", margin=settings.min_rate_difference
    )
    return summary


def compare_localisation(
    records: Mapping[str, Sequence[pd.DataFrame]],
    loc: pd.DataFrame,
    seeds: Sequence[int],
    settings: CompareSettings,
) -> dict[str, Any]:
    """Per metric: models compared for each CAM method, and methods compared for each model.

    These use every box at thresholds fixed in advance; the image-independent baselines (box prior,
    uniform map) enter only the held-out block.
    """
    _same_boxes(records, seeds)
    cam_records = {m: [run[~run["method"].isin(BASELINES)] for run in runs] for m, runs in records.items()}
    patients = loc.set_index(["row", "label"])["patient"]
    out: dict[str, Any] = {
        "box_threshold": settings.box_threshold,
        "box_cutoff": settings.box_cutoff,
    }
    for metric in LOC_METRICS:
        table = _hit_table(cam_records, metric, settings)
        try:
            groups = patients.loc[table.index].to_numpy()
        except KeyError:
            raise ArtifactError(
                "box records name boxes that are not in loc.csv; re-run the localise stages"
            ) from None
        classes = table.index.get_level_values("label").to_numpy()
        models = list(dict.fromkeys(m for m, _ in table.columns))
        methods = list(dict.fromkeys(meth for _, meth in table.columns))
        by_method = {
            method: _rate_block({m: table[(m, method)].to_numpy() for m in models}, groups, classes, settings)
            for method in methods
        }
        by_model = {
            model: _rate_block(
                {meth: table[(model, meth)].to_numpy() for meth in methods}, groups, classes, settings
            )
            for model in models
        }
        out[metric] = {
            "models_by_method": {k: v for k, v in by_method.items() if v is not None},
            "methods_by_model": {k: v for k, v in by_model.items() if v is not None},
        }
    out["heldout"] = compare_heldout(records, loc, settings)
    return out


def _interval(entry: Mapping[str, Any]) -> list[float | None]:
    return [entry["ci_low"], entry["ci_high"]]


def compare_heldout(
    records: Mapping[str, Sequence[pd.DataFrame]], loc: pd.DataFrame, settings: CompareSettings
) -> dict[str, Any]:
    """On the report half: each (model, method)'s value with its CI, and its paired gap to each baseline.

    A value's CI is the patient bootstrap of its class mean (the paired bootstrap against zero);
    the gaps to the baselines share that draw and are Holm-adjusted over the (method, baseline)
    pairs of each model and metric.
    """
    if "subset" not in loc or not (loc["subset"] == "report").any():
        raise ArtifactError("loc.csv has no report half (column subset); re-run the split stage")
    halves = loc.set_index(["row", "label"])["subset"]
    for model, runs in records.items():
        for run in runs:
            theirs = run.set_index(["row", "label"])["subset"]
            if not theirs.equals(halves.reindex(theirs.index)):
                raise ArtifactError(
                    f"the box records of {model} split the boxes into tune / report differently from "
                    "loc.csv; re-run the localise stages (dvc repro localise) after the split"
                )
    report = {m: [run[run["subset"] == "report"] for run in runs] for m, runs in records.items()}
    patients = loc.set_index(["row", "label"])["patient"]
    out: dict[str, Any] = {"subset": "report", "chosen_on": "tune", "metrics": {}}
    for metric, column in HELDOUT_METRICS.items():
        table = _hit_table(report, metric, settings, values=lambda run, c=column: run[c].astype(float))
        groups = patients.loc[table.index].to_numpy()
        classes = table.index.get_level_values("label").to_numpy()
        out["n_boxes"], out["n_patients"] = len(table), int(len(np.unique(groups)))
        per_model: dict[str, Any] = {}
        for model in dict.fromkeys(m for m, _ in table.columns):
            methods = [meth for m, meth in table.columns if m == model]
            baselines = [b for b in BASELINE_METHODS if b in methods]
            values, gaps, p_values = {}, {}, []
            for method in methods:
                hits = table[(model, method)].to_numpy()
                alone = paired_rate_bootstrap(
                    hits, np.zeros_like(hits), groups, classes=classes,
                    n_boot=settings.n_boot, ci=settings.ci, seed=settings.seed,
                )["class_mean"]  # fmt: skip
                values[method] = {
                    "value": alone["rate_a"],
                    "ci": _interval(alone),
                    "n_valid": alone["n_valid"],
                }
                if method in baselines:
                    continue
                gaps[method] = {}
                for base in baselines:
                    pair = paired_rate_bootstrap(
                        hits, table[(model, base)].to_numpy(), groups, classes=classes,
                        n_boot=settings.n_boot, ci=settings.ci, seed=settings.seed,
                    )["class_mean"]  # fmt: skip
                    gaps[method][base] = {"diff": pair["diff"], "ci": _interval(pair), "p": pair["p"]}
                    p_values.append(gaps[method][base])
            for entry, p in zip(p_values, holm([e["p"] for e in p_values]), strict=True):
                entry["p_holm"] = float(p)
                entry["better"] = bool(p < settings.alpha and entry["diff"] > 0)
            per_model[model] = {"value": values, "vs_baseline": gaps}
        out["metrics"][metric] = per_model
    return out


def compare_study(
    predictions: Mapping[str, Sequence[Predictions]],
    records: Mapping[str, Sequence[pd.DataFrame]],
    loc: pd.DataFrame,
    seeds: Sequence[int],
    settings: CompareSettings,
) -> dict[str, Any]:
    """The whole ``metrics/compare.json`` (format in the module docstring).

    With one model there is no pair of models: ``auc`` and ``delong`` are empty and the ranking
    names that model; its CAM methods are still compared (with each other and the random map).
    """
    ref = _same_test_set(predictions, seeds)
    head = {
        "models": list(predictions),
        "seeds": list(seeds),
        "n_boot": settings.n_boot,
        "ci": settings.ci,
        "seed": settings.seed,
        "alpha": settings.alpha,
        "seed_runs": seed_spread(predictions, seeds),
    }
    localisation = compare_localisation(records, loc, seeds, settings)
    if len(predictions) < 2:
        (only,) = predictions
        empty = {"best": only, "order": [only], "gap": {}, "margin": settings.min_auc_difference}
        return {**head, "auc": {}, "delong": {}, "ranking": empty, "localisation": localisation}
    probs = {m: np.stack([run.probs for run in runs]) for m, runs in predictions.items()}
    result = paired_auc_bootstrap(
        ref.targets, probs, ref.patients, n_boot=settings.n_boot, ci=settings.ci, seed=settings.seed
    )
    auc = comparison_summary(result)
    delong = {
        key: comparison_summary(delong_per_class(ref.targets, probs[pair["a"]][0], probs[pair["b"]][0]))
        for key, pair in auc["pairs"].items()
    }
    macro = {m: float(result["macro_auc"][m]) for m in result["models"]}  # by name: a key may lose a dot
    macro = {m: (v if np.isfinite(v) else None) for m, v in macro.items()}
    return {
        **head,
        "auc": auc,
        "delong": delong,
        "ranking": ranking(auc, macro, settings.alpha, margin=settings.min_auc_difference),
        "localisation": localisation,
    }
