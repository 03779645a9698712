"""Numbers with provenance: every printed number is made from the file and JSON key path it came from.

The report writes them to a side-car (``provenance.csv``), so a test can re-read every source file
and check every printed number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

NA = "n/a"
DECIMALS = 3
#: ``provenance.csv`` file name of the paper's quoted literature rows (not a file: they are
#: :data:`cxr_core.report.literature.LITERATURE_TABLE6`).
LITERATURE_SOURCE = "paper:Table 6"


def finite(value: Any) -> float | None:
    """``value`` as a float; None for a missing, non-numeric, boolean, NaN or infinite value."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class Number:
    """One printed number and where it came from (file + JSON key path)."""

    value: float | None
    text: str
    file: str
    keys: tuple[str, ...]
    kind: str = "float"  # "float": 3 decimals | "int" | "literal": a quoted number, as printed there
    role: str = "value"  # value | ci_low | ci_high | random


def lookup(doc: Any, keys: Sequence[str]) -> Any:
    """Walk ``keys`` into nested dicts / lists; None where any step is missing."""
    node = doc
    for key in keys:
        if isinstance(node, Mapping):
            node = node.get(key)
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return None
        if node is None:
            return None
    return node


def format_value(value: float | int | None, kind: str = "float") -> str:
    """The one formatting rule of the report: 3 decimals, integers as integers, n/a for missing."""
    v = finite(value)
    if v is None:
        return NA
    return str(int(round(v))) if kind == "int" else f"{v:.{DECIMALS}f}"


def number(
    doc: Any, file: str | Path, keys: Sequence[str], *, kind: str = "float", role: str = "value"
) -> Number:
    """The value at ``keys`` in ``doc`` (read from ``file``), formatted and tagged with its source."""
    keys = tuple(str(k) for k in keys)
    raw = lookup(doc, keys)
    value = finite(raw)
    return Number(value, format_value(value, kind), str(file), keys, kind, role)


def quoted(text: str, keys: Sequence[str]) -> Number:
    """A literature number, printed exactly as the paper prints it (never re-rounded)."""
    return Number(float(text), text, LITERATURE_SOURCE, tuple(keys), "literal")


class JsonNumbers:
    """Mixin of a dataclass with ``doc`` (a JSON object) and ``path`` (the file it was read from):
    every number read through :meth:`num` carries that file and key path."""

    doc: Mapping[str, Any]
    path: Path

    def num(self, *keys: Any, kind: str = "float", role: str = "value") -> Number:
        return number(self.doc, self.path, [str(k) for k in keys], kind=kind, role=role)


@dataclass(frozen=True)
class Cell:
    """A table cell: its text and the numbers printed in it, in order."""

    text: str
    numbers: tuple[Number, ...] = ()


def plain_cell(n: Number) -> Cell:
    return Cell(n.text, (n,))


def ci_cell(value: Number, low: Number, high: Number) -> Cell:
    """``0.812 [0.801, 0.830]``; just the value when the interval was not computed (bootstrap 0)."""
    if low.value is None and high.value is None:
        return plain_cell(value)
    return Cell(f"{value.text} [{low.text}, {high.text}]", (value, low, high))


def control_cell(value: Number, control: Number | None) -> Cell:
    """``0.420 (rand 0.110)``: the random-map control's value beside every localisation number."""
    if control is None:
        return plain_cell(value)
    return Cell(f"{value.text} (rand {control.text})", (value, control))


@dataclass
class Table:
    """A report table: Markdown for report.md, numbers for its CSV, provenance for the side-car."""

    key: str  # file stem in reports/tables/
    title: str
    row_header: str
    columns: list[str]
    rows: list[tuple[str, list[Cell]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add_row(self, label: str, cells: list[Cell]) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(
                f"{self.key}: row {label!r} has {len(cells)} cells for {len(self.columns)} columns"
            )
        self.rows.append((label, cells))

    def markdown(self) -> str:
        head = [self.row_header, *self.columns]
        lines = [f"<!-- table: {self.key} -->", f"### {self.title}", ""]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * len(self.columns)) + "|")
        lines += ["| " + " | ".join([label] + [c.text for c in cells]) + " |" for label, cells in self.rows]
        lines += [""] + [f"{note}\n" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def frame(self) -> pd.DataFrame:
        """Numbers at full precision: one column per (column, role), e.g. ``Card``, ``Card_ci_low``."""
        records = []
        for label, cells in self.rows:
            record: dict[str, Any] = {self.row_header: label}
            for column, cell in zip(self.columns, cells, strict=True):
                for n in cell.numbers:
                    record[column if n.role == "value" else f"{column}_{n.role}"] = n.value
            records.append(record)
        return pd.DataFrame.from_records(records)

    def provenance(self) -> list[dict[str, Any]]:
        return [
            {
                "table": self.key,
                "row": label,
                "column": column,
                "position": i,
                "role": n.role,
                "text": n.text,
                "kind": n.kind,
                "file": n.file,
                "keys": json.dumps(list(n.keys)),
                "value": n.value,
            }
            for label, cells in self.rows
            for column, cell in zip(self.columns, cells, strict=True)
            for i, n in enumerate(cell.numbers)
        ]
