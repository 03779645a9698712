"""A decoded external set on disk (``data/external/<name>/``) and its reader.

``images.npy`` (N x S x S uint8, the NIH cache's size and decoding rules), ``table.csv`` (row, image,
patient, one column per mapped class: 1 / 0 / blank = missing), ``boxes.csv`` (row, image, label,
x0, y0, x1, y1 as fractions of the image's width and height) and ``manifest.json`` (the label map
used, what was left out and why, the leakage check). Apart from the build so that the evaluation
stage depends on the format, not on the readers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_core.data.external.base import MappedClass
from cxr_core.files import contract, malformed, missing, read_csv, read_json

PRODUCER = "the external data stage (external_data@<name>)"
#: What ``manifest.json`` holds (the build writes them all; the evaluation and the report read them).
MANIFEST_KEYS: tuple[str, ...] = (
    "dataset", "source", "label_file", "settings", "bootstrap_group", "image_size", "n_images",
    "n_patients", "n_boxes", "classes", "left_out", "unreadable", "leakage",
)  # fmt: skip
IMAGES_FILE, TABLE_FILE, BOXES_FILE, MANIFEST_FILE = "images.npy", "table.csv", "boxes.csv", "manifest.json"


def class_json(c: MappedClass) -> dict[str, Any]:
    return {"name": c.name, "nih": list(c.nih), "source": c.source, "kind": c.kind}


@contract(
    "data/external/<name>/",
    writer="external_data@<name>",
    fields=(
        "images.npy (uint8 N x S x S)",
        "table.csv (row, image, patient, <mapped classes: 1/0/blank>)",
        "boxes.csv (row, image, label, x0, y0, x1, y1)",
        f"manifest.json ({', '.join(MANIFEST_KEYS)})",
    ),
)
@dataclass
class ExternalSet:
    """One decoded external set, as the evaluation reads it."""

    name: str
    images: np.ndarray
    table: pd.DataFrame
    boxes: pd.DataFrame
    manifest: dict[str, Any]

    @property
    def classes(self) -> list[MappedClass]:
        return [
            MappedClass(c["name"], tuple(c["nih"]), c["source"], c["kind"]) for c in self.manifest["classes"]
        ]

    @property
    def labels(self) -> np.ndarray:
        """N x K float (NaN = missing), in the order of :attr:`classes`."""
        return self.table[[c.name for c in self.classes]].to_numpy(np.float64)

    @classmethod
    def read(cls, folder: Path) -> ExternalSet:
        folder = Path(folder)
        manifest = read_json(folder / MANIFEST_FILE, PRODUCER, MANIFEST_KEYS)
        path = folder / IMAGES_FILE
        if not path.is_file():
            raise missing(path, PRODUCER)
        images = np.load(path, mmap_mode="r")
        table = read_csv(
            folder / TABLE_FILE, PRODUCER, ("row", "image", "patient"), {"image": str, "patient": str}
        )
        boxes = read_csv(
            folder / BOXES_FILE,
            PRODUCER,
            ("row", "image", "label", "x0", "y0", "x1", "y1"),
            {"image": str, "label": str},
        )
        absent = [c["name"] for c in manifest["classes"] if c["name"] not in table.columns]
        if absent:
            raise malformed(folder / TABLE_FILE, f"lacks the class column(s) {absent}", PRODUCER)
        if len(table) != len(images) or images.shape[1:] != (manifest["image_size"],) * 2:
            raise malformed(folder, f"{TABLE_FILE} has {len(table)} rows for {images.shape} images", PRODUCER)
        return cls(manifest["dataset"], images, table, boxes, manifest)
