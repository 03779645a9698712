"""``cxr pr-report``: one Markdown page of what a pull request changes in the pipeline's results.

Reviewers of a pipeline change want the numbers, not a link to a notebook: this command compares the
workspace (after ``dvc repro``) with a git revision and writes ``<out>/report.md``, a page that fits
one GitHub comment, with, in this order,

* a loud warning at the top when the results come from the synthetic phantom (they then check the
  wiring, not medicine: the README's "What the phantom numbers mean"),
* a headline table: test macro AUC per model, base -> head with the delta, read from
  ``metrics/headline.json`` at the base revision (``git show``) and in the workspace,
* ``dvc params diff --md``: the line that says what the change was,
* the key plots of ``dvc plots diff --json`` (Vega-Lite specs with their data inlined, both
  revisions overlaid; colour = model or column, dash = revision), rendered to PNG next to the
  Markdown by ``vl-convert-python`` (Rust; no Node or browser needed),
* a summary of ``dvc metrics diff`` (by default only the leaderboard files ``metrics/headline.json``
  and ``metrics/compare.json``; ``--all`` for every metrics file): per file how many values changed,
  the values that moved outside the interval the file gives for them, changed text, and the largest
  relative changes of values without an interval. After any retrain every bootstrap interval
  changes (thousands of rows), so the full table goes to ``<out>/metrics-diff.md`` (and the params
  table to ``params-diff.md``), linked from the page.

A page still over :data:`COMMENT_LIMIT` is cut, least important section first, between table rows,
with a note saying what was left out and where all of it is. DVC and git run as subprocesses, so the
tables are exactly what those commands print. Every failure a user can fix (not a git repository, an
unknown base, a malformed headline file) is a :class:`PrReportError`, and git or DVC missing a
:class:`cxr_core.devtools.tools.ToolNotFoundError`: one line, exit code 1.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import click

from cxr_core.devtools.tools import ToolNotFoundError, find_tool
from cxr_core.errors import CxrError

HEADLINE = "metrics/headline.json"
COMPARE = "metrics/compare.json"
MANIFEST = "data/raw/manifest.json"
#: the compact leaderboard files ``dvc metrics diff`` is limited to unless ``--all`` is given
LEADERBOARD = (HEADLINE, COMPARE)
#: plot ids (from dvc.yaml) rendered by default; a directory id covers every file under it
KEY_PLOTS = ("val_loss", "plots/iou_vs_threshold")
#: ``data.source`` of the embedded phantom, as written in the raw manifest (and checkpoints)
PHANTOM_SOURCE = "synthetic"
#: first line of every report: marks a folder this command may clean of its own old PNGs
MARKER = "<!-- cxr pr-report -->"
#: GitHub refuses comment bodies longer than this: report.md is kept below it
COMMENT_LIMIT = 65536
#: the full tables, next to report.md (which links them)
METRICS_DIFF = "metrics-diff.md"
PARAMS_DIFF = "params-diff.md"
#: rows per metrics file in the summary: outside their interval, changed text, largest relative changes
OUTSIDE_ROWS = 10
TEXT_ROWS = 3
LARGEST_ROWS = 5
WORKSPACE = "workspace"  # what DVC calls the working tree in its tables


class PrReportError(CxrError):
    """The report cannot be built: not a repository, an unknown revision, a missing tool or file."""


# --- git and dvc ---------------------------------------------------------------------------------


def _run(cmd: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return re.sub(r"^(ERROR|error|fatal):\s*", "", lines[-1]) if lines else "no message"


@dataclass(frozen=True)
class Repo:
    """A DVC project inside a git work tree, and the executables that read it."""

    root: Path
    git: str
    dvc: str

    def git_out(self, *args: str) -> str | None:
        """stdout of a git command, None when it fails (an absent file or revision)."""
        done = _run([self.git, *args], self.root)
        return done.stdout if done.returncode == 0 else None

    def dvc_out(self, *args: str) -> str:
        done = _run([self.dvc, *args], self.root)
        if done.returncode != 0:
            raise PrReportError(
                f"`dvc {' '.join(args)}` failed in {self.root} (exit {done.returncode}): "
                f"{_last_line(done.stderr or done.stdout)}"
            )
        return done.stdout


def open_repo(path: Path, dvc: str | None = None) -> Repo:
    """Check that ``path`` is a DVC project in a git work tree and that git and dvc are there."""
    git = find_tool("git", "install git")
    path = path.resolve()
    done = _run([git, "rev-parse", "--show-toplevel"], path)
    if done.returncode != 0:
        raise PrReportError(
            f"{path} is not inside a git repository: the PR report compares the workspace with a git revision"
        )
    if not (path / ".dvc").is_dir():
        raise PrReportError(
            f"{path} is not the root of a DVC project (no .dvc/ folder): run it where dvc.yaml is"
        )
    return Repo(path, git, find_tool("dvc", "install the project (make install) or activate .venv", dvc))


@dataclass(frozen=True)
class Base:
    """The revision compared against: the name given to DVC and its commit."""

    name: str
    sha: str


def resolve_base(repo: Repo, base: str) -> Base:
    """The commit of ``base``; ``origin/<base>`` when only that exists (a CI checkout of a PR).

    ``actions/checkout`` fetches the base branch as ``origin/main`` but creates no local ``main``.
    """
    if base.startswith("-"):  # would reach git and dvc as an option
        candidates = []
    elif base.startswith("origin/"):
        candidates = [base]
    else:
        candidates = [base, f"origin/{base}"]
    for name in candidates:
        sha = repo.git_out("rev-parse", "--verify", "--quiet", f"{name}^{{commit}}")
        if sha:
            return Base(name, sha.strip())
    raise PrReportError(
        f"unknown base revision {base!r}: no such commit, branch or tag in {repo.root} "
        f"(fetch it first, e.g. `git fetch origin {base}`, or clone with full history)"
    )


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PrReportError(f"{where}: not valid JSON ({exc})") from exc


def read_at(repo: Repo, rev: str, path: str) -> Any | None:
    """A JSON file as committed at ``rev`` (``git show``), None when that revision lacks it."""
    text = repo.git_out("show", f"{rev}:./{path}")
    return None if text is None else _parse_json(text, f"{path} at {rev}")


def read_workspace(repo: Repo, path: str) -> Any | None:
    file = repo.root / path
    return _parse_json(file.read_text(), str(file)) if file.is_file() else None


def _json_or_none(text: str | None) -> Any | None:
    try:
        return None if text is None else json.loads(text)
    except json.JSONDecodeError:
        return None


def metrics_docs(repo: Repo, rev: str, path: str) -> tuple[Any | None, Any | None]:
    """A metrics file at ``rev`` and in the workspace, None where absent or not JSON.

    Only read to find the intervals of changed values: a YAML metrics file or one kept in DVC's
    cache (not in git) has none here, and its rows are summarised without them.
    """
    file = repo.root / path
    head = _json_or_none(file.read_text(errors="replace")) if file.is_file() else None
    return _json_or_none(repo.git_out("show", f"{rev}:./{path}")), head


def exists_at(repo: Repo, rev: str, path: str) -> bool:
    return repo.git_out("cat-file", "-e", f"{rev}:./{path}") is not None


# --- the report's parts --------------------------------------------------------------------------


def data_sources(repo: Repo, headline: Mapping[str, Any] | None) -> dict[str, str]:
    """What the workspace files say the results were computed on: ``{"<file> <key>": source}``.

    The raw manifest (a DVC output, present after ``dvc repro`` or ``dvc pull``) names the data the
    pipeline read; ``metrics/headline.json`` may carry it too.
    """
    found = {}
    for key in ("source", "data_source"):
        if isinstance(headline, Mapping) and isinstance(headline.get(key), str):
            found[f"`{HEADLINE}` {key}"] = headline[key]
    manifest = read_workspace(repo, MANIFEST)
    if isinstance(manifest, Mapping) and isinstance(manifest.get("source"), str):
        found[f"`{MANIFEST}` source"] = manifest["source"]
    return found


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _models(doc: Any, where: str) -> dict[str, Mapping[str, Any]]:
    """``models`` of a headline file, checked: every entry has a numeric ``auc``."""
    models = doc.get("models") if isinstance(doc, Mapping) else None
    if not isinstance(models, Mapping):
        raise PrReportError(f"{where}: no 'models' mapping (the report stage writes it)")
    for name, entry in models.items():
        auc = entry.get("auc") if isinstance(entry, Mapping) else None
        if not _is_number(auc):
            raise PrReportError(f"{where}: models.{name}.auc is {auc!r}, not a number")
    return dict(models)


def _best(doc: Any) -> str | None:
    best = doc.get("best") if isinstance(doc, Mapping) else None
    if not isinstance(best, Mapping) or "model" not in best:
        return None
    seed = f" seed {best['seed']}" if "seed" in best else ""
    auc = best.get("macro_auc")
    score = f" (macro AUC {auc:.4f})" if _is_number(auc) else ""
    return f"`{best['model']}`{seed}{score}"


def headline_section(base: Base, base_doc: Any | None, head_doc: Any | None) -> list[str]:
    """Markdown: per model, test macro AUC at the base and in the workspace, and the change."""
    out = ["## Headline: test macro AUC", ""]
    if head_doc is None:
        return [*out, f"`{HEADLINE}` is not in the workspace: run `dvc repro` (or `make repro`) first.", ""]
    head = _models(head_doc, f"{HEADLINE} (workspace)")
    before = {} if base_doc is None else _models(base_doc, f"{HEADLINE} at {base.name}")
    out += [
        f"| model | base `{base.name}` | head (workspace) | 95% CI (head) | change |",
        "|---|---|---|---|---|",
    ]
    for name in [*head, *(m for m in before if m not in head)]:
        now, then = head.get(name), before.get(name)
        ci = "-"
        if now is not None and _is_number(now.get("auc_lo")) and _is_number(now.get("auc_hi")):
            ci = f"{now['auc_lo']:.4f} to {now['auc_hi']:.4f}"
        if now is not None and then is not None:
            change = f"{now['auc'] - then['auc']:+.4f}"
        else:
            change = "new" if then is None else "removed"
        cells = [f"{d['auc']:.4f}" if d is not None else "-" for d in (then, now)]
        out.append(f"| `{name}` | {cells[0]} | {cells[1]} | {ci} | {change} |")
    out.append("")
    if base_doc is None:
        out += [f"The base `{base.name}` has no `{HEADLINE}`: every model counts as new.", ""]
    best_now, best_then = _best(head_doc), _best(base_doc)
    if best_now:
        out += [f"Best checkpoint: {best_now}" + (f"; at the base: {best_then}." if best_then else "."), ""]
    return out


def _has_rows(table: str) -> bool:
    """Whether a Markdown table from DVC has a row below its header and separator."""
    return _row_count(table) > 0


def _row_count(table: str) -> int:
    """Rows of a Markdown table below its header and separator."""
    return max(0, sum(1 for line in table.splitlines() if line.startswith("|")) - 2)


def metric_targets(repo: Repo, base: Base, all_metrics: bool) -> list[str]:
    """The leaderboard files present in the workspace or at the base; [] means every metrics file."""
    if all_metrics:
        return []
    return [p for p in LEADERBOARD if (repo.root / p).is_file() or exists_at(repo, base.name, p)]


def diff_section(title: str, table: str, scope: str, empty: str) -> list[str]:
    body = table.strip() if _has_rows(table) else empty
    return [f"## {title}", "", scope, "", body, ""]


def _link(name: str, url: str | None) -> str:
    """A Markdown link to a file next to report.md, or to the CI artifact that holds it.

    A PR comment cannot resolve a relative link, so CI passes the artifact's URL (``--images-url``).
    """
    return f"[`{name}` in the `pr-report` artifact]({url})" if url else f"[`{name}`]({name})"


def full_diff_file(title: str, command: str, scope: str, table: str, empty: str) -> str:
    """A full ``dvc ... diff --md`` table as its own page (``metrics-diff.md``, ``params-diff.md``)."""
    if not _has_rows(table):
        return "\n".join([MARKER, f"# {title}", "", scope, "", empty, ""])
    rows = _row_count(table)
    intro = f"{scope} Every changed value, as `{command}` prints it ({rows:,} rows)."
    return "\n".join([MARKER, f"# {title}", "", intro, "", table.strip(), ""])


# --- metrics: a summary of `dvc metrics diff` ----------------------------------------------------


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


# --- plots ---------------------------------------------------------------------------------------


@dataclass
class Plots:
    """Rendered plots (plot id, title, PNG name) and what could not be shown."""

    rendered: list[tuple[str, str, str]] = field(default_factory=list)  # (plot id, title, png name)
    notes: list[str] = field(default_factory=list)


def _selected(name: str, selectors: Sequence[str]) -> bool:
    return any(name == s or name.startswith(s.rstrip("/") + "/") for s in selectors)


def _strip_ext(name: str) -> str:
    return re.sub(r"\.(csv|tsv|json|ya?ml)$", "", name)


def _png_name(plot_id: str, taken: set[str]) -> str:
    stem = _strip_ext(plot_id)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "plot"
    name, n = f"{stem}.png", 1
    while name in taken:
        name, n = f"{stem}-{n}.png", n + 1
    taken.add(name)
    return name


def _title(spec: Mapping[str, Any], plot_id: str) -> str:
    title = spec.get("title")
    if isinstance(title, Mapping):
        title = title.get("text")
    return str(title) if title else plot_id


def short_labels(paths: Sequence[str]) -> dict[str, str]:
    """Short distinct names for paths: the components all share dropped from both ends, and the
    file extension (``densenet121/seed0/plots/metrics/val_loss.tsv`` -> ``densenet121``).

    Legend entries and titles then name the model, not a path Vega cuts at 160 px. Names that would
    collide stay whole.
    """
    parts = [p.split("/") for p in paths]
    lead = trail = 0
    while all(len(p) > lead + 1 for p in parts) and len({p[lead] for p in parts}) == 1:
        lead += 1
    while all(len(p) > lead + trail + 1 for p in parts) and len({p[-1 - trail] for p in parts}) == 1:
        trail += 1
    labels = {
        path: _strip_ext("/".join(p[lead : len(p) - trail])) for path, p in zip(paths, parts, strict=True)
    }
    return labels if len(set(labels.values())) == len(set(paths)) else {p: p for p in paths}


def _recolour(node: Any, colour: Mapping[str, Any]) -> None:
    """Replace, in place, every ``color`` encoding on the revision with ``colour`` (layers too)."""
    if isinstance(node, list):
        for item in node:
            _recolour(item, colour)
    elif isinstance(node, dict):
        encoding = node.get("encoding")
        colour_now = encoding.get("color") if isinstance(encoding, dict) else None
        if isinstance(colour_now, Mapping) and colour_now.get("field") == "rev":
            encoding["color"] = dict(colour)
        for key in ("layer", "hconcat", "vconcat", "concat", "spec"):
            _recolour(node.get(key), colour)


def colour_by_series(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    """In DVC's line templates, colour the series (model, column) and dash the revision.

    DVC colours by revision and tells several y sources apart by dash pattern alone, labelled with
    their paths (cut by Vega at 160 px): six models were six grey dashes. Here each series gets a
    colour and a short untruncated name, and the base is dashed. Other specs are returned as they are.
    """
    encoding = spec.get("encoding") if isinstance(spec.get("encoding"), Mapping) else {}
    dash, colour = encoding.get("strokeDash"), encoding.get("color")
    data = spec.get("data") if isinstance(spec.get("data"), Mapping) else {}
    values = data.get("values")
    if not (isinstance(dash, Mapping) and isinstance(colour, Mapping) and isinstance(values, list)):
        return spec
    series_field = dash.get("field")
    if colour.get("field") != "rev" or not series_field or series_field == "rev":
        return spec
    series = list(dict.fromkeys(str(row.get(series_field)) for row in values if isinstance(row, Mapping)))
    if len(series) < 2:  # one line per revision: colour = revision as DVC draws it
        return spec
    labels = short_labels(series)
    out = copy.deepcopy(dict(spec))
    # the short name replaces the path in the rows: the template's loess and pivot group by this field
    out["data"]["values"] = [
        {**row, series_field: labels[str(row.get(series_field))]}
        for row in values
        if isinstance(row, Mapping)
    ]
    revisions = (colour.get("scale") or {}).get("domain") or list(dict.fromkeys(r.get("rev") for r in values))
    new_colour = {
        "field": series_field,
        "type": "nominal",
        "title": None,
        "scale": {
            "domain": [labels[s] for s in series],
            "scheme": "tableau10" if len(series) <= 10 else "tableau20",
        },
        "legend": {"labelLimit": 0},
    }
    _recolour(out, new_colour)
    dashes = [[1, 0], [6, 4], [2, 2], [8, 3, 2, 3]]
    out["encoding"]["strokeDash"] = {
        "field": "rev",
        "type": "nominal",
        "title": "revision",
        "scale": {"domain": revisions, "range": [dashes[i % len(dashes)] for i in range(len(revisions))]},
        "legend": {"labelLimit": 0, "symbolType": "stroke", "symbolStrokeColor": "grey"},
    }
    return out


def name_in_title(spec: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """The spec with ``name`` (the file of a folder plot: its model) leading its title.

    A folder id in dvc.yaml gives one plot per file, all with the folder's title: without this the
    six ``iou_vs_threshold`` PNGs look alike.
    """
    title = spec.get("title")
    title = dict(title) if isinstance(title, Mapping) else {"text": title} if title else {}
    text = title.get("text")
    title["text"] = f"{name}: {text}" if text else name
    return {**spec, "title": title}


def _js_error(text: str) -> str:
    """The ``...Error: message`` line of a vl-convert failure (its last lines are a JS stack)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return next((line for line in lines if re.match(r"\w*Error:", line)), lines[0] if lines else "no message")


