"""The top of ``cxr pr-report``'s page: the phantom warning, the title, and the unpaired headline.

The headline table reads ``metrics/headline.json`` at both sides: each side's own macro AUC and the
head's interval, the numbers ``dvc exp show`` displays. It is not a test of the change (the paired
review below it is), but it is there whenever the files are, even where the predictions are not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cxr_core.devtools.pr_git import WORKSPACE_REV, PrReportError, Repo, Revision
from cxr_core.devtools.pr_metrics import _is_number

HEADLINE = "metrics/headline.json"
MANIFEST = "data/raw/manifest.json"
#: ``data.source`` of the embedded phantom, as written in the raw manifest (and checkpoints)
PHANTOM_SOURCE = "synthetic"
#: first line of every report: marks a folder this command may clean of its own old PNGs
MARKER = "<!-- cxr pr-report -->"


def data_sources(headline: Mapping[str, Any] | None, manifest: Any | None) -> dict[str, str]:
    """What the head's files say the results were computed on: ``{"<file> <key>": source}``.

    The raw manifest (a DVC output, present after ``dvc repro`` or ``dvc pull``) names the data the
    pipeline read; ``metrics/headline.json`` may carry it too.
    """
    found = {}
    for key in ("source", "data_source"):
        if isinstance(headline, Mapping) and isinstance(headline.get(key), str):
            found[f"`{HEADLINE}` {key}"] = headline[key]
    if isinstance(manifest, Mapping) and isinstance(manifest.get("source"), str):
        found[f"`{MANIFEST}` source"] = manifest["source"]
    return found


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


def headline_section(
    base: Revision, base_doc: Any | None, head_doc: Any | None, head: Revision = WORKSPACE_REV
) -> list[str]:
    """Markdown: per model, test macro AUC at the base and at the head, and the change."""
    out = ["## Headline: test macro AUC", ""]
    if head_doc is None and head.is_workspace:
        return [*out, f"`{HEADLINE}` is not in the workspace: run `dvc repro` (or `make repro`) first.", ""]
    if head_doc is None:
        return [*out, f"The head {head.label} has no `{HEADLINE}`.", ""]
    now_at = "(workspace)" if head.is_workspace else f"at {head.name}"
    models = _models(head_doc, f"{HEADLINE} {now_at}")
    before = {} if base_doc is None else _models(base_doc, f"{HEADLINE} at {base.name}")
    head_cell = "head (workspace)" if head.is_workspace else f"head `{head.name}`"
    out += [
        f"| model | base `{base.name}` | {head_cell} | 95% CI (head) | change |",
        "|---|---|---|---|---|",
    ]
    for name in [*models, *(m for m in before if m not in models)]:
        now, then = models.get(name), before.get(name)
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


def top_lines(
    repo: Repo, base: Revision, head: Revision, head_doc: Any | None, manifest: Any | None
) -> tuple[list[str], bool]:
    """The marker, the phantom warning (if any), the title and the data source; and whether phantom."""
    sources = data_sources(head_doc, manifest)
    reasons = [f"{where}: {src}" for where, src in sources.items() if src == PHANTOM_SOURCE]
    if head.is_workspace:
        head_sha = (repo.git_out("rev-parse", "--short", "HEAD") or "").strip() or "no commit"
        head_title = f"workspace (HEAD {head_sha})"
    else:
        head_title = head.label
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
    lines += [f"# Pipeline report: {base.label} -> {head_title}", ""]
    if not sources:
        lines += [f"Data source: unknown (neither `{MANIFEST}` nor `{HEADLINE}` names it).", ""]
    elif not reasons:
        lines += ["Data source: " + "; ".join(f"{where}: `{src}`" for where, src in sources.items()), ""]
    return lines, bool(reasons)
