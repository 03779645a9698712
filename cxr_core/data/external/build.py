"""Decode an external set once into the cache format, after the leakage guard.

The folder (``cxr_core.data.external.store``) holds ``images.npy`` (N x S x S uint8, the NIH cache's size and decoding
rules), ``table.csv`` (row, image, patient, one column per mapped class: 1 / 0 / blank = missing),
``boxes.csv`` (row, image, label, x0, y0, x1, y1 as fractions of the image's width and height) and
``manifest.json`` (the label map used, what was left out and why, the leakage check).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from cxr_core.data.decode import ImageDecodeError, decode_image
from cxr_core.data.external import leakage
from cxr_core.data.external.base import ExternalDataError, ExternalTable
from cxr_core.data.external.dicom import decode_dicom, is_dicom
from cxr_core.data.external.store import BOXES_FILE, IMAGES_FILE, MANIFEST_FILE, TABLE_FILE, class_json
from cxr_core.data.pool import pool_context
from cxr_core.files import atomic_path, write_csv, write_json

log = logging.getLogger(__name__)

MAX_LISTED = 20


def decode_any(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """``size x size`` uint8 grey and the original (width, height) of a DICOM, PNG or JPEG file."""
    path = Path(path)
    if is_dicom(path):
        return decode_dicom(path, size)
    pixels = decode_image(path, size)
    with Image.open(path) as im:
        return pixels, im.size


def _decode_job(job: tuple[int, str, int]) -> tuple[int, np.ndarray | None, tuple[int, int], str]:
    i, path, size = job
    try:
        pixels, wh = decode_any(Path(path), size)
        return i, pixels, wh, ""
    except ImageDecodeError as exc:
        return i, None, (0, 0), exc.reason


def _decode_all(
    files: Sequence[Path], size: int, workers: int
) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    images = np.zeros((len(files), size, size), np.uint8)
    sizes = np.zeros((len(files), 2), np.int64)
    bad: dict[int, str] = {}
    jobs = [(i, str(f), size) for i, f in enumerate(files)]
    if workers > 1 and len(jobs) > 64:
        with pool_context().Pool(workers) as pool:
            results = list(pool.imap(_decode_job, jobs, chunksize=16))
    else:
        results = [_decode_job(j) for j in jobs]
    for i, pixels, wh, reason in results:
        if pixels is None:
            bad[i] = reason
        else:
            images[i], sizes[i] = pixels, wh
    return images, sizes, bad


@dataclass(frozen=True)
class LeakageSettings:
    """The ``external`` section's leakage guard: refuse or drop near-copies of NIH train / val images."""

    action: str
    min_correlation: float


def _check_leakage(
    images: np.ndarray,
    ids: Sequence[str],
    nih: np.ndarray,
    nih_ids: Sequence[str],
    settings: LeakageSettings,
    name: str,
) -> list[int]:
    """Rows of ``images`` to drop (empty unless ``drop``); stops on a match under ``refuse``."""
    hits = leakage.near_copies(images, nih, settings.min_correlation)
    if hits and settings.action == "refuse":
        raise ExternalDataError(
            f"external set {name}: {len(hits)} image(s) are near-copies of NIH train/val images the models "
            f"were trained on: {leakage.describe(hits, ids, nih_ids)}. Evaluating on them would overstate "
            "external performance; remove them, or set external.leakage: drop to leave them out"
        )
    if hits:
        log.warning(
            "external set %s: dropping %d NIH near-copies: %s",
            name,
            len(hits),
            leakage.describe(hits, ids, nih_ids),
        )
    return sorted(i for i, _, _ in hits)


def build_external(
    table: ExternalTable,
    out_dir: Path,
    *,
    size: int,
    workers: int,
    on_error: str,
    nih_images: np.ndarray,
    nih_ids: Sequence[str],
    leakage_settings: LeakageSettings,
    source: str,
) -> dict[str, Any]:
    """Decode, guard against leakage, and write the set's four files; returns the manifest."""
    out_dir = Path(out_dir)
    name = table.dataset
    images, sizes, bad = _decode_all(table.files, size, workers)
    if bad and (on_error == "fail" or len(bad) == len(table.files)):
        listed = "; ".join(f"{table.files[i]}: {bad[i]}" for i in sorted(bad)[:MAX_LISTED])
        more = f" (and {len(bad) - MAX_LISTED} more)" if len(bad) > MAX_LISTED else ""
        raise ExternalDataError(
            f"external set {name}: {len(bad)} of {len(table.files)} images cannot be read: {listed}{more}. "
            "Replace them, or set preprocess.on_error: skip to leave them out (they are counted)"
        )
    dropped = _check_leakage(images, table.images, nih_images, nih_ids, leakage_settings, name)
    drop = set(bad) | set(dropped)
    keep = np.array([i for i in range(len(table.files)) if i not in drop], dtype=np.int64)
    if len(keep) == 0:
        raise ExternalDataError(
            f"external set {name}: no image left after the leakage guard and unreadable files"
        )

    ids = [table.images[i] for i in keep]
    frame = pd.DataFrame(
        {"row": np.arange(len(keep)), "image": ids, "patient": [table.patients[i] for i in keep]}
    )
    for k, cls in enumerate(table.classes):
        frame[cls.name] = table.labels[keep, k]
    boxes = pd.DataFrame(columns=["row", "image", "label", "x0", "y0", "x1", "y1"])
    if table.boxes is not None and len(table.boxes):
        row_of = {image: r for r, image in enumerate(ids)}
        b = table.boxes[table.boxes["image"].isin(row_of)].copy()
        b.insert(0, "row", b["image"].map(row_of).astype(np.int64))
        wh = sizes[keep][b["row"].to_numpy()]
        for col, dim in (("x0", 0), ("x1", 0), ("y0", 1), ("y1", 1)):
            b[col] = np.clip(b[col].to_numpy(float) / wh[:, dim], 0.0, 1.0)
        boxes = b.sort_values(["row", "label", "x0", "y0"], kind="stable").reset_index(drop=True)

    counts = dict(table.counts)
    counts.update({"unreadable": len(bad), "leakage_dropped": len(dropped)})
    manifest = {
        "dataset": name,
        "source": source,
        "label_file": table.label_file,
        "image_size": size,
        "n_images": len(keep),
        "n_patients": int(frame["patient"].nunique()),
        "n_boxes": len(boxes),
        "classes": [class_json(c) for c in table.classes],
        "left_out": counts,
        "leakage": {
            "checked_against": "NIH train + val images",
            "n_reference": len(nih_ids),
            "min_correlation": leakage_settings.min_correlation,
            "action": leakage_settings.action,
            "matches": len(dropped),
            "nih_derived_markers": leakage.nih_derived(Path(source)) if source != "synthetic" else [],
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / IMAGES_FILE) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(images[keep]))
    write_csv(out_dir / TABLE_FILE, frame)
    write_csv(out_dir / BOXES_FILE, boxes)
    write_json(out_dir / MANIFEST_FILE, manifest)
    return manifest
