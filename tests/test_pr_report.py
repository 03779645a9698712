"""`cxr pr-report` on a throw-away git + DVC project with known metrics, params and plots.

Three commits: ``c0`` without any results, ``c1`` and ``c2`` whose leaderboard AUCs, params and
loss curve differ by known amounts; the workspace is ``c2``. The report against ``c1`` must show
exactly those changes (from ``dvc metrics diff`` / ``dvc params diff`` and the headline table) and a
real PNG; against ``c0`` (no headline file there) every model is new. Runs the real git and dvc
(offline: DVC's analytics and update check are off), a few seconds.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from cxr_core.app import pr_report
from cxr_core.app.pr_report import PrReportError, main

pytest.importorskip("vl_convert")

DVC_YAML = {
    "stages": {
        "train": {
            "cmd": "python train.py",
            "params": ["lr", "train.epochs"],
            "metrics": [{"metrics/headline.json": {"cache": False}}],
            "plots": [{"plots/loss.csv": {"cache": False, "x": "step", "y": "loss"}}],
        }
    },
    "plots": [{"loss_curve": {"x": "step", "y": {"plots/loss.csv": "loss"}, "title": "Loss per step"}}],
}
# (lr, epochs, {model: auc}, loss per step) of commits c1 and c2
C1 = (0.01, 3, {"densenet121": 0.70, "swin_small": 0.80}, [0.9, 0.7, 0.6])
C2 = (0.001, 3, {"densenet121": 0.75, "swin_small": 0.78, "efficientnet_b0": 0.66}, [0.8, 0.5, 0.3, 0.2])


def _sh(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _commit(repo: Path, message: str) -> str:
    _sh(repo, "git", "add", "-A")
    _sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false",
        "commit", "-q", "-m", message)  # fmt: skip
    return _sh(repo, "git", "rev-parse", "HEAD").strip()


def _results(repo: Path, lr: float, epochs: int, aucs: dict[str, float], loss: list[float]) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump({"lr": lr, "train": {"epochs": epochs, "batch": 8}}))
    models = {m: {"auc": a, "auc_lo": a - 0.05, "auc_hi": a + 0.05, "seeds": 1} for m, a in aucs.items()}
    best = max(aucs, key=aucs.__getitem__)
    headline = {"best": {"model": best, "seed": 0, "macro_auc": aucs[best]}, "models": models}
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics/headline.json").write_text(json.dumps(headline, indent=2))
    (repo / "plots").mkdir(exist_ok=True)
    (repo / "plots/loss.csv").write_text("step,loss\n" + "".join(f"{i},{v}\n" for i, v in enumerate(loss)))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The project and its commits c0, c1, c2 (workspace = c2, with a phantom raw manifest)."""
    repo = tmp_path_factory.mktemp("prproject")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DVC_NO_ANALYTICS", "1")
        _sh(repo, "git", "init", "-q")
        _sh(repo, "dvc", "init", "-q")
    (repo / ".dvc/config").write_text("[core]\n    analytics = false\n    check_update = false\n")
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (repo / "params.yaml").write_text(yaml.safe_dump({"lr": 0.1, "train": {"epochs": 1, "batch": 8}}))
    commits = {"c0": _commit(repo, "no results yet")}
    _results(repo, *C1)
    commits["c1"] = _commit(repo, "first results")
    _results(repo, *C2)
    commits["c2"] = _commit(repo, "second results")
    return repo, commits


@pytest.fixture(autouse=True)
def _offline_dvc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (
        result.exception
    )
    return result.exit_code, result.output


def _rows(markdown: str) -> list[list[str]]:
    """Every Markdown table row as its stripped cells."""
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("|")
    ]


