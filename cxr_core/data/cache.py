"""The image cache's format and its reader: what split, train, test and cams open.

``images.npy`` is one ``N x S x S`` uint8 array (opened as a read-only memmap, so a batch is a
fancy index, not a decode), ``index.csv`` maps each row to its image name and ``report.json``
says what the build left out. The build (``cxr_core.data.preprocess``) lives apart so that a
change to it re-runs preprocess but not the stages that only read the cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.errors import CxrError
from cxr_core.files import contract

IMAGES_FILE = "images.npy"
INDEX_FILE = "index.csv"
REPORT_FILE = "report.json"


class CacheError(CxrError, RuntimeError):
    """The cache could not be built or read; the message says which files and what to do."""


@contract(
    "data/cache/",
    writer="preprocess",
    fields=(
        "images.npy (uint8 N x S x S)",
        "index.csv (row, image)",
        "report.json (image_size, decoded, skipped)",
    ),
)
class ImageCache:
    """The decoded data set: the preprocess stage writes it, :func:`load_cache` opens it."""

    load = staticmethod(lambda cache_dir, expected_size=None: load_cache(cache_dir, expected_size))


def load_cache(cache_dir: Path, expected_size: int | None = None) -> tuple[np.memmap, pd.DataFrame]:
    """Open ``images.npy`` read-only as a memmap plus ``index.csv``, checking they agree."""
    cache_dir = Path(cache_dir)
    images_path, index_path = cache_dir / IMAGES_FILE, cache_dir / INDEX_FILE
    missing = [p.name for p in (images_path, index_path) if not p.is_file()]
    if missing:
        raise CacheError(
            f"{cache_dir}: image cache incomplete ({', '.join(missing)} missing); "
            "build it with the preprocess stage (`dvc repro preprocess`)"
        )
    try:
        images = np.load(images_path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise CacheError(
            f"{images_path}: not a readable .npy file ({exc}); rebuild it with `dvc repro preprocess`"
        ) from exc
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise CacheError(
            f"{images_path}: expected a uint8 N x S x S array, found {images.dtype} {images.shape}; "
            "rebuild it with `dvc repro preprocess`"
        )
    if expected_size is not None and images.shape[1] != expected_size:
        raise CacheError(
            f"{images_path}: images are {images.shape[1]} px but image_size is {expected_size}; "
            "rebuild the cache with `dvc repro preprocess`"
        )
    try:
        index = pd.read_csv(index_path, dtype={"row": "int64", "image": str}, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise CacheError(
            f"{index_path}: cannot read ({exc}); rebuild it with `dvc repro preprocess`"
        ) from exc
    if list(index.columns) != ["row", "image"]:
        raise CacheError(f"{index_path}: expected columns row,image, found {list(index.columns)}")
    if len(index) != images.shape[0] or not np.array_equal(index["row"].to_numpy(), np.arange(len(index))):
        raise CacheError(
            f"{cache_dir}: {INDEX_FILE} ({len(index)} rows) does not match {IMAGES_FILE} "
            f"({images.shape[0]} images); the cache is from different runs: rebuild it with `dvc repro preprocess`"
        )
    return images, index
