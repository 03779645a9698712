"""``cxr pr-report``: one Markdown page of what a pull request changes in the pipeline's results.

Reviewers of a pipeline change want the numbers, not a link to a notebook: this command compares the
head (the workspace after ``dvc repro``, or ``--head``: a git revision or ``dvc exp`` name) with a
base (a git revision or ``dvc exp`` name) and writes ``<out>/report.md``, a page that fits one
GitHub comment, with, in this order,

* a loud warning at the top when the results come from the synthetic phantom (they then check the
  wiring, not medicine: the README's "What the phantom numbers mean"),
* a headline table: test macro AUC per model, base -> head with the delta, read from
  ``metrics/headline.json`` at both sides (``git show``, or the working tree),
* the paired review (:mod:`.paired_review`): both sides' test predictions, read through DVC, scored
  on the same patient-bootstrap replicates; per model the change in macro AUC and the headline
  localisation metric with its interval, Holm p and a verdict (better / worse / within noise), or
  one line saying why the base's predictions cannot be had,
* ``dvc params diff --md``: the line that says what the change was,
* the key plots of ``dvc plots diff --json`` (Vega-Lite specs with their data inlined, both
  revisions overlaid; colour = model or column, dash = revision), rendered to PNG next to the
  Markdown by ``vl-convert-python`` (Rust; no Node or browser needed),
* a summary of ``dvc metrics diff`` (by default only the leaderboard files ``metrics/headline.json``
  and ``metrics/compare.json``; ``--all`` for every metrics file): per file how many values changed,
  the values that moved outside the interval the file gives for them, changed text, and the largest
  relative changes of values without an interval. After any retrain every bootstrap interval
  changes (thousands of rows), so the full table goes to ``<out>/metrics-diff.md`` (and the params
  table to ``params-diff.md``, the whole review to ``paired-review.md``), linked from the page.

A page still over :data:`COMMENT_LIMIT` is cut, least important section first, between table rows,
with a note saying what was left out and where all of it is. DVC and git run as subprocesses, so the
tables are exactly what those commands print. Every failure a user can fix (not a git repository, an
unknown base, a malformed headline or predictions file) is a :class:`PrReportError`, and git or DVC
missing a :class:`cxr_core.devtools.tools.ToolNotFoundError`: one line, exit code 1. With
``--fail-on worse`` a headline metric significantly worse than the base exits :data:`EXIT_WORSE`
once the report is written, so CI blocks a real regression and not noise.

This module assembles the page; its parts live beside it: git and DVC access (:mod:`.pr_git`), the
title and headline (:mod:`.pr_headline`), the paired review (:mod:`.paired_review`, its inputs
:mod:`.review_inputs` and Markdown :mod:`.review_section`), the metrics summary (:mod:`.pr_metrics`),
the plots (:mod:`.pr_plots`) and the size fitting (:mod:`.pr_page`).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import click

from cxr_core.devtools.pr_git import (
    WORKSPACE_REV,
    PrReportError,
    Repo,
    Revision,
    _parse_json,
    exists_at,
    metrics_docs,
    open_repo,
    read_at,
    resolve_rev,
)
from cxr_core.devtools.pr_headline import HEADLINE, MANIFEST, MARKER, headline_section, top_lines
from cxr_core.devtools.pr_metrics import metric_changes, metrics_summary
from cxr_core.devtools.pr_page import fit, render, section
from cxr_core.devtools.pr_plots import plots_section, plots_section_data
from cxr_core.devtools.tools import ToolNotFoundError

COMPARE = "metrics/compare.json"
#: the compact leaderboard files ``dvc metrics diff`` is limited to unless ``--all`` is given
LEADERBOARD = (HEADLINE, COMPARE)
#: plot ids (from dvc.yaml) rendered by default; a directory id covers every file under it
KEY_PLOTS = ("val_loss", "plots/iou_vs_threshold")
#: GitHub refuses comment bodies longer than this: report.md is kept below it
COMMENT_LIMIT = 65536
#: the full tables, next to report.md (which links them)
METRICS_DIFF = "metrics-diff.md"
PARAMS_DIFF = "params-diff.md"
#: the whole paired review, uncut
REVIEW_FILE = "paired-review.md"
#: exit code of ``--fail-on worse`` when a headline metric is significantly worse than the base
EXIT_WORSE = 3


# --- the report's parts --------------------------------------------------------------------------


def _has_rows(table: str) -> bool:
    """Whether a Markdown table from DVC has a row below its header and separator."""
    return _row_count(table) > 0


def _row_count(table: str) -> int:
    """Rows of a Markdown table below its header and separator."""
    return max(0, sum(1 for line in table.splitlines() if line.startswith("|")) - 2)


def metric_targets(repo: Repo, base: Revision, head: Revision, all_metrics: bool) -> list[str]:
    """The leaderboard files present at the head or at the base; [] means every metrics file."""
    if all_metrics:
        return []
    return [p for p in LEADERBOARD if exists_at(repo, head, p) or exists_at(repo, base, p)]


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
    review: Any = None  # the paired review (paired_review.Review), None when not asked for


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


def _revs(base: Revision, head: Revision) -> list[str]:
    """``dvc ... diff`` revisions: the base, then the head unless it is the workspace (DVC's default)."""
    return [base.dvc] if head.is_workspace else [base.dvc, head.dvc]


def run_diffs(
    repo: Repo, base: Revision, targets: Sequence[str] | None, scratch: str, head: Revision = WORKSPACE_REV
) -> Diffs:
    """The four ``dvc ... diff`` commands, in parallel (a DVC start-up is about a second).

    ``targets`` None: no metrics file to compare (both metrics outputs are then empty); [] every one.
    Image plots are copied into ``scratch``; the plots get the head first, so it is drawn solid.
    """
    revs = _revs(base, head)
    metrics = ["metrics", "diff", *revs, *(["--targets", *targets] if targets else [])]
    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = [
            None if targets is None else pool.submit(repo.dvc_out, *metrics, "--md"),
            None if targets is None else pool.submit(repo.dvc_out, *metrics, "--json"),
            pool.submit(repo.dvc_out, "params", "diff", "--md", *revs),
            pool.submit(repo.dvc_out, "plots", "diff", *revs[::-1], "--json", "-o", scratch),
        ]
        return Diffs(*("" if job is None else job.result() for job in jobs))


def full_files(
    base: Revision, diffs: Diffs, scope: str, no_metrics: str, head: Revision = WORKSPACE_REV
) -> dict[str, str]:
    """``metrics-diff.md`` and ``params-diff.md``: the tables as DVC prints them, all rows."""
    title = f"{base.label} -> {head.label}"
    revs = " ".join(_revs(base, head))
    return {
        METRICS_DIFF: full_diff_file(
            f"`dvc metrics diff`: {title}",
            f"dvc metrics diff --md {revs}",
            scope,
            diffs.metrics_md,
            no_metrics,
        ),
        PARAMS_DIFF: full_diff_file(
            f"`dvc params diff`: {title}",
            f"dvc params diff --md {revs}",
            "All params files.",
            diffs.params_md,
            "No param changed.",
        ),
    }


def run_review(repo: Repo, base: Revision, head: Revision, scratch: Path) -> tuple[Any, Any | None]:
    """The paired review, and the head's raw manifest: a DVC output, read the way the review reads
    the head's predictions (from the working tree, or through DVC at ``--head``; None if absent).

    Imported here, not at the top: ``cxr`` loads this module for every command, and the review
    needs numpy, pandas and scikit-learn.
    """
    from cxr_core.devtools.paired_review import review
    from cxr_core.devtools.review_inputs import Side, Unavailable

    base_side, head_side = Side(repo, base, "base", scratch), Side(repo, head, "head", scratch)
    try:
        manifest_file = head_side.local(MANIFEST)
    except Unavailable:
        manifest = None
    else:
        where = str(manifest_file) if head.is_workspace else f"{MANIFEST} at {head.name}"
        manifest = _parse_json(manifest_file.read_text(), where)
    return review(base_side, head_side), manifest


def build_report(
    repo: Repo,
    base: Revision,
    out: Path,
    *,
    head: Revision = WORKSPACE_REV,
    all_metrics: bool = False,
    plots: Sequence[str] = KEY_PLOTS,
    scale: float = 2.0,
    images_url: str | None = None,
    limit: int = COMMENT_LIMIT,
) -> Report:
    """Compare ``head`` (the workspace of ``repo`` by default) with ``base``; write the PNGs into
    ``out``, return the page (fewer than ``limit`` characters) and the full tables it links to.

    Page order: phantom warning, headline, paired review, params, plots, metrics summary; when it is
    too long the metrics summary is cut first, then the plots, the params, the headline, the paired
    review (:func:`fit`).
    """
    from cxr_core.devtools.review_section import review_lines, review_page

    targets = metric_targets(repo, base, head, all_metrics)
    skip_metrics = not all_metrics and not targets  # an old base and head: no leaderboard file yet
    with TemporaryDirectory(prefix="pr-report-") as scratch:
        diffs = run_diffs(repo, base, None if skip_metrics else targets, scratch, head)
        rendered = plots_section_data(diffs.plots_json, plots, out, scale, base, head)
        review, manifest = run_review(repo, base, head, Path(scratch))
    head_doc, base_doc = read_at(repo, head, HEADLINE), read_at(repo, base, HEADLINE)
    changes = metric_changes(diffs.metrics_json, lambda path: metrics_docs(repo, base, head, path))
    top, phantom = top_lines(repo, base, head, head_doc, manifest)
    scope = _metrics_scope(all_metrics, targets)
    no_metrics = "Nothing to compare." if skip_metrics else "No metric changed."
    metrics_link = _link(METRICS_DIFF, images_url)
    pngs_at = f"the [`pr-report` artifact]({images_url})" if images_url else "the PNGs next to report.md"
    params_lines = diff_section(
        "Params (`dvc params diff`)", diffs.params_md, "All params files.", "No param changed."
    )
    headline_at = "in the workspace" if head.is_workspace else f"at {head.name}"
    sections = [
        section("top", top),
        section(
            "headline", headline_section(base, base_doc, head_doc, head), 4, f"`{HEADLINE}` {headline_at}"
        ),
        section("paired review", review_lines(review, head), 5, _link(REVIEW_FILE, images_url)),
        section("params", params_lines, 3, _link(PARAMS_DIFF, images_url)),
        section("plots", plots_section(rendered, images_url, head), 2, pngs_at),
        section(
            "metrics",
            metrics_summary(changes, scope, metrics_link, _row_count(diffs.metrics_md), no_metrics),
            1,
            metrics_link,
        ),
    ]
    fitted, cut = fit(sections, limit)
    pngs = [png for _, _, png in rendered.rendered]
    files = {
        **full_files(base, diffs, scope, no_metrics, head),
        REVIEW_FILE: review_page(review, base, head, MARKER),
    }
    return Report(render(fitted), pngs, phantom, files, cut, review)


def _clean(out: Path) -> None:
    """Delete the PNGs of an earlier report in ``out`` (only when its report.md is ours)."""
    report = out / "report.md"
    if report.is_file() and report.read_text(errors="replace").startswith(MARKER):
        for png in out.glob("*.png"):
            png.unlink()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--base", default="main", show_default=True, help="git revision or `dvc exp` name to compare with"
)
@click.option(
    "--head",
    help="git revision or `dvc exp` name compared with --base  [default: the workspace]",
)
@click.option(
    "--fail-on",
    type=click.Choice(["never", "worse"]),
    default="never",
    show_default=True,
    help=f"worse: exit {EXIT_WORSE} when the paired review finds a headline metric significantly worse",
)
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
    head: str | None,
    fail_on: str,
    out: Path,
    repo_path: Path,
    all_metrics: bool,
    plots: tuple[str, ...],
    scale: float,
    images_url: str | None,
    dvc_exe: str | None,
) -> None:
    """Write <out>/report.md (one GitHub comment): headline AUCs, the paired review of --head (the
    workspace) against --base, params diff, key plots and a summary of the metrics diff; the full
    review and diffs go to paired-review.md, metrics-diff.md, params-diff.md."""
    try:
        repo = open_repo(repo_path, dvc_exe)
        rev = resolve_rev(repo, base, "base")
        head_rev = WORKSPACE_REV if head in (None, WORKSPACE_REV.name) else resolve_rev(repo, head, "head")
        out = out if out.is_absolute() else Path.cwd() / out
        out.mkdir(parents=True, exist_ok=True)
        _clean(out)
        report = build_report(
            repo,
            rev,
            out,
            head=head_rev,
            all_metrics=all_metrics,
            plots=plots,
            scale=scale,
            images_url=images_url,
        )
        for name, text in report.files.items():  # the full tables first: report.md links them
            (out / name).write_text(text)
        (out / "report.md").write_text(report.markdown)
    except (PrReportError, ToolNotFoundError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"wrote {out / 'report.md'} ({len(report.markdown):,} characters), {len(report.pngs)} plot(s) "
        f"and the full tables {', '.join(report.files)}: {head_rev.name} against {rev.name}",
        err=True,
    )
    _review_verdicts(report.review, fail_on)
    if report.phantom:
        click.echo("WARNING: phantom run (synthetic data): see the top of the report", err=True)
    if report.cut:
        click.echo(
            f"WARNING: cut to fit one GitHub comment ({COMMENT_LIMIT:,} characters): "
            f"{', '.join(report.cut)} (a note in report.md says where all of it is)",
            err=True,
        )


def _review_verdicts(review: Any, fail_on: str) -> None:
    """Say on stderr what the paired review found; exit :data:`EXIT_WORSE` on a regression if asked."""
    if review is None or review.unavailable:
        reason = review.unavailable if review is not None else "not run"
        click.echo(f"WARNING: no paired review ({reason}): --fail-on cannot judge this change", err=True)
        return
    for model, change in review.headline_changes():
        click.echo(f"{model}: {change.metric} {change.verdict} ({change.diff:+.4f})", err=True)
    worse = review.regressions()
    if worse and fail_on == "worse":
        listed = "; ".join(f"{model} {c.metric} {c.diff:+.4f} (Holm p {c.p_holm:.3g})" for model, c in worse)
        click.echo(f"FAIL (--fail-on worse): significantly worse than the base: {listed}", err=True)
        raise SystemExit(EXIT_WORSE)


if __name__ == "__main__":
    main()