@pytest.fixture(scope="module")
def report_vs_c1(project, tmp_path_factory) -> tuple[str, Path]:
    repo, commits = project
    manifest = repo / "data/raw/manifest.json"  # a DVC output in the real pipeline: never committed
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"source": "synthetic", "layout": "official"}))
    out = tmp_path_factory.mktemp("report_c1")
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DVC_NO_ANALYTICS", "1")
            code, output = _run(
                "--repo", str(repo), "--base", commits["c1"], "--out", str(out),
                "--plot", "loss_curve", "--plot", "val_loss",
            )  # fmt: skip
    finally:
        manifest.unlink()
    assert code == 0, output
    return (out / "report.md").read_text(), out


def test_headline_table_has_known_deltas(report_vs_c1, project) -> None:
    markdown, _ = report_vs_c1
    rows = {r[0]: r for r in _rows(markdown) if r[0].startswith("`")}
    assert rows["`densenet121`"][1:] == ["0.7000", "0.7500", "0.7000 to 0.8000", "+0.0500"]
    assert rows["`swin_small`"][1:] == ["0.8000", "0.7800", "0.7300 to 0.8300", "-0.0200"]
    assert rows["`efficientnet_b0`"][1:] == ["-", "0.6600", "0.6100 to 0.7100", "new"]
    assert (
        "Best checkpoint: `swin_small` seed 0 (macro AUC 0.7800); at the base: `swin_small` seed 0"
        in markdown
    )
    assert f"({project[1]['c1'][:7]})" in markdown


def test_dvc_metrics_and_params_diffs(report_vs_c1, project) -> None:
    markdown, _ = report_vs_c1
    base = project[1]["c1"]
    metrics = markdown.split("## Metrics")[1].split("## Params")[0]
    params = markdown.split("## Params")[1].split("## Plots")[0]
    assert "Leaderboard files only: `metrics/headline.json`" in metrics
    rows = _rows(metrics)
    assert rows[0] == ["Path", "Metric", base, "workspace", "Change"]  # DVC's table, base first
    assert ["metrics/headline.json", "models.densenet121.auc", "0.7", "0.75", "0.05"] in rows
    assert ["metrics/headline.json", "models.swin_small.auc", "0.8", "0.78", "-0.02"] in rows
    assert ["metrics/headline.json", "models.efficientnet_b0.auc", "-", "0.66", "-"] in rows
    rows = _rows(params)
    assert ["params.yaml", "lr", "0.01", "0.001"] in rows
    assert not any("epochs" in cell for row in rows for cell in row)  # unchanged params are left out


def test_phantom_flagged_at_the_top(report_vs_c1) -> None:
    markdown, _ = report_vs_c1
    head = markdown.splitlines()[:4]
    assert head[0] == pr_report.MARKER
    assert head[1] == "> [!CAUTION]"
    assert "PHANTOM RUN" in head[2] and "`data/raw/manifest.json` source: synthetic" in head[2]


