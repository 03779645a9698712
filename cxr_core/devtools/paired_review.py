"""Base vs head, paired: did a pull request (or an experiment) move each model beyond noise?

The headline table puts two numbers side by side with the head's own interval, which is the wrong
interval for a change: both sides score the same test images, so the change is tested paired, with
the compare stage's machinery (:mod:`cxr_core.compare.paired`) on the compare stage's patient
bootstrap (the head's ``test.bootstrap``, ``test.ci`` and ``seed``): per model, the change in macro
AUC and in each class AUC (DeLong per class beside it) and in the headline localisation metric, the
pointing game of ``report.headline_method`` on the report half of the boxes; Holm over the models.

A verdict is ``better`` or ``worse`` only when the change is significant after Holm (p below
``compare.alpha``), larger than the project's margin (``compare.min_auc_difference`` /
``compare.min_rate_difference``: the paired test is conditional on one training run per side, and
another seed or CPU moves a run by more than the test can see) and, with two or more common seeds,
larger than ``z(1 - alpha / 2)`` standard errors of the seed-to-seed spread; else ``within noise``.
The same inputs give the same replicates, so the verdict cannot flip between runs of the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from cxr_core.compare.paired import auc_change_bootstrap, delong_per_class, holm, paired_rate_bootstrap
from cxr_core.devtools.review_inputs import Scores, Side, Unavailable
from cxr_core.explain.class_means import class_means
from cxr_core.labels import LABELS

BETTER, WORSE, NOISE = "better", "worse", "within noise"
#: params read from the head: (section, key) -> the setting
_SETTINGS = {
    "n_boot": ("test", "bootstrap"),
    "ci": ("test", "ci"),
    "seed": (None, "seed"),
    "alpha": ("compare", "alpha"),
    "min_auc_difference": ("compare", "min_auc_difference"),
    "min_rate_difference": ("compare", "min_rate_difference"),
}


@dataclass(frozen=True)
class ReviewSettings:
    """The compare stage's knobs, from the head's params (the review says which values it used)."""

    n_boot: int
    ci: float
    seed: int
    alpha: float
    min_auc_difference: float
    min_rate_difference: float
    loc_method: str | None  # report.headline_method; None: no localisation review

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ReviewSettings:
        """Raises :class:`Unavailable` naming the first missing or non-numeric key."""
        values: dict[str, Any] = {}
        for name, (section, key) in _SETTINGS.items():
            holder = params.get(section) if section else params
            value = holder.get(key) if isinstance(holder, Mapping) else None
            if not isinstance(value, int | float) or isinstance(value, bool):
                where = f"{section}.{key}" if section else key
                raise Unavailable(
                    f"the head's params.yaml has no numeric `{where}` (the compare stage's setting)"
                )
            values[name] = value
        report = params.get("report")
        method = report.get("headline_method") if isinstance(report, Mapping) else None
        return cls(
            n_boot=int(values["n_boot"]),
            ci=float(values["ci"]),
            seed=int(values["seed"]),
            alpha=float(values["alpha"]),
            min_auc_difference=float(values["min_auc_difference"]),
            min_rate_difference=float(values["min_rate_difference"]),
            loc_method=str(method) if method else None,
        )

    @property
    def z(self) -> float:
        """Standard errors of the seed spread a change must exceed: z(1 - alpha / 2), 1.96 at 0.05."""
        return NormalDist().inv_cdf(1.0 - self.alpha / 2.0)


@dataclass(frozen=True)
class SeedSpread:
    """Per side, the metric's SD over training seeds (ddof 1); the SE of a difference of seed means."""

    base_sd: float
    head_sd: float
    n_seeds: int

    @property
    def se(self) -> float:
        return math.sqrt((self.base_sd**2 + self.head_sd**2) / self.n_seeds)


def seed_spread(base: Sequence[float], head: Sequence[float]) -> SeedSpread | None:
    """The spread of one metric over the common seeds; None with fewer than two."""
    if len(base) < 2 or len(base) != len(head):
        return None
    return SeedSpread(float(np.std(base, ddof=1)), float(np.std(head, ddof=1)), len(base))


@dataclass(frozen=True)
class Change:
    """One metric's paired change of one model (head - base): interval, p, Holm p and verdict."""

    metric: str
    base: float
    head: float
    diff: float
    ci: tuple[float, float]
    p: float
    margin: float
    margin_key: str
    spread: SeedSpread | None = None
    p_holm: float = float("nan")
    verdict: str = NOISE
    why: str = ""


