"""``data/raw/manifest.json``: which data the pipeline ran on (its own module: light to import).

The train stage records the manifest's ``source`` and ``label_file`` in every checkpoint; reading
it must not make training depend on the metadata parsers of :mod:`cxr_core.data.rawdata`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cxr_core.files import contract, read_json

MANIFEST = "manifest.json"
#: ``source`` of the embedded phantom (``data.source: synthetic``): every report and checkpoint flags it.
PHANTOM_SOURCE = "synthetic"


@contract(
    "data/raw/manifest.json",
    writer="download",
    fields=("source", "label_file", "layout", "image_root", "images", "missing", "fingerprint"),
)
@dataclass(frozen=True)
class Manifest:
    """What ``download`` produced: where the images are, whose labels, and a fingerprint of the images."""

    source: str
    label_file: str  # the file data/raw/Data_Entry.csv was made from (NIH re-released the labels in 2020)
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
        """``manifest.json`` of a raw folder (written by :func:`cxr_core.data.rawdata.write_manifest`)."""
        return read_manifest(raw_dir)


def read_manifest(raw_dir: Path) -> Manifest:
    path = Path(raw_dir) / MANIFEST
    doc = read_json(path, "the download stage", Manifest.CONTRACT.fields)  # type: ignore[attr-defined]
    return Manifest(**{k: doc[k] for k in Manifest.CONTRACT.fields})  # type: ignore[attr-defined]
