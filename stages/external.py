"""external@name: every trained model scored on one external set, against its NIH test result.

Per mapped class: AUC with a patient-bootstrap CI, the NIH test AUC of the same mapped class and
the drop; for a set with boxes, the pointing game and the IoU at the threshold chosen on the NIH
tune boxes. Nothing is fitted or chosen on the external set.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cxr_core.audit.external import external_box_scores, external_summary
from cxr_core.audit.external_metrics import ExternalMetrics
from cxr_core.data.external.store import ExternalSet
from cxr_core.errors import ArtifactError
from cxr_core.evaluate.predict import predict_probs
from cxr_core.evaluate.predictions import Predictions
from cxr_core.explain.cams.registry import CAM_LOOKUPS
from cxr_core.explain.cams.settings import CamSettings
from cxr_core.files import read_json
from cxr_core.models.checkpoints import CheckpointMeta, load_model
from cxr_core.models.registry import get_spec
from cxr_core.params import load_params
from cxr_core.runtime import Runtime
from stages._common import params_option, path_option, stage_command

logger = logging.getLogger("stages.external")

LOOKUPS = CAM_LOOKUPS


@stage_command()
@params_option
@path_option("data", help="data/external/<name> (external_data stage)")
@path_option("models", "data/models", help="the trained models (train stage)")
@path_option("predictions", "data/predictions", help="NIH test predictions (test stage)")
@path_option(
    "localise", "metrics/localise", help="the thresholds chosen on the NIH tune boxes (localise stage)"
)
@path_option("out", help="metrics/external/<name>.json")
def main(params: Path, data: Path, models: Path, predictions: Path, localise: Path, out: Path) -> None:
    cfg = load_params(params, LOOKUPS)
    ext = ExternalSet.read(data)
    test_cfg = cfg["test"]
    runs: dict[str, dict[str, object]] = {}
    for model_name in cfg["models"]:
        spec = get_spec(model_name)
        for seed in cfg["seeds"]:
            checkpoint = CheckpointMeta.CONTRACT.run_file(models, model_name, seed)
            model, meta = load_model(checkpoint, model_name=model_name)
            if int(meta["image_size"]) != ext.images.shape[1]:
                raise ArtifactError(
                    f"{data}: images are {ext.images.shape[1]} px but {model_name} was trained at "
                    f"{meta['image_size']} px; rebuild with `dvc repro external_data@{ext.name}`"
                )
            runtime = Runtime.from_params(cfg["train"], spec)
            probs = predict_probs(
                model, ext.images, runtime=runtime, batch_size=cfg["train"]["eval_batch_size"]
            )
            nih = Predictions.load(Predictions.CONTRACT.run_file(predictions, model_name, seed))
            result = external_summary(
                ext.classes,
                (ext.labels, probs, ext.table["patient"].to_numpy()),
                (nih.targets, nih.probs, nih.patients),
                n_boot=test_cfg["bootstrap"],
                ci=test_cfg["ci"],
                seed=cfg["seed"],
                min_positives=cfg["external"]["min_positives"],
            )
            if len(ext.boxes):
                thresholds = tuned_thresholds(localise / model_name / f"seed{seed}.json")
                result["boxes"] = external_box_scores(
                    model, spec, ext.images, probs, ext.boxes, ext.classes,
                    CamSettings.from_params(cfg), runtime, thresholds,
                )  # fmt: skip
            runs.setdefault(model_name, {})[f"seed{seed}"] = result
            logger.info(
                "%s seed %d on %s: macro AUC %s (NIH %s, drop %s)",
                model_name, seed, ext.name, result["macro_auc"], result["nih_macro_auc"], result["macro_drop"],
            )  # fmt: skip
    m = ext.manifest
    ExternalMetrics.write(
        out,
        {
            "dataset": ext.name,
            "phantom": m["source"] == "synthetic",
            "label_file": m["label_file"],
            "settings": m["settings"],
            "bootstrap_group": m["bootstrap_group"],
            "n_images": m["n_images"],
            "n_patients": m["n_patients"],
            "n_boxes": m["n_boxes"],
            "classes": m["classes"],
            "left_out": m["left_out"],
            "leakage": m["leakage"],
            "n_boot": test_cfg["bootstrap"],
            "ci": test_cfg["ci"],
            "seed": cfg["seed"],
            "min_positives": cfg["external"]["min_positives"],
            "models": runs,
        },
    )


def tuned_thresholds(path: Path) -> dict[str, float]:
    """Each method's IoU threshold chosen on the NIH tune boxes (``localise@``'s held-out block)."""
    doc = read_json(path, "the localise stage (localise@<model>-<seed>)", ("methods",))
    try:
        return {
            m: float(b["heldout"]["thresholds"]["iou"]) for m, b in doc["methods"].items() if "heldout" in b
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(
            f"{path}: a method's heldout.thresholds.iou is missing or not a number ({exc!r}); "
            "rerun `dvc repro localise`"
        ) from None


if __name__ == "__main__":
    main()