def render_png(spec: Mapping[str, Any], scale: float, plot_id: str) -> bytes:
    """One Vega-Lite spec (data inlined, as DVC gives it) to PNG bytes with vl-convert."""
    try:
        import vl_convert
    except ImportError as exc:
        raise PrReportError(
            "vl-convert-python is not installed: `pip install -c constraints.txt vl-convert-python` "
            "(it renders the plots to PNG without Node)"
        ) from exc
    kwargs: dict[str, Any] = {}
    major = re.search(r"/vega-lite/v(\d+)", str(spec.get("$schema", "")))
    if major:  # the newest library of the spec's major version (DVC's templates say v5)
        versions = [v for v in vl_convert.get_vegalite_versions() if v.split(".")[0] == major.group(1)]
        if versions:
            kwargs["vl_version"] = max(versions, key=lambda v: tuple(int(x) for x in v.split(".")))
    try:
        # data are inlined by DVC: no URL may be fetched (offline, and nothing leaves the machine)
        return vl_convert.vegalite_to_png(dict(spec), scale=scale, allowed_base_urls=[], **kwargs)
    except Exception as exc:  # vl-convert raises plain ValueErrors/RuntimeErrors from Rust
        raise PrReportError(
            f"plot {plot_id!r}: Vega-Lite could not render it: {_js_error(str(exc))}"
        ) from exc


