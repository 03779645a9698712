"""localise@model: score the saved heatmaps of one model and the anatomy-only baselines.

The paper's IoU at its fixed thresholds, box accuracy and the pointing game on every box; the
held-out numbers (MaxBoxAccV2, tuned IoU, energy pointing) with thresholds chosen on the tune half.
The boxes' probabilities (``prob``, ``positive_pred``) come from the test stage's predictions file,
not from a copy in the heatmap file.
"""

from __future__ import annotations

from pathlib import Path

from cxr_core.data.tables import LocTable
from cxr_core.evaluate.predictions import Predictions
from cxr_core.explain.heatmap_file import SavedHeatmaps
from cxr_core.explain.heldout import HeldoutSettings
from cxr_core.explain.scoring import BoxRecords, LocaliseMetrics, score_heatmaps
from cxr_core.params import load_params
from stages._common import model_option, params_option, path_option, splits_option, stage_command


@stage_command()
@model_option
@params_option
@path_option("heatmaps", help="data/heatmaps/<model>/seed<k>.npz (cams stage)")
@path_option("predictions", help="data/predictions/<model>/seed<k>.npz (test stage)")
@splits_option
@path_option("records", help="data/localisation/<model>/seed<k>.csv: one row per (box, method)")
@path_option("metrics", help="metrics/localise/<model>/seed<k>.json")
def main(
    model_name: str,
    params: Path,
    heatmaps: Path,
    predictions: Path,
    splits: Path,
    records: Path,
    metrics: Path,
) -> None:
    cfg = load_params(params)
    cam = cfg["cam"]
    loc = LocTable.read(splits)
    saved = SavedHeatmaps.load(heatmaps)
    saved.check_matches(loc, heatmaps)
    probs = Predictions.load(predictions).probs_for(loc.rows, predictions)
    table, summary = score_heatmaps(
        saved.maps,
        saved.raw,
        saved.degenerate,
        loc.table,
        probs,
        thresholds=cam["thresholds"],
        box_thresholds=cam["box_thresholds"],
        positive_threshold=cam["positive_threshold"],
        heldout=HeldoutSettings.from_params(cfg),
    )
    BoxRecords.write(records, table)
    LocaliseMetrics.write(metrics, model_name, summary)


if __name__ == "__main__":
    main()
