"""`cxr pr-report` on a throw-away git + DVC project with known metrics, params and plots.

Three commits: ``c0`` without any results, ``c1`` and ``c2`` whose leaderboard AUCs, params, loss
curves and ``metrics/compare.json`` differ by known amounts; the workspace is ``c2``. Between c1 and
c2 every one of the 2,310 numbers of compare.json changes, as after any retrain, three of them by
more than their interval: the report against ``c1`` must still fit one GitHub comment, lead with the
headline and params, and summarise the metrics diff whose full table goes to ``metrics-diff.md``.
Against ``c0`` (no headline file there) every model is new. Runs the real git and dvc (offline:
DVC's analytics and update check are off), a few seconds.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from cxr_core.devtools import pr_git, pr_headline, pr_metrics, pr_page, pr_plots, pr_report
from cxr_core.devtools.pr_report import PrReportError, main

pytest.importorskip("vl_convert")

DVC_YAML = {
    "stages": {
        "train": {
            "cmd": "python train.py",
            "params": ["lr", "train.epochs"],
            "metrics": [
                {"metrics/headline.json": {"cache": False}},
                {"metrics/compare.json": {"cache": False}},
            ],
            "plots": [{"plots/loss.csv": {"cache": False, "x": "step", "y": "loss"}}],
        }
    },
    "plots": [
        {"loss_curve": {"x": "step", "y": {"plots/loss.csv": "loss"}, "title": "Loss per step"}},
        {
            "val_loss": {
                "x": "step",
                "y": {f"train/{m}/seed0/val_loss.tsv": "val_loss" for m in ("densenet121", "swin_small")},
                "title": "Validation loss",
            }
        },
        {"plots/iou": {"x": "threshold", "y": ["GradCAM", "RandomCAM"], "title": "IoU vs threshold"}},
    ],
}
# (lr, epochs, {model: auc}, loss per step) of commits c1 and c2
C1 = (0.01, 3, {"densenet121": 0.70, "swin_small": 0.80}, [0.9, 0.7, 0.6])
C2 = (0.001, 3, {"densenet121": 0.75, "swin_small": 0.78, "efficientnet_b0": 0.66}, [0.8, 0.5, 0.3, 0.2])
SIX = ("densenet121", "densenet169", "efficientnet_b0", "efficientnet_b1", "swin_small", "swin_base")
CLASSES = tuple(f"class{i:02d}" for i in range(14))
STATS = ("p", "p_holm", "p_holm_classes", "z", "variance", "se", "auc_a", "auc_b", "power")  # and n_valid
# the paired AUC differences of c2 moved outside c1's interval (the diff's ci is +-0.05), by these amounts
OUTSIDE = {
    ("densenet121_vs_swin_small", "class03"): 0.2,
    ("densenet169_vs_swin_base", "class07"): -0.15,
    ("efficientnet_b0_vs_efficientnet_b1", "class11"): 0.12,
}


def compare_doc(retrained: bool) -> dict:
    """A compare.json shaped like the real one: per model pair and class a paired difference with
    its ``ci`` (the interval) and ten other numbers. ``retrained`` moves every number a little
    (inside the interval) and the :data:`OUTSIDE` differences by more than it."""
    rng, noise = random.Random(0), random.Random(1)
    pairs = {}
    for a, b in itertools.combinations(SIX, 2):
        per_class = {}
        for cls in CLASSES:
            diff = rng.uniform(-0.1, 0.1)
            stats = {k: rng.random() for k in STATS}
            stats["n_valid"] = rng.randint(900, 999)
            if retrained:
                stats = {
                    k: v + (1 if k == "n_valid" else noise.uniform(0.001, 0.02)) for k, v in stats.items()
                }
                moved = OUTSIDE.get((f"{a}_vs_{b}", cls), noise.uniform(-0.03, 0.03))
                per_class[cls] = {
                    "diff": diff + moved,
                    "ci": [diff + moved - 0.05, diff + moved + 0.05],
                    **stats,
                }
            else:
                per_class[cls] = {"diff": diff, "ci": [diff - 0.05, diff + 0.05], **stats}
        pairs[f"{a}_vs_{b}"] = {"a": a, "b": b, "per_class": per_class}
    return {"models": list(SIX), "n_boot": 1000, "auc": {"pairs": pairs}}


def flat_numbers(doc: dict, prefix: str = "") -> dict[str, float]:
    """Every number of a nested dict under DVC's dotted name (lists left out, as DVC does)."""
    out = {}
    for key, value in doc.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flat_numbers(value, name))
        elif isinstance(value, int | float):
            out[name] = value
    return out


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


