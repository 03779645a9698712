"""split: official test list, stratified patient-disjoint validation, localisation boxes."""

from __future__ import annotations

from pathlib import Path

import click

from cxr_core.io import setup_logging, write_json
from cxr_core.params import load_params


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path())
@click.option("--raw", "raw_dir", default="data/raw", show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--cache", "cache_dir", default="data/cache", show_default=True, type=click.Path(path_type=Path)
)
@click.option("--out", "out_dir", default="data/splits", show_default=True, type=click.Path(path_type=Path))
@click.option("--metrics", "metrics_path", default="metrics/split.json", show_default=True, type=click.Path())
def main(params_path: str, raw_dir: Path, cache_dir: Path, out_dir: Path, metrics_path: str) -> None:
    setup_logging()
    cfg = load_params(params_path)["split"]
    import pandas as pd

    from cxr_core import metadata as md
    from cxr_core.cache import load_cache
    from cxr_core.splits import make_splits, split_stats

    images, index = load_cache(cache_dir)
    splits = make_splits(
        md.read_data_entry(raw_dir / md.DATA_ENTRY),
        index,
        md.read_image_list(raw_dir / md.TRAIN_VAL_LIST),
        md.read_image_list(raw_dir / md.TEST_LIST),
        md.read_bbox_list(raw_dir / md.BBOX_LIST),
        val_fraction=cfg["val_fraction"],
        group_by=cfg["group_by"],
        seed=cfg["seed"],
        image_size=int(images.shape[1]),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("train", "val", "test", "loc"):
        table: pd.DataFrame = getattr(splits, name)
        table.to_csv(out_dir / f"{name}.csv", index=False)
    write_json(metrics_path, split_stats(splits))


if __name__ == "__main__":
    main()
