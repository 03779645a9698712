"""The ``dvc metrics diff`` summary of ``cxr pr-report``: counts per file and the rows that matter.

After any retrain every bootstrap interval changes (thousands of rows), so the page shows per file
how many values changed, those that moved outside the interval the file gives for them, changed
text, and the largest relative changes of values without an interval; the full table goes to
``metrics-diff.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cxr_core.devtools.pr_git import _parse_json

#: rows per metrics file in the summary: outside their interval, changed text, largest relative changes
OUTSIDE_ROWS = 10
TEXT_ROWS = 3
LARGEST_ROWS = 5


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


Place = tuple[Mapping[str, Any], str, Mapping[str, Any] | None, str | None]


def _flat(doc: Any) -> dict[str, Place]:
    """Every scalar of a metrics document under DVC's name for it (keys joined by dots, lists left
    out as DVC does), with its parent mapping and key and the grandparent and its key.

    The parents are where a value's interval is written (:func:`_interval`).
    """
    out: dict[str, Place] = {}

    def walk(node: Mapping[str, Any], prefix: str, parent: Mapping[str, Any] | None, key: str | None) -> None:
        for name, value in node.items():
            flat = f"{prefix}.{name}" if prefix else str(name)
            if isinstance(value, Mapping):
                walk(value, flat, node, str(name))
            elif not isinstance(value, list):
                out[flat] = (node, str(name), parent, key)

    if isinstance(doc, Mapping):
        walk(doc, "", None, None)
    return out


def _pair(value: Any) -> tuple[float, float] | None:
    if isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value):
        return min(value), max(value)
    return None


def _interval(place: Place) -> tuple[float, float] | None:
    """The interval a metrics file gives for one value, in the project's three spellings.

    ``<m>_lo`` / ``<m>_hi`` beside ``<m>`` (headline.json); ``<m>_ci: [lo, hi]`` beside ``<m>``, or
    ``<group>_ci: {<m>: [lo, hi]}`` beside ``<group>`` (test and clinical files); ``ci: [lo, hi]``
    beside a paired ``diff`` (compare.json, subgroup gaps).
    """
    parent, key, grand, group = place
    lo, hi = parent.get(f"{key}_lo"), parent.get(f"{key}_hi")
    if _is_number(lo) and _is_number(hi):
        return min(lo, hi), max(lo, hi)
    found = _pair(parent.get(f"{key}_ci")) or (_pair(parent.get("ci")) if key == "diff" else None)
    if found is None and grand is not None and isinstance(grand.get(f"{group}_ci"), Mapping):
        found = _pair(grand[f"{group}_ci"].get(key))
    return found


@dataclass(frozen=True)
class Change:
    """One row of ``dvc metrics diff``, and the interval its file gives (the base's, else the head's)."""

    metric: str
    old: Any
    new: Any
    interval: tuple[float, float] | None = None
    interval_at: str = ""  # "base" or "head"

    @property
    def delta(self) -> float | None:
        both = _is_number(self.old) and _is_number(self.new)
        return self.new - self.old if both else None

    @property
    def outside(self) -> bool:
        """The head value outside the base's interval (the base value outside the head's, when only
        the head file has one): a change larger than the file's own uncertainty."""
        if self.interval is None or self.delta is None:
            return False
        value = self.new if self.interval_at == "base" else self.old
        return not self.interval[0] <= value <= self.interval[1]


def metric_changes(
    diff_json: str, docs: Callable[[str], tuple[Any | None, Any | None]]
) -> dict[str, list[Change]]:
    """``dvc metrics diff --json`` (``{file: {metric: {"old", "new", "diff"}}}``) as Changes per file.

    ``docs(file)`` gives the file at the base and in the workspace, where the intervals are read.
    """
    doc = _parse_json(diff_json or "{}", "`dvc metrics diff --json` output")
    out: dict[str, list[Change]] = {}
    for path, rows in (doc if isinstance(doc, Mapping) else {}).items():
        if not isinstance(rows, Mapping) or not rows:
            continue
        flats = [(_flat(d), side) for d, side in zip(docs(path), ("base", "head"), strict=True)]
        changes = []
        for metric, row in rows.items():
            row = row if isinstance(row, Mapping) else {}
            found = ((_interval(flat[metric]), side) for flat, side in flats if metric in flat)
            interval, side = next(((i, s) for i, s in found if i is not None), (None, ""))
            changes.append(Change(metric, row.get("old"), row.get("new"), interval, side))
        out[path] = changes
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.5g}" if isinstance(value, float) else str(value).replace("|", "\\|")


