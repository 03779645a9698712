"""preprocess: decode every raw image once into the uint8 cache ``N x S x S`` plus its index."""

from __future__ import annotations

from pathlib import Path

import click

from cxr_core.files import setup_logging
from cxr_core.params import load_params


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path())
@click.option("--raw", "raw_dir", default="data/raw", show_default=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", default="data/cache", show_default=True, type=click.Path(path_type=Path))
def main(params_path: str, raw_dir: Path, out_dir: Path) -> None:
    setup_logging()
    cfg = load_params(params_path)["preprocess"]
    from cxr_core.data.cache import build_cache
    from cxr_core.data.metadata import DATA_ENTRY, read_data_entry
    from cxr_core.data.rawdata import locate_images

    names = read_data_entry(raw_dir / DATA_ENTRY)["image"].tolist()
    paths = locate_images(raw_dir, names)
    build_cache(
        names,
        [p if p is not None else raw_dir / "images" / n for n, p in zip(names, paths, strict=True)],
        out_dir,
        size=cfg["image_size"],
        workers=cfg["workers"],
        on_error=cfg["on_error"],
    )


if __name__ == "__main__":
    main()
