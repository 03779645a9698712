"""preprocess: decode every raw image once into the uint8 cache ``N x S x S`` plus its index.

The phantom's images are drawn again first where this workspace lacks them (a DVC temporary
workspace or a fresh clone: they are not DVC outputs).
"""

from __future__ import annotations

from pathlib import Path

from cxr_core.data.preprocess import build_cache_from_raw
from cxr_core.data.sources import restore_images
from cxr_core.params import load_params
from stages._common import params_option, path_option, stage_command


@stage_command()
@params_option
@path_option("raw", "data/raw", "the raw folder (download stage)")
@path_option("out", "data/cache", "the cache folder: images.npy, index.csv, report.json")
def main(params: Path, raw: Path, out: Path) -> None:
    every = load_params(params)
    restore_images(every["data"], raw)
    cfg = every["preprocess"]
    build_cache_from_raw(raw, out, size=cfg["image_size"], workers=cfg["workers"], on_error=cfg["on_error"])


if __name__ == "__main__":
    main()
