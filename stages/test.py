"""test@model: score a checkpoint on the official test split.

Writes the test-set logits and probabilities (``Predictions``), the per-class AUC / bootstrap CI / AUPRC
metrics (patients as bootstrap groups) and the ROC points as a long CSV for ``dvc plots``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cxr_core.data.cache import load_cache
from cxr_core.data.tables import SplitTable
from cxr_core.evaluate.metrics import RocTable, TestMetrics, roc_points, summarise
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

logger = logging.getLogger("stages.test")


@stage_command()
@model_option
@params_option
@path_option("checkpoint", help="data/models/<model>/seed<k>/best.pt")
@cache_option
@splits_option
@path_option("metrics", help="metrics/test/<model>/seed<k>.json")
@path_option("roc", help="plots/roc/<model>/seed<k>.csv")
@path_option("predictions", help="data/predictions/<model>/seed<k>.npz")
def main(
    model_name: str,
    params: Path,
    checkpoint: Path,
    cache: Path,
    splits: Path,
    metrics: Path,
    roc: Path,
    predictions: Path,
) -> None:
    cfg = load_params(params, {"device": check_device, "amp": check_amp})
    train, test_cfg = cfg["train"], cfg["test"]
    model, meta = load_model(checkpoint, model_name=model_name)
    runtime = Runtime.from_params(train, get_spec(model_name))
    images, _ = load_cache(cache, expected_size=int(meta["image_size"]))
    test = SplitTable.read(splits, "test")
    logits = infer_logits(model, images, test.rows, runtime=runtime, batch_size=train["eval_batch_size"])
    probs = sigmoid_probs(logits)
    targets = test.targets.astype("uint8")
    Predictions(test.images, test.rows, test.patients, probs, targets, logits.numpy()).save(predictions)

    summary = summarise(
        targets, probs, test.patients, n_boot=test_cfg["bootstrap"], ci=test_cfg["ci"], seed=cfg["seed"]
    )
    TestMetrics.write(metrics, summary)
    RocTable.write(roc, RocTable.from_curves(roc_points(targets, probs, max_points=test_cfg["roc_points"])))
    logger.info(
        "%s (epoch %s): test macro AUC %s on %d images -> %s, %s, %s",
        model_name,
        meta.get("epoch"),
        summary["macro_auc"],
        len(test.rows),
        metrics,
        roc,
        predictions,
    )


if __name__ == "__main__":
    main()
