"""clinical@model-seed: operating points, calibration, subgroup audit and adjudicated labels of one run.

Scores the validation split with the checkpoint (the thresholds and the temperature are chosen
there, never on test) and reads the test logits and probabilities from the test stage's file, then
writes the operating points that ``cxr predict`` and the demo use, the audit's metrics and the
reliability curves.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click
import numpy as np

from cxr_core.audit.clinical import (
    ClinicalMetrics,
    ClinicalSettings,
    ReliabilityTable,
    Split,
    clinical_audit,
)
from cxr_core.data.adjudicated import AdjudicatedLabels
from cxr_core.data.cache import load_cache
from cxr_core.data.metadata import DATA_ENTRY, read_data_entry
from cxr_core.data.tables import SplitTable
from cxr_core.errors import ArtifactError
from cxr_core.evaluate.operating import OperatingPoints, get_threshold_rule
from cxr_core.evaluate.predict import infer_logits, sigmoid_probs
from cxr_core.evaluate.predictions import Predictions
from cxr_core.models.checkpoints import load_model
from cxr_core.models.registry import get_spec
from cxr_core.params import load_params
from cxr_core.runtime import Runtime, check_amp, check_device
from stages._common import (
    cache_option,
    model_option,
    params_option,
    path_option,
    splits_option,
    stage_command,
)

logger = logging.getLogger("stages.clinical")


@stage_command()
@model_option
@click.option("--seed", "seed", required=True, type=click.IntRange(min=0), help="the run's training seed")
@params_option
@path_option("checkpoint", help="data/models/<model>/seed<k>/best.pt")
@path_option("predictions", help="data/predictions/<model>/seed<k>.npz (test stage)")
@cache_option
@splits_option
@path_option("raw", "data/raw", "Data_Entry.csv: sex, age and view of the test images")
@path_option("adjudicated", help="data/adjudicated/google2019_nih-chest-xray-labels.csv.gz")
@path_option("operating", help="data/operating/<model>/seed<k>.json (written)")
@path_option("metrics", help="metrics/clinical/<model>/seed<k>.json (written)")
@path_option("reliability", help="plots/reliability/<model>/seed<k>.csv (written)")
def main(
    model_name: str,
    seed: int,
    params: Path,
    checkpoint: Path,
    predictions: Path,
    cache: Path,
    splits: Path,
    raw: Path,
    adjudicated: Path,
    operating: Path,
    metrics: Path,
    reliability: Path,
) -> None:
    cfg = load_params(
        params, {"device": check_device, "amp": check_amp, "threshold rule": get_threshold_rule}
    )
    settings = ClinicalSettings.from_params(cfg)
    train = cfg["train"]
    model, meta = load_model(checkpoint, model_name=model_name)
    runtime = Runtime.from_params(train, get_spec(model_name))
    images, _ = load_cache(cache, expected_size=int(meta["image_size"]))
    saved = Predictions.load(predictions)

    val_table, test_table = SplitTable.read(splits, "val"), SplitTable.read(splits, "test")
    logits = infer_logits(model, images, val_table.rows, runtime=runtime, batch_size=train["eval_batch_size"])
    val = Split(
        val_table.images,
        val_table.patients,
        val_table.targets.astype("uint8"),
        logits.numpy(),
        sigmoid_probs(logits),
    )
    if not np.array_equal(saved.rows, test_table.rows):
        raise ArtifactError(
            f"{predictions}: not the test rows of {splits}; re-run the test stage (dvc repro test@{model_name}-{seed})"
        )
    test = Split(
        test_table.images, test_table.patients, test_table.targets.astype("uint8"), saved.logits, saved.probs
    )
    doc, points, curves = clinical_audit(
        val, test, read_data_entry(raw / DATA_ENTRY), AdjudicatedLabels.read(adjudicated), settings
    )
    OperatingPoints.write(operating, model=model_name, seed=seed, **points)
    ClinicalMetrics.write(metrics, {"model": model_name, "seed": seed, **doc})
    ReliabilityTable.write(reliability, curves)
    calibration = doc["calibration"]
    logger.info(
        "%s seed %d: %s thresholds on val (%d of 14 defined); temperature %s%s; ECE %s -> %s -> %s",
        model_name,
        seed,
        settings.operating_point,
        int(np.isfinite(points["thresholds"]).sum()),
        calibration["temperature"],
        " (at a bound of the search range)" if calibration["temperature_at_bound"] else "",
        calibration["raw"]["overall"]["ece"],
        None if calibration["scaled"] is None else calibration["scaled"]["overall"]["ece"],
        metrics,
    )


if __name__ == "__main__":
    main()
