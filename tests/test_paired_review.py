"""The paired review of ``cxr pr-report``: base vs head on the same images, and its CI gate.

Two parts. The statistics, on arrays: :func:`auc_change_bootstrap` against an explicit loop over
patient resamples (``oracles.explicit_resamples``, the same draws) with sklearn's AUC, and against
the compare stage's :func:`paired_auc_bootstrap`; the review's DeLong column against MLstatkit and
statsmodels' Holm; the verdict rule, and that a CPU-sized change never gets a verdict.

Then the acceptance tests, on a throw-away git + DVC project whose one stage is this file run as a
script (``main`` below writes test predictions, box records and ``loc.csv`` with the pipeline's own
writers, no training): commits with known planted changes, one whose outputs are missing from the
cache, one whose cached predictions are corrupt, and a ``dvc exp`` experiment. Real git and dvc,
offline; about a minute on two loaded cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from oracles import explicit_resamples
from sklearn.metrics import roc_auc_score

from cxr_core.compare.paired import auc_change_bootstrap, holm, paired_auc_bootstrap
from cxr_core.data.tables import LOC_COLUMNS, LocTable
from cxr_core.devtools import pr_report
from cxr_core.devtools.paired_review import (
    BETTER,
    NOISE,
    WORSE,
    Change,
    ReviewSettings,
    SeedSpread,
    auc_review,
    judge,
)
from cxr_core.devtools.pr_git import WORKSPACE_REV, open_repo, resolve_rev
from cxr_core.devtools.review_inputs import Scores
from cxr_core.evaluate.metrics import macro_auc
from cxr_core.evaluate.predictions import Predictions
from cxr_core.explain.scoring import RECORD_COLUMNS, BoxRecords
from cxr_core.labels import BOX_LABELS, LABEL_INDEX, LABELS

# --- the project's one stage: run as a script (``python make_results.py``) -------------------------

MODELS = ("m_a", "m_b")
METHODS = ("GradCAM", "RandomCAM")
N_PATIENTS = 120
SIGNAL = 0.6  # logit separation before any plant: macro AUC about 0.8
POINTING = 0.45  # GradCAM's pointing rate before any plant (RandomCAM: 0.2)


def _test_split() -> tuple[np.ndarray, np.ndarray]:
    """Patients (1 to 5 images each) and 0/1 targets with unequal prevalences (3% to 40%)."""
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(N_PATIENTS), rng.integers(1, 6, N_PATIENTS))
    prevalence = np.linspace(0.03, 0.4, len(LABELS))
    targets = (rng.random((len(patients), len(LABELS))) < prevalence).astype(np.uint8)
    targets[:2], targets[2:4] = 1, 0  # every class has positives and negatives
    return patients, targets


def _loc(patients: np.ndarray) -> pd.DataFrame:
    """One box on each of the first 240 images, the findings in turn; whole patients in each half."""
    rng = np.random.default_rng(1)
    rows = np.arange(240)
    labels = [BOX_LABELS[i % len(BOX_LABELS)] for i in rows]
    box = rng.uniform(10, 60, (len(rows), 4))
    table = pd.DataFrame(
        {
            "row": rows,
            "image": [f"{r:08d}_000.png" for r in rows],
            "patient": patients[rows],
            "label": labels,
            "label_index": [LABEL_INDEX[label] for label in labels],
            **{k: box[:, i] for i, k in enumerate("xywh")},
            **{f"{k}1024": box[:, i] * 8 for i, k in enumerate("xywh")},
            "subset": np.where(rng.random(N_PATIENTS)[patients[rows]] < 0.5, "report", "tune"),
        }
    )
    return table[LOC_COLUMNS]


def _run_rng(model: str, seed: int, what: int) -> np.random.Generator:
    """The fixed noise of one run (what: 0 scores, 1 pointing hits), whatever the plant."""
    return np.random.default_rng([MODELS.index(model), seed, what])


def _predictions(
    model: str, seed: int, patients: np.ndarray, targets: np.ndarray, plant: float
) -> Predictions:
    noise = _run_rng(model, seed, 0).normal(0.0, 1.0, targets.shape)
    logits = ((SIGNAL + plant) * (2.0 * targets - 1.0) + noise).astype(np.float32)
    probs = np.round(1.0 / (1.0 + np.exp(-logits)), 2).astype(np.float32)  # two decimals: ties
    n = len(patients)
    images = np.array([f"{r:08d}_000.png" for r in range(n)])
    return Predictions(
        images, np.arange(n, dtype=np.int64), patients.astype(np.int64), probs, targets, logits
    )


def _records(model: str, seed: int, loc: pd.DataFrame, plant: float) -> pd.DataFrame:
    rng = _run_rng(model, seed, 1)
    frames = []
    for method, rate in zip(METHODS, (POINTING + plant, 0.2), strict=True):
        frame = loc[["image", "row", "label", "subset"]].assign(method=method)
        for column in RECORD_COLUMNS:
            frame[column] = frame.get(column, 0.0)
        frame["pointing_hit"] = rng.random(len(loc)) < rate
        frame["degenerate"] = False
        frames.append(frame[list(RECORD_COLUMNS)])
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    """The stage: every file the review reads, in the pipeline's formats, from params.yaml."""
    params = yaml.safe_load(Path("params.yaml").read_text())
    patients, targets = _test_split()
    loc = _loc(patients)
    LocTable(loc).write("data/splits")
    headline: dict = {"best": None, "models": {}}
    for model in params["models"]:
        plant = params["plant"][model]
        for seed in params["seeds"]:
            run = _predictions(model, seed, patients, targets, plant["auc"])
            run.save(f"data/predictions/{model}/seed{seed}.npz")
            BoxRecords.write(
                f"data/localisation/{model}/seed{seed}.csv", _records(model, seed, loc, plant["loc"])
            )
            if seed == params["seeds"][0]:
                auc = macro_auc(targets, run.probs)
                headline["models"][model] = {"auc": auc, "auc_lo": auc - 0.03, "auc_hi": auc + 0.03}
    Path("metrics").mkdir(exist_ok=True)
    Path("metrics/headline.json").write_text(json.dumps(headline, indent=2) + "\n")


