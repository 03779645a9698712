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

from cxr_core.data.decode import ImageDecodeError, decode_image
from cxr_core.data.external import leakage
from cxr_core.data.external.base import ExternalDataError, ExternalTable
from cxr_core.data.external.dicom import decode_dicom, image_size, is_dicom
from cxr_core.data.external.registry import ReadSet
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
    return decode_image(path, size), image_size(path)


def _decode_job(job: tuple[int, str, int]) -> tuple[int, np.ndarray | None, tuple[int, int], str]:
    i, path, size = job
    try:
        pixels, wh = decode_any(Path(path), size)
        return i, pixels, wh, ""
    except ImageDecodeError as exc:
        return i, None, (0, 0), exc.reason


def _decode_into(files: Sequence[Path], out: np.ndarray, workers: int) -> tuple[np.ndarray, dict[int, str]]:
    """Decode every file into the N x S x S ``out`` (a memmap: the set never sits in memory twice);
    returns each image's original (width, height) and the unreadable ones with their reason."""
    size = out.shape[1]
    sizes = np.zeros((len(files), 2), np.int64)
    bad: dict[int, str] = {}
    jobs = [(i, str(f), size) for i, f in enumerate(files)]
    if workers > 1 and len(jobs) > 64:
        with pool_context().Pool(workers) as pool:
            results = pool.imap(_decode_job, jobs, chunksize=16)
            for i, pixels, wh, reason in results:
                _store(out, sizes, bad, i, pixels, wh, reason)
    else:
        for job in jobs:
            _store(out, sizes, bad, *_decode_job(job))
    return sizes, bad


def _store(out, sizes, bad, i, pixels, wh, reason) -> None:
    if pixels is None:
        bad[i] = reason
    else:
        out[i], sizes[i] = pixels, wh


@dataclass(frozen=True)
class LeakageSettings:
    """The ``external`` section's leakage guard: refuse or drop near-copies of NIH train / val images."""

    action: str
    min_correlation: float


def _check_leakage(
    images: np.ndarray,
    ids: Sequence[str],
    nih: NihImages,
    settings: LeakageSettings,
    name: str,
) -> list[int]:
    """Rows of ``images`` to drop (empty unless ``drop``); stops on a match under ``refuse``."""
    hits = leakage.near_copies(images, nih.images, nih.rows, settings.min_correlation)
    if hits and settings.action == "refuse":
        raise ExternalDataError(
            f"external set {name}: {len(hits)} image(s) are near-copies of NIH train/val images the models "
            f"were trained on: {leakage.describe(hits, ids, nih.ids)}. Evaluating on them would overstate "
            "external performance; remove them, or set external.leakage: drop to leave them out"
        )
    if hits:
        log.warning(
            "external set %s: dropping %d NIH near-copies: %s",
            name,
            len(hits),
            leakage.describe(hits, ids, nih.ids),
        )
    return sorted(i for i, _, _ in hits)


@dataclass(frozen=True)
class NihImages:
    """The images the models were trained on: the NIH cache (a memmap), the train / val rows, their names."""

    images: np.ndarray
    rows: np.ndarray
    ids: list[str]


def _unreadable(table: ExternalTable, bad: dict[int, str], on_error: str) -> list[str]:
    """Stop on unreadable files (unless ``skip``); else name each in the log, returned for the manifest."""
    listed = [f"{table.files[i]}: {bad[i]}" for i in sorted(bad)]
    if bad and (on_error == "fail" or len(bad) == len(table.files)):
        more = f" (and {len(bad) - MAX_LISTED} more)" if len(bad) > MAX_LISTED else ""
        raise ExternalDataError(
            f"external set {table.dataset}: {len(bad)} of {len(table.files)} images cannot be read: "
            f"{'; '.join(listed[:MAX_LISTED])}{more}. Replace them, or set preprocess.on_error: skip to "
            "leave them out (they are named in data/external/<name>/manifest.json)"
        )
    for line in listed:
        log.warning("external set %s: left out, unreadable: %s", table.dataset, line)
    return [table.images[i] for i in sorted(bad)]


def build_external(
    read: ReadSet,
    out_dir: Path,
    *,
    size: int,
    workers: int,
    on_error: str,
    nih: NihImages,
    leakage_settings: LeakageSettings,
) -> dict[str, Any]:
    """Decode, guard against leakage, and write the set's four files; returns the manifest."""
    table, out_dir = read.table, Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / (IMAGES_FILE + ".partial")
    decoded = np.lib.format.open_memmap(
        partial, mode="w+", dtype=np.uint8, shape=(len(table.files), size, size)
    )
    sizes, bad = _decode_into(table.files, decoded, workers)
    unreadable = _unreadable(table, bad, on_error)
    dropped = _check_leakage(decoded, table.images, nih, leakage_settings, table.dataset)
    drop = set(bad) | set(dropped)
    keep = np.array([i for i in range(len(table.files)) if i not in drop], dtype=np.int64)
    if len(keep) == 0:
        raise ExternalDataError(
            f"external set {table.dataset}: no image left after the leakage guard and unreadable files"
        )
    _write_kept(decoded, keep, out_dir / IMAGES_FILE)
    del decoded
    partial.unlink()

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
        "dataset": table.dataset,
        "source": read.source,
        "label_file": table.label_file,
        "settings": dict(read.settings),
        "bootstrap_group": table.bootstrap_group,
        "image_size": size,
        "n_images": len(keep),
        "n_patients": int(frame["patient"].nunique()),
        "n_boxes": len(boxes),
        "classes": [class_json(c) for c in table.classes],
        "left_out": counts,
        "unreadable": unreadable,
        "leakage": {
            "checked_against": "NIH train + val images",
            "n_reference": len(nih.ids),
            "fingerprint": {"side": leakage.SIDE, "sigma": leakage.SIGMA},
            "min_correlation": leakage_settings.min_correlation,
            "action": leakage_settings.action,
            "matches": len(dropped),
            "nih_derived_markers": leakage.nih_derived(Path(read.source))
            if read.source != "synthetic"
            else [],
        },
    }
    write_csv(out_dir / TABLE_FILE, frame)
    write_csv(out_dir / BOXES_FILE, boxes)
    write_json(out_dir / MANIFEST_FILE, manifest)
    return manifest


def _write_kept(decoded: np.ndarray, keep: np.ndarray, path: Path, chunk: int = 4096) -> None:
    """``decoded[keep]`` as ``path``, a chunk of rows at a time (atomically)."""
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(keep), *decoded.shape[1:]))
        for lo in range(0, len(keep), chunk):
            out[lo : lo + chunk] = decoded[keep[lo : lo + chunk]]
        out.flush()
        del out
