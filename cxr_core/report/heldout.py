"""The localisation section's lead: held-out numbers, each with its baselines, CI and sanity verdict.

Every number is on the report half of the boxes at thresholds chosen on the tune half
(``metrics/compare.json`` ``localisation.heldout``; the chosen thresholds are in
``metrics/localise/<model>/seed<k>.json``), and each method's row carries the model-parameter
randomisation verdict and faithfulness of ``metrics/sanity/<model>/seed<k>.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_core.explain.sanity_metrics import SanityMetrics
from cxr_core.report.comparison import Comparison
from cxr_core.report.inputs import ModelResults, display_name
from cxr_core.report.provenance import Cell, JsonNumbers, Table, ci_cell, number, plain_cell

#: Held-out metrics in the order the report leads with them, and how they are named there.
HELDOUT_NAMES: dict[str, str] = {
    "maxboxacc": "MaxBoxAccV2 (Choe et al. 2020) at tune-chosen thresholds, mean over `localise.maxboxacc_iou`",
    "energy": "energy-based pointing game (share of the raw map's mass inside the box)",
    "iou_tuned": "paper IoU at the tune-chosen heatmap threshold",
    "pointing": "pointing game (maximum of the upsampled raw map inside the box; a plateau points at its centre)",
}


@dataclass(frozen=True)
class SanityRun(JsonNumbers):
    """One run's ``metrics/sanity/<model>/seed<k>.json`` and where it was read from."""

    model: str
    doc: Mapping[str, Any]
    path: Path


def load_sanity(path: Path, model: str) -> SanityRun:
    """One run's sanity metrics (the file must exist: the report checks its inputs first)."""
    return SanityRun(model, SanityMetrics.read(path), path)


def _block(comparison: Comparison) -> Mapping[str, Any]:
    return comparison.doc["localisation"]["heldout"]


def _value_cell(comparison: Comparison, keys: Sequence[str]) -> Cell:
    return ci_cell(
        comparison.num(*keys, "value"),
        comparison.num(*keys, "ci", "0", role="ci_low"),
        comparison.num(*keys, "ci", "1", role="ci_high"),
    )


def _gap_cell(comparison: Comparison, keys: Sequence[str], entry: Mapping[str, Any]) -> Cell:
    """``+0.120 [0.050, 0.190] *``: a gap to a baseline, its CI, and ``*`` when Holm p < alpha."""
    ci = ci_cell(
        comparison.num(*keys, "diff"),
        comparison.num(*keys, "ci", "0", role="ci_low"),
        comparison.num(*keys, "ci", "1", role="ci_high"),
    )
    return Cell(ci.text + (" *" if entry.get("better") else ""), ci.numbers)


def sanity_cell(run: SanityRun | None, method: str) -> Cell:
    """``passes (rho 0.12)`` / ``FAILS (rho 0.93)``: the randomisation verdict at the full cascade."""
    if run is None or method not in run.doc.get("methods", {}):
        return Cell("n/a")
    entry = run.doc["methods"][method]
    rho = run.num("methods", method, "final_spearman")
    return Cell(f"{'passes' if entry.get('passes') else 'FAILS'} (rho {rho.text})", (rho,))


def baselines_of(comparison: Comparison) -> list[str]:
    """The baselines the held-out block compared against, in the order they were scored."""
    block = _block(comparison)["metrics"]
    first = next(iter(block.values()), {})
    gaps = next(iter(first.values()), {}).get("vs_baseline", {})
    return list(dict.fromkeys(b for per_method in gaps.values() for b in per_method))


def heldout_table(
    comparison: Comparison, metric: str, models: Sequence[str], sanity: Mapping[str, SanityRun]
) -> Table:
    """One held-out metric: every (model, method) with its CI, its gap to each baseline, its sanity."""
    block = _block(comparison)
    baselines = baselines_of(comparison)
    table = Table(
        f"heldout_{metric}",
        f"Localisation on the report half: {HELDOUT_NAMES[metric]} [{comparison.level} CI], "
        "minus each baseline",
        "model - method",
        ["value", *[f"- {b}" for b in baselines], "randomisation check"],
    )
    for model in models:
        per_model = block["metrics"][metric].get(model)
        if per_model is None:
            continue
        for method, gaps in per_model["vs_baseline"].items():
            base = ("localisation", "heldout", "metrics", metric, model)
            cells = [_value_cell(comparison, (*base, "value", method))]
            for b in baselines:
                entry = gaps.get(b)
                cells.append(
                    Cell("n/a")
                    if entry is None
                    else _gap_cell(comparison, (*base, "vs_baseline", method, b), entry)
                )
            cells.append(sanity_cell(sanity.get(model), method))
            table.add_row(f"{display_name(model)} - {method}", cells)
    table.notes.append(
        f"Report half: {block['n_boxes']} boxes of {block['n_patients']} patients; every threshold was "
        "chosen on the tune half (the other patients). Gaps are paired (same boxes, same patient "
        "resample); * = above that baseline, Holm-adjusted over the model's (method, baseline) pairs at "
        f"`compare.alpha` = {comparison.alpha:g}. Randomisation check: Spearman correlation of the maps "
        "with those of the model whose head and last stages were re-initialised (Adebayo et al. 2018); "
        "a method FAILS when its maps barely change, i.e. do not depend on what the model learned."
    )
    return table