# --- statistics ---------------------------------------------------------------------------------


def _case(seed: int, n_patients: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Targets, patients and two seeds x N x C of base and head scores: ties, unequal class sizes,
    a class with 2 positives (often absent from a replicate) and the head a little better."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_patients), rng.integers(1, 5, n_patients))
    n = len(groups)
    targets = (rng.random((n, 4)) < [0.1, 0.3, 0.5, 0.0]).astype(int)
    targets[:2, 3] = 1  # class 3: exactly two positives
    targets[0, :3], targets[1, :3] = 1, 0

    def scores(lift: float) -> np.ndarray:
        return np.round(rng.random((2, n, 4)) + (0.4 + lift) * targets, 1)  # one decimal: ties

    return targets, groups, scores(0.0), scores(0.2)


def _loop_auc(targets: np.ndarray, run: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """sklearn's AUC per class of one run on the images ``idx``; NaN where a class lacks a side."""
    out = np.full(targets.shape[1], np.nan)
    for c in range(targets.shape[1]):
        y = targets[idx, c]
        if 0 < y.sum() < len(y):
            out[c] = roc_auc_score(y, run[idx, c])
    return out


def _p(d: np.ndarray) -> float:
    """The bootstrap p of the compare stage, from its definition (cxr_core.compare.paired)."""
    d = d[np.isfinite(d)]
    return min(1.0, 2 * min(1 + (d <= 0).sum(), 1 + (d >= 0).sum()) / (d.size + 1))


@pytest.mark.parametrize("seed", [0, 1])
def test_auc_change_bootstrap_is_an_explicit_loop_over_patient_resamples(seed: int) -> None:
    """Both sides rescored on every replicate by sklearn, in a loop over the same patient draws:
    per-class and macro changes, their percentile intervals and p, pooled over seeds and per seed."""
    targets, groups, base, head = _case(seed)
    n_boot, ci = 100, 0.9
    got = auc_change_bootstrap(targets, base, head, groups, n_boot=n_boot, ci=ci, seed=seed)
    defined = targets.any(axis=0) & ~targets.all(axis=0)
    change, seed_macro = [], []  # per replicate: per-class change (pooled), macro change per seed
    for idx in explicit_resamples(groups, n_boot, seed):
        runs = {
            (side, s): _loop_auc(targets, scores[s], idx)
            for side, scores in (("b", base), ("h", head))
            for s in (0, 1)
        }
        change.append((runs["h", 0] + runs["h", 1]) / 2 - (runs["b", 0] + runs["b", 1]) / 2)
        seed_macro.append([runs["h", s][defined].mean() - runs["b", s][defined].mean() for s in (0, 1)])
    change, seed_macro = np.array(change), np.array(seed_macro)
    macro = change[:, defined].mean(axis=1)  # NaN where a class is absent from the replicate
    np.testing.assert_allclose(got["classes"]["replicates"], change, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["macro"]["replicates"], macro, rtol=0, atol=1e-12)
    assert np.isnan(macro).any() and np.isnan(change[:, 3]).any()  # the rare class drops out
    lo, hi = np.quantile(macro[np.isfinite(macro)], [0.05, 0.95])
    assert (got["macro"]["ci_low"], got["macro"]["ci_high"]) == pytest.approx((lo, hi), abs=1e-12)
    assert got["macro"]["p"] == pytest.approx(_p(macro), abs=1e-15)
    assert got["classes"]["p"] == pytest.approx([_p(change[:, c]) for c in range(4)], abs=1e-15)
    full = np.arange(len(groups))
    point = np.mean(
        [_loop_auc(targets, h, full) - _loop_auc(targets, b, full) for b, h in zip(base, head, strict=True)],
        axis=0,
    )
    assert got["classes"]["diff"] == pytest.approx(point, abs=1e-12)
    assert got["macro"]["diff"] == pytest.approx(point[defined].mean(), abs=1e-12)
    for s, entry in enumerate(got["per_seed"]):
        np.testing.assert_allclose(entry["replicates"], seed_macro[:, s], rtol=0, atol=1e-12)
        assert entry["p"] == pytest.approx(_p(seed_macro[:, s]), abs=1e-15)
        assert entry["diff"] == pytest.approx(
            macro_auc(targets, head[s]) - macro_auc(targets, base[s]), abs=1e-12
        )


def test_auc_change_bootstrap_is_the_compare_stages_pair() -> None:
    """The same replicates as the compare stage's bootstrap: (head, base) of paired_auc_bootstrap."""
    targets, groups, base, head = _case(3)
    got = auc_change_bootstrap(targets, base, head, groups, n_boot=200, ci=0.95, seed=5)
    (pair,) = paired_auc_bootstrap(targets, {"head": head, "base": base}, groups, n_boot=200, seed=5)["pairs"]
    for key in ("diff", "ci_low", "ci_high", "p", "n_valid"):
        assert got["macro"][key] == pair["macro"][key], key
        np.testing.assert_array_equal(got["classes"][key], pair[key])
    np.testing.assert_array_equal(got["classes"]["replicates"], pair["replicates"])
    with pytest.raises(ValueError, match="base has 2 seeds and head 1"):
        auc_change_bootstrap(targets, base, head[:1], groups, n_boot=10)


class _Side:
    """A review side holding scores in memory (what ``auc_review`` reads of a side)."""

    def __init__(self, targets: np.ndarray, groups: np.ndarray, runs: np.ndarray) -> None:
        rows = np.arange(len(groups))
        self.runs = [Scores(rows, groups, run, targets) for run in runs]

    def scores(self, model: str, seed: int) -> Scores:
        return self.runs[seed]


def _settings(**changes) -> ReviewSettings:
    return replace(ReviewSettings(300, 0.95, 0, 0.05, 0.02, 0.05, "GradCAM"), **changes)


def _case14(seed: int, n_patients: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_case` with the review's 14 findings: its 4 classes, then copies of them."""
    targets, groups, base, head = _case(seed, n_patients)
    cols = np.arange(len(LABELS)) % targets.shape[1]
    return targets[:, cols], groups, base[:, :, cols], head[:, :, cols]


def test_delong_column_is_mlstatkit_with_statsmodels_holm() -> None:
    """The per-finding DeLong beside the bootstrap: MLstatkit's p on the first seed (head vs base),
    Holm over the findings (statsmodels); a finding with no p (too few positives) leaves the family."""
    delong_test = pytest.importorskip("MLstatkit").Delong_test
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    targets, groups, base, head = _case14(4, n_patients=60)
    out = auc_review("m", [0, 1], _Side(targets, groups, base), _Side(targets, groups, head), _settings())
    p = [delong_test(targets[:, c], head[0][:, c], base[0][:, c])[1] for c in range(len(LABELS))]
    got = [row.delong_p_holm for row in out.classes]
    assert got == pytest.approx(multipletests(p, method="holm")[1], rel=1e-9, abs=1e-15)
    assert [r.label for r in out.classes] == list(LABELS)


@pytest.mark.parametrize(
    ("p_holm", "diff", "spread", "verdict", "why"),
    [
        (0.01, 0.05, None, BETTER, ""),
        (0.01, -0.05, None, WORSE, ""),
        (0.05, 0.05, None, NOISE, ""),
        (0.01, 0.02, None, NOISE, "not beyond the margin 0.02 (`compare.min_auc_difference`)"),
        (0.01, 0.045, SeedSpread(0.03, 0.02, 2), NOISE, "within the seed-to-seed spread (1.96 x SE 0.0255)"),
        (0.01, 0.06, SeedSpread(0.03, 0.02, 2), BETTER, ""),
        (float("nan"), 0.0, None, NOISE, "no defined replicate"),
    ],
)
def test_verdict_needs_holm_margin_and_seed_spread(p_holm, diff, spread, verdict, why) -> None:
    change = Change(
        "macro AUC", 0.8, 0.8 + diff, diff, (0.0, 0.1), 0.01, 0.02, "compare.min_auc_difference", spread
    )
    judged = judge(replace(change, p_holm=p_holm), 0.05, _settings().z)
    assert judged.verdict == verdict and why in judged.why


def test_cpu_sized_change_is_within_noise_however_significant() -> None:
    """Scores nudged by 1e-6 toward the truth (another CPU's float rounding at worst breaks ties
    consistently): the bootstrap finds the tiny change significant, the margin keeps it noise."""
    targets, groups, _, _ = _case14(6, n_patients=80)
    rng = np.random.default_rng(6)
    base = np.round(rng.random((2, *targets.shape)) + 0.4 * targets, 2)  # two decimals: a few ties
    head = base + 1e-6 * targets  # breaks every positive-negative tie the same way
    sides = _Side(targets, groups, base), _Side(targets, groups, head)
    strict = auc_review("m", [0, 1], *sides, _settings())
    change = judge(replace(strict.auc, p_holm=strict.auc.p), 0.05, 1.96)
    assert 0 < change.diff < 0.01 and change.p < 0.05 and change.verdict == NOISE
    assert "margin" in change.why
    unguarded = judge(replace(change, margin=0.0, spread=None), 0.05, 1.96)
    assert unguarded.verdict == BETTER  # what the margin protects against


# --- acceptance: a throw-away git + DVC project --------------------------------------------------

DVC_YAML = {
    "stages": {
        "results": {
            "cmd": "python make_results.py",
            "deps": ["make_results.py"],
            "params": ["models", "seeds", "plant"],
            "outs": [
                "data/splits",
                *(
                    f"data/{kind}/{m}/seed{s}.{ext}"
                    for kind, ext in (("predictions", "npz"), ("localisation", "csv"))
                    for m in MODELS
                    for s in (0, 1)
                ),
            ],  # fmt: skip
            "metrics": [{"metrics/headline.json": {"cache": False}}],
        }
    }
}
PARAMS = {
    "models": list(MODELS),
    "seeds": [0, 1],
    "seed": 0,
    "test": {"bootstrap": 300, "ci": 0.95},
    "compare": {"alpha": 0.05, "min_auc_difference": 0.02, "min_rate_difference": 0.05},
    "report": {"headline_method": "GradCAM"},
}


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(Path(__file__).parent),  # make_results.py is this file: it imports oracles
    }


def _sh(cwd: Path, *args: str) -> str:
    done = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _results(repo: Path, message: str, **plant: tuple[float, float]) -> str:
    """params with ``plant`` (model -> (auc, loc)), ``dvc repro``, commit; the commit's hash."""
    planted = {m: dict(zip(("auc", "loc"), plant.get(m, (0.0, 0.0)), strict=True)) for m in MODELS}
    (repo / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "plant": planted}, sort_keys=False))
    _sh(repo, "dvc", "repro", "-q")
    _sh(repo, "git", "add", "-A")
    _sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false",
        "commit", "-q", "-m", message)  # fmt: skip
    return _sh(repo, "git", "rev-parse", "HEAD").strip()


def _cache_files(repo: Path, commit: str, kind: str) -> list[Path]:
    """The cache objects of ``commit``'s outputs under ``data/<kind>/``."""
    lock = yaml.safe_load(_sh(repo, "git", "show", f"{commit}:dvc.lock"))
    outs = [
        o for stage in lock["stages"].values() for o in stage["outs"] if o["path"].startswith(f"data/{kind}/")
    ]
    return [repo / ".dvc/cache/files/md5" / o["md5"][:2] / o["md5"][2:] for o in outs]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Commits ``base`` (nothing planted), ``lost`` (its predictions then deleted from the cache),
    ``corrupt`` (one cached predictions file overwritten), ``better`` (m_a: +0.6 logit separation,
    +0.35 pointing) = the workspace, and the experiment ``worse_b`` on ``better`` (m_b lowered)."""
    repo = tmp_path_factory.mktemp("review")
    _sh(repo, "git", "init", "-q")
    _sh(repo, "dvc", "init", "-q")
    (repo / ".dvc/config").write_text("[core]\n    analytics = false\n    check_update = false\n")
    shutil.copy(__file__, repo / "make_results.py")
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    c = SimpleNamespace(repo=repo)
    c.base = _results(repo, "base")
    c.lost = _results(repo, "lost", m_a=(0.01, 0.0), m_b=(0.01, 0.0))
    c.corrupt = _results(repo, "corrupt", m_a=(0.02, 0.0))
    c.better = _results(repo, "better", m_a=(0.6, 0.35))
    _sh(
        repo,
        "dvc",
        "exp",
        "run",
        "-q",
        "--temp",
        "-n",
        "worse_b",
        "-S",
        "plant.m_b.auc=-0.5",
        "-S",
        "plant.m_b.loc=-0.3",
    )
    for file in _cache_files(repo, c.lost, "predictions"):
        file.unlink()
    broken = _cache_files(repo, c.corrupt, "predictions")[0]  # m_a seed 0
    broken.chmod(0o644)
    broken.write_bytes(b"not an npz archive")
    assert _sh(repo, "git", "status", "--porcelain") == ""
    return c


def _report(project: SimpleNamespace, base: str, head: str | None = None, tmp: Path | None = None):
    repo = open_repo(project.repo)
    head_rev = WORKSPACE_REV if head is None else resolve_rev(repo, head, "head")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DVC_NO_ANALYTICS", "1")
        return pr_report.build_report(repo, resolve_rev(repo, base), tmp, head=head_rev, plots=())


def _cli(project: SimpleNamespace, tmp: Path, *args: str) -> tuple[int, str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DVC_NO_ANALYTICS", "1")
        result = CliRunner().invoke(pr_report.main, ["--repo", str(project.repo), "--out", str(tmp), *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def _section(markdown: str) -> str:
    return markdown.split("\n## Paired review")[1].split("\n## ")[0]


def test_same_predictions_are_within_noise_with_a_ci_at_zero(project, tmp_path) -> None:
    report = _report(project, project.better, tmp=tmp_path)  # the workspace is `better`
    review = report.review
    assert not review.unavailable and [m.model for m in review.models] == list(MODELS)
    for m in review.models:
        for change in (m.auc, m.loc):
            assert change.verdict == NOISE and change.diff == 0.0
            assert change.ci[0] <= 0.0 <= change.ci[1] and change.p == 1.0
        assert m.seeds == (0, 1) and [seed for seed, _ in m.per_seed] == [0, 1]
    section = _section(report.markdown)
    assert "- `m_a`: **within noise** in macro AUC, +0.0000 (95% CI +0.0000 to +0.0000, Holm p 1" in section
    assert "300 patient-bootstrap replicates" in section and "draw seed 0" in section


def test_planted_improvement_is_better_for_that_model_only(project, tmp_path) -> None:
    review = _report(project, project.base, tmp=tmp_path).review
    m_a, m_b = review.models
    assert (m_a.auc.verdict, m_a.loc.verdict) == (BETTER, BETTER)
    assert m_a.auc.diff > 0.1 and m_a.auc.ci[0] > 0 and m_a.auc.spread is not None
    assert (m_b.auc.verdict, m_b.loc.verdict) == (NOISE, NOISE) and m_b.auc.diff == 0.0
    assert [m.auc.p_holm for m in review.models] == pytest.approx(holm([m_a.auc.p, m_b.auc.p]).tolist())
    assert len(m_a.classes) == len(LABELS) and all(r.diff > 0 for r in m_a.classes)
    assert review.regressions() == []
    assert "pointing game, GradCAM (report half)" in m_a.loc.metric


def test_gate_follows_the_verdicts_and_compares_experiments(project, tmp_path) -> None:
    """``--fail-on worse``: exit 3 on a significant regression (the base ahead of the head, or the
    experiment ``worse_b`` against its baseline), 0 on an improvement; the report is written first."""
    code, output = _cli(
        project, tmp_path / "back", "--base", project.better, "--head", project.base, "--fail-on", "worse"
    )
    assert code == pr_report.EXIT_WORSE, output
    assert "FAIL (--fail-on worse): significantly worse than the base: m_a macro AUC -0." in output
    assert "**worse** in macro AUC" in (tmp_path / "back/report.md").read_text()
    code, output = _cli(
        project, tmp_path / "exp", "--base", project.better, "--head", "worse_b", "--fail-on", "worse"
    )
    assert (
        code == pr_report.EXIT_WORSE
        and "m_b macro AUC -0." in output
        and "m_a macro" not in output.split("FAIL")[1]
    )
    markdown = (tmp_path / "exp/report.md").read_text()
    assert "-> experiment `worse_b` (" in markdown and "- `m_a`: **within noise**" in markdown
    code, output = _cli(
        project, tmp_path / "fwd", "--base", "worse_b", "--head", project.better, "--fail-on", "worse"
    )
    assert code == 0 and "m_b: macro AUC better" in output, output


def test_missing_base_cache_is_reported_with_the_unpaired_table(project, tmp_path) -> None:
    code, output = _cli(project, tmp_path, "--base", project.lost, "--fail-on", "worse")
    assert code == 0 and "WARNING: no paired review" in output, output
    markdown = (tmp_path / "report.md").read_text()
    section = _section(markdown)
    assert (
        "No paired comparison: no model could be paired: `data/predictions/m_a/seed0.npz` of the base"
        in section
    )
    assert "neither in the local DVC cache nor on a configured remote" in section
    assert "| `m_a` |" in markdown.split("## Headline")[1].split("## Paired")[0]  # the unpaired table


def test_unreadable_base_file_is_one_paragraph_exit_1(project, tmp_path) -> None:
    code, output = _cli(project, tmp_path, "--base", project.corrupt)
    assert code == 1 and "Traceback" not in output
    base = f"`{project.corrupt}` ({project.corrupt[:7]})"
    assert (
        f"`data/predictions/m_a/seed0.npz` of the base {base} cannot be read: not a readable .npz" in output
    )
    assert len(output.strip().splitlines()) == 1


def test_unknown_head_name_is_one_paragraph_exit_1(project, tmp_path) -> None:
    code, output = _cli(project, tmp_path, "--base", project.base, "--head", "no-such-exp")
    assert code == 1 and "unknown head revision 'no-such-exp'" in output and "`dvc exp`" in output
    assert len(output.strip().splitlines()) == 1 and not (tmp_path / "report.md").exists()


if __name__ == "__main__":
    main()
