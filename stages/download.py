"""download: fill ``data/raw`` from the source named by ``data.source``.

``synthetic`` writes the phantom ChestX-ray14, ``nih`` fetches the 12 official archives, a folder
path links an existing official / Kaggle copy in place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from cxr_core.files import setup_logging
from cxr_core.params import load_params


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path())
@click.option("--out", "raw_dir", default="data/raw", show_default=True, type=click.Path(path_type=Path))
def main(params_path: str, raw_dir: Path) -> None:
    setup_logging()
    data = load_params(params_path)["data"]
    source = data["source"]
    raw_dir.mkdir(parents=True, exist_ok=True)
    from cxr_core.data import rawdata

    if source == "synthetic":
        from cxr_core.data.sources.phantom import PhantomConfig, generate

        shutil.rmtree(raw_dir / "images", ignore_errors=True)  # no stale PNGs from a larger phantom
        generate(PhantomConfig(**data["phantom"]), raw_dir)
        rawdata.write_manifest(raw_dir, source, raw_dir)
    elif source == "nih":
        from cxr_core.data.sources.nih import download_nih

        nih = data["nih"]
        download_nih(
            raw_dir,
            archives=nih["archives"],
            urls={"BBox_List_2017.csv": nih["bbox_url"]},
            timeout=nih["timeout_s"],
            retries=nih["retries"],
            keep_archives=nih["keep_archives"],
        )
        rawdata.write_manifest(raw_dir, source, raw_dir)
    else:
        rawdata.link_local_copy(Path(source), raw_dir)


if __name__ == "__main__":
    main()