def file_names(plot_ids: Sequence[str], selectors: Sequence[str]) -> dict[str, str]:
    """For each plot a folder selector stands for, the part of its path that names it (its model).

    ``plots/iou_vs_threshold/densenet121.csv`` under ``plots/iou_vs_threshold`` -> ``densenet121``;
    ``plots/roc/densenet121/seed0.csv`` beside other models' ``seed0.csv`` -> ``densenet121``.
    """
    groups: dict[str, list[str]] = {}
    for plot_id in dict.fromkeys(plot_ids):
        selector = next((s for s in selectors if _selected(plot_id, [s])), plot_id)
        if plot_id != selector:
            groups.setdefault(selector.rstrip("/"), []).append(plot_id)
    names: dict[str, str] = {}
    for folder, ids in groups.items():
        inside = [pid[len(folder) + 1 :] for pid in ids]
        short = short_labels(inside) if len(inside) > 1 else {p: _strip_ext(p) for p in inside}
        names.update({pid: short[rel] for pid, rel in zip(ids, inside, strict=True)})
    return names


def plots_section_data(
    plots_json: str, selectors: Sequence[str], out: Path, scale: float, base: Base
) -> Plots:
    """Render the selected vega plots of ``dvc plots diff --json`` into ``out``.

    The JSON is ``{"data": {<plot id>: [{"type": "vega", "revisions": [...], "content": <spec>}
    | {"type": "image", ...}]}, "errors": [{"name", "rev", "type", "msg", ...}]}`` (DVC 3); only
    ``vega`` entries are rendered (``image`` plots are PNGs already, in git), with colour = series
    (:func:`colour_by_series`) and a folder plot's file named in its title (:func:`name_in_title`).
    """
    doc = _parse_json(plots_json, "`dvc plots diff --json` output")
    data = doc.get("data") or {}
    chosen = [
        (plot_id, entry)
        for plot_id, entries in data.items()
        if _selected(plot_id, selectors)
        for entry in entries
        if entry.get("type") == "vega" and entry.get("content")
    ]
    names = file_names([plot_id for plot_id, _ in chosen], selectors)
    result, taken, seen = Plots(), set(), set()
    for plot_id, entry in chosen:
        seen.update(s for s in selectors if _selected(plot_id, [s]))
        spec = colour_by_series(entry["content"])
        if plot_id in names:
            spec = name_in_title(spec, names[plot_id])
        png = _png_name(plot_id, taken)
        (out / png).write_bytes(render_png(spec, scale, plot_id))
        if base.name not in (entry.get("revisions") or []):
            result.notes.append(f"`{plot_id}`: no data at the base `{base.name}`, workspace only.")
        result.rendered.append((plot_id, _title(entry["content"], plot_id), png))
    for selector in selectors:
        if selector not in seen:
            result.notes.append(f"`{selector}`: no such plot with data in either revision.")
    for err in doc.get("errors") or []:
        if err.get("type") == "FileNotFoundError":  # a file absent at one revision: said above
            continue
        if err.get("name") is None or _selected(str(err.get("name")), selectors):
            what = err.get("source") or err.get("name") or "plots"
            result.notes.append(f"`{what}` at `{err.get('rev')}`: {err.get('msg') or err.get('type')}")
    return result


