"""End to end: the real `dvc repro` on a tiny phantom config, then DVC experiments on top of it.

The project's files are copied into a fresh git repository (as a user's clone would be), the
params are shrunk (80 phantom images at 256 px, 64 px cache, two tiny timm models, 2 epochs, two
training seeds), and the DVC commands of the README are run as a user runs them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
MODELS = ["test_resnet", "test_efficientnet"]
SEEDS = [0, 1]
pytestmark = pytest.mark.slow


def _sh(cwd: Path, *args: str, timeout: int = 900) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("clone")
    for name in ("cxr_core", "stages"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["models"] = MODELS
    params["seeds"] = SEEDS
    params["data"]["phantom"].update(images=80, image_px=256)
    params["preprocess"]["image_size"] = 64
    params["train"].update(epochs=2, batch_size=8)
    params["test"]["bootstrap"] = 50
    params["report"]["examples"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _sh(repo, "git", "init", "-q")
    _sh(repo, "dvc", "init", "-q")
    _sh(repo, "git", "add", "-A")
    _sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny config")
    _sh(repo, "dvc", "repro")
    # as a user would: commit the lock file and the small metrics so experiments have a baseline
    _sh(repo, "git", "add", "-A")
    _sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline run")
    return repo


def test_dvc_repro_runs_every_stage(project):
    status = _sh(project, "dvc", "status")
    assert "up to date" in status, status
    split = json.loads((project / "metrics" / "split.json").read_text())
    assert split["loc"]["boxes"] > 0
    for model in MODELS:
        for seed in SEEDS:
            test = json.loads((project / "metrics" / "test" / model / f"seed{seed}.json").read_text())
            assert (
                set(test["auc"]) >= {"Atelectasis", "Hernia"} and test["n_images"] == split["test"]["images"]
            )
            loc = json.loads((project / "metrics" / "localise" / model / f"seed{seed}.json").read_text())
            assert set(loc["methods"]) == {
                "GradCAM", "EigenCAM", "GradCAMPlusPlus", "HiResCAM", "RandomCAM", "BoxPrior", "UniformMap",
                "CentreMap",
            }  # fmt: skip
            assert loc["methods"]["GradCAM"]["heldout"]["chosen_on"] == "tune"
            sanity = json.loads((project / "metrics" / "sanity" / model / f"seed{seed}.json").read_text())
            assert not sanity["methods"]["RandomCAM"]["passes"]  # the control ignores the model
            assert set(loc["methods"]["GradCAM"]["iou"]) == {"t010", "t015", "t025", "t035", "t045"}
            assert (project / "data" / "models" / model / f"seed{seed}" / "best.pt").is_file()
            clinical = json.loads((project / "metrics" / "clinical" / model / f"seed{seed}.json").read_text())
            assert clinical["operating"]["chosen_on"] == "val" and set(
                clinical["subgroups"]["attributes"]
            ) == {
                "sex",
                "age",
                "view",
            }
            points = json.loads((project / "data" / "operating" / model / f"seed{seed}.json").read_text())
            assert set(points["thresholds"]) == set(clinical["operating"]["test"])
    external = json.loads((project / "metrics" / "external" / "phantom.json").read_text())
    assert external["phantom"] and external["left_out"]["lateral_skipped"] > 0
    assert set(external["models"]) == set(MODELS) and set(external["models"][MODELS[0]]) == {
        f"seed{s}" for s in SEEDS
    }
    assert "Lung Lesion" in external["models"][MODELS[0]]["seed0"]["classes"]
    report = (project / "reports" / "report.md").read_text()
    assert report.count("PHANTOM") >= 3  # the header, the adjudicated stand-in's note, the external set
    assert "<!-- table: external_phantom -->" in report
    assert "<!-- table: operating_points -->" in report and "<!-- table: adjudicated -->" in report


def test_published_pointing_game_equals_an_independent_recomputation(project):
    """The pointing game of metrics/localise/, recomputed from the saved raw maps and loc.csv by
    independent code: torch's bilinear upsampling, the maximum (of ties within the stated tolerance
    the one nearest their centroid, first of equals), an explicit pixel-centre mask, pandas means."""
    import numpy as np
    import pandas as pd
    import torch
    import torch.nn.functional as F

    from cxr_core.explain.geometry import PEAK_TOLERANCE

    loc = pd.read_csv(project / "data" / "splits" / "loc.csv")
    size = int(
        json.loads((project / "metrics" / "localise" / MODELS[0] / "seed0.json").read_text())["image_size"]
    )
    centres = np.arange(size) + 0.5
    rows = [(centres >= r.y) & (centres < r.y + r.h) for r in loc.itertuples()]
    cols = [(centres >= r.x) & (centres < r.x + r.w) for r in loc.itertuples()]
    masks = np.stack([r[:, None] & c[None, :] for r, c in zip(rows, cols, strict=True)]).reshape(len(loc), -1)
    checked = 0
    for model in MODELS:
        for seed in SEEDS:
            saved = np.load(project / "data" / "heatmaps" / model / f"seed{seed}.npz")
            published = json.loads(
                (project / "metrics" / "localise" / model / f"seed{seed}.json").read_text()
            )
            for method in [str(m) for m in saved["methods"]]:
                raw = torch.from_numpy(saved[f"raw_{method}"].astype(np.float64))[:, None]
                up = F.interpolate(raw, size=(size, size), mode="bilinear", align_corners=False).flatten(1)
                hits = np.zeros(len(loc), bool)
                for k, u in enumerate(up.numpy()):
                    tied = np.flatnonzero(u >= u.max() - PEAK_TOLERANCE * abs(u.max()))
                    if len(tied) == u.size or saved[f"degenerate_{method}"][k]:
                        continue  # a flat map points nowhere
                    r, c = np.divmod(tied, size)
                    near = ((r - r.mean()) ** 2 + (c - c.mean()) ** 2, tied)
                    hits[k] = masks[k, min(zip(*near, strict=True))[1]]
                expected = pd.Series(hits.astype(float)).groupby(loc["label"].to_numpy()).mean()
                got = published["methods"][method]["pointing"]
                assert got["mean"] == pytest.approx(expected.mean(), abs=1e-12), (model, seed, method)
                assert {k: got[k] for k in expected.index} == pytest.approx(expected.to_dict(), abs=1e-12)
                checked += 1
    assert checked == len(MODELS) * len(SEEDS) * 5


def test_seed_matrix_gives_per_seed_runs_and_an_aggregate(project):
    """Two seeds train two different models; the comparison and the report aggregate them."""
    runs = {
        seed: json.loads((project / "metrics" / "test" / MODELS[0] / f"seed{seed}.json").read_text())
        for seed in SEEDS
    }
    assert runs[0]["macro_auc"] != runs[1]["macro_auc"]  # the seed reached the training
    compare = json.loads((project / "metrics" / "compare.json").read_text())
    spread = compare["seed_runs"][MODELS[0]]
    assert spread["macro_auc"] == {f"seed{s}": runs[s]["macro_auc"] for s in SEEDS}
    assert spread["mean"] == pytest.approx((runs[0]["macro_auc"] + runs[1]["macro_auc"]) / 2)
    assert spread["sd"] > 0
    pair = compare["auc"]["pairs"][f"{MODELS[0]}_vs_{MODELS[1]}"]["macro"]
    assert pair["ci"][0] <= pair["diff"] <= pair["ci"][1] and 0 < pair["p_holm"] <= 1
    report = (project / "reports" / "report.md").read_text()
    assert "<!-- table: seeds -->" in report and "<!-- table: pairwise_macro_auc -->" in report
    assert "**Verdict (classification).**" in report
    headline = json.loads((project / "metrics" / "headline.json").read_text())
    best = headline["best"]
    assert best["model"] == compare["ranking"]["best"] and (project / best["checkpoint"]).is_file()
    stages = _sh(project, "dvc", "stage", "list", "--name-only").split()
    assert {f"train@{m}-{s}" for m in MODELS for s in SEEDS} <= set(stages)


def _stale_stages(project: Path) -> set[str]:
    """Stages ``dvc status`` reports as changed (matrix stages by their full name, e.g. cams@m)."""
    status = json.loads(_sh(project, "dvc", "status", "--json"))
    return set(status)


def _touch(project: Path, module: str) -> None:
    path = project / module
    path.write_text(path.read_text() + "\n# touched by the test\n")


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("cxr_core/explain/cams/base_cam.py", {"cams", "sanity", "external"}),  # a CAM change never retrains
        # box parsing re-splits; the clinical audit reads sex / age / view through it
        (
            "cxr_core/data/metadata.py",
            {"download", "preprocess", "split", "adjudicated", "clinical", "external_data"},
        ),
        ("cxr_core/explain/scoring.py", {"localise", "compare", "report"}),  # they read its box records
        ("cxr_core/train/losses.py", {"train"}),
        # compare reads the predictions through their torch-free file type, not the forward's runtime
        ("cxr_core/runtime.py", {"train", "test", "cams", "sanity", "clinical", "external"}),
        ("cxr_core/compare/paired.py", {"compare", "clinical", "report"}),  # its bootstrap; the report reads
    ],
)
def test_touching_a_module_makes_exactly_its_stages_stale(project, module, expected):
    try:
        _touch(project, module)
        stale = {name.split("@")[0] for name in _stale_stages(project)}
        assert stale == expected, (module, stale)
    finally:
        _sh(project, "git", "checkout", module)
    assert _stale_stages(project) == set()


def test_bytecode_caches_do_not_make_stages_stale(project):
    """A user's Python writes __pycache__/ into the dep folders; .dvcignore keeps them out of the hashes."""
    _sh(project, sys.executable, "-m", "compileall", "-q", "cxr_core", "stages")
    assert list((project / "cxr_core" / "explain").glob("__pycache__/*.pyc"))
    assert _stale_stages(project) == set()


