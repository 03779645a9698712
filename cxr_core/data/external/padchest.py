"""PadChest (Bustos et al. 2020) as an external test set, read in place from BIMCV's layout.

Layout: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (or ``.csv.gz``) in the root and
the 16-bit PNGs at ``<root>/<ImageDir>/<ImageID>`` (ImageDir = the number of the zip, 0..54).

Labels are the findings of the whole report (27% by physicians, the rest by their RNN;
``MethodLabel``), so a finding not in a row's ``Labels`` list was not reported: negative, not NaN.
``normal`` is therefore all 0 and needs no rule; a finding listed next to ``normal`` (226 rows)
still counts. Rows that say nothing about findings are skipped and counted: ``Labels`` blank /
``nan`` or not a Python list, an empty list (``['']``), ``exclude`` (unusable report, e.g.
"i presion") and a list that is only ``unchanged`` (the report defers to an earlier study).

All 14 NIH findings are labelled, as direct matches from the exact (stripped, lower-case) strings in
:data:`SOURCES`. Compared with torchxrayvision's ``PC_Dataset`` (substring matches; same
Infiltration list), we leave out ``pseudonodule`` (not a nodule), ``subcutaneous emphysema`` (soft
tissue air), ``pericardial effusion`` and non-lung masses (mediastinal, soft tissue, breast,
pleural), and count ``hydropneumothorax`` as both Pneumothorax and Effusion. NIH ``Hernia`` is
hiatal hernia in practice (the only hernia PadChest names), so it is direct.

Files that torchxrayvision lists as absent from the release are skipped when absent, and those it
lists as truncated are always skipped (counted in both cases).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_core.data.external.base import ExternalDataError, ExternalTable, MappedClass, require_images

NAME = "padchest"
CSV_NAME = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
LAYOUT_HINT = (
    f"point padchest's root at the folder holding {CSV_NAME} (or .csv.gz) and the unzipped image "
    "folders 0/ .. 54/ (each <ImageDir>/<ImageID>.png)"
)
COLUMNS: tuple[str, ...] = ("ImageID", "ImageDir", "PatientID", "Projection", "Labels")

#: PadChest label strings (stripped, lower case) read as each NIH finding.
SOURCES: dict[str, tuple[str, ...]] = {
    "Atelectasis": (
        "atelectasis",
        "laminar atelectasis",
        "lobar atelectasis",
        "segmental atelectasis",
        "atelectasis basal",
        "total atelectasis",
        "round atelectasis",
    ),
    "Cardiomegaly": ("cardiomegaly",),
    "Effusion": (
        "pleural effusion",
        "loculated pleural effusion",
        "loculated fissural effusion",
        "hydropneumothorax",
    ),
    "Infiltration": (
        "infiltrates",
        "interstitial pattern",
        "ground glass pattern",
        "reticular interstitial pattern",
        "reticulonodular interstitial pattern",
        "alveolar pattern",
        "consolidation",
        "air bronchogram",
    ),
    "Mass": ("pulmonary mass", "mass"),
    "Nodule": ("nodule", "multiple nodules"),
    "Pneumonia": ("pneumonia", "atypical pneumonia"),
    "Pneumothorax": ("pneumothorax", "hydropneumothorax"),
    "Consolidation": ("consolidation", "air bronchogram"),
    "Edema": ("pulmonary edema",),
    "Emphysema": ("emphysema",),
    "Fibrosis": ("pulmonary fibrosis",),
    "Pleural_Thickening": ("pleural thickening", "apical pleural thickening", "calcified pleural thickening"),
    "Hernia": ("hiatal hernia",),
}

CLASSES: tuple[MappedClass, ...] = tuple(
    MappedClass(name, (name,), ", ".join(strings)) for name, strings in SOURCES.items()
)

#: In the CSV but not in the release (torchxrayvision ``PC_Dataset``): skipped when absent.
KNOWN_MISSING: frozenset[str] = frozenset(
    {
        "216840111366964012819207061112010307142602253_04-014-084.png",
        "216840111366964012989926673512011074122523403_00-163-058.png",
        "216840111366964012959786098432011033083840143_00-176-115.png",
        "216840111366964012558082906712009327122220177_00-102-064.png",
        "216840111366964012339356563862009072111404053_00-043-192.png",
        "216840111366964013076187734852011291090445391_00-196-188.png",
        "216840111366964012373310883942009117084022290_00-064-025.png",
        "216840111366964012283393834152009033102258826_00-059-087.png",
        "216840111366964012373310883942009170084120009_00-097-074.png",
        "216840111366964012819207061112010315104455352_04-024-184.png",
        "216840111366964012819207061112010306085429121_04-020-102.png",
    }
)
#: Truncated / broken PNGs of the release (torchxrayvision ``PC_Dataset``): always skipped.
KNOWN_BROKEN: frozenset[str] = frozenset(
    {
        "216840111366964012989926673512011083134050913_00-168-009.png",
        "216840111366964012373310883942009152114636712_00-102-045.png",
        "216840111366964012819207061112010281134410801_00-129-131.png",
        "216840111366964012487858717522009280135853083_00-075-001.png",
        "216840111366964012989926673512011151082430686_00-157-045.png",
        "216840111366964013686042548532013208193054515_02-026-007.png",
        "216840111366964013590140476722013058110301622_02-056-111.png",
        "216840111366964013590140476722013043111952381_02-065-198.png",
        "216840111366964013829543166512013353113303615_02-092-190.png",
        "216840111366964013962490064942014134093945580_01-178-104.png",
    }
)

_UNPARSEABLE = object()
#: ``Labels`` cells that mean "no labels" (the 01.02.19 CSV writes ``nan`` in 103 rows).
_MISSING = frozenset({"", "nan", "none", "null"})


def parse_labels(text: str) -> list[str] | object:
    """A ``Labels`` cell -> stripped lower-case strings ('' dropped); ``_UNPARSEABLE`` if not a list."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _UNPARSEABLE
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        return _UNPARSEABLE
    return [s for s in (" ".join(v.split()).lower() for v in value) if s]


