"""The 14 ChestX-ray14 findings, their order, and the 8 with radiologist boxes.

The order is the one NIH uses in its papers and the one every per-class table of this project
follows; it is *not* alphabetical. ``No Finding`` is not a class: it is the all-zero label vector.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NUM_CLASSES = len(LABELS)
LABEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(LABELS)}

#: Findings with boxes in ``BBox_List_2017.csv`` (the localisation set), in label order.
BOX_LABELS: tuple[str, ...] = LABELS[:8]

NO_FINDING = "No Finding"

#: ``BBox_List_2017.csv`` spells one finding differently from ``Data_Entry_2017``.
BOX_LABEL_ALIASES: dict[str, str] = {"Infiltrate": "Infiltration"}

#: Abbreviations used by the paper's tables.
ABBREVIATIONS: dict[str, str] = {
    "Atelectasis": "Atel",
    "Cardiomegaly": "Card",
    "Effusion": "Effu",
    "Infiltration": "Infi",
    "Mass": "Mass",
    "Nodule": "Nodu",
    "Pneumonia": "Pneu2",
    "Pneumothorax": "Pneu1",
    "Consolidation": "Cons",
    "Edema": "Edem",
    "Emphysema": "Emph",
    "Fibrosis": "Fibr",
    "Pleural_Thickening": "Pleu",
    "Hernia": "Hern",
}

#: Images per finding in the full 112,120-image set (``Data_Entry_2017_v2020.csv``).
REAL_COUNTS: dict[str, int] = dict(
    zip(
        LABELS,
        (11559, 2776, 13317, 19894, 5782, 6331, 1431, 5302, 4667, 2303, 2516, 1686, 3385, 227),
        strict=True,
    )
)
REAL_IMAGES = 112120


def parse_finding_labels(text: str) -> list[str]:
    """Split a ``Finding Labels`` cell (``A|B|C``) into known finding names.

    ``No Finding`` gives an empty list; ``No Finding`` beside a finding contradicts itself and is an
    error, like an unknown name: silently dropping a finding would corrupt every AUC downstream.
    """
    names = [part.strip() for part in str(text).split("|") if part.strip()]
    if names == [NO_FINDING]:
        return []
    if NO_FINDING in names:
        raise ValueError(
            f"{text!r} lists '{NO_FINDING}' together with a finding; a cell holds one or the other"
        )
    unknown = [n for n in names if n not in LABEL_INDEX]
    if unknown:
        raise ValueError(
            f"unknown finding label(s) {unknown} in {text!r}; expected '{NO_FINDING}' or "
            f"'|'-joined names from {list(LABELS)}"
        )
    return names


def encode(findings: Iterable[str]) -> np.ndarray:
    """Multi-hot uint8 vector of length 14 for a list of finding names."""
    vec = np.zeros(NUM_CLASSES, dtype=np.uint8)
    for name in findings:
        vec[LABEL_INDEX[name]] = 1
    return vec


def encode_column(cells: Iterable[str]) -> np.ndarray:
    """Multi-hot ``N x 14`` uint8 matrix for a column of ``Finding Labels`` cells."""
    rows = [encode(parse_finding_labels(c)) for c in cells]
    return np.stack(rows) if rows else np.zeros((0, NUM_CLASSES), dtype=np.uint8)


def decode(vector: Iterable[int]) -> str:
    """Inverse of :func:`encode`, as a ``Finding Labels`` cell."""
    names = [LABELS[i] for i, v in enumerate(vector) if v]
    return "|".join(names) if names else NO_FINDING


def canonical_box_label(name: str) -> str:
    """Map a ``BBox_List_2017.csv`` label to its ``Data_Entry`` spelling (``Infiltrate`` -> ``Infiltration``)."""
    name = BOX_LABEL_ALIASES.get(name.strip(), name.strip())
    if name not in BOX_LABELS:
        raise ValueError(f"unknown box label {name!r}; expected one of {list(BOX_LABELS)} (or 'Infiltrate')")
    return name
