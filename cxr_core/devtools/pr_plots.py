"""The key plots of ``cxr pr-report``: ``dvc plots diff --json`` rendered to PNG, series by colour.

DVC hands over Vega-Lite specs with both revisions' rows inlined; here the series (model, column)
get a colour and a short name, the revision a dash, a folder plot's file its title, and
``vl-convert-python`` (Rust; no Node or browser) turns each into a PNG next to report.md.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr_core.devtools.pr_git import WORKSPACE_REV, PrReportError, Revision, _parse_json


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
    plots_json: str,
    selectors: Sequence[str],
    out: Path,
    scale: float,
    base: Revision,
    head: Revision = WORKSPACE_REV,
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
        if base.dvc not in (entry.get("revisions") or []):
            only = "workspace" if head.is_workspace else "head"
            result.notes.append(f"`{plot_id}`: no data at the base `{base.name}`, {only} only.")
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


def plots_section(plots: Plots, images_url: str | None, head: Revision = WORKSPACE_REV) -> list[str]:
    out = ["## Plots", ""]
    if images_url and plots.rendered:
        out += [f"The PNGs are in the [`pr-report` artifact]({images_url}) of this workflow run.", ""]
    if plots.rendered:
        solid = "workspace" if head.is_workspace else "head"
        out += [f"Colour: model (or column); solid: {solid}, dashed: base.", ""]
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