def label_file_path(root: Path) -> Path:
    """The label CSV under ``root``: the plain ``.csv`` if present, else the ``.csv.gz``."""
    root = Path(root)
    for name in (CSV_NAME, CSV_NAME + ".gz"):
        if (root / name).is_file():
            return root / name
    raise ExternalDataError(f"{NAME}: {root}: label file {CSV_NAME} (or .csv.gz) not found; {LAYOUT_HINT}")


def _options(cfg: Mapping[str, Any]) -> set[str]:
    if "projections" not in cfg:
        raise ExternalDataError(f"{NAME} params: missing key projections (e.g. [PA, AP, AP_horizontal])")
    value = cfg["projections"]
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ExternalDataError(f"{NAME} params: projections must be a non-empty list, got {value!r}")
    if not all(isinstance(v, str) and v.strip() for v in value):
        raise ExternalDataError(f"{NAME} params: projections must be names such as PA, got {value!r}")
    return {v.strip().upper() for v in value}


def _read_table(path: Path) -> pd.DataFrame:
    """The label CSV's columns this reader uses, as stripped strings; unreadable or incomplete files stop."""
    try:
        header = pd.read_csv(path, nrows=0)
    except (OSError, ValueError, pd.errors.ParserError, EOFError) as exc:
        raise ExternalDataError(f"{NAME}: {path}: cannot read the CSV ({exc})") from exc
    missing = [c for c in COLUMNS if c not in header.columns]
    if missing:
        raise ExternalDataError(f"{NAME}: {path}: missing columns {missing}")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=list(COLUMNS))
    except (OSError, ValueError, pd.errors.ParserError, EOFError) as exc:
        raise ExternalDataError(f"{NAME}: {path}: cannot read the CSV ({exc})") from exc
    if table.empty:
        raise ExternalDataError(f"{NAME}: {path}: no rows")
    return table.apply(lambda col: col.str.strip())


