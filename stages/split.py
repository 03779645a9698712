"""split: official test list, stratified patient-disjoint validation, localisation boxes."""

from __future__ import annotations

from pathlib import Path

import click

from cxr_core.files import setup_logging, write_json
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
    from cxr_core.data.cache import load_cache
    from cxr_core.data.splits import split_stats, splits_from_raw, write_splits

    images, index = load_cache(cache_dir)
    splits = splits_from_raw(
        raw_dir,
        index,
        val_fraction=cfg["val_fraction"],
        group_by=cfg["group_by"],
        seed=cfg["seed"],
        image_size=int(images.shape[1]),
    )
    write_splits(splits, out_dir)
    write_json(metrics_path, split_stats(splits))


if __name__ == "__main__":
    main()
