"""The three data sources, and finding images in the official or the Kaggle layout.

``data/raw/`` always ends up holding the four metadata files and ``manifest.json``; the images
stay where they are (``data/raw/images`` for the phantom and the NIH download, the user's own folder
for a local copy, which is used in place: no 42 GB copy). Only the manifest and the metadata files are
DVC outputs, so DVC never hashes 112,120 PNGs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from cxr_core.data.metadata import DATA_ENTRY, METADATA_FILES, check_metadata_file, read_data_entry
from cxr_core.errors import CxrError
from cxr_core.files import contract, read_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class RawDataError(CxrError, ValueError):
    """The raw data folder is not in a layout we know, or misses files we need."""


@contract(
    "data/raw/manifest.json",
    writer="download",
    fields=("source", "layout", "image_root", "images", "missing", "fingerprint"),
)
@dataclass(frozen=True)
class Manifest:
    """What ``download`` produced: where the images are and a fingerprint of what is there."""

    source: str
    layout: str  # "official" (images/NAME.png) | "kaggle" (images_NNN/images/NAME.png)
    image_root: str  # relative to the raw folder when inside it, else absolute
    images: int  # image files found
    missing: list[str]  # images named in Data_Entry but not found
    fingerprint: str  # sha256 over (name, size) of every image file

    def root(self, raw_dir: Path) -> Path:
        root = Path(self.image_root)
        return root if root.is_absolute() else Path(raw_dir) / root

    @classmethod
    def read(cls, raw_dir: Path) -> Manifest:
        """``manifest.json`` of a raw folder (written by :func:`write_manifest`)."""
        return read_manifest(raw_dir)


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


def write_manifest(raw_dir: Path, source: str, image_root: Path) -> Manifest:
    """Scan the images, compare with ``Data_Entry``, and write ``raw_dir/manifest.json``."""
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
    manifest = Manifest(source, layout, rel, len(found), missing, _fingerprint(found))
    (raw_dir / MANIFEST).write_text(json.dumps(asdict(manifest), indent=1) + "\n")
    return manifest


def read_manifest(raw_dir: Path) -> Manifest:
    path = Path(raw_dir) / MANIFEST
    doc = read_json(path, "the download stage", Manifest.CONTRACT.fields)  # type: ignore[attr-defined]
    return Manifest(**{k: doc[k] for k in Manifest.CONTRACT.fields})  # type: ignore[attr-defined]


def link_local_copy(source: Path, raw_dir: Path) -> Manifest:
    """Use an existing NIH / Kaggle copy in place: copy only the four metadata files.

    The metadata may sit in the copy's root (both layouts ship it there) and is checked for HTML
    pages and the expected header.
    """
    source = Path(source).expanduser().resolve()
    raw_dir.mkdir(parents=True, exist_ok=True)
    absent = [name for name in METADATA_FILES if not (source / name).is_file()]
    if absent:
        raise RawDataError(
            f"{source}: missing metadata file(s) {absent}; a local copy needs {list(METADATA_FILES)} "
            "next to its images folder(s)"
        )
    for name in METADATA_FILES:
        check_metadata_file(source / name, name)
        shutil.copyfile(source / name, raw_dir / name)
    return write_manifest(raw_dir, str(source), source)
