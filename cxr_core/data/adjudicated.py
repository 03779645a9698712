"""Google's radiologist-adjudicated labels for part of ChestX-ray14 (Majkowska et al., Radiology 2020).

Why: NIH's labels were mined from reports by NLP and are noisy; an AUC against them mixes model
error with label error. Majkowska et al. ("Chest radiograph interpretation with deep learning
models: assessment with radiologist-adjudicated reference standards and population-adjusted
evaluation", Radiology 2020; doi:10.1148/radiol.2019191293) had three radiologists adjudicate four
findings on 4,376 ChestX-ray14 images: 1,962 rows with ``Set Id`` ``test`` and 2,414 with ``val``
(the patients of the two sets are disjoint). The file, ``google2019_nih-chest-xray-labels.csv.gz``,
is published with the TorchXRayVision package (Cohen et al. 2022) in its ``data/`` folder:
NIH's 11 ``Data_Entry`` columns (bracketed headers split in two), then ``Fracture``,
``Pneumothorax``, ``Airspace opacity``, ``Nodule or mass`` (``YES`` / ``NO``) and ``Set Id``.

* :func:`adjudicated_path` finds the file in an installed ``torchxrayvision`` without importing it
  (the package imports torch and scikit-image at import time).
* :func:`read_adjudicated` reads it into a tidy 0/1 table.
* :data:`ADJUDICATED_MAP` is the documented map of the findings to ChestX-ray14's 14 classes
  (Fracture has none and is not scored); the scoring itself is in
  :mod:`cxr_core.audit.subgroups` (it needs the evaluate layer's bootstrap).
* :func:`write_phantom_adjudicated` writes the phantom's stand-in in exactly the real file's format.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.errors import CxrError
from cxr_core.files import atomic_path, contract
from cxr_core.labels import LABEL_INDEX, LABELS, encode_column

#: The file's name inside TorchXRayVision's ``data/`` folder.
ADJUDICATED_FILE = "google2019_nih-chest-xray-labels.csv.gz"
#: The package that ships it.
ADJUDICATED_PACKAGE = "torchxrayvision"

#: NIH's label-table columns, as the file repeats them (bracketed headers split into two).
DATA_ENTRY_COLUMNS: tuple[str, ...] = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
)
#: The adjudicated findings: file column -> tidy column name.
FINDING_COLUMNS: dict[str, str] = {
    "Fracture": "fracture",
    "Pneumothorax": "pneumothorax",
    "Airspace opacity": "airspace_opacity",
    "Nodule or mass": "nodule_or_mass",
}
SET_COLUMN = "Set Id"
#: The file's columns in order.
COLUMNS: tuple[str, ...] = (*DATA_ENTRY_COLUMNS, *FINDING_COLUMNS, SET_COLUMN)
#: ``Set Id`` values: the official test split's images, and images of the train/val list.
SETS: tuple[str, ...] = ("test", "val")
YES, NO = "YES", "NO"


@dataclass(frozen=True)
class Mapping14:
    """How one adjudicated finding is scored with ChestX-ray14's classes.

    The model's score is the max of its probabilities over ``classes`` and the NIH label the max
    (logical or) of their labels. ``proxy`` marks a finding the classes only approximate.
    """

    classes: tuple[str, ...]
    proxy: bool
    note: str


#: The documented map (docs/adjudicated.md). Airspace opacity is a proxy: ChestX-ray14 has no such
#: class, and consolidation, infiltration and pneumonia are the labels radiology reports use for it.
ADJUDICATED_MAP: dict[str, Mapping14] = {
    "pneumothorax": Mapping14(("Pneumothorax",), False, "the same finding"),
    "nodule_or_mass": Mapping14(("Nodule", "Mass"), False, "Google merges NIH's Nodule and Mass"),
    "airspace_opacity": Mapping14(
        ("Consolidation", "Infiltration", "Pneumonia"),
        True,
        "proxy: no NIH class; the max of Consolidation, Infiltration and Pneumonia",
    ),
}
#: Adjudicated findings that are not scored, and why.
NOT_SCORED: dict[str, str] = {"fracture": "ChestX-ray14 has no fracture class; not scored"}


class AdjudicatedError(CxrError, ValueError):
    """The adjudicated-label file is missing, unreadable or not in Google's format."""