def _counts(changes: Sequence[Change]) -> dict[str, int]:
    return {
        "changed": sum(c.old is not None and c.new is not None for c in changes),
        "new": sum(c.old is None for c in changes),
        "removed": sum(c.new is None for c in changes),
        "interval": sum(c.interval is not None and c.delta is not None for c in changes),
        "outside": sum(c.outside for c in changes),
    }


def _relative(c: Change) -> float:
    """|change| / max(|base|, |head|): comparable across units (AUCs, p-values, counts)."""
    scale = max(abs(c.old), abs(c.new))
    return abs(c.delta or 0.0) / scale if scale else 0.0


def _picked(changes: Sequence[Change]) -> tuple[list[Change], int]:
    """The rows a reviewer reads first, and how many were outside their interval in all.

    Outside the interval (largest first), then changed text (a new best model), then the largest
    relative changes of values without an interval (those inside theirs are noise by the file's own
    measure); at most :data:`OUTSIDE_ROWS`, :data:`TEXT_ROWS` and :data:`LARGEST_ROWS` of each.
    """
    outside = sorted((c for c in changes if c.outside), key=lambda c: -abs(c.delta or 0.0))
    text = [c for c in changes if c.old is not None and c.new is not None and c.delta is None]
    other = sorted(
        (c for c in changes if c.delta is not None and c.interval is None),
        key=lambda c: (_relative(c), abs(c.delta or 0.0)),
        reverse=True,
    )
    return outside[:OUTSIDE_ROWS] + text[:TEXT_ROWS] + other[:LARGEST_ROWS], len(outside)


def _interval_cell(change: Change) -> str:
    if change.interval is None or change.delta is None:
        return "-"
    lo, hi = (f"{v:.4g}" for v in change.interval)
    return f"{'**outside**' if change.outside else 'inside'} {change.interval_at} [{lo}, {hi}]"


def _shown(outside: int, text: int, other: int) -> str:
    """What a file's table shows, in words."""
    parts = []
    if outside:
        parts.append(
            f"the {min(outside, OUTSIDE_ROWS)} largest of the {outside:,} changes outside their interval"
        )
    if text:
        parts.append(f"{text} changed non-numeric value{'s' * (text > 1)}")
    if other:
        parts.append(f"the {other} largest relative change{'s' * (other > 1)} of values without an interval")
    return "Shown: " + ", then ".join(parts) + "."


def _file_table(path: str, changes: Sequence[Change]) -> list[str]:
    """One metrics file: its picked rows, and a line saying which rows they are."""
    rows, outside = _picked(changes)
    out = [f"### `{path}`", ""]
    if not rows:
        return [*out, "Only new or removed values: see the full table.", ""]
    out += ["| metric | base | head | change | interval in the file |", "|---|---|---|---|---|"]
    for c in rows:
        change = "-" if c.delta is None else f"{c.delta:+.4g}"
        cells = [f"`{_fmt(c.metric)}`", _fmt(c.old), _fmt(c.new), change, _interval_cell(c)]
        out.append("| " + " | ".join(cells) + " |")
    text = sum(c.delta is None for c in rows)
    return [*out, "", _shown(outside, text, len(rows) - text - min(outside, OUTSIDE_ROWS)), ""]


def metrics_summary(
    changes: Mapping[str, Sequence[Change]], scope: str, full: str, rows: int, empty: str
) -> list[str]:
    """The ``dvc metrics diff`` section: counts per file, then each file's rows that matter most.

    Files with values outside their interval come first: if the page must be cut, they stay.
    """
    out = ["## Metrics (`dvc metrics diff`, summarised)", "", scope, ""]
    if not changes:
        return [*out, empty, ""]
    out += [
        f"All {rows:,} rows, as DVC prints them: {full}. Below, per file: how many values changed; "
        "those that moved outside the interval the file gives for them (the base's `<m>_lo`/`<m>_hi`, "
        "`<m>_ci`, or `ci` beside a `diff`; the head's where only it has one); changed text; the "
        "largest relative changes (|change| / max(|base|, |head|)) of values without an interval.",
        "",
        "| file | changed | new | removed | with an interval | outside it |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    counted = {path: _counts(rows_) for path, rows_ in changes.items()}
    order = sorted(changes, key=lambda p: (-counted[p]["outside"], -counted[p]["changed"]))
    for path in order:
        n = counted[path]
        cells = [f"{n[k]:,}" for k in ("changed", "new", "removed", "interval", "outside")]
        out.append(f"| `{path}` | " + " | ".join(cells) + " |")
    out.append("")
    for path in order:
        out += _file_table(path, changes[path])
    return out