def _results(
    repo: Path, lr: float, epochs: int, aucs: dict[str, float], loss: list[float], *, retrained: bool
) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump({"lr": lr, "train": {"epochs": epochs, "batch": 8}}))
    models = {m: {"auc": a, "auc_lo": a - 0.05, "auc_hi": a + 0.05, "seeds": 1} for m, a in aucs.items()}
    best = max(aucs, key=aucs.__getitem__)
    headline = {"best": {"model": best, "seed": 0, "macro_auc": aucs[best]}, "models": models}
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics/headline.json").write_text(json.dumps(headline, indent=2))
    (repo / "metrics/compare.json").write_text(json.dumps(compare_doc(retrained), indent=2))
    (repo / "plots/iou").mkdir(parents=True, exist_ok=True)
    (repo / "plots/loss.csv").write_text("step,loss\n" + "".join(f"{i},{v}\n" for i, v in enumerate(loss)))
    for k, model in enumerate(("densenet121", "swin_small")):
        curve = repo / f"train/{model}/seed0/val_loss.tsv"
        curve.parent.mkdir(parents=True, exist_ok=True)
        curve.write_text("step\tval_loss\n" + "".join(f"{i}\t{v + k}\n" for i, v in enumerate(loss)))
        rows = "".join(f"{t / 10},{v / 2},{v / 4}\n" for t, v in enumerate(loss, start=1))
        (repo / f"plots/iou/{model}.csv").write_text("threshold,GradCAM,RandomCAM\n" + rows)


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
    _results(repo, *C1, retrained=False)
    commits["c1"] = _commit(repo, "first results")
    _results(repo, *C2, retrained=True)
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
def report_vs_c1(project, tmp_path_factory) -> tuple[str, Path, dict[str, dict]]:
    """report.md against c1, its folder, and the Vega-Lite spec each plot was rendered from."""
    repo, commits = project
    manifest = repo / "data/raw/manifest.json"  # a DVC output in the real pipeline: never committed
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"source": "synthetic", "layout": "official"}))
    out = tmp_path_factory.mktemp("report_c1")
    specs: dict[str, dict] = {}
    render = pr_plots.render_png

    def recording(spec, scale, plot_id):
        specs[plot_id] = spec
        return render(spec, scale, plot_id)

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DVC_NO_ANALYTICS", "1")
            mp.setattr(pr_plots, "render_png", recording)
            code, output = _run(
                "--repo", str(repo), "--base", commits["c1"], "--out", str(out),
                "--plot", "loss_curve", "--plot", "val_loss", "--plot", "plots/iou", "--plot", "no_such_plot",
            )  # fmt: skip
    finally:
        manifest.unlink()
    assert code == 0, output
    return (out / "report.md").read_text(), out, specs


def _section(markdown: str, title: str) -> str:
    """The text of the ``## <title>...`` section, up to the next ``## `` heading."""
    return markdown.split(f"\n## {title}")[1].split("\n## ")[0]