def test_forced_rerun_changes_no_tracked_file(project):
    """Same code, params and data: every output byte-identical, so dvc.lock, metrics, plots and
    reports are unchanged and `dvc metrics diff` is empty."""
    _sh(project, "dvc", "repro", "--force")
    changed = _sh(project, "git", "status", "--porcelain", "--", "dvc.lock", "metrics", "plots", "reports")
    assert changed == "", changed
    assert _sh(project, "dvc", "metrics", "diff").strip() == ""
    assert "up to date" in _sh(project, "dvc", "status")


def test_threshold_change_rescores_without_retraining(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["cam"]["thresholds"] = [0.2, 0.5]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        dry = _sh(project, "dvc", "repro", "--dry")
        assert "Running stage 'localise@" in dry
        assert "Running stage 'train@" not in dry and "Running stage 'cams@" not in dry
    finally:
        _sh(project, "git", "checkout", "params.yaml")


def test_experiments_that_change_the_data_stages_run_outside_the_workspace(project):
    """A DVC temporary workspace (``--temp``, ``--queue``) has the manifest but not the untracked
    phantom PNGs: preprocess draws them again."""
    run = _sh(project, "dvc", "exp", "run", "--temp", "-S", "preprocess.workers=1", "-n", "pre-w1")
    assert "Running stage 'preprocess'" in run and "Running stage 'train@" not in run  # the same cache
    shown = _sh(project, "dvc", "exp", "show", "--csv", "--only-changed")
    assert "pre-w1" in shown


def test_make_known_answer_runs_a_config_as_an_experiment_and_exits_on_its_verdicts(project):
    """`cxr known-answer --config C`: C's differences as `dvc exp run --temp -S ...`, then the exit code
    follows the experiment's metrics/known_answer.json; the workspace keeps its own results."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    before = (project / "metrics" / "known_answer.json").read_text()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for name, cnn_auc, expected_rc in (("unreachable", 0.999, 1), ("lenient", 0.0, 0)):
        config = yaml.safe_load((project / "params.yaml").read_text())
        config["report"]["known_answer"].update(
            cnn_auc=cnn_auc, transformer_auc=cnn_auc, pointing_ratio=0.001
        )
        config["report"]["known_answer"]["min_epochs"] = dict.fromkeys(
            params["report"]["known_answer"]["min_epochs"], 0
        )
        path = project / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        done = subprocess.run(
            ["cxr", "known-answer", "--config", path.name, "--name", f"ka-{name}"],
            cwd=project, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert done.returncode == expected_rc, done.stdout + done.stderr[-3000:]
        verdicts = [line.split()[1] for line in done.stdout.splitlines() if line.startswith(tuple(MODELS))]
        assert len(verdicts) == len(MODELS), done.stdout[-3000:] + done.stderr[-3000:]  # first seeds
        assert set(verdicts) == ({"fail"} if expected_rc else {"pass"}), done.stdout
        assert (
            "Running stage 'report'" in done.stderr + done.stdout
            and "Running stage 'train@" not in done.stdout
        )
        path.unlink()
    assert (project / "metrics" / "known_answer.json").read_text() == before  # the workspace is untouched


def test_experiments_lr_and_queued_grid(project):
    """`dvc exp run -S lr=...` retrains without re-preprocessing; a queued lr x seeds grid runs with -j 2."""
    run = _sh(project, "dvc", "exp", "run", "-S", "lr=0.001", "-n", "lr-001")
    assert "Running stage 'train@" in run and "Running stage 'test@" in run
    assert "Running stage 'preprocess'" not in run and "Running stage 'download'" not in run
    _sh(project, "dvc", "exp", "run", "--queue", "-S", "lr=0.002,0.004", "-S", "seeds=[0],[1]")
    _sh(project, "dvc", "queue", "start", "-j", "2")
    deadline = time.monotonic() + 1800
    while True:  # bounded wait for the four queued runs to finish
        status = _sh(project, "dvc", "queue", "status")
        if not any(word in status for word in ("Queued", "Running")):
            break
        assert time.monotonic() < deadline, status
        time.sleep(5)
    assert "Failed" not in status, status
    shown = json.loads(_sh(project, "dvc", "exp", "show", "--json"))
    runs = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            rev = exp["revs"][0]
            data = rev.get("data") or {}
            params = data.get("params", {}).get("params.yaml", {}).get("data", {}) or {}
            metrics = data.get("metrics", {})
            runs[exp.get("name") or rev.get("name")] = (params.get("lr"), params.get("seeds"), metrics)
    grid = {(lr, tuple(seeds)) for lr, seeds, _ in runs.values()}
    assert {(0.001, tuple(SEEDS)), (0.002, (0,)), (0.002, (1,)), (0.004, (0,)), (0.004, (1,))} <= grid, grid
    for _lr, seeds, metrics in runs.values():
        # the leaderboard is the one declared metrics file: `dvc exp show` stays readable
        assert set(metrics) == {"metrics/headline.json"}, metrics.keys()
        board = metrics["metrics/headline.json"]["data"]
        assert set(board["models"]) == set(MODELS) and board["models"][MODELS[0]]["seeds"] == len(seeds)
    # `cxr leaderboard`: the same table cut to experiment, lr and the AUCs, and it fits the terminal
    os.environ["COLUMNS"] = "200"
    try:
        board = _sh(project, "cxr", "leaderboard", "--no-pager").splitlines()
    finally:
        del os.environ["COLUMNS"]
    header = next(line for line in board if "Experiment" in line)
    assert header.split() == ["Experiment", *(f"models.{m}.auc" for m in MODELS), "lr"], header
    assert max(len(line) for line in board) <= 200 and not any("…" in line for line in board)
    lrs = [line.split()[-1] for line in board if line.split() and line.split()[-1][:1].isdigit()]
    assert "lr-001" in "\n".join(board) and sorted(lrs).count("0.002") == 2 and lrs.count("0.004") == 2
    diff = _sh(project, "dvc", "metrics", "diff", "--all")
    assert "models.test_resnet.auc" in diff
    detailed = _sh(
        project, "dvc", "metrics", "diff", "--all", "--targets", f"metrics/test/{MODELS[0]}/seed0.json"
    )
    assert "macro_auc" in detailed