def adjudicated_path(path: str | os.PathLike | None = None) -> Path:
    """The adjudicated-label file: ``path`` if given, else the copy in an installed torchxrayvision.

    ``find_spec`` locates a top-level package without executing its ``__init__`` (which imports
    torch, scikit-image and more), so only the data file is touched.
    """
    if path is not None:
        found = Path(path)
        if not found.is_file():
            raise AdjudicatedError(f"{found}: adjudicated-label file not found ({ADJUDICATED_FILE})")
        return found
    spec = importlib.util.find_spec(ADJUDICATED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        candidate = Path(folder) / "data" / ADJUDICATED_FILE
        if candidate.is_file():
            return candidate
    where = f" (not in {[str(Path(f) / 'data') for f in locations]})" if locations else ""
    raise AdjudicatedError(
        f"Google's adjudicated labels ({ADJUDICATED_FILE}) were not found{where}: "
        f"`pip install {ADJUDICATED_PACKAGE}` (the file ships in its data/ folder), "
        "or set clinical.adjudicated to the file's path"
    )


def _yes_no(values: pd.Series) -> np.ndarray:
    """``YES`` -> 1.0, ``NO`` -> 0.0 (case and blanks ignored), anything else NaN."""
    text = values.str.strip().str.upper()
    return np.where(text == YES, 1.0, np.where(text == NO, 0.0, np.nan))


def read_adjudicated(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read the adjudicated labels: columns ``image``, ``set``, and the 4 findings as 0/1 floats.

    A finding value other than YES / NO becomes NaN (left out where that finding is scored).
    Missing columns, an unreadable file, duplicate images or an unknown ``Set Id`` raise
    :class:`AdjudicatedError` naming the file and the column. Rows keep the file's order.
    """
    file = adjudicated_path(path)
    try:
        raw = pd.read_csv(file, dtype=str, keep_default_na=False, index_col=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise AdjudicatedError(f"{file}: not a readable CSV file ({exc})") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    needed = ("Image Index", *FINDING_COLUMNS, SET_COLUMN)
    absent = [c for c in needed if c not in raw.columns]
    if absent:
        raise AdjudicatedError(f"{file}: missing column(s) {absent}; found {list(raw.columns)[:20]}")
    images = raw["Image Index"].str.strip()
    if (images == "").any():
        raise AdjudicatedError(
            f"{file}: column 'Image Index' has an empty value (line {int(np.argmax(images == '')) + 2})"
        )
    dup = images[images.duplicated()]
    if len(dup):
        raise AdjudicatedError(f"{file}: column 'Image Index' lists image(s) twice: {sorted(set(dup))[:5]}")
    sets = raw[SET_COLUMN].str.strip().str.lower()
    bad = sorted(set(sets) - set(SETS))
    if bad:
        raise AdjudicatedError(f"{file}: column {SET_COLUMN!r} holds {bad[:5]}; expected one of {list(SETS)}")
    table = pd.DataFrame({"image": images.to_numpy(), "set": sets.to_numpy()})
    for column, name in FINDING_COLUMNS.items():
        table[name] = _yes_no(raw[column])
    return table


def _column_or(table: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    return table[list(names)].to_numpy().max(axis=1)


def write_phantom_adjudicated(
    out_path: str | os.PathLike,
    data_entry: pd.DataFrame | str | os.PathLike,
    test_images: Sequence[str],
    *,
    flip_rate: float,
    seed: int,
    fraction: float,
) -> pd.DataFrame:
    """Write the phantom's stand-in for Google's file, in exactly its format; return what was written.

    Why: the adjudicated-label code path must run (and be tested) on the phantom too. ``data_entry``
    is the raw label table (``data/raw/Data_Entry.csv`` or its DataFrame read with ``dtype=str``),
    whose 11 columns are copied as they are. Whole patients are drawn (seeded): ``fraction`` of the
    test patients give ``Set Id`` ``test``, the same fraction of the others ``val``, as in the real
    file (test rows first, each set sorted by image). The findings are the phantom's own labels
    through :data:`ADJUDICATED_MAP` (Fracture: all NO), then every value flips with probability
    ``flip_rate``, so the NIH-vs-adjudicated disagreement is visible. CRLF line ends and no final
    newline, as the real file; gzip (without a time stamp, so the bytes are reproducible) if the
    name ends with ``.gz``.
    """
    if isinstance(flip_rate, bool) or not 0.0 <= float(flip_rate) < 0.5:
        raise ValueError(f"flip_rate must be in [0, 0.5), got {flip_rate!r}")
    if isinstance(fraction, bool) or not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if isinstance(data_entry, pd.DataFrame):
        raw = data_entry.astype(str)
    else:
        raw = pd.read_csv(data_entry, dtype=str, keep_default_na=False, index_col=False)
    absent = [c for c in DATA_ENTRY_COLUMNS if c not in raw.columns]
    if absent:
        raise ValueError(f"data_entry lacks column(s) {absent} of NIH's label table")
    raw = raw[list(DATA_ENTRY_COLUMNS)].reset_index(drop=True)
    test = set(test_images)
    unknown = sorted(test - set(raw["Image Index"]))
    if unknown:
        raise ValueError(f"test image(s) not in data_entry: {unknown[:5]}")
    is_test = raw["Image Index"].isin(test).to_numpy()
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(raw), dtype=bool)
    for part in (is_test, ~is_test):
        patients = np.unique(raw.loc[part, "Patient ID"].to_numpy())
        n_keep = int(round(fraction * patients.shape[0])) if patients.size else 0
        chosen = rng.choice(patients, size=max(n_keep, 1 if patients.size else 0), replace=False)
        keep |= part & raw["Patient ID"].isin(chosen).to_numpy()
    out = raw[keep].copy()
    out["_set"] = np.where(is_test[keep], SETS[0], SETS[1])  # "test" sorts before "val"
    out = out.sort_values(["_set", "Image Index"], kind="stable")
    onehot = pd.DataFrame(encode_column(out["Finding Labels"]), columns=list(LABELS))
    derived = {
        "Fracture": np.zeros(len(out), dtype=np.uint8),
        "Pneumothorax": _column_or(onehot, ADJUDICATED_MAP["pneumothorax"].classes),
        "Airspace opacity": _column_or(onehot, ADJUDICATED_MAP["airspace_opacity"].classes),
        "Nodule or mass": _column_or(onehot, ADJUDICATED_MAP["nodule_or_mass"].classes),
    }
    for column, values in derived.items():
        flipped = values.astype(bool) ^ (rng.random(len(out)) < flip_rate)
        out[column] = np.where(flipped, YES, NO)
    out[SET_COLUMN] = out.pop("_set").to_numpy()
    out = out[list(COLUMNS)].reset_index(drop=True)
    lines = [",".join(COLUMNS)] + [
        ",".join(row) for row in out.astype(str).itertuples(index=False, name=None)
    ]
    data = "\r\n".join(lines).encode("utf-8")
    with atomic_path(out_path) as tmp:
        if str(out_path).endswith(".gz"):
            with open(tmp, "wb") as fh, gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:
                gz.write(data)
        else:
            tmp.write_bytes(data)
    return out


def nih_columns(mapping: Mapping14) -> list[int]:
    """Indices of a mapped finding's classes in :data:`LABELS` order."""
    return [LABEL_INDEX[name] for name in mapping.classes]


@contract(
    "data/adjudicated/google2019_nih-chest-xray-labels.csv.gz",
    writer="adjudicated",
    fields=("Image Index", "Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass", "Set Id"),
)
class AdjudicatedLabels:
    """Google's adjudicated labels as the adjudicated stage leaves them (the file itself, or the phantom's
    stand-in in its format); read as :func:`read_adjudicated`'s table."""

    @staticmethod
    def read(path: str | os.PathLike) -> pd.DataFrame:
        return read_adjudicated(path)