def test_headline_table_has_known_deltas(report_vs_c1, project) -> None:
    markdown, _, _ = report_vs_c1
    rows = {r[0]: r for r in _rows(_section(markdown, "Headline"))}
    assert rows["`densenet121`"][1:] == ["0.7000", "0.7500", "0.7000 to 0.8000", "+0.0500"]
    assert rows["`swin_small`"][1:] == ["0.8000", "0.7800", "0.7300 to 0.8300", "-0.0200"]
    assert rows["`efficientnet_b0`"][1:] == ["-", "0.6600", "0.6100 to 0.7100", "new"]
    assert (
        "Best checkpoint: `swin_small` seed 0 (macro AUC 0.7800); at the base: `swin_small` seed 0"
        in markdown
    )
    assert f"({project[1]['c1'][:7]})" in markdown


def test_large_metrics_diff_fits_one_comment(report_vs_c1, project) -> None:
    """A retrain changes thousands of values: the page still fits, headline and params first."""
    markdown, out, _ = report_vs_c1
    base = project[1]["c1"]
    full = (out / pr_report.METRICS_DIFF).read_text()
    assert len(full) > 4 * pr_report.COMMENT_LIMIT  # what the page used to inline
    assert len(markdown) < pr_report.COMMENT_LIMIT
    assert "Cut here" not in markdown  # the summary alone fits: nothing had to be cut
    titles = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert [t.split()[1] for t in titles] == ["Headline:", "Paired", "Params", "Plots", "Metrics"]
    assert ["params.yaml", "lr", "0.01", "0.001"] in _rows(_section(markdown, "Params"))
    assert "| `densenet121` | 0.7000 | 0.7500 |" in _section(markdown, "Headline")
    # the full table: every changed number, as DVC prints it
    old, new = flat_numbers(compare_doc(False)), flat_numbers(compare_doc(True))
    changed = {k for k in old if old[k] != new[k]}
    assert len(changed) == 15 * 14 * 11
    rows = _rows(full)
    assert rows[0] == ["Path", "Metric", base, "workspace", "Change"]
    assert {r[1] for r in rows if r[0] == "metrics/compare.json"} == changed
    assert ["metrics/headline.json", "models.densenet121.auc", "0.7", "0.75", "0.05"] in rows
    assert f"({len(rows) - 2:,} rows)" in full and full.startswith(pr_report.MARKER)


def test_metrics_summary_counts_and_outside_interval(report_vs_c1) -> None:
    """Per file: counts that add up, and the values that left their interval, largest first."""
    markdown, _, _ = report_vs_c1
    metrics = _section(markdown, "Metrics")
    assert "Leaderboard files only: `metrics/headline.json`, `metrics/compare.json`" in metrics
    assert "[`metrics-diff.md`](metrics-diff.md)" in metrics
    rows = {r[0]: r[1:] for r in _rows(metrics) if r[0].startswith("`metrics/")}
    # changed, new, removed, with an interval (the 210 diffs), outside it
    assert rows["`metrics/compare.json`"] == ["2,310", "0", "0", "210", "3"]
    # best.macro_auc and auc, auc_lo, auc_hi of two models changed; efficientnet_b0's four are new;
    # the two changed AUCs have an interval (auc_lo/auc_hi)
    assert rows["`metrics/headline.json`"][:4] == ["7", "4", "0", "2"]
    table = metrics.split("### `metrics/compare.json`")[1].split("### ")[0]
    outside = [r for r in _rows(table) if "**outside**" in r[-1]]
    expected = sorted(OUTSIDE.items(), key=lambda kv: -abs(kv[1]))
    assert [r[0] for r in outside] == [f"`auc.pairs.{p}.per_class.{c}.diff`" for (p, c), _ in expected]
    assert [r[3] for r in outside] == [f"{v:+.4g}" for _, v in expected]
    assert all(r[-1].startswith("**outside** base [") for r in outside)
    assert len(_rows(table)) == 2 + 3 + pr_metrics.LARGEST_ROWS  # header, outside, largest others
    assert "Shown: the 3 largest of the 3 changes outside their interval, then the 5 largest" in table


def test_phantom_flagged_at_the_top(report_vs_c1) -> None:
    markdown, _, _ = report_vs_c1
    head = markdown.splitlines()[:4]
    assert head[0] == pr_report.MARKER
    assert head[1] == "> [!CAUTION]"
    assert "PHANTOM RUN" in head[2] and "`data/raw/manifest.json` source: synthetic" in head[2]


