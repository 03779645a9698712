"""The report's answer to "which model is best, and is the difference real?" (``metrics/compare.json``).

Tables: the pairwise macro-AUC differences, the localisation ranking per CAM method, each method
against the random-map control, and the spread over training seeds; plus Table 5's "vs best"
column and a verdict in words that follows from the Holm-adjusted tests (it prints no number of
its own: every number is in a table, traceable to the JSON).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_core.files import contract, read_json, write_json
from cxr_core.report.inputs import CONTROL_METHOD, ModelResults, display_name
from cxr_core.report.provenance import Cell, Table, ci_cell, number, plain_cell

#: The localisation metric the verdict and the ranking table lead with.
HEADLINE_LOC_METRIC = "pointing"
LOC_METRIC_NAMES = {"pointing": "pointing game", "box_acc": "box accuracy"}


@dataclass(frozen=True)
class Comparison:
    """``metrics/compare.json`` and where it was read from."""

    doc: Mapping[str, Any]
    path: Path

    @property
    def alpha(self) -> float:
        return float(self.doc["alpha"])

    @property
    def ranking(self) -> Mapping[str, Any]:
        return self.doc["ranking"]

    @property
    def level(self) -> str:
        """The interval level as printed in titles, e.g. ``95%`` (``test.ci``)."""
        return f"{100 * float(self.doc['ci']):g}%"

    @property
    def has_pairs(self) -> bool:
        """At least two models were compared (one model has only its methods compared)."""
        return bool(self.doc["auc"])

    def loc(self, metric: str = HEADLINE_LOC_METRIC) -> Mapping[str, Any]:
        return self.doc["localisation"][metric]

    def num(self, *keys: Any, kind: str = "float", role: str = "value"):
        return number(self.doc, self.path, [str(k) for k in keys], kind=kind, role=role)


def _status_cell(comparison: Comparison, keys: Sequence[str], gap: Mapping[str, Any] | None) -> Cell:
    """``best`` / ``worse (p 0.004)`` / ``n.s. (p 0.210)`` from a ranking's gap entry (Holm p)."""
    if gap is None:
        return Cell("best")
    p = comparison.num(*keys, "p_holm")
    return Cell(f"{'worse' if gap['worse'] else 'n.s.'} (p {p.text})", (p,))


def vs_best_cell(comparison: Comparison | None, model: str) -> Cell:
    """Table 5's last column: this model against the best macro AUC (paired bootstrap, Holm)."""
    if comparison is None:
        return Cell("n/a")
    rank = comparison.ranking
    if model == rank["best"]:
        return Cell("best")
    gap = rank["gap"].get(model)
    if gap is None:
        return Cell("n/a")
    return _status_cell(comparison, ("ranking", "gap", model), gap)


#: Why an interval that excludes 0 can sit beside a Holm "not separable" (both pairwise tables).
UNADJUSTED_INTERVAL_NOTE = (
    "The intervals are per pair and not adjusted for multiplicity: a pair whose interval excludes 0 can "
    "still be not separable once Holm adjusts its p for the other pairs (Holm p above `compare.alpha`)."
)


def pairwise_auc_table(comparison: Comparison) -> Table:
    """Every pair's macro-AUC difference with its bootstrap CI, raw and Holm-adjusted p."""
    table = Table(
        "pairwise_macro_auc",
        f"Macro AUC: every pair of models (A - B) [{comparison.level} CI], paired patient bootstrap",
        "A vs B",
        ["difference", "p", "Holm p"],
    )
    for key, pair in comparison.doc["auc"]["pairs"].items():
        base = ("auc", "pairs", key, "macro")
        table.add_row(
            f"{display_name(pair['a'])} vs {display_name(pair['b'])}",
            [
                ci_cell(
                    comparison.num(*base, "diff"),
                    comparison.num(*base, "ci", "0", role="ci_low"),
                    comparison.num(*base, "ci", "1", role="ci_high"),
                ),
                plain_cell(comparison.num(*base, "p")),
                plain_cell(comparison.num(*base, "p_holm")),
            ],
        )
    table.notes.append(
        "One patient resample per replicate scores both models (paired and patient-clustered: about "
        "9 test images per patient on ChestX-ray14); p is two-sided, Holm-adjusted over the pairs. "
        "The interval and p reflect test-set sampling given the trained runs: the variation between "
        "training seeds is not in them (see the seeds table when `seeds` lists several). Per-class "
        "differences and DeLong's image-level test (which assumes independent images, so it is too "
        "optimistic here) are in metrics/compare.json."
    )
    table.notes.append(UNADJUSTED_INTERVAL_NOTE)
    return table