def baselines_table(comparison: Comparison, models: Sequence[str]) -> Table:
    """The baselines' own held-out values (the same for every model: shown for the first one)."""
    block = _block(comparison)["metrics"]
    metrics = [m for m in HELDOUT_NAMES if m in block]
    baselines = baselines_of(comparison)
    first = next((m for m in models if m in next(iter(block.values()), {})), None)
    table = Table(
        "heldout_baselines",
        f"Localisation on the report half: what maps without a model score [{comparison.level} CI]",
        "baseline",
        metrics,
    )
    for b in baselines:
        cells = [
            _value_cell(comparison, ("localisation", "heldout", "metrics", metric, first, "value", b))
            for metric in metrics
        ]
        table.add_row(b, cells)
    table.notes.append(
        "RandomCAM: smooth random maps; BoxPrior: each finding's mean tune-half box as a map (anatomy "
        "alone); UniformMap: a constant map (a miss in the pointing game by rule: it points nowhere); "
        "CentreMap: a Gaussian peaked at the image centre (points at the middle of every film)."
    )
    return table


def thresholds_table(models: Sequence[ModelResults], methods: Sequence[str]) -> Table:
    """The heatmap thresholds chosen on the tune half (what the held-out numbers were measured at)."""
    deltas = sorted(
        {
            d
            for m in models
            for meth in methods
            for d in ((m.method(meth) or {}).get("heldout", {}).get("thresholds", {}).get("maxboxacc") or {})
        }
    )
    table = Table(
        "heldout_thresholds",
        "Heatmap thresholds chosen on the tune half of the boxes",
        "model - method",
        ["paper IoU", *[f"MaxBoxAcc IoU {int(d[1:]) / 100:g}" for d in deltas]],
    )
    for m in models:
        for meth in methods:
            if m.method(meth) is None:
                continue
            base = ("methods", meth, "heldout", "thresholds")
            cells = [plain_cell(number(m.localise, m.localise_path, [*base, "iou"]))]
            cells += [
                plain_cell(number(m.localise, m.localise_path, [*base, "maxboxacc", d])) for d in deltas
            ]
            table.add_row(f"{display_name(m.name)} - {meth}", cells)
    table.notes.append(
        "Each threshold is the one whose class-mean score is best on the tune half (lowest on ties, so 0 "
        "where no tune box reaches that IoU at any threshold); the report half never takes part in the "
        "choice. The paper's fixed thresholds (Tables 7-8) are below."
    )
    return table


#: How the report names each ``sanity.faithfulness`` metric and what its number means.
FAITHFULNESS_NAMES: dict[str, tuple[str, str]] = {
    "road": (
        "ROAD",
        "ROAD (Rong et al. 2022, pytorch-grad-cam's ROADCombined): the mean over {percentiles}% of pixels "
        "kept of (least-relevant-first minus most-relevant-first) change in the box finding's probability, "
        "halved; about 0 for a map unrelated to the model",
    ),
    "cam_mult": (
        "confidence change",
        "confidence change (pytorch-grad-cam's CamMultImageConfidenceChange): the box finding's probability "
        "when the image is multiplied by its map, minus its probability on the image; a map that keeps "
        "the evidence loses less (compare with RandomCAM)",
    ),
}


def faithfulness_table(
    sanity: Mapping[str, SanityRun], models: Sequence[str], methods: Sequence[str]
) -> Table:
    """Faithfulness per model and method, and the randomisation cascade's correlations."""
    first = next(iter(sanity.values()), None)
    metric = first.doc["faithfulness"] if first is not None else "road"
    short, long = FAITHFULNESS_NAMES.get(metric, (metric, metric))
    table = Table(
        "faithfulness",
        f"Faithfulness ({short}, higher = more faithful) and the randomisation cascade",
        "model - method",
        [short, "rho after head", "rho after full cascade", "verdict"],
    )
    for model in models:
        run = sanity.get(model)
        if run is None:
            continue
        for method in methods:
            if method not in run.doc["methods"]:
                continue
            steps = run.doc["steps"]
            cells = [
                plain_cell(run.num("methods", method, "faithfulness")),
                plain_cell(run.num("methods", method, "spearman", steps[0])),
                plain_cell(run.num("methods", method, "spearman", steps[-1])),
                sanity_cell(run, method),
            ]
            table.add_row(f"{display_name(model)} - {method}", cells)
    if first is not None:
        percentiles = ", ".join(str(p) for p in first.doc["road_percentiles"])
        table.notes.append(
            f"On {first.doc['n_images']} boxes of the report half per model. {short}: "
            f"{long.format(percentiles=percentiles)} (`sanity.faithfulness`). rho: mean Spearman correlation "
            "with the trained model's maps after re-initialising the head, and after the full cascade (the "
            f"head, then the last {len(first.doc['steps']) - 1} feature stage(s) too; each model's modules "
            "are in its metrics/sanity file); a method fails at rho >= "
            f"{first.doc['max_rank_correlation']:g} (`sanity.max_rank_correlation`)."
        )
    return table


def heldout_section(
    comparison: Comparison,
    models: Sequence[ModelResults],
    methods: Sequence[str],
    sanity: Mapping[str, SanityRun],
) -> list[Table]:
    """The lead tables of the localisation section, in order."""
    names = [m.name for m in models]
    metrics = [m for m in HELDOUT_NAMES if m in _block(comparison)["metrics"]]
    tables = [heldout_table(comparison, metric, names, sanity) for metric in metrics]
    tables += [baselines_table(comparison, names), thresholds_table(models, methods)]
    if sanity:
        tables.append(faithfulness_table(sanity, names, methods))
    return tables


def failing_methods(sanity: Mapping[str, SanityRun]) -> list[str]:
    """``GradCAM on DenseNet-121``, ... for every method that failed the randomisation check."""
    return [
        f"{method} on {display_name(model)}"
        for model, run in sanity.items()
        for method, entry in run.doc["methods"].items()
        if not entry.get("passes")
    ]