def test_key_plot_rendered_as_png(report_vs_c1) -> None:
    markdown, out, _ = report_vs_c1
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
    assert sorted(p.name for p in out.glob("*.png")) == [  # only the plots asked for
        "loss_curve.png", "plots-iou-densenet121.png", "plots-iou-swin_small.png", "val_loss.png",
    ]  # fmt: skip
    assert "- `no_such_plot`: no such plot with data in either revision." in markdown


def _pixels_near(image: Image.Image, rgb: tuple[int, int, int], tolerance: int = 40) -> int:
    return sum(
        n
        for n, c in image.getcolors(maxcolors=1 << 22)
        if sum(abs(a - b) for a, b in zip(c, rgb, strict=True)) < tolerance
    )


def test_models_told_apart_by_colour(report_vs_c1, project) -> None:
    """val_loss: one colour per model named in the legend, the revision by dash (DVC: the reverse)."""
    _, out, specs = report_vs_c1
    spec = specs["val_loss"]
    colour = spec["encoding"]["color"]
    assert colour["scale"]["domain"] == ["densenet121", "swin_small"]  # not the files' paths
    assert colour["scale"]["scheme"] == "tableau10" and colour["legend"]["labelLimit"] == 0
    assert {row["filename"] for row in spec["data"]["values"]} == {"densenet121", "swin_small"}
    dash = spec["encoding"]["strokeDash"]
    assert dash["field"] == "rev" and dash["scale"]["domain"] == ["workspace", project[1]["c1"]]
    layers = json.dumps(spec["layer"])
    assert '"field": "rev", "type": "nominal"' not in layers  # no layer colours by revision any more
    image = Image.open(out / "val_loss.png").convert("RGB")
    blue, orange = (0x4C, 0x78, 0xA8), (0xF5, 0x85, 0x18)  # tableau10's first two
    assert _pixels_near(image, blue) > 200 and _pixels_near(image, orange) > 200


def test_folder_plots_name_their_model(report_vs_c1) -> None:
    markdown, _, specs = report_vs_c1
    for model in ("densenet121", "swin_small"):
        assert specs[f"plots/iou/{model}.csv"]["title"]["text"] == f"{model}: IoU vs threshold"
        assert f"![plots/iou/{model}.csv](plots-iou-{model}.png)" in markdown
    assert specs["loss_curve"]["title"]["text"] == "Loss per step"  # one file: nothing to tell apart
    assert markdown.count("### IoU vs threshold") == 1


def test_fit_cuts_least_important_first_with_a_note(report_vs_c1) -> None:
    """Over the limit, the metrics summary goes first, then the plots; tables end on whole rows."""
    markdown, _, _ = report_vs_c1
    top, *parts = re.split(r"\n(?=## )", markdown)
    names = [part.split()[1].rstrip(":") for part in parts]
    assert names == ["Headline", "Paired", "Params", "Plots", "Metrics"]
    ranks = {"Headline": 4, "Paired": 5, "Params": 3, "Plots": 2, "Metrics": 1}
    sections = [pr_page.section("top", top.splitlines())] + [
        pr_page.section(name, part.splitlines(), ranks[name], f"`{name}.md`")
        for name, part in zip(names, parts, strict=True)
    ]
    assert pr_page.render(sections) == markdown  # split and joined again: nothing lost
    whole = set(markdown.splitlines())
    for limit, cut in (
        (len(markdown) - 500, ["Metrics"]),
        (len(markdown) - len(parts[4]) - 100, ["Metrics", "Plots"]),
    ):
        fitted, cut_names = pr_page.fit(sections, limit)
        page = pr_page.render(fitted)
        assert len(page) < limit and cut_names == cut
        for kept in ("Headline", "Paired", "Params"):
            assert _section(page, kept) == _section(markdown, kept)
        assert page.count("**Cut here to fit one GitHub comment") == len(cut)
        for name in cut:
            note = _section(page, name).strip().splitlines()[-1]
            assert note.startswith(f"**Cut here to fit one GitHub comment ({limit:,} characters): ")
            assert note.endswith(f"left out.** All of it: `{name}.md`.")
        assert all(line in whole for line in page.splitlines() if line.startswith("|"))  # whole rows
    fitted, _ = pr_page.fit(sections, len(markdown) - 500)
    metrics = _section(pr_page.render(fitted), "Metrics")
    assert "| metric | base | head |" in metrics  # cut between rows, not the whole section
    assert re.search(
        r"\*\*Cut here.*: \d+ more table rows and \d+ more paragraphs or tables left out", metrics
    )


