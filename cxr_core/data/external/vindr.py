"""VinDr-CXR (Nguyen et al. 2022) as an external test set, read in place from either release.

Layouts (detected from the files present; PhysioNet wins when both are there):

* PhysioNet (``physionet.org/files/vindr-cxr/1.0.0``): ``test/<image_id>.dicom``,
  ``annotations/image_labels_test.csv`` (one row per image: the consensus of five radiologists,
  one 0/1 column per label) and ``annotations/annotations_test.csv`` (boxes).
* Kaggle VinBigData (``train.csv`` + ``train/<image_id>.dicom``): one row per reader and box, three
  readers per image. A finding is positive when at least ``min_readers`` distinct readers marked
  it, else 0: every reader read every image, so unmarked is negative, not missing.

Label map (the paper's label names): nine classes are local labels of both releases, among them
``Nodule/Mass``, one VinDr label scored by max(Mass, Nodule). Edema, Emphysema (local) and Pneumonia
(global) are only in the PhysioNet image labels (Kaggle's train.csv has 14 local labels + No
finding), so ``read`` returns :data:`CLASSES` for PhysioNet and :data:`KAGGLE_CLASSES` for Kaggle.
Hernia is not labelled: absent.

Boxes are in DICOM pixels; every reader's box of a finding that is positive for the image is kept:
the union of the readers' boxes is the target region. VinDr publishes no patient ids, so each
image is its own patient (bootstrap group).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_core.data.external.base import (
    BOX_COLUMNS,
    ExternalDataError,
    ExternalTable,
    MappedClass,
    require_files,
    require_images,
)

NAME = "vindr"
LAYOUT_HINT = (
    "point vindr's root at the PhysioNet VinDr-CXR folder (physionet.org/files/vindr-cxr/1.0.0, holding "
    "annotations/image_labels_test.csv, annotations/annotations_test.csv and test/*.dicom) or at the "
    "Kaggle vinbigdata-chest-xray-abnormalities-detection folder (train.csv and train/*.dicom)"
)

PHYSIONET_LABELS = "annotations/image_labels_test.csv"
PHYSIONET_BOXES = "annotations/annotations_test.csv"
PHYSIONET_IMAGES = "test"
KAGGLE_LABELS = "train.csv"
KAGGLE_IMAGES = "train"
SUFFIX = ".dicom"

CLASSES: tuple[MappedClass, ...] = (
    MappedClass("Atelectasis", ("Atelectasis",), "Atelectasis"),
    MappedClass("Cardiomegaly", ("Cardiomegaly",), "Cardiomegaly"),
    MappedClass("Effusion", ("Effusion",), "Pleural effusion"),
    MappedClass("Infiltration", ("Infiltration",), "Infiltration"),
    MappedClass("Nodule/Mass", ("Mass", "Nodule"), "Nodule/Mass", "proxy"),
    MappedClass("Pneumonia", ("Pneumonia",), "Pneumonia"),
    MappedClass("Pneumothorax", ("Pneumothorax",), "Pneumothorax"),
    MappedClass("Consolidation", ("Consolidation",), "Consolidation"),
    MappedClass("Edema", ("Edema",), "Edema"),
    MappedClass("Emphysema", ("Emphysema",), "Emphysema"),
    MappedClass("Fibrosis", ("Fibrosis",), "Pulmonary fibrosis"),
    MappedClass("Pleural_Thickening", ("Pleural_Thickening",), "Pleural thickening"),
)

#: ``class_name`` values of the Kaggle ``train.csv`` (14 local labels + No finding).
KAGGLE_CLASS_NAMES: tuple[str, ...] = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "No finding",
)
NO_FINDING = "No finding"


def _norm(name: object) -> str:
    """Case- and whitespace-blind spelling of a column or class name."""
    return " ".join(str(name).split()).lower()


KAGGLE_CLASSES: tuple[MappedClass, ...] = tuple(
    c for c in CLASSES if _norm(c.source) in {_norm(n) for n in KAGGLE_CLASS_NAMES}
)
_BY_SOURCE = {_norm(c.source): c.name for c in CLASSES}
_COORDS = ("x_min", "y_min", "x_max", "y_max")


def _read_csv(path: Path, rel: str) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ExternalDataError(f"{NAME}: {path}: cannot read the CSV ({exc})") from exc
    if table.empty:
        raise ExternalDataError(f"{NAME}: {rel}: no rows")
    return table


def _columns(table: pd.DataFrame, required: Sequence[str], rel: str) -> dict[str, str]:
    """Map each required column to the file's spelling (case / whitespace blind) or refuse."""
    spelled = {_norm(c): c for c in table.columns}
    missing = [r for r in required if _norm(r) not in spelled]
    if missing:
        raise ExternalDataError(f"{NAME}: {rel}: missing columns {missing}; found {list(table.columns)}")
    return {r: spelled[_norm(r)] for r in required}