def plots_section(plots: Plots, images_url: str | None) -> list[str]:
    out = ["## Plots", ""]
    if images_url and plots.rendered:
        out += [f"The PNGs are in the [`pr-report` artifact]({images_url}) of this workflow run.", ""]
    if plots.rendered:
        out += ["Colour: model (or column); solid: workspace, dashed: base.", ""]
    last_title = None
    for plot_id, title, png in plots.rendered:
        if title != last_title:  # a folder id gives one plot per file, all with the same title
            out += [f"### {title}", ""]
            last_title = title
        out += [f"`{plot_id}`", "", f"`{png}`" if images_url else f"![{plot_id}]({png})", ""]
    if not plots.rendered:
        out += ["No plot to show.", ""]
    out += [f"- {note}" for note in plots.notes]
    return [*out, ""] if plots.notes else out


# --- one comment: cutting what does not fit ------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """A part of the page: Markdown blocks (paragraphs, tables) that blank lines separate.

    ``rank`` orders the cuts when the page is too long for a comment (1 is cut first; 0 never) and
    ``full`` says where all of it is, for the note that replaces what was cut.
    """

    name: str
    blocks: tuple[str, ...]
    rank: int = 0
    full: str = ""


def section(name: str, lines: Sequence[str], rank: int = 0, full: str = "") -> Section:
    """A Section of Markdown lines as the builders above write them (a blank line after each block)."""
    blocks, current = [], []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    return Section(name, tuple(blocks), rank, full)


def render(sections: Sequence[Section]) -> str:
    return "\n\n".join(block for s in sections for block in s.blocks) + "\n"


def _size(s: Section) -> int:
    """Characters the section adds to the page (each block and the blank line after it)."""
    return sum(len(block) + 2 for block in s.blocks)


def _cut_note(s: Section, limit: int, rows: int, blocks: int) -> str:
    """The bold note that ends a cut section: how much was left out and where all of it is."""
    left = [f"{rows:,} more table rows"] if rows else []
    left += [f"{blocks:,} more paragraphs or tables"] if blocks else []
    what = " and ".join(left) or "the rest"
    return f"**Cut here to fit one GitHub comment ({limit:,} characters): {what} left out.** All of it: {s.full}."


def _table_head(block: str, room: int) -> tuple[str, int] | None:
    """The header and first rows of a Markdown table within ``room`` characters, and the rows left."""
    lines = block.split("\n")
    if len(lines) < 3 or not all(line.startswith("|") for line in lines):
        return None
    kept, size = lines[:2], len(lines[0]) + len(lines[1]) + 3
    for line in lines[2:]:
        if size + len(line) + 1 > room:
            break
        kept.append(line)
        size += len(line) + 1
    return ("\n".join(kept), len(lines) - len(kept)) if len(kept) > 2 else None


def shorten(s: Section, budget: int, limit: int) -> Section:
    """The section's first blocks within ``budget`` characters, then a note on what was left out.

    Its heading always stays; a table is cut between rows, keeping its header; a heading left
    without its table goes too. Nothing is cut silently: the note names the file with all of it.
    """
    reserve = len(_cut_note(s, limit, 10**9, 10**9)) + 2
    kept = list(s.blocks[:1])
    room = budget - reserve - sum(len(b) + 2 for b in kept)
    rows = later = 0
    for i, block in enumerate(s.blocks[1:], start=1):
        if len(block) + 2 <= room:
            kept.append(block)
            room -= len(block) + 2
            continue
        head = _table_head(block, room - 2)
        if head:
            kept.append(head[0])
            rows = head[1]
        later = len(s.blocks) - i - (1 if head else 0)
        break
    while len(kept) > 1 and kept[-1].startswith("#"):
        kept.pop()
        later += 1
    return replace(s, blocks=(*kept, _cut_note(s, limit, rows, later)))


def fit(sections: Sequence[Section], limit: int) -> tuple[list[Section], list[str]]:
    """Cut the least important sections until the page has fewer than ``limit`` characters.

    Returns the sections and the names of those cut. Sections of rank 0 (the title and the phantom
    warning: a few hundred characters) are never cut, nor a cut section's heading and note, so a
    ``limit`` below about 2,000 characters may not be reached; :data:`COMMENT_LIMIT` always is.
    """
    out, cut = list(sections), []
    for i in sorted((i for i, s in enumerate(out) if s.rank), key=lambda i: out[i].rank):
        excess = len(render(out)) - (limit - 1)
        if excess <= 0:
            break
        out[i] = shorten(out[i], _size(out[i]) - excess, limit)
        cut.append(out[i].name)
    return out, cut


# --- the whole report ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    markdown: str
    pngs: list[str]
    phantom: bool
    files: dict[str, str] = field(default_factory=dict)  # the full tables, by file name in --out
    cut: list[str] = field(default_factory=list)  # sections shortened to fit one comment


def _top(repo: Repo, base: Base, head_doc: Any | None) -> tuple[list[str], bool]:
    """The marker, the phantom warning (if any), the title and the data source; and whether phantom."""
    sources = data_sources(repo, head_doc)
    reasons = [f"{where}: {src}" for where, src in sources.items() if src == PHANTOM_SOURCE]
    head_sha = (repo.git_out("rev-parse", "--short", "HEAD") or "").strip() or "no commit"
    lines = [MARKER]
    if reasons:
        lines += [
            "> [!CAUTION]",
            "> **PHANTOM RUN: these results come from the synthetic phantom data set, not NIH ChestX-ray14** "
            f"({'; '.join(reasons)}).",
            "> They show that the pipeline is wired correctly; they say nothing about how the models do "
            "on real radiographs.",
            "",
        ]
    lines += [f"# Pipeline report: `{base.name}` ({base.sha[:7]}) -> workspace (HEAD {head_sha})", ""]
    if not sources:
        lines += [f"Data source: unknown (neither `{MANIFEST}` nor `{HEADLINE}` names it).", ""]
    elif not reasons:
        lines += ["Data source: " + "; ".join(f"{where}: `{src}`" for where, src in sources.items()), ""]
    return lines, bool(reasons)


def _metrics_scope(all_metrics: bool, targets: Sequence[str]) -> str:
    if all_metrics:
        return "Every metrics file of dvc.yaml (`--all`)."
    if targets:
        return "Leaderboard files only: " + ", ".join(f"`{t}`" for t in targets) + " (`--all` for every one)."
    return (
        f"Neither `{HEADLINE}` nor `{COMPARE}` exists at either revision: `--all` diffs every metrics file."
    )


@dataclass(frozen=True)
class Diffs:
    """What the DVC commands print: the metrics diff as Markdown and JSON, the params diff, the plots."""

    metrics_md: str
    metrics_json: str
    params_md: str
    plots_json: str


def run_diffs(repo: Repo, base: Base, targets: Sequence[str] | None, scratch: str) -> Diffs:
    """The four ``dvc ... diff`` commands, in parallel (a DVC start-up is about a second).

    ``targets`` None: no metrics file to compare (both metrics outputs are then empty); [] every one.
    Image plots are copied into ``scratch``.
    """
    metrics = ["metrics", "diff", base.name, *(["--targets", *targets] if targets else [])]
    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = [
            None if targets is None else pool.submit(repo.dvc_out, *metrics, "--md"),
            None if targets is None else pool.submit(repo.dvc_out, *metrics, "--json"),
            pool.submit(repo.dvc_out, "params", "diff", "--md", base.name),
            pool.submit(repo.dvc_out, "plots", "diff", base.name, "--json", "-o", scratch),
        ]
        return Diffs(*("" if job is None else job.result() for job in jobs))


def full_files(base: Base, diffs: Diffs, scope: str, no_metrics: str) -> dict[str, str]:
    """``metrics-diff.md`` and ``params-diff.md``: the tables as DVC prints them, all rows."""
    title = f"`{base.name}` ({base.sha[:7]}) -> workspace"
    return {
        METRICS_DIFF: full_diff_file(
            f"`dvc metrics diff`: {title}",
            f"dvc metrics diff --md {base.name}",
            scope,
            diffs.metrics_md,
            no_metrics,
        ),
        PARAMS_DIFF: full_diff_file(
            f"`dvc params diff`: {title}",
            f"dvc params diff --md {base.name}",
            "All params files.",
            diffs.params_md,
            "No param changed.",
        ),
    }


def build_report(
    repo: Repo,
    base: Base,
    out: Path,
    *,
    all_metrics: bool = False,
    plots: Sequence[str] = KEY_PLOTS,
    scale: float = 2.0,
    images_url: str | None = None,
    limit: int = COMMENT_LIMIT,
) -> Report:
    """Compare the workspace of ``repo`` with ``base``; write the PNGs into ``out``, return the page
    (fewer than ``limit`` characters) and the full tables it links to.

    Page order: phantom warning, headline, params, plots, metrics summary; when it is too long the
    metrics summary is cut first, then the plots, the params, the headline (:func:`fit`).
    """
    targets = metric_targets(repo, base, all_metrics)
    skip_metrics = not all_metrics and not targets  # an old base and head: no leaderboard file yet
    with TemporaryDirectory(prefix="pr-report-") as scratch:
        diffs = run_diffs(repo, base, None if skip_metrics else targets, scratch)
        rendered = plots_section_data(diffs.plots_json, plots, out, scale, base)
    head_doc, base_doc = read_workspace(repo, HEADLINE), read_at(repo, base.name, HEADLINE)
    changes = metric_changes(diffs.metrics_json, lambda path: metrics_docs(repo, base.name, path))
    top, phantom = _top(repo, base, head_doc)
    scope = _metrics_scope(all_metrics, targets)
    no_metrics = "Nothing to compare." if skip_metrics else "No metric changed."
    metrics_link = _link(METRICS_DIFF, images_url)
    pngs_at = f"the [`pr-report` artifact]({images_url})" if images_url else "the PNGs next to report.md"
    params_lines = diff_section(
        "Params (`dvc params diff`)", diffs.params_md, "All params files.", "No param changed."
    )
    sections = [
        section("top", top),
        section("headline", headline_section(base, base_doc, head_doc), 4, f"`{HEADLINE}` in the workspace"),
        section("params", params_lines, 3, _link(PARAMS_DIFF, images_url)),
        section("plots", plots_section(rendered, images_url), 2, pngs_at),
        section(
            "metrics",
            metrics_summary(changes, scope, metrics_link, _row_count(diffs.metrics_md), no_metrics),
            1,
            metrics_link,
        ),
    ]
    fitted, cut = fit(sections, limit)
    pngs = [png for _, _, png in rendered.rendered]
    return Report(render(fitted), pngs, phantom, full_files(base, diffs, scope, no_metrics), cut)


def _clean(out: Path) -> None:
    """Delete the PNGs of an earlier report in ``out`` (only when its report.md is ours)."""
    report = out / "report.md"
    if report.is_file() and report.read_text(errors="replace").startswith(MARKER):
        for png in out.glob("*.png"):
            png.unlink()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--base", default="main", show_default=True, help="git revision to compare the workspace with")
@click.option(
    "--out",
    default="pr-report",
    show_default=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="folder for report.md and the PNGs",
)
@click.option(
    "--repo",
    "repo_path",
    default=".",
    show_default=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="root of the DVC project",
)
@click.option(
    "--all", "all_metrics", is_flag=True, help="diff every metrics file, not only the leaderboard files"
)
@click.option(
    "--plot",
    "plots",
    multiple=True,
    default=KEY_PLOTS,
    show_default=True,
    help="plot id of dvc.yaml to render (a folder id covers its files); repeat for several",
)
@click.option(
    "--scale", default=2.0, show_default=True, type=click.FloatRange(0.1, 8), help="PNG pixels per Vega px"
)
@click.option(
    "--images-url",
    help="link the PNGs and full tables to this URL (the run's artifact) instead of embedding them (a PR comment)",
)
@click.option("--dvc", "dvc_exe", help="dvc executable [default: PATH, else next to this Python]")
def main(
    base: str,
    out: Path,
    repo_path: Path,
    all_metrics: bool,
    plots: tuple[str, ...],
    scale: float,
    images_url: str | None,
    dvc_exe: str | None,
) -> None:
    """Write <out>/report.md (one GitHub comment): headline AUCs, params diff, key plots and a
    summary of the metrics diff against --base; the full diffs go to metrics-diff.md, params-diff.md."""
    try:
        repo = open_repo(repo_path, dvc_exe)
        rev = resolve_base(repo, base)
        out = out if out.is_absolute() else Path.cwd() / out
        out.mkdir(parents=True, exist_ok=True)
        _clean(out)
        report = build_report(
            repo, rev, out, all_metrics=all_metrics, plots=plots, scale=scale, images_url=images_url
        )
        for name, text in report.files.items():  # the full tables first: report.md links them
            (out / name).write_text(text)
        (out / "report.md").write_text(report.markdown)
    except (PrReportError, ToolNotFoundError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"wrote {out / 'report.md'} ({len(report.markdown):,} characters), {len(report.pngs)} plot(s) "
        f"and the full tables {', '.join(report.files)} against {rev.name}",
        err=True,
    )
    if report.phantom:
        click.echo("WARNING: phantom run (synthetic data): see the top of the report", err=True)
    if report.cut:
        click.echo(
            f"WARNING: cut to fit one GitHub comment ({COMMENT_LIMIT:,} characters): "
            f"{', '.join(report.cut)} (a note in report.md says where all of it is)",
            err=True,
        )


if __name__ == "__main__":
    main()