def test_interval_spellings_and_outside() -> None:
    """The project's three ways of writing an interval, and which changes leave it."""
    doc = {
        "models": {"m": {"auc": 0.8, "auc_lo": 0.75, "auc_hi": 0.85}},  # headline.json
        "macro_auc": 0.8, "macro_auc_ci": [0.7, 0.9], "auc": {"A": 0.6}, "auc_ci": {"A": [0.5, 0.7]},
        "pair": {"diff": 0.02, "ci": [-0.01, 0.05], "p": 0.3},  # compare.json
        "ci": 0.95, "n": [1, 2],
    }  # fmt: skip
    flat = pr_metrics._flat(doc)
    assert "n" not in flat and "ci" in flat  # lists left out, as DVC does
    found = {k: pr_metrics._interval(place) for k, place in flat.items()}
    assert found["models.m.auc"] == (0.75, 0.85) and found["macro_auc"] == (0.7, 0.9)
    assert found["auc.A"] == (0.5, 0.7) and found["pair.diff"] == (-0.01, 0.05)
    assert found["pair.p"] is None and found["ci"] is None and found["models.m.auc_lo"] is None
    change = pr_metrics.Change
    assert change("pair.diff", 0.02, 0.06, (-0.01, 0.05), "base").outside
    assert not change("pair.diff", 0.02, 0.04, (-0.01, 0.05), "base").outside
    assert change("x", 0.05, 0.2, (0.1, 0.3), "head").outside  # the base value outside the head's
    assert not change("x", 0.15, 0.2, (0.1, 0.3), "head").outside
    assert not change("x", "a", "b", (0.1, 0.3), "base").outside  # text has no interval


def test_short_labels_name_the_model() -> None:
    paths = [f"{m}/seed0/plots/metrics/val_loss.tsv" for m in ("densenet121", "swin_base")]
    assert list(pr_plots.short_labels(paths).values()) == ["densenet121", "swin_base"]
    seeds = ["densenet121/seed0/val_loss.tsv", "densenet121/seed1/val_loss.tsv", "swin/seed0/val_loss.tsv"]
    assert list(pr_plots.short_labels(seeds).values()) == [
        "densenet121/seed0",
        "densenet121/seed1",
        "swin/seed0",
    ]
    assert list(pr_plots.short_labels(["a/x.csv", "a/x.tsv"]).values()) == ["a/x.csv", "a/x.tsv"]  # collide
    ids = [f"plots/roc/{m}/seed0.csv" for m in ("densenet121", "swin_base")] + ["val_loss"]
    assert pr_plots.file_names(ids, ["plots/roc", "val_loss"]) == {
        ids[0]: "densenet121",
        ids[1]: "swin_base",
    }