def _options(cfg: Mapping[str, Any]) -> int:
    if "min_readers" not in cfg:
        raise ExternalDataError(f"{NAME} params: missing key min_readers")
    value = cfg["min_readers"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ExternalDataError(f"{NAME} params: min_readers must be an integer >= 1, got {value!r}")
    return value


def detect_layout(root: Path) -> str:
    """``physionet`` or ``kaggle`` from the label files present under ``root``."""
    root = Path(root)
    if (root / PHYSIONET_LABELS).is_file():
        return "physionet"
    if (root / KAGGLE_LABELS).is_file():
        return "kaggle"
    raise ExternalDataError(
        f"{NAME}: {root}: neither {PHYSIONET_LABELS} (PhysioNet) nor {KAGGLE_LABELS} (Kaggle) found; "
        f"{LAYOUT_HINT}"
    )


def _boxes(rows: pd.DataFrame, cols: dict[str, str], rel: str) -> pd.DataFrame:
    """Box rows (already restricted to positive mapped findings) -> :data:`BOX_COLUMNS` frame."""
    coords = {}
    for name in _COORDS:
        values = pd.to_numeric(rows[cols[name]].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ExternalDataError(
                f"{NAME}: {rel} line {rows.index[i] + 2}: {name} is {rows[cols[name]].iloc[i]!r} for "
                f"{rows[cols['class_name']].iloc[i]!r}; a finding's box needs four numbers"
            )
        coords[name] = values
    inverted = (coords["x_max"] < coords["x_min"]) | (coords["y_max"] < coords["y_min"])
    if inverted.any():
        i = int(np.flatnonzero(inverted)[0])
        raise ExternalDataError(
            f"{NAME}: {rel} line {rows.index[i] + 2}: box has x_max < x_min or y_max < y_min"
        )
    labels = rows[cols["class_name"]].map(_norm).map(_BY_SOURCE)
    return pd.DataFrame(
        {
            "image": rows[cols["image_id"]].str.strip().to_numpy(),
            "label": labels.to_numpy(),
            "x0": coords["x_min"],
            "y0": coords["y_min"],
            "x1": coords["x_max"],
            "y1": coords["y_max"],
        },
        columns=list(BOX_COLUMNS),
    ).reset_index(drop=True)


def _read_physionet(root: Path) -> tuple[list[str], np.ndarray, pd.DataFrame, dict[str, int], str]:
    require_files(root, [PHYSIONET_LABELS, PHYSIONET_BOXES, PHYSIONET_IMAGES], NAME, LAYOUT_HINT)
    table = _read_csv(root / PHYSIONET_LABELS, PHYSIONET_LABELS)
    cols = _columns(table, ["image_id", *(c.source for c in CLASSES)], PHYSIONET_LABELS)
    images = table[cols["image_id"]].str.strip()
    if (images == "").any():
        i = int(np.flatnonzero((images == "").to_numpy())[0])
        raise ExternalDataError(f"{NAME}: {PHYSIONET_LABELS} line {i + 2}: empty image_id")
    if images.duplicated().any():
        first = images[images.duplicated()].iloc[0]
        raise ExternalDataError(
            f"{NAME}: {PHYSIONET_LABELS}: image_id {first!r} has several rows; the test labels are the "
            "radiologists' consensus, one row per image"
        )
    labels = np.empty((len(table), len(CLASSES)), dtype=np.float64)
    for k, c in enumerate(CLASSES):
        raw = table[cols[c.source]].str.strip()
        values = raw.map({"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "": np.nan})
        bad = values.isna() & (raw != "")
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ExternalDataError(
                f"{NAME}: {PHYSIONET_LABELS} line {i + 2}: column {cols[c.source]!r} has {raw.iloc[i]!r}; "
                "expected 0 or 1"
            )
        labels[:, k] = values.to_numpy(dtype=np.float64)

    ann = _read_csv(root / PHYSIONET_BOXES, PHYSIONET_BOXES)
    acols = _columns(ann, ["image_id", "class_name", *_COORDS], PHYSIONET_BOXES)
    row_of = {image: i for i, image in enumerate(images)}
    ann_images = ann[acols["image_id"]].str.strip()
    mapped = ann[acols["class_name"]].map(_norm).map({_norm(c.source): k for k, c in enumerate(CLASSES)})
    known = ann_images.isin(row_of)
    positive = np.zeros(len(ann), dtype=bool)
    for j, (image, k) in enumerate(zip(ann_images, mapped, strict=True)):
        if image in row_of and not pd.isna(k):
            positive[j] = labels[row_of[image], int(k)] == 1.0
    counts = {
        "boxes_unknown_image": int((~known).sum()),
        "boxes_finding_not_positive": int((known & mapped.notna() & ~positive).sum()),
    }
    return (
        images.tolist(),
        labels,
        _boxes(ann.loc[positive], acols, PHYSIONET_BOXES),
        counts,
        PHYSIONET_IMAGES,
    )


def _read_kaggle(
    root: Path, min_readers: int
) -> tuple[list[str], np.ndarray, pd.DataFrame, dict[str, int], str]:
    require_files(root, [KAGGLE_LABELS, KAGGLE_IMAGES], NAME, LAYOUT_HINT)
    table = _read_csv(root / KAGGLE_LABELS, KAGGLE_LABELS)
    cols = _columns(table, ["image_id", "class_name", "rad_id", *_COORDS], KAGGLE_LABELS)
    images = table[cols["image_id"]].str.strip()
    readers = table[cols["rad_id"]].str.strip()
    names = table[cols["class_name"]].map(_norm)
    empty = (images == "") | (readers == "")
    if empty.any():
        i = int(np.flatnonzero(empty.to_numpy())[0])
        raise ExternalDataError(f"{NAME}: {KAGGLE_LABELS} line {i + 2}: empty image_id or rad_id")
    unknown = ~names.isin({_norm(n) for n in KAGGLE_CLASS_NAMES})
    if unknown.any():
        strays = sorted(set(table.loc[unknown, cols["class_name"]]))
        raise ExternalDataError(
            f"{NAME}: {KAGGLE_LABELS}: unknown class_name {strays}; expected {list(KAGGLE_CLASS_NAMES)}"
        )
    most = int(pd.DataFrame({"i": images, "r": readers}).groupby("i")["r"].nunique().max())
    if min_readers > most:
        raise ExternalDataError(
            f"{NAME} params: min_readers={min_readers} but no image of {KAGGLE_LABELS} has more than "
            f"{most} readers; every label would be 0"
        )
    order = list(pd.unique(images))
    row_of = {image: i for i, image in enumerate(order)}
    class_of = {_norm(c.source): k for k, c in enumerate(KAGGLE_CLASSES)}
    marks = pd.DataFrame({"image": images, "k": names.map(class_of), "reader": readers}).dropna(subset=["k"])
    votes = marks.groupby(["image", "k"])["reader"].nunique()
    labels = np.zeros((len(order), len(KAGGLE_CLASSES)), dtype=np.float64)
    for (image, k), n in votes.items():
        if n >= min_readers:
            labels[row_of[image], int(k)] = 1.0
    keys = list(zip(images, names.map(class_of), strict=True))
    positive = np.array([not pd.isna(k) and labels[row_of[i], int(k)] == 1.0 for i, k in keys], dtype=bool)
    return order, labels, _boxes(table.loc[positive], cols, KAGGLE_LABELS), {}, KAGGLE_IMAGES


def read(root: Path, cfg: Mapping[str, Any]) -> ExternalTable:
    """Read VinDr-CXR under ``root`` in whichever layout is there (see the module docstring)."""
    min_readers = _options(cfg)
    root = Path(root)
    if not root.is_dir():
        raise ExternalDataError(f"{NAME}: {root}: folder not found; {LAYOUT_HINT}")
    layout = detect_layout(root)
    if layout == "physionet":
        classes, label_file = CLASSES, PHYSIONET_LABELS
        images, labels, boxes, counts, folder = _read_physionet(root)
    else:
        classes, label_file = KAGGLE_CLASSES, KAGGLE_LABELS
        images, labels, boxes, counts, folder = _read_kaggle(root, min_readers)
    files = [root / folder / f"{image}{SUFFIX}" for image in images]
    require_images(files, NAME, label_file, LAYOUT_HINT)
    return ExternalTable(
        dataset=NAME,
        classes=classes,
        files=files,
        images=images,
        patients=list(images),  # no patient ids published: each image is its own group
        labels=labels.astype(np.float32),
        boxes=boxes,
        counts=counts,
        label_file=label_file,
        bootstrap_group="image",
    )
