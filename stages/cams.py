"""cams@model: one heatmap per (localisation box, CAM method), from the trained model.

Heatmaps are saved as the paper's 0..255 maps so the localise stage can re-score any threshold
without the model. Each map is targeted at its own box label; the probabilities stored beside the
maps are the test stage's (the localisation images are test images).
"""

from __future__ import annotations

from pathlib import Path

from cxr_core.data.cache import load_cache
from cxr_core.data.tables import LocTable
from cxr_core.explain.cams.registry import CAM_LOOKUPS
from cxr_core.explain.cams.settings import CamSettings
from cxr_core.explain.loc_heatmaps import loc_heatmaps
from cxr_core.models.checkpoints import load_model
from cxr_core.models.registry import get_spec
from cxr_core.params import load_params
from cxr_core.runtime import Runtime
from stages._common import (
    cache_option,
    model_option,
    params_option,
    path_option,
    splits_option,
    stage_command,
)

LOOKUPS = CAM_LOOKUPS


@stage_command()
@model_option
@params_option
@path_option("checkpoint", help="data/models/<model>/seed<k>/best.pt")
@cache_option
@splits_option
@path_option("out", help="data/heatmaps/<model>/seed<k>.npz")
def main(model_name: str, params: Path, checkpoint: Path, cache: Path, splits: Path, out: Path) -> None:
    cfg = load_params(params, LOOKUPS)
    model, meta = load_model(checkpoint, model_name=model_name)
    spec = get_spec(model_name)
    images, _ = load_cache(cache, expected_size=int(meta["image_size"]))
    loc = LocTable.read(splits)
    runtime = Runtime.from_params(cfg["train"], spec)
    loc_heatmaps(model, spec, images, loc, CamSettings.from_params(cfg), runtime).save(out)


if __name__ == "__main__":
    main()