def _labelled_rows(
    table: pd.DataFrame, keep: np.ndarray, counts: dict[str, int]
) -> tuple[list[int], list[list[str]]]:
    """Rows of a kept projection whose label text parses to findings, with them; the rest are counted."""
    cache: dict[str, Any] = {}
    parsed: list[list[str]] = []
    rows: list[int] = []
    for i in np.flatnonzero(keep):
        text = table["Labels"].iat[i]
        if text.lower() in _MISSING:
            counts["labels_missing"] += 1
            continue
        labels = cache.get(text)
        if labels is None:
            labels = cache[text] = parse_labels(text)
        if labels is _UNPARSEABLE:
            counts["labels_unparseable"] += 1
        elif not labels:
            counts["labels_empty"] += 1
        elif "exclude" in labels:
            counts["labels_exclude"] += 1
        elif set(labels) == {"unchanged"}:
            counts["labels_unchanged_only"] += 1
        else:
            rows.append(int(i))
            parsed.append(labels)
    return rows, parsed


def _image_rows(
    root: Path,
    path: Path,
    table: pd.DataFrame,
    rows: list[int],
    parsed: list[list[str]],
    counts: dict[str, int],
) -> tuple[list[str], list[str], list[Path], list[list[str]]]:
    """Image names, patients, files and labels of the rows, without PadChest's known missing / broken files."""
    images, patients, files, kept = [], [], [], []
    for i, labels in zip(rows, parsed, strict=True):
        image_id, folder, patient = (table[c].iat[i] for c in ("ImageID", "ImageDir", "PatientID"))
        if not folder.isdigit() or not image_id or not patient:
            raise ExternalDataError(
                f"{NAME}: {path} line {i + 2}: ImageDir {folder!r}, ImageID {image_id!r}, PatientID "
                f"{patient!r}; expected an integer folder and non-empty ids"
            )
        file = root / str(int(folder)) / image_id
        if image_id in KNOWN_BROKEN:
            counts["known_broken_skipped"] += 1
            continue
        if image_id in KNOWN_MISSING and not file.is_file():
            counts["known_missing_skipped"] += 1
            continue
        images.append(f"{int(folder)}/{image_id}")
        patients.append(patient)
        files.append(file)
        kept.append(labels)
    return images, patients, files, kept


def read(root: Path, cfg: Mapping[str, Any]) -> ExternalTable:
    """Read PadChest under ``root`` (see the module docstring)."""
    projections = _options(cfg)
    root = Path(root)
    path = label_file_path(root)
    label_file = path.name
    table = _read_table(path)
    counts = dict.fromkeys(
        (
            "projection_skipped",
            "labels_missing",
            "labels_unparseable",
            "labels_empty",
            "labels_exclude",
            "labels_unchanged_only",
            "known_missing_skipped",
            "known_broken_skipped",
        ),
        0,
    )
    keep = table["Projection"].str.upper().isin(projections).to_numpy()
    counts["projection_skipped"] = int((~keep).sum())
    rows, parsed = _labelled_rows(table, keep, counts)
    if not rows:
        raise ExternalDataError(
            f"{NAME}: {path}: no usable rows for projections {sorted(projections)} "
            f"({len(table)} rows; skipped: {counts})"
        )
    images, patients, files, kept = _image_rows(root, path, table, rows, parsed, counts)
    if not images:
        raise ExternalDataError(f"{NAME}: {path}: no usable rows (skipped: {counts})")
    duplicated = pd.Series(images).duplicated()
    if duplicated.any():
        raise ExternalDataError(
            f"{NAME}: {path}: image {images[int(np.flatnonzero(duplicated.to_numpy())[0])]!r} appears more "
            "than once"
        )
    require_images(files, NAME, label_file, LAYOUT_HINT)

    sources = [set(SOURCES[c.name]) for c in CLASSES]
    matrix = np.array(
        [[float(not s.isdisjoint(labels)) for s in sources] for labels in kept], dtype=np.float32
    )
    return ExternalTable(
        dataset=NAME,
        classes=CLASSES,
        files=files,
        images=images,
        patients=patients,
        labels=matrix.reshape(len(kept), len(CLASSES)),
        counts=counts,
        label_file=label_file,
    )