def _methods(comparison: Comparison, metric: str) -> list[str]:
    return [m for m in comparison.loc(metric)["models_by_method"] if m != CONTROL_METHOD]


def loc_ranking_table(
    comparison: Comparison, models: Sequence[str], metric: str = HEADLINE_LOC_METRIC
) -> Table:
    """Per CAM method: each model's class-mean rate and whether it is worse than that method's best."""
    methods = _methods(comparison, metric)
    table = Table(
        f"loc_ranking_{metric}",
        f"Localisation, {LOC_METRIC_NAMES[metric]} (class mean): models compared per CAM method",
        "model",
        methods,
    )
    blocks = comparison.loc(metric)["models_by_method"]
    for model in models:
        cells = []
        for method in methods:
            block = blocks[method]
            base = ("localisation", metric, "models_by_method", method)
            rate = comparison.num(*base, "rate", model)
            if model == block["ranking"]["best"]:
                cells.append(Cell(f"{rate.text} best", (rate,)))
                continue
            gap = block["ranking"]["gap"].get(model)
            if gap is None:
                cells.append(plain_cell(rate))
                continue
            status = _status_cell(comparison, (*base, "ranking", "gap", model), gap)
            cells.append(Cell(f"{rate.text} {status.text}", (rate, *status.numbers)))
        table.add_row(display_name(model), cells)
    table.notes.append(
        "best = the highest rate for that method; worse / n.s. = significantly lower / not separable "
        "from it (paired patient bootstrap of the class-mean rate, Holm-adjusted over the model pairs)."
    )
    return table


def _difference_cell(comparison: Comparison, base: Sequence[str]) -> Cell:
    """``0.120 [0.050, 0.190] (p 0.004)``: a difference, its interval and its Holm-adjusted p."""
    ci = ci_cell(
        comparison.num(*base, "diff"),
        comparison.num(*base, "ci", "0", role="ci_low"),
        comparison.num(*base, "ci", "1", role="ci_high"),
    )
    p = comparison.num(*base, "p_holm")
    return Cell(f"{ci.text} (p {p.text})", (*ci.numbers, p))


def control_table(comparison: Comparison, models: Sequence[str], metric: str = HEADLINE_LOC_METRIC) -> Table:
    """Each CAM method minus the random-map control, per model: is the map better than chance?"""
    methods = _methods(comparison, metric)
    table = Table(
        f"vs_random_{metric}",
        f"Localisation, {LOC_METRIC_NAMES[metric]}: each method minus {CONTROL_METHOD} "
        f"[{comparison.level} CI] (Holm p)",
        "model",
        methods,
    )
    blocks = comparison.loc(metric)["methods_by_model"]
    for model in models:
        block = blocks.get(model, {})
        cells = []
        for method in methods:
            key = f"{method}_vs_{CONTROL_METHOD}"
            if key not in block.get("pairs", {}):
                cells.append(Cell("n/a"))
                continue
            base = ("localisation", metric, "methods_by_model", model, "pairs", key, "class_mean")
            cells.append(_difference_cell(comparison, base))
        table.add_row(display_name(model), cells)
    table.notes.append(
        "Holm-adjusted over the method pairs of each model. A CAM method that does not beat the random "
        "map on a model says nothing about where that model looks."
    )
    return table


