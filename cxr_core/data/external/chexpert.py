"""CheXpert (Irvin et al. 2019) as an external test set, read in place from Stanford's layout.

Layout: ``CheXpert-v1.0/`` or ``CheXpert-v1.0-small/`` holding ``train.csv`` / ``valid.csv``; the
CSV ``Path`` column starts with that folder's name (it is relative to the folder's parent). Images
are resolved under the folder actually found, so either download works with either CSV.

Label map: CheXpert's 14 observations include 7 of the 14 NIH findings by name (``Pleural
Effusion`` is NIH ``Effusion``); ``Lung Lesion`` (Irvin et al.: nodule or mass) is scored by the
model's max(Mass, Nodule). Infiltration, Emphysema, Fibrosis, Pleural_Thickening and Hernia are not
labelled: absent. Values are 1 / 0 / -1 (uncertain) / blank (not mentioned in the report); blank is
NaN and -1 follows the paper's policies: U-Ignore (``missing`` -> NaN), U-Ones, U-Zeros.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_core.data.external.base import ExternalDataError, ExternalTable, MappedClass, require_images

NAME = "chexpert"
FOLDER_PREFIX = "CheXpert-v1.0"
LAYOUT_HINT = (
    "point chexpert's root at the unpacked CheXpert-v1.0 or CheXpert-v1.0-small folder (or the folder "
    "holding it); it must contain train.csv / valid.csv and the train/ and valid/ image folders"
)

CLASSES: tuple[MappedClass, ...] = (
    MappedClass("Atelectasis", ("Atelectasis",), "Atelectasis"),
    MappedClass("Cardiomegaly", ("Cardiomegaly",), "Cardiomegaly"),
    MappedClass("Effusion", ("Effusion",), "Pleural Effusion"),
    MappedClass("Lung Lesion", ("Mass", "Nodule"), "Lung Lesion", "proxy"),
    MappedClass("Pneumonia", ("Pneumonia",), "Pneumonia"),
    MappedClass("Pneumothorax", ("Pneumothorax",), "Pneumothorax"),
    MappedClass("Consolidation", ("Consolidation",), "Consolidation"),
    MappedClass("Edema", ("Edema",), "Edema"),
)

#: What ``uncertain`` does to a -1 (Irvin et al. 2019, section 4: U-Ignore, U-Ones, U-Zeros).
UNCERTAIN_POLICIES: dict[str, float] = {"missing": np.nan, "positive": 1.0, "negative": 0.0}

_VALUES: dict[str, float] = {"1.0": 1.0, "1": 1.0, "0.0": 0.0, "0": 0.0, "-1.0": -1.0, "-1": -1.0, "": np.nan}
_PATIENT = re.compile(r"^patient\d+$")
_VIEWS = {"frontal": True, "lateral": False}


def find_folder(root: Path) -> Path:
    """The ``CheXpert-v1.0*`` folder: ``root`` itself or its one child of that name."""
    root = Path(root)
    if root.name.startswith(FOLDER_PREFIX) and root.is_dir():
        return root
    if not root.is_dir():
        raise ExternalDataError(f"{NAME}: {root}: folder not found; {LAYOUT_HINT}")
    found = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(FOLDER_PREFIX))
    if not found:
        raise ExternalDataError(f"{NAME}: {root}: no {FOLDER_PREFIX}* folder inside; {LAYOUT_HINT}")
    if len(found) > 1:
        raise ExternalDataError(
            f"{NAME}: {root}: several CheXpert folders {[p.name for p in found]}; point root at one of them"
        )
    return found[0]


def _options(cfg: Mapping[str, Any]) -> tuple[str, str, bool]:
    missing = [k for k in ("csv", "uncertain", "frontal_only") if k not in cfg]
    if missing:
        raise ExternalDataError(f"{NAME} params: missing keys {missing} (need csv, uncertain, frontal_only)")
    csv, uncertain, frontal_only = cfg["csv"], cfg["uncertain"], cfg["frontal_only"]
    if not isinstance(csv, str) or not csv or "/" in csv or "\\" in csv:
        raise ExternalDataError(f"{NAME} params: csv must be a file name such as valid.csv, got {csv!r}")
    if uncertain not in UNCERTAIN_POLICIES:
        raise ExternalDataError(
            f"{NAME} params: uncertain must be one of {list(UNCERTAIN_POLICIES)}, got {uncertain!r}"
        )
    if not isinstance(frontal_only, bool):
        raise ExternalDataError(f"{NAME} params: frontal_only must be true or false, got {frontal_only!r}")
    return csv, uncertain, frontal_only


def _parse_column(values: pd.Series, column: str, label_file: str) -> np.ndarray:
    """1 / 0 / -1 / blank -> float (blank NaN); anything else names its line."""
    parsed = values.str.strip().map(_VALUES)
    bad = parsed.isna() & (values.str.strip() != "")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ExternalDataError(
            f"{NAME}: {label_file} line {values.index[i] + 2}: column {column!r} has {values.iloc[i]!r}; "
            f"expected 1.0, 0.0, -1.0 or blank ({int(bad.sum())} such cells)"
        )
    return parsed.to_numpy(dtype=np.float64)


def read(root: Path, cfg: Mapping[str, Any]) -> ExternalTable:
    """Read ``cfg['csv']`` of the CheXpert folder under ``root`` (see the module docstring)."""
    csv, uncertain, frontal_only = _options(cfg)
    folder = find_folder(root)
    path = folder / csv
    label_file = f"{folder.name}/{csv}"  # relative to the folder's parent, like the Path column
    if not path.is_file():
        raise ExternalDataError(f"{NAME}: {path}: label file not found; {LAYOUT_HINT}")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ExternalDataError(f"{NAME}: {path}: cannot read the CSV ({exc})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    required = ["Path", *(["Frontal/Lateral"] if frontal_only else []), *(c.source for c in CLASSES)]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ExternalDataError(f"{NAME}: {path}: missing columns {missing}")
    if table.empty:
        raise ExternalDataError(f"{NAME}: {path}: no rows")

    counts = {"lateral_skipped": 0}
    if frontal_only:
        views = table["Frontal/Lateral"].str.strip().str.lower()
        unknown = ~views.isin(list(_VIEWS))
        if unknown.any():
            i = int(np.flatnonzero(unknown.to_numpy())[0])
            raise ExternalDataError(
                f"{NAME}: {path} line {i + 2}: Frontal/Lateral is {table['Frontal/Lateral'].iloc[i]!r}; "
                "expected Frontal or Lateral"
            )
        keep = views.map(_VIEWS).to_numpy(dtype=bool)
        counts["lateral_skipped"] = int((~keep).sum())
        table = table.loc[keep]
        if table.empty:
            raise ExternalDataError(f"{NAME}: {path}: no frontal rows (frontal_only is true)")

    labels = np.stack([_parse_column(table[c.source], c.source, label_file) for c in CLASSES], axis=1)
    labels[labels == -1.0] = UNCERTAIN_POLICIES[uncertain]

    images = table["Path"].str.strip().tolist()
    patients, files = [], []
    for line, image in zip(table.index + 2, images, strict=True):
        parts = image.split("/")
        patient = next((p for p in parts if _PATIENT.match(p)), None)
        if patient is None or len(parts) < 2 or not parts[0].startswith(FOLDER_PREFIX):
            raise ExternalDataError(
                f"{NAME}: {path} line {line}: Path {image!r} is not "
                f"{FOLDER_PREFIX}*/<split>/patientNNNNN/studyN/viewN_*.jpg"
            )
        patients.append(patient)
        files.append(folder.joinpath(*parts[1:]))
    duplicated = pd.Series(images).duplicated()
    if duplicated.any():
        raise ExternalDataError(
            f"{NAME}: {path}: Path {images[int(np.flatnonzero(duplicated.to_numpy())[0])]!r} "
            f"appears more than once ({int(duplicated.sum())} repeats)"
        )
    require_images(files, NAME, label_file, LAYOUT_HINT)
    return ExternalTable(
        dataset=NAME,
        classes=CLASSES,
        files=files,
        images=images,
        patients=patients,
        labels=labels.astype(np.float32),
        counts=counts,
        label_file=label_file,
    )
