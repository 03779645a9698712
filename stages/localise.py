"""localise@model: score the saved heatmaps of one model (paper IoU, box metrics, pointing game)."""

from __future__ import annotations

from pathlib import Path

from cxr_core.data.tables import LocTable
from cxr_core.explain.heatmaps import SavedHeatmaps
from cxr_core.explain.scoring import BoxRecords, LocaliseMetrics, score_heatmaps
from cxr_core.params import load_params
from stages._common import model_option, params_option, path_option, splits_option, stage_command


@stage_command()
@model_option
@params_option
@path_option("heatmaps", help="data/heatmaps/<model>/seed<k>.npz (cams stage)")
@splits_option
@path_option("records", help="data/localisation/<model>/seed<k>.csv: one row per (box, method)")
@path_option("metrics", help="metrics/localise/<model>/seed<k>.json")
def main(model_name: str, params: Path, heatmaps: Path, splits: Path, records: Path, metrics: Path) -> None:
    cam = load_params(params)["cam"]
    loc = LocTable.read(splits)
    saved = SavedHeatmaps.load(heatmaps)
    saved.check_matches(loc, heatmaps)
    table, summary = score_heatmaps(
        saved.maps,
        saved.degenerate,
        loc.table,
        saved.probs,
        thresholds=cam["thresholds"],
        box_thresholds=cam["box_thresholds"],
        positive_threshold=cam["positive_threshold"],
    )
    BoxRecords.write(records, table)
    LocaliseMetrics.write(metrics, model_name, summary)


if __name__ == "__main__":
    main()
