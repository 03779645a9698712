"""The report stage: read every input, draw the figures, write report.md and its tables."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cxr_core.audit.clinical import ReliabilityTable
from cxr_core.compare.study import ComparisonMetrics
from cxr_core.data.manifest import read_manifest
from cxr_core.data.tables import SplitStats
from cxr_core.models.checkpoints import CHECKPOINT_PATTERN
from cxr_core.report.clinical import load_clinical
from cxr_core.report.comparison import Comparison, HeadlineMetrics, headline
from cxr_core.report.external import load_external
from cxr_core.report.figures import (
    ExampleGrid,
    example_grid,
    iou_vs_threshold,
    label_counts,
    load_examples,
    plot_heatmap_examples,
    plot_iou_vs_threshold,
    plot_label_counts,
    plot_reliability,
    plot_roc_grid,
    plot_val_loss,
    write_iou_vs_threshold,
)
from cxr_core.report.heldout import load_sanity
from cxr_core.report.inputs import (
    ReportPaths,
    best_model,
    check_inputs,
    data_source,
    example_inputs,
    load_model_results,
    method_names,
    required_inputs,
)
from cxr_core.report.known_answer import KnownAnswerMetrics, judge_all, known_answer_json
from cxr_core.report.markdown import Report, build_report, write_report

logger = logging.getLogger(__name__)


def make_report(params: Mapping[str, Any], paths: ReportPaths) -> Report:
    """Read every input, draw the figures, write report.md + tables; returns the report."""
    models_cfg: list[str] = list(params["models"])
    seeds: list[int] = list(params["seeds"])
    external_sets: list[str] = list(params["external"]["datasets"])
    check_inputs(required_inputs(paths, models_cfg, seeds, external_sets))
    manifest = asdict(read_manifest(paths.raw))
    split = SplitStats.read(paths.split_json)
    # every table shows each model's first-seed run; the comparison averages over all seeds
    models = [load_model_results(paths, m, seeds[0]) for m in models_cfg]
    comparison = Comparison(ComparisonMetrics.read(paths.compare_json), paths.compare_json)
    best = best_model(models, comparison.ranking["best"])
    source, _ = data_source(manifest)
    methods = method_names(models, params["cam"]["methods"])

    examples = int(params["report"]["examples"])
    example_model = (best or models[0]).name
    if examples > 0:
        check_inputs(example_inputs(paths, example_model, seeds[0]))

    figures: dict[str, Path] = {}
    for stale in paths.figures.glob("*.png"):  # e.g. the example grid after report.examples -> 0
        stale.unlink()
    counts = label_counts(split)
    paths.plots.mkdir(parents=True, exist_ok=True)
    counts.to_csv(paths.plots / "label_counts.csv", index=False)
    figures["labels"] = plot_label_counts(counts, paths.figures / "fig1_label_counts.png", source)
    figures["val_loss"] = plot_val_loss(models, paths.figures / "fig6_7_val_loss.png")
    figures["roc"] = plot_roc_grid(models, paths.figures / "roc_curves.png")
    iou = iou_vs_threshold(models, methods)
    write_iou_vs_threshold(iou, models, methods, paths.plots / "iou_vs_threshold")
    figures["iou"] = plot_iou_vs_threshold(iou, methods, models, paths.figures / "iou_vs_threshold.png")
    clinical = [load_clinical(paths.clinical_json(m.name, seeds[0]), m.name) for m in models]
    sanity = {m.name: load_sanity(paths.sanity_json(m.name, seeds[0]), m.name) for m in models}
    external = [load_external(paths.external_json(name), name) for name in external_sets]
    clinical_model = (best or models[0]).name
    curves = ReliabilityTable.read(paths.reliability_csv(clinical_model, seeds[0]))
    figures["reliability"] = plot_reliability(curves, clinical_model, paths.figures / "reliability.png")
    grid: ExampleGrid | None = None
    if examples > 0:
        loc, images, heatmaps = load_examples(paths, example_model, seeds[0])
        grid = example_grid(loc, heatmaps, example_model, params["report"]["example_methods"], examples)
        if grid.not_computed:
            logger.warning(
                "report.example_methods %s: no heatmaps of %s in %s; not drawn",
                list(grid.not_computed),
                example_model,
                paths.heatmaps_npz(example_model, seeds[0]),
            )
        if grid.methods:
            figures["examples"] = plot_heatmap_examples(
                grid, loc, images, heatmaps, paths.figures / "heatmap_examples.png"
            )

    report = build_report(
        params,
        manifest,
        split,
        paths.split_json,
        models,
        figures,
        paths.out,
        grid,
        comparison,
        clinical,
        sanity,
        external,
    )
    write_report(report, paths.out)
    board = headline(models, best, comparison, params["report"]["headline_method"], CHECKPOINT_PATTERN)
    HeadlineMetrics.write(paths.headline_json, board)
    KnownAnswerMetrics.write(
        paths.known_answer_json, known_answer_json(judge_all(models, params), params, report.phantom)
    )
    return report
