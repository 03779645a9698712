"""split: official test list, stratified patient-disjoint validation, localisation boxes."""

from __future__ import annotations

from pathlib import Path

from cxr_core.data.cache import load_cache
from cxr_core.data.splits import split_stats, splits_from_raw, write_splits
from cxr_core.data.tables import SplitStats
from cxr_core.params import load_params
from stages._common import cache_option, params_option, path_option, stage_command


@stage_command()
@params_option
@path_option("raw", "data/raw", "the raw folder (download stage)")
@cache_option
@path_option("out", "data/splits", "train.csv, val.csv, test.csv, loc.csv")
@path_option("metrics", "metrics/split.json", "images, patients and prevalence per split")
def main(params: Path, raw: Path, cache: Path, out: Path, metrics: Path) -> None:
    cfg = load_params(params)["split"]
    images, index = load_cache(cache)
    splits = splits_from_raw(
        raw,
        index,
        val_fraction=cfg["val_fraction"],
        group_by=cfg["group_by"],
        seed=cfg["seed"],
        loc_tune_fraction=cfg["loc_tune_fraction"],
        image_size=int(images.shape[1]),
    )
    write_splits(splits, out)
    SplitStats.write(metrics, split_stats(splits))


if __name__ == "__main__":
    main()