def test_head_revision_instead_of_the_workspace(project, tmp_path) -> None:
    """``--head c2`` against ``c1`` reads c2 from git and DVC, not the working tree (here a changed
    params.yaml and headline file that must not show), and DVC compares the two revisions."""
    repo, commits = project
    params, headline = repo / "params.yaml", repo / "metrics/headline.json"
    saved = params.read_text(), headline.read_text()
    params.write_text(yaml.safe_dump({"lr": 0.5, "train": {"epochs": 9, "batch": 8}}))
    headline.write_text(json.dumps({"models": {"densenet121": {"auc": 0.99}}}))
    try:
        code, output = _run(
            "--repo", str(repo), "--base", commits["c1"], "--head", commits["c2"], "--out", str(tmp_path),
            "--plot", "loss_curve",
        )  # fmt: skip
    finally:
        params.write_text(saved[0])
        headline.write_text(saved[1])
    assert code == 0, output
    markdown = (tmp_path / "report.md").read_text()
    title = next(line for line in markdown.splitlines() if line.startswith("# "))
    assert title.endswith(f"({commits['c1'][:7]}) -> `{commits['c2']}` ({commits['c2'][:7]})")
    rows = {r[0]: r for r in _rows(_section(markdown, "Headline"))}
    assert rows["`densenet121`"][1:] == ["0.7000", "0.7500", "0.7000 to 0.8000", "+0.0500"]
    assert ["params.yaml", "lr", "0.01", "0.001"] in _rows(_section(markdown, "Params"))
    assert "0.5" not in _section(markdown, "Params")  # the working tree's edit is not the head
    full = _rows((tmp_path / pr_report.METRICS_DIFF).read_text())
    assert full[0] == ["Path", "Metric", commits["c1"], commits["c2"], "Change"]
    assert "solid: head, dashed: base" in markdown


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
    rows = {r[0]: r for r in _rows(_section(markdown, "Headline"))}
    assert rows["`densenet121`"][1:] == ["-", "0.7500", "0.7000 to 0.8000", "new"]
    assert ["params.yaml", "lr", "0.1", "0.001"] in _rows(markdown)
    # every value of compare.json is new: counted, the rows only in the full table (its 2,310 numbers,
    # n_boot and the 30 model names of the pairs)
    metrics = _section(markdown, "Metrics")
    rows = {r[0]: r[1:] for r in _rows(metrics)}
    assert rows["`metrics/compare.json`"] == ["0", "2,341", "0", "0", "0"]
    assert "### `metrics/compare.json`\n\nOnly new or removed values: see the full table." in metrics
    assert len(_rows((tmp_path / "metrics-diff.md").read_text())) == 2 + 2_341 + 15  # headline: 15 values
    # linked, not embedded (a PR comment cannot show relative images or files); no data at the base is said
    assert "[`pr-report` artifact](https://example.org/run/1)" in markdown and "![" not in markdown
    assert "[`metrics-diff.md` in the `pr-report` artifact](https://example.org/run/1)" in metrics
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
    base = pr_git.Revision("main", "0" * 40)
    with pytest.raises(
        PrReportError, match=r"metrics/headline.json at main: models.m.auc is 'x', not a number"
    ):
        pr_headline.headline_section(base, {"models": {"m": {"auc": "x"}}}, {"models": {"m": {"auc": 0.5}}})
    with pytest.raises(PrReportError, match=r"\(workspace\): no 'models' mapping"):
        pr_headline.headline_section(base, None, {"best": {}})


def test_png_names_unique_and_selectors() -> None:
    taken: set[str] = set()
    names = [pr_plots._png_name(p, taken) for p in ("plots/roc/a.csv", "plots/roc/a.tsv", "val_loss")]
    assert names == ["plots-roc-a.png", "plots-roc-a-1.png", "val_loss.png"]
    assert pr_plots._selected("plots/roc/a.csv", ["plots/roc"])
    assert not pr_plots._selected("plots/rocket.csv", ["plots/roc"])
    assert re.fullmatch(r"[\w.-]+", pr_plots._png_name("dvc.yaml::x y/z", set()))


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
        pr_plots.render_png(spec, 1.0, "p")


def test_old_pngs_cleaned_only_from_our_own_folder(tmp_path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for folder, first_line in ((ours, pr_report.MARKER), (theirs, "# notes")):
        folder.mkdir()
        (folder / "report.md").write_text(first_line + "\n")
        (folder / "old.png").write_bytes(b"png")
        pr_report._clean(folder)
    assert not (ours / "old.png").exists() and (theirs / "old.png").exists()