def judge(change: Change, alpha: float, z: float) -> Change:
    """The verdict (module docstring) and, for ``within noise``, the test it did not pass."""
    p = change.p_holm
    if not math.isfinite(p) or not math.isfinite(change.diff):
        return replace(change, verdict=NOISE, why="no defined replicate")
    if p >= alpha:  # the line shows the Holm p: nothing to add
        return replace(change, verdict=NOISE, why="")
    if abs(change.diff) <= change.margin:
        why = f"significant, but not beyond the margin {change.margin:g} (`{change.margin_key}`)"
        return replace(change, verdict=NOISE, why=why)
    if change.spread is not None and abs(change.diff) <= z * change.spread.se:
        why = f"significant, but within the seed-to-seed spread ({z:.2f} x SE {change.spread.se:.4f})"
        return replace(change, verdict=NOISE, why=why)
    return replace(change, verdict=BETTER if change.diff > 0 else WORSE, why="")


@dataclass(frozen=True)
class ClassRow:
    """One finding's AUC change (pooled over seeds) and DeLong's test on the first common seed."""

    label: str
    base: float
    head: float
    diff: float
    ci: tuple[float, float]
    p: float
    p_holm: float  # over the models, per class
    delong_p_holm: float  # over the classes, within the model


@dataclass
class ModelReview:
    """Everything the review says about one model; ``unpaired`` is why nothing could be tested."""

    model: str
    seeds: tuple[int, ...]
    auc: Change | None = None
    per_seed: list[tuple[int, Change]] = field(default_factory=list)
    classes: list[ClassRow] = field(default_factory=list)
    loc: Change | None = None
    loc_note: str = ""
    unpaired: str = ""


@dataclass
class Review:
    """The paired review of every model both sides have; ``unavailable``: why there is none at all."""

    settings: ReviewSettings | None = None
    models: list[ModelReview] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unavailable: str = ""

    @property
    def paired(self) -> list[ModelReview]:
        return [m for m in self.models if m.auc is not None]

    def headline_changes(self) -> list[tuple[str, Change]]:
        """(model, change) of the headline metrics: macro AUC and the localisation metric."""
        return [(m.model, c) for m in self.models for c in (m.auc, m.loc) if c is not None]

    def regressions(self) -> list[tuple[str, Change]]:
        return [(model, c) for model, c in self.headline_changes() if c.verdict == WORSE]


# --- AUC --------------------------------------------------------------------------------------------


def _runs(side: Side, model: str, seeds: Sequence[int]) -> list[Scores]:
    return [side.scores(model, seed) for seed in seeds]


def _same_images(model: str, base: Sequence[Scores], head: Sequence[Scores]) -> Scores:
    """The head's first run, after checking that every run of both sides scored the same images."""
    ref = head[0]
    if not all(ref.same_images(run) for run in (*head, *base)):
        raise Unavailable(
            f"`{model}`: the base and head predictions cover different test images, patients or targets "
            "(the test split changed), so they cannot be paired"
        )
    return ref


def auc_review(model: str, seeds: Sequence[int], base: Side, head: Side, s: ReviewSettings) -> ModelReview:
    """The model's macro and per-class AUC change (Holm and verdicts come later, over the models)."""
    base_runs, head_runs = _runs(base, model, seeds), _runs(head, model, seeds)
    ref = _same_images(model, base_runs, head_runs)
    result = auc_change_bootstrap(
        ref.targets,
        np.stack([r.probs for r in base_runs]),
        np.stack([r.probs for r in head_runs]),
        ref.patients,
        n_boot=s.n_boot,
        ci=s.ci,
        seed=s.seed,
    )

    def change(entry: Mapping[str, Any], spread: SeedSpread | None = None) -> Change:
        return Change(
            "macro AUC",
            entry["base"],
            entry["head"],
            entry["diff"],
            (entry["ci_low"], entry["ci_high"]),
            entry["p"],
            s.min_auc_difference,
            "compare.min_auc_difference",
            spread,
        )

    per_seed = result["per_seed"]
    spread = seed_spread([e["base"] for e in per_seed], [e["head"] for e in per_seed])
    out = ModelReview(model, tuple(seeds), auc=change(result["macro"], spread))
    if len(seeds) > 1:
        out.per_seed = [(seed, change(entry)) for seed, entry in zip(seeds, per_seed, strict=True)]
    delong = delong_per_class(ref.targets, head_runs[0].probs, base_runs[0].probs)
    c = result["classes"]
    out.classes = [
        ClassRow(
            label,
            c["base"][i],
            c["head"][i],
            c["diff"][i],
            (c["ci_low"][i], c["ci_high"][i]),
            c["p"][i],
            float("nan"),
            float(delong["p_holm"][i]),
        )
        for i, label in enumerate(LABELS)
    ]
    return out


# --- localisation -----------------------------------------------------------------------------------


