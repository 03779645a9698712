"""``cxr pr-report``: one Markdown page of what a pull request changes in the pipeline's results.

Reviewers of a pipeline change want the numbers, not a link to a notebook: this command compares the
workspace (after ``dvc repro``) with a git revision and writes ``<out>/report.md`` with

* a loud warning at the top when the results come from the synthetic phantom (they then check the
  wiring, not medicine: the README's "What the phantom numbers mean"),
* a headline table: test macro AUC per model, base -> head with the delta, read from
  ``metrics/headline.json`` at the base revision (``git show``) and in the workspace,
* ``dvc metrics diff --md`` (by default only the compact leaderboard files ``metrics/headline.json``
  and ``metrics/compare.json``; ``--all`` for every metrics file) and ``dvc params diff --md``,
* the key plots of ``dvc plots diff --json`` (Vega-Lite specs with their data inlined, both
  revisions overlaid), rendered to PNG next to the Markdown by ``vl-convert-python`` (Rust; no Node
  or browser needed).

DVC and git run as subprocesses, so the tables are exactly what those commands print. Every failure
a user can fix (not a git repository, an unknown base, DVC missing, a malformed headline file) is a
:class:`PrReportError`: one line, exit code 1.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import click

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
#: GitHub refuses comment bodies longer than this
COMMENT_LIMIT = 65536
WORKSPACE = "workspace"  # what DVC calls the working tree in its tables


class PrReportError(CxrError):
    """The report cannot be built: not a repository, an unknown revision, a missing tool or file."""


# --- git and dvc ---------------------------------------------------------------------------------


def _tool(name: str, hint: str, given: str | None = None) -> str:
    """Path of an executable: ``given`` (a name or path), else PATH, else next to this Python.

    The sibling lookup finds ``.venv/bin/dvc`` when the command runs as ``.venv/bin/python -m ...``
    without the venv activated.
    """
    candidates = [given] if given else [name, str(Path(sys.executable).parent / name)]
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    where = f"{given!r} is not an executable" if given else f"not on PATH nor next to {sys.executable}"
    raise PrReportError(f"{name} not found ({where}): {hint}")


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
    git = _tool("git", "install git")
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
    return Repo(path, git, _tool("dvc", "install the project (make install) or activate .venv", dvc))


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
    return sum(1 for line in table.splitlines() if line.startswith("|")) > 2


def metric_targets(repo: Repo, base: Base, all_metrics: bool) -> list[str]:
    """The leaderboard files present in the workspace or at the base; [] means every metrics file."""
    if all_metrics:
        return []
    return [p for p in LEADERBOARD if (repo.root / p).is_file() or exists_at(repo, base.name, p)]


def diff_section(title: str, table: str, scope: str, empty: str) -> list[str]:
    body = table.strip() if _has_rows(table) else empty
    return [f"## {title}", "", scope, "", body, ""]


# --- plots ---------------------------------------------------------------------------------------


@dataclass
class Plots:
    """Rendered plots (plot id, title, PNG name) and what could not be shown."""

    rendered: list[tuple[str, str, str]] = field(default_factory=list)  # (plot id, title, png name)
    notes: list[str] = field(default_factory=list)


def _selected(name: str, selectors: Sequence[str]) -> bool:
    return any(name == s or name.startswith(s.rstrip("/") + "/") for s in selectors)


def _png_name(plot_id: str, taken: set[str]) -> str:
    stem = re.sub(r"\.(csv|tsv|json|ya?ml)$", "", plot_id)
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


def plots_section_data(
    plots_json: str, selectors: Sequence[str], out: Path, scale: float, base: Base
) -> Plots:
    """Render the selected vega plots of ``dvc plots diff --json`` into ``out``.

    The JSON is ``{"data": {<plot id>: [{"type": "vega", "revisions": [...], "content": <spec>}
    | {"type": "image", ...}]}, "errors": [{"name", "rev", "type", "msg", ...}]}`` (DVC 3); only
    ``vega`` entries are rendered (``image`` plots are PNGs already, in git).
    """
    doc = _parse_json(plots_json, "`dvc plots diff --json` output")
    data = doc.get("data") or {}
    result, taken, seen = Plots(), set(), set()
    for plot_id, entries in data.items():
        if not _selected(plot_id, selectors):
            continue
        for entry in entries:
            if entry.get("type") != "vega" or not entry.get("content"):
                continue
            seen.update(s for s in selectors if _selected(plot_id, [s]))
            png = _png_name(plot_id, taken)
            (out / png).write_bytes(render_png(entry["content"], scale, plot_id))
            revs = entry.get("revisions") or []
            if base.name not in revs:
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


# --- the whole report ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    markdown: str
    pngs: list[str]
    phantom: bool


def build_report(
    repo: Repo,
    base: Base,
    out: Path,
    *,
    all_metrics: bool = False,
    plots: Sequence[str] = KEY_PLOTS,
    scale: float = 2.0,
    images_url: str | None = None,
) -> Report:
    """Compare the workspace of ``repo`` with ``base``; write the PNGs into ``out``, return the page."""
    targets = metric_targets(repo, base, all_metrics)
    skip_metrics = not all_metrics and not targets  # an old base and head: no leaderboard file yet
    metrics_args = ["metrics", "diff", "--md", base.name, *(["--targets", *targets] if targets else [])]
    with TemporaryDirectory(prefix="pr-report-") as scratch, ThreadPoolExecutor(max_workers=3) as pool:
        # three DVC start-ups (about a second each) in parallel; image plots are copied into scratch
        metrics = None if skip_metrics else pool.submit(repo.dvc_out, *metrics_args)
        params = pool.submit(repo.dvc_out, "params", "diff", "--md", base.name)
        plots_json = pool.submit(repo.dvc_out, "plots", "diff", base.name, "--json", "-o", scratch)
        head_doc = read_workspace(repo, HEADLINE)
        base_doc = read_at(repo, base.name, HEADLINE)
        rendered = plots_section_data(plots_json.result(), plots, out, scale, base)
        metrics_md, params_md = ("" if metrics is None else metrics.result()), params.result()

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
    lines += headline_section(base, base_doc, head_doc)
    if all_metrics:
        scope = "Every metrics file of dvc.yaml (`--all`)."
    elif targets:
        scope = (
            "Leaderboard files only: " + ", ".join(f"`{t}`" for t in targets) + " (`--all` for every one)."
        )
    else:
        scope = f"Neither `{HEADLINE}` nor `{COMPARE}` exists at either revision: `--all` diffs every metrics file."
    no_change = "Nothing to compare." if skip_metrics else "No metric changed."
    lines += diff_section("Metrics (`dvc metrics diff`)", metrics_md, scope, no_change)
    lines += diff_section("Params (`dvc params diff`)", params_md, "All params files.", "No param changed.")
    lines += plots_section(rendered, images_url)
    return Report("\n".join(lines).rstrip() + "\n", [png for _, _, png in rendered.rendered], bool(reasons))


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
@click.option("--all", "all_metrics", is_flag=True, help="diff every metrics file, not only the leaderboard")
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
@click.option("--images-url", help="link the PNGs to this URL instead of embedding them (a PR comment)")
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
    """Write <out>/report.md: headline AUCs, metrics and params diffs and key plots against --base."""
    try:
        repo = open_repo(repo_path, dvc_exe)
        rev = resolve_base(repo, base)
        out = out if out.is_absolute() else Path.cwd() / out
        out.mkdir(parents=True, exist_ok=True)
        _clean(out)
        report = build_report(
            repo, rev, out, all_metrics=all_metrics, plots=plots, scale=scale, images_url=images_url
        )
    except (PrReportError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    (out / "report.md").write_text(report.markdown)
    click.echo(f"wrote {out / 'report.md'} and {len(report.pngs)} plot(s) against {rev.name}", err=True)
    if report.phantom:
        click.echo("WARNING: phantom run (synthetic data): see the top of the report", err=True)
    if len(report.markdown) > COMMENT_LIMIT:
        click.echo(
            f"WARNING: report.md has {len(report.markdown)} characters; a GitHub comment takes at most "
            f"{COMMENT_LIMIT} (fewer metrics or plots: no --all)",
            err=True,
        )


if __name__ == "__main__":
    main()
