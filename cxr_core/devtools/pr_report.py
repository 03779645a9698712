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

This module assembles the page; its parts live beside it: git and DVC access (:mod:`.pr_git`), the
metrics summary (:mod:`.pr_metrics`), the plots (:mod:`.pr_plots`) and the size fitting
(:mod:`.pr_page`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import click

from cxr_core.devtools.pr_git import (
    Base,
    PrReportError,
    Repo,
    exists_at,
    metrics_docs,
    open_repo,
    read_at,
    read_workspace,
    resolve_base,
)
from cxr_core.devtools.pr_metrics import _is_number, metric_changes, metrics_summary
from cxr_core.devtools.pr_page import fit, render, section
from cxr_core.devtools.pr_plots import plots_section, plots_section_data
from cxr_core.devtools.tools import ToolNotFoundError

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
WORKSPACE = "workspace"  # what DVC calls the working tree in its tables


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
