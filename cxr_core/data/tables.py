"""The split stage's files: one type per table, with its reader and writer.

Kept apart from how the splits are made (``cxr_core.data.splits``, which reads the NIH metadata),
so training and scoring depend on the table format, not on the metadata parsers.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.files import contract, malformed, read_csv, read_json, write_csv, write_json
from cxr_core.labels import BOX_LABELS, LABEL_INDEX, LABELS

SPLIT_COLUMNS = ["row", "image", "patient", *LABELS]
LOC_COLUMNS = [
    "row",
    "image",
    "patient",
    "label",
    "label_index",
    "x",
    "y",
    "w",
    "h",
    "x1024",
    "y1024",
    "w1024",
    "h1024",
    "subset",
]
#: ``loc.csv``'s ``subset``: localisation thresholds are chosen on ``tune``, headline numbers measured on ``report``.
LOC_SUBSETS: tuple[str, ...] = ("tune", "report")


_PRODUCER = "the split stage"


def _check_columns(
    table: pd.DataFrame, path: Path, integers: tuple[str, ...], numbers: tuple[str, ...] = ()
) -> None:
    """Integer id columns (non-negative, no blanks) and finite number columns, or the file is malformed."""
    for column in integers:
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() | (values < 0) | (values != values.round())
        if bad.any():
            raise malformed(
                path,
                f"column {column!r} must hold non-negative integers ({int(bad.sum())} bad row(s))",
                _PRODUCER,
            )
    for column in numbers:
        values = pd.to_numeric(table[column], errors="coerce")
        bad = ~np.isfinite(values.to_numpy(dtype=np.float64))
        if bad.any():
            raise malformed(
                path, f"column {column!r} must hold finite numbers ({int(bad.sum())} bad row(s))", _PRODUCER
            )


SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")


@contract(
    "data/splits/{train,val,test}.csv", writer="split", fields=("row", "image", "patient", "<14 labels, 0/1>")
)
@dataclass(frozen=True)
class SplitTable:
    """One split: cache rows, images, patients and 0/1 targets (N x 14) in ``LABELS`` order."""

    table: pd.DataFrame

    @property
    def rows(self) -> np.ndarray:
        return self.table["row"].to_numpy(dtype=np.int64)

    @property
    def targets(self) -> np.ndarray:
        return self.table[list(LABELS)].to_numpy(dtype=np.float32)

    @property
    def images(self) -> np.ndarray:
        return self.table["image"].to_numpy(dtype=str)

    @property
    def patients(self) -> np.ndarray:
        return self.table["patient"].to_numpy(dtype=np.int64)

    def digest(self) -> str:
        """Short content hash of rows and targets, so a checkpoint trained on other data is not resumed."""
        h = hashlib.sha256(np.ascontiguousarray(self.rows).tobytes())
        h.update(np.ascontiguousarray(self.targets).tobytes())
        return h.hexdigest()[:16]

    @classmethod
    def read(cls, splits_dir: str | os.PathLike, name: str) -> SplitTable:
        path = Path(splits_dir) / f"{name}.csv"
        table = read_csv(path, _PRODUCER, SPLIT_COLUMNS, dtype={"image": str})
        bad = ~table[list(LABELS)].isin([0, 1]).all(axis=1)
        if bad.any():
            raise malformed(path, f"has label values other than 0/1 in {int(bad.sum())} row(s)", _PRODUCER)
        _check_columns(table, path, ("row", "patient"))
        return cls(table)

    def write(self, splits_dir: str | os.PathLike, name: str) -> None:
        write_csv(Path(splits_dir) / f"{name}.csv", self.table[SPLIT_COLUMNS], float_format=None)


@contract("data/splits/loc.csv", writer="split", fields=LOC_COLUMNS)
@dataclass(frozen=True)
class LocTable:
    """The localisation set: one row per (image, box label), boxes scaled to the cache size S.

    ``x, y, w, h`` are in the S x S cache space, ``x1024..h1024`` as ``BBox_List_2017.csv`` gives
    them; rows are sorted by cache row, then label index. ``subset`` splits the boxes by patient into
    ``tune`` (where localisation thresholds are chosen) and ``report`` (where they are measured).
    """

    table: pd.DataFrame

    def __len__(self) -> int:
        return len(self.table)

    @property
    def rows(self) -> np.ndarray:
        return self.table["row"].to_numpy(dtype=np.int64)

    @property
    def label_index(self) -> np.ndarray:
        return self.table["label_index"].to_numpy(dtype=np.int64)

    @property
    def boxes(self) -> np.ndarray:
        """K x 4 float64 ``x, y, w, h`` in the cache space."""
        return self.table[["x", "y", "w", "h"]].to_numpy(dtype=np.float64)

    @classmethod
    def read(cls, splits_dir: str | os.PathLike) -> LocTable:
        path = Path(splits_dir) / "loc.csv"
        table = read_csv(path, _PRODUCER, LOC_COLUMNS, dtype={"image": str, "label": str, "subset": str})
        unknown = sorted(set(table["label"]) - set(BOX_LABELS))
        if unknown:
            raise malformed(
                path, f"has label(s) {unknown} that are not box findings {list(BOX_LABELS)}", _PRODUCER
            )
        subsets = sorted(set(table["subset"].fillna("<blank>")) - set(LOC_SUBSETS))
        if subsets:
            raise malformed(path, f"has subset value(s) {subsets}; expected {list(LOC_SUBSETS)}", _PRODUCER)
        _check_columns(
            table,
            path,
            ("row", "patient", "label_index"),
            ("x", "y", "w", "h", "x1024", "y1024", "w1024", "h1024"),
        )
        if not table["label_index"].equals(table["label"].map(LABEL_INDEX)):
            raise malformed(path, "has label_index values that do not match the label column", _PRODUCER)
        return cls(table)

    def write(self, splits_dir: str | os.PathLike) -> None:
        write_csv(Path(splits_dir) / "loc.csv", self.table[LOC_COLUMNS], float_format=None)


@contract("metrics/split.json", writer="split", fields=("train", "val", "test", "loc", "shared_patients"))
class SplitStats:
    """Images, patients and per-label positives / prevalence per split, and shared patients (0 by design)."""

    @staticmethod
    def write(path: str | os.PathLike, stats: Mapping) -> None:
        write_json(path, dict(stats))

    @staticmethod
    def read(path: str | os.PathLike) -> dict:
        return read_json(path, "the split stage", SplitStats.CONTRACT.fields)  # type: ignore[attr-defined]