def pairwise_loc_table(comparison: Comparison, metric: str = HEADLINE_LOC_METRIC) -> Table:
    """Every pair of models, per CAM method: class-mean rate difference [CI] (Holm p)."""
    methods = _methods(comparison, metric)
    blocks = comparison.loc(metric)["models_by_method"]
    table = Table(
        f"pairwise_{metric}",
        f"Localisation, {LOC_METRIC_NAMES[metric]} (class mean): every pair of models (A - B) "
        f"[{comparison.level} CI] (Holm p)",
        "A vs B",
        methods,
    )
    keys = list(blocks[methods[0]]["pairs"]) if methods else []
    for key in keys:
        pair = blocks[methods[0]]["pairs"][key]
        cells = []
        for method in methods:
            base = ("localisation", metric, "models_by_method", method, "pairs", key, "class_mean")
            cells.append(_difference_cell(comparison, base))
        table.add_row(f"{display_name(pair['a'])} vs {display_name(pair['b'])}", cells)
    table.notes.append(
        "Same boxes, same patient resample for both models of a pair (their heatmaps of the same method); "
        "Holm-adjusted over the model pairs of each method."
    )
    table.notes.append(UNADJUSTED_INTERVAL_NOTE)
    return table


def seeds_table(comparison: Comparison, models: Sequence[str]) -> Table:
    """Macro AUC of every training seed, the mean and the SD (the variation a single run hides)."""
    seeds = [f"seed{k}" for k in comparison.doc["seeds"]]
    table = Table("seeds", "Macro AUC per training seed", "model", [*seeds, "mean", "SD"])
    for model in models:
        base = ("seed_runs", model)
        cells = [plain_cell(comparison.num(*base, "macro_auc", s)) for s in seeds]
        cells += [plain_cell(comparison.num(*base, "mean")), plain_cell(comparison.num(*base, "sd"))]
        table.add_row(display_name(model), cells)
    table.notes.append(
        "Training seeds from `seeds` in params.yaml. The comparison tables use, per bootstrap "
        "replicate, each model's mean AUC over its seeds."
    )
    return table


def _names(models: Sequence[str]) -> str:
    shown = [display_name(m) for m in models]
    if len(shown) <= 1:
        return "".join(shown)
    return ", ".join(shown[:-1]) + " and " + shown[-1]


def _leaders(comparison: Comparison, rank: Mapping[str, Any]) -> str:
    """The best and every model not separable from it, in the study's order (params ``models``), not
    by score: a tie at the top reads the same whichever of them a CPU or seed puts first."""
    order = list(comparison.doc["models"])
    worse = set(_split(rank)[0])
    leaders = [rank["best"], *(m for m in rank["gap"] if m not in worse)]
    return _names(sorted(leaders, key=lambda m: order.index(m) if m in order else len(order)))


