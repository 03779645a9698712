"""test@model: score a checkpoint on the official test split.

Writes the test-set probabilities (``.npz``), the per-class AUC / bootstrap CI / AUPRC metrics
JSON (``evaluation.summarise``, patients as bootstrap groups) and the ROC points as a long CSV
``label,fpr,tpr`` for ``dvc plots``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from cxr_core.files import setup_logging, write_json
from cxr_core.params import load_params

logger = logging.getLogger("stages.test")


@click.command()
@click.option("--model", "model_name", required=True, help="params name (densenet121, ...) or timm name")
@click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path())
@click.option(
    "--checkpoint",
    "checkpoint",
    required=True,
    type=click.Path(path_type=Path),
    help="data/models/<model>/best.pt",
)
@click.option(
    "--cache", "cache_dir", default="data/cache", show_default=True, type=click.Path(path_type=Path)
)
@click.option(
    "--splits", "splits_dir", default="data/splits", show_default=True, type=click.Path(path_type=Path)
)
@click.option(
    "--metrics",
    "metrics_path",
    required=True,
    type=click.Path(path_type=Path),
    help="metrics/test/<model>.json",
)
@click.option(
    "--roc", "roc_path", required=True, type=click.Path(path_type=Path), help="plots/roc/<model>.csv"
)
@click.option(
    "--predictions",
    "predictions_path",
    required=True,
    type=click.Path(path_type=Path),
    help="data/predictions/<model>/test.npz",
)
def main(
    model_name: str,
    params_path: str,
    checkpoint: Path,
    cache_dir: Path,
    splits_dir: Path,
    metrics_path: Path,
    roc_path: Path,
    predictions_path: Path,
) -> None:
    setup_logging()
    params = load_params(params_path)
    import numpy as np
    import pandas as pd

    from cxr_core.data.cache import load_cache
    from cxr_core.evaluate.metrics import roc_points, summarise
    from cxr_core.models.checkpoints import load_model
    from cxr_core.models.registry import get_spec
    from cxr_core.train.loop import SplitArrays, evaluate, resolve_device

    t, test_cfg = params["train"], params["test"]
    model, meta = load_model(checkpoint, model_name=model_name)
    images, _ = load_cache(cache_dir, expected_size=int(meta["image_size"]))
    table = pd.read_csv(splits_dir / "test.csv", dtype={"image": str})
    test = SplitArrays.from_table(table)
    probs = evaluate(
        model,
        images,
        test.rows,
        batch_size=t["eval_batch_size"],
        device=resolve_device(t["device"]),
        amp=t["amp"] == "bf16",
        channels_last=t["channels_last"] and get_spec(model_name).channels_last,
    )
    targets = test.targets.astype(np.uint8)
    patients = table["patient"].to_numpy()

    predictions_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = predictions_path.with_name(predictions_path.name + ".tmp.npz")
    np.savez_compressed(
        tmp,
        images=table["image"].to_numpy(dtype=str),
        rows=test.rows,
        patients=patients,
        probs=probs,
        targets=targets,
    )
    tmp.replace(predictions_path)

    metrics = summarise(
        targets, probs, patients, n_boot=test_cfg["bootstrap"], ci=test_cfg["ci"], seed=params["seed"]
    )
    write_json(metrics_path, metrics)

    curves = roc_points(targets, probs, max_points=test_cfg["roc_points"])
    roc = pd.concat(
        [pd.DataFrame({"label": name, "fpr": fpr, "tpr": tpr}) for name, (fpr, tpr) in curves.items()]
        or [pd.DataFrame(columns=["label", "fpr", "tpr"])]
    )
    roc_path.parent.mkdir(parents=True, exist_ok=True)
    roc.to_csv(roc_path, index=False, float_format="%.6g")
    logger.info(
        "%s (epoch %s): test macro AUC %.3f on %d images; %s, %s, %s",
        model_name,
        meta.get("epoch"),
        metrics["macro_auc"] if metrics["macro_auc"] is not None else float("nan"),
        len(test.rows),
        metrics_path,
        roc_path,
        predictions_path,
    )


if __name__ == "__main__":
    main()