def test_key_plot_rendered_as_png(report_vs_c1) -> None:
    markdown, out = report_vs_c1
    assert "![loss_curve](loss_curve.png)" in markdown
    assert "### Loss per step" in markdown and "no data at the base" not in markdown  # both revisions
    png = (out / "loss_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    image = Image.open(io.BytesIO(png))
    image.verify()
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.width > 300 and image.height > 200
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 20  # lines, axes and text, not a blank canvas
    assert sorted(p.name for p in out.glob("*.png")) == ["loss_curve.png"]  # only the plots asked for
    assert "- `val_loss`: no such plot with data in either revision." in markdown


def test_base_without_headline_file(project, tmp_path) -> None:
    repo, commits = project
    code, output = _run(
        "--repo", str(repo), "--base", commits["c0"], "--out", str(tmp_path), "--plot", "plots/loss.csv",
        "--images-url", "https://example.org/run/1",
    )  # fmt: skip
    assert code == 0, output
    markdown = (tmp_path / "report.md").read_text()
    assert "PHANTOM" not in markdown and "Data source: unknown" in markdown
    assert (
        f"The base `{commits['c0']}` has no `metrics/headline.json`: every model counts as new." in markdown
    )
    rows = {r[0]: r for r in _rows(markdown) if r[0].startswith("`")}
    assert rows["`densenet121`"][1:] == ["-", "0.7500", "0.7000 to 0.8000", "new"]
    assert ["params.yaml", "lr", "0.1", "0.001"] in _rows(markdown)
    # linked, not embedded (a PR comment cannot show relative images); no data at the base is said
    assert "[`pr-report` artifact](https://example.org/run/1)" in markdown and "![" not in markdown
    assert "`plots/loss.csv`: no data at the base" in markdown and "No such file" not in markdown
    assert (tmp_path / "plots-loss.png").stat().st_size > 5_000


def test_unknown_base_is_one_line_exit_1(project, tmp_path) -> None:
    repo, _ = project
    code, output = _run("--repo", str(repo), "--base", "no-such-rev", "--out", str(tmp_path))
    assert code == 1
    assert "unknown base revision 'no-such-rev'" in output and "Traceback" not in output
    assert len(output.strip().splitlines()) == 1
    assert not (tmp_path / "report.md").exists()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("nogit", "is not inside a git repository"),
        ("nodvc", "is not the root of a DVC project"),
        ("missing-dvc", "dvc not found ('/nonexistent/dvc' is not an executable)"),
    ],
)
def test_setup_errors_are_one_line_exit_1(setup, message, project, tmp_path) -> None:
    repo = project[0]
    if setup != "missing-dvc":
        repo = tmp_path / "repo"
        repo.mkdir()
        if setup == "nodvc":
            _sh(repo, "git", "init", "-q")
    code, output = _run("--repo", str(repo), "--out", str(tmp_path / "out"), "--dvc", "/nonexistent/dvc")
    assert code == 1 and message in output and len(output.strip().splitlines()) == 1, output


def test_malformed_headline_names_key() -> None:
    base = pr_report.Base("main", "0" * 40)
    with pytest.raises(
        PrReportError, match=r"metrics/headline.json at main: models.m.auc is 'x', not a number"
    ):
        pr_report.headline_section(base, {"models": {"m": {"auc": "x"}}}, {"models": {"m": {"auc": 0.5}}})
    with pytest.raises(PrReportError, match=r"\(workspace\): no 'models' mapping"):
        pr_report.headline_section(base, None, {"best": {}})


def test_png_names_unique_and_selectors() -> None:
    taken: set[str] = set()
    names = [pr_report._png_name(p, taken) for p in ("plots/roc/a.csv", "plots/roc/a.tsv", "val_loss")]
    assert names == ["plots-roc-a.png", "plots-roc-a-1.png", "val_loss.png"]
    assert pr_report._selected("plots/roc/a.csv", ["plots/roc"])
    assert not pr_report._selected("plots/rocket.csv", ["plots/roc"])
    assert re.fullmatch(r"[\w.-]+", pr_report._png_name("dvc.yaml::x y/z", set()))


def test_render_fetches_nothing_and_names_the_plot() -> None:
    """DVC inlines the data; a spec asking for a URL is refused (offline), naming the plot."""
    spec = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "data": {"url": "https://example.org/loss.csv"},
        "mark": "line",
        "encoding": {"x": {"field": "step", "type": "quantitative"}},
    }
    with pytest.raises(
        PrReportError, match=r"plot 'p': .*External data url not allowed: https://example.org"
    ):
        pr_report.render_png(spec, 1.0, "p")


def test_old_pngs_cleaned_only_from_our_own_folder(tmp_path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for folder, first_line in ((ours, pr_report.MARKER), (theirs, "# notes")):
        folder.mkdir()
        (folder / "report.md").write_text(first_line + "\n")
        (folder / "old.png").write_bytes(b"png")
        pr_report._clean(folder)
    assert not (ours / "old.png").exists() and (theirs / "old.png").exists()
