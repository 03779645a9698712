"""report: the last node of the DAG: the paper's Tables 5-8 and Figures 1, 6, 7 regenerated.

Reads every (model, seed) run's test / localisation / training metrics, ``metrics/compare.json``,
``metrics/split.json``, the raw data manifest (to say in the header which data the numbers came
from) and the best model's heatmaps; writes ``<out>/report.md``, ``<out>/tables/*.csv``,
``<out>/provenance.csv`` (where every printed number came from), PNG figures in
``<plots>/figures/``, the plot data DVC renders (``<plots>/label_counts.csv``,
``<plots>/iou_vs_threshold/<model>.csv``) and the leaderboard ``<metrics>/headline.json``.
A missing input stops the stage with a message naming each file and the stage that writes it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cxr_core.params import load_params
from cxr_core.report import ReportPaths, make_report
from stages._common import cache_option, params_option, path_option, splits_option, stage_command

logger = logging.getLogger("stages.report")


@stage_command()
@params_option
@path_option(
    "metrics",
    "metrics",
    "reads split.json, compare.json, {test,localise,train}/<m>/seed<k>; writes headline.json",
)
@path_option(
    "plots", "plots", "reads roc/<m>/seed<k>.csv; writes figures/*.png, label_counts.csv, iou_vs_threshold/"
)
@splits_option
@cache_option
@path_option("heatmaps", "data/heatmaps", "<m>/seed<k>.npz of the best model (example grid)")
@path_option(
    "predictions", "data/predictions", "<m>/seed<k>.npz of the best model (the example grid's probabilities)"
)
@path_option("raw", "data/raw", "manifest.json: which data the numbers came from")
@path_option("out", "reports", "report.md, tables/*.csv, provenance.csv")
def main(
    params: Path,
    metrics: Path,
    plots: Path,
    splits: Path,
    cache: Path,
    heatmaps: Path,
    predictions: Path,
    raw: Path,
    out: Path,
) -> None:
    cfg = load_params(params)
    paths = ReportPaths(
        metrics=metrics,
        plots=plots,
        splits=splits,
        cache=cache,
        heatmaps=heatmaps,
        predictions=predictions,
        raw=raw,
        out=out,
    )
    report = make_report(cfg, paths)
    logger.info(
        "report for %d model(s) on %s data; best model %s",
        len(cfg["models"]),
        "PHANTOM" if report.phantom else "real",
        report.best,
    )


if __name__ == "__main__":
    main()
