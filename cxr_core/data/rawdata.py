"""The raw folder, its manifest, and existing local copies in the official or the Kaggle layout.

``data/raw/`` always ends up holding the four metadata files (the label table under the one name
:data:`DATA_ENTRY`, ``Data_Entry.csv``, whichever NIH file it came from) and ``manifest.json``, which
records where the images are and which label file was used. The images stay where they are
(``data/raw/images`` for the phantom and the NIH download, the user's own folder for a local copy,
which is used in place: no 42 GB copy). Only the manifest and the metadata files are DVC outputs,
so DVC never hashes 112,120 PNGs. The sources that write ``data/raw`` live in
:mod:`cxr_core.data.sources`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from cxr_core.data.manifest import MANIFEST, Manifest, read_manifest
from cxr_core.data.metadata import (
    BBOX_LIST,
    DATA_ENTRY,
    DATA_ENTRY_2017,
    DATA_ENTRY_NAMES,
    DATA_ENTRY_V2020,
    TEST_LIST,
    TRAIN_VAL_LIST,
    check_metadata_file,
    normalise_data_entry,
    read_data_entry,
)
from cxr_core.errors import CxrError
from cxr_core.files import atomic_path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class RawDataError(CxrError, ValueError):
    """The raw data folder is not in a layout we know, or misses files we need."""


def detect_layout(root: Path) -> str:
    """``official`` if ``root/images/`` holds images, ``kaggle`` if ``root/images_*/images/`` do."""
    root = Path(root)
    if (root / "images").is_dir():
        return "official"
    if any(p.is_dir() for p in root.glob("images_*/images")):
        return "kaggle"
    raise RawDataError(
        f"{root}: no images found: expected the official layout (images/00000001_000.png ...) "
        "or the Kaggle layout (images_001/images/00000001_000.png ...)"
    )


def image_dirs(root: Path, layout: str) -> list[Path]:
    """Folders that hold the image files, in a stable order."""
    root = Path(root)
    if layout == "official":
        return [root / "images"]
    return sorted(p for p in root.glob("images_*/images") if p.is_dir())


def scan_images(root: Path, layout: str) -> dict[str, Path]:
    """Map every image file name to its path (one ``scandir`` per folder: fast for 112k files)."""
    found: dict[str, Path] = {}
    for folder in image_dirs(root, layout):
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file():
                    found.setdefault(entry.name, Path(entry.path))
    return found


def locate_images(raw_dir: Path, names: list[str]) -> list[Path | None]:
    """Paths of ``names`` per the manifest in ``raw_dir`` (``None`` where an image is not there)."""
    manifest = read_manifest(raw_dir)
    found = scan_images(manifest.root(raw_dir), manifest.layout)
    return [found.get(n) for n in names]


def _fingerprint(found: dict[str, Path]) -> str:
    digest = hashlib.sha256()
    for name in sorted(found):
        digest.update(f"{name}\t{found[name].stat().st_size}\n".encode())
    return digest.hexdigest()


def image_fingerprint(image_root: Path, layout: str) -> str:
    """The manifest's fingerprint of the images now under ``image_root`` (sha256 over names and sizes)."""
    return _fingerprint(scan_images(image_root, layout))


def write_manifest(raw_dir: Path, source: str, image_root: Path, *, label_file: str) -> Manifest:
    """Scan the images, compare with ``Data_Entry.csv``, and write ``raw_dir/manifest.json``.

    ``label_file`` names the file the raw folder's label table came from (recorded, never read).
    """
    raw_dir = Path(raw_dir)
    layout = detect_layout(image_root)
    found = scan_images(image_root, layout)
    wanted = read_data_entry(raw_dir / DATA_ENTRY)["image"].tolist()
    missing = [n for n in wanted if n not in found]
    if missing:
        log.warning(
            "%d of %d images named in %s are not in %s, e.g. %s (listed in %s)",
            len(missing),
            len(wanted),
            DATA_ENTRY,
            image_root,
            missing[:5],
            raw_dir / MANIFEST,
        )
    try:
        rel = str(Path(image_root).resolve().relative_to(raw_dir.resolve()))
    except ValueError:
        rel = str(Path(image_root).resolve())
    manifest = Manifest(source, label_file, layout, rel, len(found), missing, _fingerprint(found))
    with atomic_path(raw_dir / MANIFEST) as tmp:
        tmp.write_text(json.dumps(asdict(manifest), indent=1) + "\n")
    return manifest


def choose_data_entry(folder: Path) -> Path:
    """The label table of a copy: ``Data_Entry_2017_v2020.csv`` if present, else ``Data_Entry_2017.csv``.

    NIH re-released the labels in 2020 and serves only that file today, so it wins when a copy holds
    both (an old Kaggle copy topped up from NIH); the choice is logged either way.
    """
    folder = Path(folder)
    present = [name for name in DATA_ENTRY_NAMES if (folder / name).is_file()]
    if not present:
        raise RawDataError(
            f"{folder}: no label table: expected {DATA_ENTRY_V2020} (NIH's 2020 labels) or "
            f"{DATA_ENTRY_2017} (the 2017 labels, as in Kaggle's copy)"
        )
    chosen = present[0]
    if len(present) > 1:
        log.info(
            "%s: labels from %s, not %s: both are present and NIH's 2020 re-release replaces the 2017 labels",
            folder,
            chosen,
            ", ".join(present[1:]),
        )
    else:
        log.info("%s: labels from %s", folder, chosen)
    return folder / chosen


def link_local_copy(source: Path, raw_dir: Path) -> Manifest:
    """Use an existing NIH / Kaggle copy in place: copy only the metadata files into ``raw_dir``.

    The metadata sits in the copy's root (both layouts ship it there). The label table may be either
    NIH file (:func:`choose_data_entry`); it is written as ``raw_dir/Data_Entry.csv`` in the v2020
    format (:func:`normalise_data_entry`) and its name goes into the manifest. Every file is checked
    (HTML pages, headers) before anything is written.
    """
    source = Path(source).expanduser().resolve()
    raw_dir = Path(raw_dir)
    others = (BBOX_LIST, TRAIN_VAL_LIST, TEST_LIST)
    absent = [name for name in others if not (source / name).is_file()]
    if not any((source / name).is_file() for name in DATA_ENTRY_NAMES):
        absent.insert(0, " or ".join(DATA_ENTRY_NAMES))
    if absent:
        raise RawDataError(
            f"{source}: missing metadata file(s) {absent}; a local copy needs {DATA_ENTRY_V2020} "
            f"(or the older {DATA_ENTRY_2017}), {', '.join(others)} next to its images folder(s)"
        )
    entry = choose_data_entry(source)
    for name in others:
        check_metadata_file(source / name, name)
    raw_dir.mkdir(parents=True, exist_ok=True)
    normalise_data_entry(entry, raw_dir / DATA_ENTRY)
    for name in others:
        if (raw_dir / name).resolve() != (source / name).resolve():
            shutil.copyfile(source / name, raw_dir / name)
    return write_manifest(raw_dir, str(source), source, label_file=entry.name)
