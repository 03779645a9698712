"""Readers for the ChestX-ray14 metadata files, with their real-world quirks.

* The label table comes under two names: ``Data_Entry_2017_v2020.csv`` (NIH's 2020 re-release, on
  the Box share today) and ``Data_Entry_2017.csv`` (the 2017 original: Kaggle's
  ``nih-chest-xrays/data`` and older downloads). The sex column is ``Patient Gender`` (both NIH
  files) or ``Patient Sex`` (some copies); bracketed headers split into two columns; Kaggle's copy
  ends every line with a comma (an empty, unnamed last column); rows are not sorted;
  ``Follow-up #`` does not always match the file-name suffix. :func:`normalise_data_entry` turns
  either file into the raw folder's one table, :data:`DATA_ENTRY`.
* ``BBox_List_2017.csv``: 9 header fields for 6 data fields; ``Infiltrate`` means ``Infiltration``.
* ``train_val_list.txt`` / ``test_list.txt``: one name per line, no final newline.

Every reader names the file in its errors, and detects an HTML page saved in place of a CSV
(NIH's Box share sometimes answers with one).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.errors import CxrError
from cxr_core.files import atomic_path
from cxr_core.labels import LABELS, canonical_box_label, encode_column

#: NIH's label table as re-released in 2020 (the name on NIH's Box share).
DATA_ENTRY_V2020 = "Data_Entry_2017_v2020.csv"
#: The 2017 original, as Kaggle's ``nih-chest-xrays/data`` and older NIH downloads name it.
DATA_ENTRY_2017 = "Data_Entry_2017.csv"
#: Names a copy's label table may have, preferred first (a copy holding both uses the 2020 one).
DATA_ENTRY_NAMES: tuple[str, ...] = (DATA_ENTRY_V2020, DATA_ENTRY_2017)
#: The raw folder's label table: whichever file the source had, normalised, under one name, so the
#: pipeline's DVC deps and readers do not change with the source (the manifest records which file).
DATA_ENTRY = "Data_Entry.csv"
BBOX_LIST = "BBox_List_2017.csv"
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
#: The four metadata files of the raw folder (``data/raw``), what later stages read.
METADATA_FILES: tuple[str, ...] = (DATA_ENTRY, BBOX_LIST, TRAIN_VAL_LIST, TEST_LIST)
#: The same four as NIH names them (what the NIH download fetches and an official copy holds).
NIH_METADATA_FILES: tuple[str, ...] = (DATA_ENTRY_V2020, BBOX_LIST, TRAIN_VAL_LIST, TEST_LIST)

#: Side of the PNGs in which ``BBox_List_2017.csv`` gives its boxes.
BOX_SPACE = 1024

#: First bytes of each metadata file; anything else (an HTML page, an error text) is refused.
EXPECTED_START: dict[str, str] = {
    DATA_ENTRY: "Image Index,",
    DATA_ENTRY_V2020: "Image Index,",
    DATA_ENTRY_2017: "Image Index,",
    BBOX_LIST: "Image Index,",
    TRAIN_VAL_LIST: "",
    TEST_LIST: "",
}


class MetadataError(CxrError, ValueError):
    """A metadata file is missing, is an HTML page, or lacks a column we need."""


def looks_like_html(head: bytes) -> bool:
    """True for the start of an HTML document (what Box serves instead of a file it won't give)."""
    text = head.lstrip().lower()
    return text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body"))


def check_metadata_file(path: Path, name: str | None = None, start: str | None = None) -> None:
    """Refuse a missing, empty or HTML file saved under a metadata name, naming the file and the fix.

    ``start`` is what the file must begin with (default: :data:`EXPECTED_START` of ``name``, which
    defaults to the file's own name).
    """
    path = Path(path)
    name = name or path.name
    if not path.is_file():
        raise MetadataError(f"{path}: metadata file {name} is missing")
    with open(path, "rb") as fh:
        head = fh.read(512)
    if not head.strip():
        raise MetadataError(f"{path}: {name} is empty")
    if looks_like_html(head):
        raise MetadataError(
            f"{path}: {name} is an HTML page, not the data file (the download link answered with a web page); "
            "delete it and download again, or copy the file from a local NIH or Kaggle copy"
        )
    start = EXPECTED_START.get(name, "") if start is None else start
    if start and not head.decode("utf-8", "replace").lstrip("\ufeff").startswith(start):
        first = head.decode("utf-8", "replace").splitlines()[0][:80]
        raise MetadataError(f"{path}: {name} should start with {start!r}, found {first!r}")


#: Columns every label table must have (the rest are kept as they are).
REQUIRED_COLUMNS: tuple[str, ...] = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID")
#: Spellings of the sex column; the raw folder's table uses the first (NIH's, in both files).
SEX_COLUMNS: tuple[str, ...] = ("Patient Gender", "Patient Sex")


def normalise_data_entry(source: Path, dest: Path) -> None:
    """Write label table ``source`` (either NIH file, any copy) to ``dest`` in the v2020 file's format.

    Why: later stages and DVC should see one file in one format whatever the source. The changes are
    the ones copies are known to make, nothing else: a UTF-8 BOM, CRLF line ends, blank lines, the
    empty last column of Kaggle's trailing commas (every field there must be empty) and ``Patient
    Sex`` for ``Patient Gender``. NIH's v2020 file comes out byte for byte as it went in.
    """
    source = Path(source)
    check_metadata_file(source, source.name, start=EXPECTED_START[DATA_ENTRY])
    try:
        text = source.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MetadataError(f"{source}: not a UTF-8 text file ({exc})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [name.strip() for name in next(reader)]
    while header and not header[-1]:
        header.pop()  # Kaggle: "...,OriginalImagePixelSpacing[x,y],"
    header = [SEX_COLUMNS[0] if name in SEX_COLUMNS else name for name in header]
    absent = [c for c in REQUIRED_COLUMNS if c not in header]
    if absent:
        raise MetadataError(f"{source}: missing column(s) {absent}; found {header}")
    width = len(header)
    rows = [header]
    for fields in reader:
        if not any(f.strip() for f in fields):
            continue
        if len(fields) < width or any(f.strip() for f in fields[width:]):
            raise MetadataError(
                f"{source}: line {reader.line_num} has {len(fields)} fields for the header's {width} "
                f"({','.join(fields)[:80]!r})"
            )
        rows.append(fields[:width])
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    with atomic_path(dest) as tmp:
        tmp.write_bytes(out.getvalue().encode("utf-8"))  # "\n" line ends on every platform


def read_data_entry(path: Path) -> pd.DataFrame:
    """Read a label table (``Data_Entry.csv`` or either NIH file) into a tidy table.

    Columns: ``image``, ``patient`` (int), ``follow_up`` (int), ``age``, ``sex``, ``view``,
    ``labels`` (the original cell) and one uint8 column per finding in :data:`LABELS` order.
    Sorted by image name.
    """
    path = Path(path)
    check_metadata_file(path, start=EXPECTED_START[DATA_ENTRY])
    # index_col=False: with Kaggle's trailing comma, rows have one field more than the header
    # and pandas would otherwise silently use the first column as the index.
    raw = pd.read_csv(path, index_col=False, dtype=str, keep_default_na=False)
    raw.columns = [c.strip() for c in raw.columns]
    sex_col = next((c for c in SEX_COLUMNS if c in raw.columns), SEX_COLUMNS[0])
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise MetadataError(f"{path}: missing column(s) {missing}; found {list(raw.columns)}")
    try:
        onehot = encode_column(raw["Finding Labels"])
    except ValueError as exc:
        raise MetadataError(f"{path}: {exc}") from exc
    try:
        patient = raw["Patient ID"].astype(int)
        follow_up = raw["Follow-up #"].astype(int)
    except ValueError as exc:
        raise MetadataError(f"{path}: 'Patient ID' and 'Follow-up #' must be integers ({exc})") from exc
    table = pd.DataFrame(
        {
            "image": raw["Image Index"].str.strip(),
            "patient": patient,
            "follow_up": follow_up,
            "age": pd.to_numeric(raw.get("Patient Age", ""), errors="coerce"),
            "sex": raw[sex_col] if sex_col in raw.columns else "",
            "view": raw.get("View Position", ""),
            "labels": raw["Finding Labels"],
        }
    )
    table = pd.concat([table, pd.DataFrame(onehot, columns=list(LABELS))], axis=1)
    dup = table["image"][table["image"].duplicated()]
    if len(dup):
        raise MetadataError(f"{path}: image(s) listed twice: {sorted(dup)[:10]}")
    return table.sort_values("image", ignore_index=True)


def read_bbox_list(path: Path) -> pd.DataFrame:
    """Read ``BBox_List_2017.csv``: columns ``image``, ``label`` (Data_Entry spelling), ``x, y, w, h``.

    The header has 9 fields (``Bbox [x,y,w,h]`` splits, plus three empty ones) for 6 per row, so
    the columns are taken by position. Coordinates stay in the 1024 x 1024 PNG space.
    """
    path = Path(path)
    check_metadata_file(path, BBOX_LIST)
    raw = pd.read_csv(path, header=None, skiprows=1, usecols=range(6), dtype=str, keep_default_na=False)
    raw = raw[raw[0].str.strip() != ""]
    try:
        labels = [canonical_box_label(v) for v in raw[1]]
        coords = raw[[2, 3, 4, 5]].astype(float).to_numpy()
    except ValueError as exc:
        raise MetadataError(f"{path}: {exc}") from exc
    table = pd.DataFrame(
        {
            "image": raw[0].str.strip().to_numpy(),
            "label": labels,
            "x": coords[:, 0],
            "y": coords[:, 1],
            "w": coords[:, 2],
            "h": coords[:, 3],
        }
    )
    dup = table.duplicated(["image", "label"])
    if dup.any():
        raise MetadataError(
            f"{path}: more than one box for (image, label) {table[dup].iloc[0][['image', 'label']].tolist()}"
        )
    return table


def read_image_list(path: Path) -> list[str]:
    """Read ``train_val_list.txt`` or ``test_list.txt`` (tolerates a missing final newline and blank lines)."""
    path = Path(path)
    check_metadata_file(path)
    names = [line.strip() for line in path.read_text().splitlines()]
    names = [n for n in names if n]
    bad = [n for n in names if not n.lower().endswith((".png", ".jpg", ".jpeg"))]
    if bad:
        raise MetadataError(f"{path}: lines that are not image names, e.g. {bad[:3]}")
    return names


def write_image_list(path: Path, names: list[str]) -> None:
    """Write an official-style list: one name per line, no final newline (as NIH's files)."""
    Path(path).write_text("\n".join(names))


def labels_matrix(table: pd.DataFrame) -> np.ndarray:
    """The ``N x 14`` uint8 label matrix of a table with one column per finding."""
    return table[list(LABELS)].to_numpy(dtype=np.uint8)