def _report_hits(records: pd.DataFrame, method: str, keys: pd.MultiIndex, where: str) -> np.ndarray:
    """0/1 pointing hits of ``method`` on the boxes ``keys`` (row, label), in that order."""
    mine = records[records["method"] == method].set_index(["row", "label"])["pointing_hit"]
    if mine.empty:
        raise Unavailable(f"{where} has no {method} box records")
    found = mine.reindex(keys)
    if found.isna().any():
        raise Unavailable(
            f"{where} lacks {int(found.isna().sum())} of the head's {len(keys)} report-half boxes "
            "(the box set or its tune / report split changed), so the boxes cannot be paired"
        )
    return found.astype(float).to_numpy()


def loc_review(model: str, seeds: Sequence[int], base: Side, head: Side, s: ReviewSettings) -> Change:
    """The change in the class-mean pointing game of the headline method on the head's report half."""
    assert s.loc_method is not None
    loc = head.loc()
    report = loc[loc["subset"] == "report"].set_index(["row", "label"])
    keys, labels = report.index, report.index.get_level_values("label").to_numpy()

    def hits(side: Side) -> list[np.ndarray]:
        where = f"`{model}` at {side.where}"
        return [_report_hits(side.boxes(model, seed), s.loc_method, keys, where) for seed in seeds]

    base_hits, head_hits = hits(base), hits(head)
    result = paired_rate_bootstrap(
        np.mean(head_hits, axis=0), np.mean(base_hits, axis=0), report["patient"].to_numpy(), classes=labels,
        n_boot=s.n_boot, ci=s.ci, seed=s.seed,
    )["class_mean"]  # fmt: skip
    base_rates = [float(class_means(h, labels)["mean"]) for h in base_hits]
    head_rates = [float(class_means(h, labels)["mean"]) for h in head_hits]
    spread = seed_spread(base_rates, head_rates)
    return Change(
        f"pointing game, {s.loc_method} (report half)",
        result["rate_b"],
        result["rate_a"],
        result["diff"],
        (result["ci_low"], result["ci_high"]),
        result["p"],
        s.min_rate_difference,
        "compare.min_rate_difference",
        spread,
    )


# --- the review ---------------------------------------------------------------------------------------


def _listed(params: Mapping[str, Any], key: str) -> list:
    value = params.get(key)
    return list(value) if isinstance(value, list) else []


def _holm_and_judge(models: list[ModelReview], s: ReviewSettings) -> None:
    """Holm over the models (macro AUC, localisation, each class) and the verdicts."""
    for part in ("auc", "loc"):
        tested = [m for m in models if getattr(m, part) is not None]
        for m, p in zip(tested, holm([getattr(m, part).p for m in tested]), strict=True):
            setattr(m, part, judge(replace(getattr(m, part), p_holm=float(p)), s.alpha, s.z))
    paired = [m for m in models if m.classes]
    for i in range(len(LABELS)):
        adjusted = holm([m.classes[i].p for m in paired])
        for m, p in zip(paired, adjusted, strict=True):
            m.classes[i] = replace(m.classes[i], p_holm=float(p))


def _model_review(model: str, seeds: Sequence[int], base: Side, head: Side, s: ReviewSettings) -> ModelReview:
    try:
        out = auc_review(model, seeds, base, head, s)
    except Unavailable as exc:
        return ModelReview(model, tuple(seeds), unpaired=str(exc))
    if s.loc_method is None:
        out.loc_note = "no `report.headline_method` in the head's params: no localisation review"
        return out
    try:
        out.loc = loc_review(model, seeds, base, head, s)
    except Unavailable as exc:
        out.loc_note = f"localisation not paired: {exc}"
    return out


def review(base: Side, head: Side) -> Review:
    """The paired review of every model in both sides' ``models`` over their common ``seeds``."""
    head_params, base_params = head.params(), base.params()
    try:
        settings = ReviewSettings.from_params(head_params)
    except Unavailable as exc:
        return Review(unavailable=str(exc))
    head_models, base_models = _listed(head_params, "models"), _listed(base_params, "models")
    seeds = [k for k in _listed(head_params, "seeds") if k in _listed(base_params, "seeds")]
    out = Review(settings)
    if not seeds:
        out.unavailable = "the base and head params share no training seed (`seeds`)"
        return out
    new = [m for m in head_models if m not in base_models]
    gone = [m for m in base_models if m not in head_models]
    out.notes += [f"new in the head, nothing to pair: {', '.join(f'`{m}`' for m in new)}"] if new else []
    out.notes += [f"only at the base: {', '.join(f'`{m}`' for m in gone)}"] if gone else []
    out.models = [_model_review(m, seeds, base, head, settings) for m in head_models if m in base_models]
    if not out.models:
        out.unavailable = "the base and head params share no model (`models`)"
    elif not out.paired:
        out.unavailable = "no model could be paired: " + out.models[0].unpaired
    _holm_and_judge(out.models, settings)
    return out
