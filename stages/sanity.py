"""sanity@model: do the model's heatmaps depend on what it learned, and do they point at what it uses?

On a seeded sample of the report half's boxes: the cascading model-parameter randomisation check
(a method whose maps survive re-initialising the head and last stages fails) and faithfulness
(``sanity.faithfulness``: ROAD, or the confidence change when the image is multiplied by the map),
for every CAM method in ``cam.methods`` (the random-map control fails by construction).
"""

from __future__ import annotations

from pathlib import Path

from cxr_core.data.batches import normalise, to_device
from cxr_core.data.cache import load_cache
from cxr_core.data.tables import LocTable
from cxr_core.explain.cams.batch_loop import compute_heatmaps
from cxr_core.explain.cams.registry import CAM_LOOKUPS
from cxr_core.explain.faithfulness import check_faithfulness, faithfulness_scores
from cxr_core.explain.sanity import cascade_steps, randomisation_check, sanity_verdict
from cxr_core.explain.sanity_metrics import SanityMetrics, sample_boxes, sanity_metrics
from cxr_core.models.checkpoints import load_model
from cxr_core.models.registry import get_spec
from cxr_core.params import ParamsError, load_params
from cxr_core.runtime import Runtime
from stages._common import (
    cache_option,
    model_option,
    params_option,
    path_option,
    splits_option,
    stage_command,
)

LOOKUPS = {**CAM_LOOKUPS, "faithfulness metric": check_faithfulness}


@stage_command()
@model_option
@params_option
@path_option("checkpoint", help="data/models/<model>/seed<k>/best.pt")
@cache_option
@splits_option
@path_option("out", help="metrics/sanity/<model>/seed<k>.json")
def main(model_name: str, params: Path, checkpoint: Path, cache: Path, splits: Path, out: Path) -> None:
    cfg = load_params(params, LOOKUPS)
    cam, sanity = cfg["cam"], cfg["sanity"]
    model, meta = load_model(checkpoint, model_name=model_name)
    spec = get_spec(model_name)
    images, _ = load_cache(cache, expected_size=int(meta["image_size"]))
    loc = LocTable.read(splits)
    picked = sample_boxes(loc.table["subset"].to_numpy(), sanity["images"], cfg["seed"])
    runtime = Runtime.from_params(cfg["train"], spec)
    model = runtime.prepare(model).eval()
    x = normalise(to_device(images[loc.rows[picked]], runtime.device), channels_last=runtime.channels_last)
    classes = loc.label_index[picked]
    cam_kwargs = {
        "eigen_sign": cam["eigen_sign"],
        "random_stride": cam["random_stride"],
        "autocast_dtype": runtime.autocast_dtype,
        "channels_last": runtime.channels_last,
    }
    methods = list(cam["methods"])
    trained = compute_heatmaps(model, spec, x, classes, methods, cam["batch_size"], cfg["seed"], **cam_kwargs)
    try:
        cascade_steps(model, sanity["stages"])  # fail before any work if the model is too shallow
    except ValueError as exc:
        raise ParamsError(f"{params}: sanity.stages = {sanity['stages']} for {model_name}: {exc}") from None
    result = randomisation_check(
        model,
        spec,
        x,
        classes,
        methods,
        seed=cfg["seed"],
        stages=sanity["stages"],
        batch_size=cam["batch_size"],
        cam_kwargs=cam_kwargs,
        trained_maps=trained,
    )
    faithful = {
        m: faithfulness_scores(
            model,
            x,
            classes,
            trained[m],  # a broken (NaN) map scores NaN, not the score of a blank map
            metric=sanity["faithfulness"],
            percentiles=sanity["road_percentiles"],
            batch_size=cam["batch_size"],
            seed=cfg["seed"],
        )
        for m in methods
    }
    doc = sanity_metrics(
        model_name,
        result,
        sanity_verdict(result, sanity["max_rank_correlation"]),
        faithful,
        faithfulness=sanity["faithfulness"],
        max_rank_correlation=sanity["max_rank_correlation"],
        road_percentiles=sanity["road_percentiles"],
    )
    SanityMetrics.write(out, doc)


if __name__ == "__main__":
    main()