def _split(rank: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    worse = [m for m, g in rank["gap"].items() if g["worse"]]
    return worse, [m for m in rank["gap"] if m not in worse]


def _beats_control(comparison: Comparison, model: str, method: str) -> bool:
    """The method's class-mean rate is significantly above RandomCAM's for this model."""
    block = comparison.loc()["methods_by_model"].get(model, {})
    stat = block.get("pairs", {}).get(f"{method}_vs_{CONTROL_METHOD}", {}).get("class_mean")
    if not stat or stat.get("p_holm") is None or stat.get("diff") is None:
        return False
    return stat["p_holm"] < comparison.alpha and stat["diff"] > 0


def verdict(comparison: Comparison) -> str:
    """The paper's question answered in words from the ranking (no number: those are in the tables)."""
    rank = comparison.ranking
    if rank["best"] is None:
        return "**Verdict.** No model has a defined macro AUC, so the data cannot rank them.\n"
    worse, tied = _split(rank)
    seeds = len(comparison.doc["seeds"])
    mean = "seed-mean " if seeds > 1 else ""
    if not tied:
        lines = [
            f"**Verdict (classification).** {display_name(rank['best'])} classifies best: every other "
            f"model is significantly worse ({_names(worse)})."
        ]
    else:
        lines = [f"**Verdict (classification).** Not separable at the top: {_leaders(comparison, rank)}."]
        if worse:
            lines.append(f" Significantly worse: {_names(worse)}.")
    runs = "one training run per model" if seeds == 1 else f"{seeds} training seeds per model"
    lines.append(
        f" Significance: paired patient bootstrap of the {mean}macro AUC difference from the highest, "
        "Holm-adjusted over all model pairs, at the family-wise level `compare.alpha`, and only for a "
        "lead larger than `compare.min_auc_difference`: the test is conditional on the trained runs "
        f"({runs}) and does not see how much another training run (seed, CPU kind) would move them.\n"
    )
    loc = comparison.loc(HEADLINE_LOC_METRIC)["models_by_method"]
    parts = []
    for method in _methods(comparison, HEADLINE_LOC_METRIC):
        rank_m = loc.get(method, {}).get("ranking", {})
        if rank_m.get("best") is None:
            continue
        worse_m, tied_m = _split(rank_m)
        if tied_m:
            text = f"with {method}, {_leaders(comparison, rank_m)} lead, not separable"
        else:
            text = f"with {method}, {display_name(rank_m['best'])} points best (every other model significantly worse)"
        if not _beats_control(comparison, rank_m["best"], method):
            text += f", though not significantly better than {CONTROL_METHOD} there"
        parts.append(text)
    if parts:
        parts[0] = parts[0][0].upper() + parts[0][1:]
        lines.append(
            f"\n**Verdict (localisation, {LOC_METRIC_NAMES[HEADLINE_LOC_METRIC]}).** "
            + "; ".join(parts)
            + ". Holm-adjusted within each CAM method, for a lead larger than `compare.min_rate_difference`.\n"
        )
    return "".join(lines)


def _pointing(m: ModelResults, method: str) -> float | None:
    """The class-mean pointing rate of one CAM method (None if it was not computed)."""
    block = m.method(method) or {}
    value = (block.get("pointing") or {}).get("mean")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@contract("metrics/headline.json", writer="report", fields=("best", "models"))
class HeadlineMetrics:
    """The leaderboard: the best run (and its checkpoint) and a few numbers per model."""

    @staticmethod
    def write(path: str | Path, doc: Mapping[str, Any]) -> None:
        write_json(path, dict(doc))

    @staticmethod
    def read(path: str | Path) -> dict:
        return read_json(path, "the report stage", ("best", "models"))


def headline(
    models: Sequence[ModelResults],
    best: ModelResults | None,
    comparison: Comparison,
    method: str,
    checkpoint: str,
) -> dict[str, Any]:
    """``metrics/headline.json``: the few numbers per model ``dvc exp show`` should display.

    ``auc`` [``auc_lo``, ``auc_hi``] and ``loc`` (the pointing game of the fixed ``method``) are the
    first seed's run, as in Table 5; ``auc_mean`` / ``auc_sd`` are over all training seeds.
    """
    out: dict[str, Any] = {"best": None, "loc_method": method, "models": {}}
    if best is not None:
        out["best"] = {
            "model": best.name,
            "seed": best.seed,
            "checkpoint": checkpoint.format(model=best.name, seed=best.seed),
            "macro_auc": best.macro_auc,
        }
    spread = comparison.doc["seed_runs"]
    for m in models:
        low, high = (m.test.get("macro_auc_ci") or [None, None])[:2]
        out["models"][m.name] = {
            "auc": m.macro_auc,
            "auc_lo": low,
            "auc_hi": high,
            "auc_mean": spread.get(m.name, {}).get("mean"),
            "auc_sd": spread.get(m.name, {}).get("sd"),
            "seeds": len(comparison.doc["seeds"]),
            "loc": _pointing(m, method),
            "epochs": m.train.get("epochs_trained"),
        }
    return out
