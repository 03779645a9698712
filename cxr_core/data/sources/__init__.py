"""Where ``data/raw`` comes from: one small function per source, chosen by ``data.source``.

``synthetic`` writes the phantom ChestX-ray14 and ``nih`` downloads NIH's official archives, both
into ``data/raw/images``; any other value is the folder of an existing official or Kaggle copy,
used in place. Every source ends with ``manifest.json``, so later stages never ask which one ran.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cxr_core.data import rawdata
from cxr_core.data.sources import nih, phantom


def _phantom(data: Mapping[str, Any], raw_dir: Path) -> None:
    shutil.rmtree(raw_dir / "images", ignore_errors=True)  # no stale PNGs from a larger phantom
    phantom.generate(phantom.PhantomConfig(**data["phantom"]), raw_dir)


def _nih(data: Mapping[str, Any], raw_dir: Path) -> None:
    cfg = data["nih"]
    nih.download_nih(
        raw_dir,
        archives=cfg["archives"],
        urls={"BBox_List_2017.csv": cfg["bbox_url"]},
        timeout=cfg["timeout_s"],
        retries=cfg["retries"],
        keep_archives=cfg["keep_archives"],
    )


#: ``data.source`` values that write ``data/raw/images`` themselves (anything else is a folder path).
SOURCES: dict[str, Callable[[Mapping[str, Any], Path], None]] = {"synthetic": _phantom, "nih": _nih}


def fill_raw(data: Mapping[str, Any], raw_dir: Path) -> rawdata.Manifest:
    """Run the source named by the validated ``data`` section; returns the manifest it wrote."""
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    source = data["source"]
    if source in SOURCES:
        SOURCES[source](data, raw_dir)
        return rawdata.write_manifest(raw_dir, source, raw_dir)
    return rawdata.link_local_copy(Path(source), raw_dir)
