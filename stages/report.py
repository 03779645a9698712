"""report: the last node of the DAG: the paper's Tables 5-8 and Figures 1, 6, 7 regenerated.

Reads every model's test / localisation / training metrics, ``metrics/split.json``, the raw data
manifest (to say in the header which data the numbers came from) and the best model's heatmaps;
writes ``<out>/report.md``, ``<out>/tables/*.csv``, ``<out>/provenance.csv`` (where every printed
number came from), PNG figures in ``<plots>/figures/`` and the plot data DVC renders
(``<plots>/label_counts.csv``, ``<plots>/iou_vs_threshold/<model>.csv``).
A missing input stops the stage with a message naming each file and the stage that writes it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from cxr_core.files import setup_logging
from cxr_core.params import load_params

logger = logging.getLogger("stages.report")


def _dir(name: str, default: str, help_text: str) -> click.Option:
    return click.option(
        f"--{name}",
        f"{name}_dir",
        default=default,
        show_default=True,
        type=click.Path(path_type=Path),
        help=help_text,
    )


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path())
@_dir("metrics", "metrics", "split.json, test/<m>.json, localise/<m>.json, train/<m>/ (DVCLive)")
@_dir("plots", "plots", "reads roc/<m>.csv; writes figures/*.png, label_counts.csv, iou_vs_threshold/")
@_dir("splits", "data/splits", "loc.csv (example grid)")
@_dir("cache", "data/cache", "images.npy (example grid)")
@_dir("heatmaps", "data/heatmaps", "<m>.npz of the best model (example grid)")
@_dir("raw", "data/raw", "manifest.json: which data the numbers came from")
@_dir("out", "reports", "report.md, tables/*.csv, provenance.csv")
def main(
    params_path: str,
    metrics_dir: Path,
    plots_dir: Path,
    splits_dir: Path,
    cache_dir: Path,
    heatmaps_dir: Path,
    raw_dir: Path,
    out_dir: Path,
) -> None:
    setup_logging()
    params = load_params(params_path)
    from cxr_core.report.build import InputFormatError, MissingInputError, ReportPaths, make_report

    paths = ReportPaths(
        metrics=metrics_dir,
        plots=plots_dir,
        splits=splits_dir,
        cache=cache_dir,
        heatmaps=heatmaps_dir,
        raw=raw_dir,
        out=out_dir,
    )
    try:
        report = make_report(params, paths)
    except (MissingInputError, InputFormatError) as exc:
        raise click.ClickException(str(exc)) from exc
    logger.info(
        "report for %d model(s) on %s data; best model %s",
        len(params["models"]),
        "PHANTOM" if report.phantom else "real",
        report.best,
    )


if __name__ == "__main__":
    main()
