"""What every external (evaluation-only) data set is reduced to: one table of images and labels.

A data set module reads its own layout in place and returns an :class:`ExternalTable`; everything
after that (the uint8 cache, the leakage guard, the scores) is shared. Labels are mapped to the 14
NIH findings by an explicit :class:`MappedClass` list per data set: a finding the data set does not
label is *absent* (not a column), and a label the data set leaves blank or uncertain is NaN
(missing), never negative.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.errors import CxrError
from cxr_core.labels import LABEL_INDEX

#: Columns of :attr:`ExternalTable.boxes` (pixel coordinates of the source image, x right, y down).
BOX_COLUMNS: tuple[str, ...] = ("image", "label", "x0", "y0", "x1", "y1")


class ExternalDataError(CxrError, ValueError):
    """An external data set's folder, label file or images are not as its documented layout says."""


@dataclass(frozen=True)
class MappedClass:
    """One scored class of an external data set and how the NIH-trained model scores it.

    ``name`` is the column name (the NIH finding for a direct match, the data set's label for a
    proxy); the model's score is the maximum of its probabilities for the findings in ``nih``;
    ``source`` names the data set's label(s) it is read from; ``kind`` is ``direct`` or ``proxy``.
    """

    name: str
    nih: tuple[str, ...]
    source: str
    kind: str = "direct"

    def __post_init__(self) -> None:
        unknown = [n for n in self.nih if n not in LABEL_INDEX]
        if unknown or not self.nih:
            raise ValueError(f"MappedClass {self.name!r}: not NIH findings: {unknown or 'none given'}")
        if self.kind not in ("direct", "proxy"):
            raise ValueError(f"MappedClass {self.name!r}: kind must be direct or proxy, got {self.kind!r}")
        if self.kind == "direct" and (len(self.nih) != 1 or self.nih[0] != self.name):
            raise ValueError(f"MappedClass {self.name!r}: a direct match is one NIH finding of that name")

    @property
    def nih_index(self) -> tuple[int, ...]:
        return tuple(LABEL_INDEX[n] for n in self.nih)


@dataclass
class ExternalTable:
    """One external data set as read from disk, before decoding.

    ``files[i]`` is the image file of row i, ``images[i]`` its id (unique: the path relative to the
    data set's root), ``patients[i]`` the bootstrap group; ``labels`` is N x K float32 in {0, 1, NaN}
    with K = ``len(classes)``; ``boxes`` (or None) has :data:`BOX_COLUMNS`, labels among the class
    names; ``counts`` says how many rows were left out and why (for the manifest and the report).
    """

    dataset: str
    classes: tuple[MappedClass, ...]
    files: list[Path]
    images: list[str]
    patients: list[str]
    labels: np.ndarray
    boxes: pd.DataFrame | None = None
    counts: dict[str, int] = field(default_factory=dict)
    label_file: str = ""
    bootstrap_group: str = (
        "patient"  # what ``patients`` holds: patient ids, or image ids where none are published
    )

    def __post_init__(self) -> None:
        n, k = len(self.images), len(self.classes)
        if not (len(self.files) == len(self.patients) == n):
            raise ValueError("ExternalTable: files, images and patients differ in length")
        if self.labels.shape != (n, k):
            raise ValueError(f"ExternalTable: labels have shape {self.labels.shape}, expected {(n, k)}")
        if len(set(self.images)) != n:
            raise ValueError("ExternalTable: image ids are not unique")
        if self.bootstrap_group not in ("patient", "image"):
            raise ValueError(
                f"ExternalTable: bootstrap_group must be patient or image, got {self.bootstrap_group!r}"
            )
        values = self.labels[np.isfinite(self.labels)]
        if not np.isin(values, (0.0, 1.0)).all():
            raise ValueError("ExternalTable: labels must be 0, 1 or NaN")
        if self.boxes is not None:
            if tuple(self.boxes.columns) != BOX_COLUMNS:
                raise ValueError(
                    f"ExternalTable: box columns {list(self.boxes.columns)} != {list(BOX_COLUMNS)}"
                )
            names = {c.name for c in self.classes}
            stray = sorted(set(self.boxes["label"]) - names)
            if stray:
                raise ValueError(f"ExternalTable: boxes for classes that are not scored: {stray}")

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]


def require_files(root: Path, names: Sequence[str], dataset: str, hint: str) -> None:
    """Stop with one message naming every expected file or folder missing under ``root``."""
    missing = [n for n in names if not (Path(root) / n).exists()]
    if missing:
        raise ExternalDataError(f"{dataset}: {root}: missing {missing}; {hint}")


def require_images(files: Sequence[Path], dataset: str, label_file: str, hint: str) -> None:
    """Stop naming how many images ``label_file`` lists but the folder lacks, and a few of them."""
    absent = [f for f in files if not Path(f).is_file()]
    if absent:
        raise ExternalDataError(
            f"{dataset}: {len(absent)} of {len(files)} images named in {label_file} are missing, "
            f"e.g. {[str(m) for m in absent[:3]]}; {hint}"
        )
