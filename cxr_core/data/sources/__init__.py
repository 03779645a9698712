"""Where ``data/raw`` comes from: one small function per source, chosen by ``data.source``.

``synthetic`` writes the phantom ChestX-ray14 and ``nih`` downloads NIH's official archives, both
into ``data/raw/images``; any other value is the folder of an existing official or Kaggle copy,
used in place. Every source ends with the label table as ``data/raw/Data_Entry.csv`` and with
``manifest.json`` (which records the label file it came from), so later stages never ask which one
ran.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cxr_core.data import rawdata
from cxr_core.data.manifest import MANIFEST, PHANTOM_SOURCE, read_manifest
from cxr_core.data.metadata import DATA_ENTRY_NAMES, DATA_ENTRY_V2020
from cxr_core.data.sources import nih, phantom

log = logging.getLogger(__name__)


def _phantom(data: Mapping[str, Any], raw_dir: Path) -> str:
    shutil.rmtree(raw_dir / "images", ignore_errors=True)  # no stale PNGs from a larger phantom
    # Older versions wrote the phantom's table under NIH's name, no longer a DVC output: left there,
    # the nih source would take it for its own download of NIH's labels.
    for name in DATA_ENTRY_NAMES:
        (raw_dir / name).unlink(missing_ok=True)
    phantom.generate(phantom.PhantomConfig(**data["phantom"]), raw_dir)
    return phantom.LABEL_FILE


def _nih(data: Mapping[str, Any], raw_dir: Path) -> str:
    cfg = data["nih"]
    nih.download_nih(
        raw_dir,
        archives=cfg["archives"],
        urls={"BBox_List_2017.csv": cfg["bbox_url"]},
        timeout=cfg["timeout_s"],
        retries=cfg["retries"],
        keep_archives=cfg["keep_archives"],
    )
    return DATA_ENTRY_V2020


#: ``data.source`` values that write ``data/raw/images`` themselves (anything else is a folder path);
#: each returns the name of the label file it wrote ``Data_Entry.csv`` from, for the manifest.
SOURCES: dict[str, Callable[[Mapping[str, Any], Path], str]] = {PHANTOM_SOURCE: _phantom, "nih": _nih}


def fill_raw(data: Mapping[str, Any], raw_dir: Path) -> rawdata.Manifest:
    """Run the source named by the validated ``data`` section; returns the manifest it wrote."""
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    source = data["source"]
    if source in SOURCES:
        label_file = SOURCES[source](data, raw_dir)
        return rawdata.write_manifest(raw_dir, source, raw_dir, label_file=label_file)
    return rawdata.link_local_copy(Path(source), raw_dir)


def restore_images(data: Mapping[str, Any], raw_dir: Path) -> None:
    """Put back the images ``manifest.json`` describes where this workspace lacks them.

    The images are not DVC outputs (DVC would hash and cache every PNG), so a DVC temporary
    workspace (``dvc exp run --queue`` / ``--temp``), a fresh clone, or a ``dvc checkout`` of
    another revision can hold a manifest whose images are missing or belong to another phantom.
    The phantom is a pure function of ``data.phantom``: it is drawn again and must match the
    manifest's fingerprint. Images of any other source cannot be redrawn; the error names them.
    """
    raw_dir = Path(raw_dir)
    manifest = read_manifest(raw_dir)
    root = manifest.root(raw_dir)
    folders = rawdata.image_dirs(root, manifest.layout)
    present = bool(folders) and all(f.is_dir() for f in folders)
    if present and rawdata.image_fingerprint(root, manifest.layout) == manifest.fingerprint:
        return
    if manifest.source != PHANTOM_SOURCE or data["source"] != PHANTOM_SOURCE:
        if not present:
            raise rawdata.RawDataError(
                f"{root}: no images there, but {raw_dir / MANIFEST} says the {manifest.source!r} images "
                "are: only the phantom is redrawn by itself; put the images back (or run "
                "`dvc repro --force download` to fetch / link them again)"
            )
        log.warning(
            "%s: the images differ from the ones %s was written for (files added, removed or resized "
            "since the download stage ran); `dvc repro --force download` records them again",
            root,
            raw_dir / MANIFEST,
        )
        return
    images = raw_dir / "images"  # the phantom's layout: official, inside the raw folder
    log.info("%s: missing or from another phantom; drawing the phantom of params data.phantom again", images)
    shutil.rmtree(images, ignore_errors=True)
    cfg = phantom.PhantomConfig(**data["phantom"])
    phantom.draw_images(cfg, phantom.plan(cfg), images)
    if rawdata.image_fingerprint(root, manifest.layout) != manifest.fingerprint:
        raise rawdata.RawDataError(
            f"{images}: the phantom drawn from params data.phantom does not match {raw_dir / MANIFEST} "
            "(written for other settings): run `dvc repro download`"
        )
