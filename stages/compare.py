"""compare: which model (and CAM method) is best, with paired, patient-clustered statistics.

Reads the test predictions and box records of every (model, seed) run in params order and writes
``metrics/compare.json`` (see ``cxr_core.compare.study``); the report prints its tables and verdict.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cxr_core.compare.study import CompareSettings, ComparisonMetrics, compare_study
from cxr_core.data.tables import LocTable
from cxr_core.errors import ArtifactError
from cxr_core.evaluate.predictions import Predictions
from cxr_core.explain.scoring import BoxRecords
from cxr_core.params import load_params
from stages._common import params_option, path_option, splits_option, stage_command

logger = logging.getLogger("stages.compare")


@stage_command()
@params_option
@path_option("predictions", "data/predictions", "<model>/seed<k>.npz of every run (test stages)")
@path_option("localisation", "data/localisation", "<model>/seed<k>.csv of every run (localise stages)")
@splits_option
@path_option("out", help="metrics/compare.json")
def main(params: Path, predictions: Path, localisation: Path, splits: Path, out: Path) -> None:
    cfg = load_params(params)
    models, seeds = cfg["models"], cfg["seeds"]
    runs = {m: [Predictions.CONTRACT.run_file(predictions, m, k) for k in seeds] for m in models}
    boxes = {m: [BoxRecords.CONTRACT.run_file(localisation, m, k) for k in seeds] for m in models}
    missing = [p for paths in (*runs.values(), *boxes.values()) for p in paths if not p.is_file()]
    if missing:
        listed = "\n".join(f"  {p}" for p in missing)
        raise ArtifactError(f"compare: missing input file(s) (run `dvc repro`):\n{listed}")
    doc = compare_study(
        {m: [Predictions.load(p) for p in paths] for m, paths in runs.items()},
        {m: [BoxRecords.read(p) for p in paths] for m, paths in boxes.items()},
        LocTable.read(splits).table,
        seeds,
        CompareSettings.from_params(cfg),
    )
    ComparisonMetrics.write(out, doc)
    rank = doc["ranking"]
    worse = [m for m, g in rank["gap"].items() if g["worse"]]
    logger.info(
        "best macro AUC: %s; significantly worse: %s; not separable: %s -> %s",
        rank["best"],
        worse or "none",
        [m for m in rank["gap"] if m not in worse] or "none",
        out,
    )


if __name__ == "__main__":
    main()
