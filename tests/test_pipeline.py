"""End to end: the real `dvc repro` on a tiny phantom config, then DVC experiments on top of it.

The project's files are copied into a fresh git repository (as a user's clone would be), the
params are shrunk (80 phantom images at 256 px, 64 px cache, two tiny timm models, 2 epochs), and
the DVC commands of the README are run as a user runs them.
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
        test = json.loads((project / "metrics" / "test" / f"{model}.json").read_text())
        assert set(test["auc"]) >= {"Atelectasis", "Hernia"} and test["n_images"] == split["test"]["images"]
        loc = json.loads((project / "metrics" / "localise" / f"{model}.json").read_text())
        assert set(loc["methods"]) == {"GradCAM", "EigenCAM", "GradCAMPlusPlus", "RandomCAM"}
        assert set(loc["methods"]["GradCAM"]["iou"]) == {"t010", "t015", "t025", "t035", "t045"}
        assert (project / "data" / "models" / model / "best.pt").is_file()
    assert (project / "reports" / "report.md").read_text().count("PHANTOM") >= 1


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
        ("cxr_core/explain/methods.py", {"cams"}),  # a CAM change never retrains
        ("cxr_core/data/metadata.py", {"download", "preprocess", "split"}),  # box parsing re-splits
        ("cxr_core/explain/scoring.py", {"localise"}),
        ("cxr_core/train/losses.py", {"train"}),
        ("cxr_core/runtime.py", {"train", "test", "cams"}),
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


def test_experiments_lr_and_queue(project):
    """`dvc exp run -S lr=...` retrains without re-preprocessing; a queued grid runs with -j 2."""
    run = _sh(project, "dvc", "exp", "run", "-S", "lr=0.001", "-n", "lr-001")
    assert "Running stage 'train@" in run and "Running stage 'test@" in run
    assert "Running stage 'preprocess'" not in run and "Running stage 'download'" not in run
    _sh(project, "dvc", "exp", "run", "--queue", "-S", "lr=0.002", "-n", "lr-002")
    _sh(project, "dvc", "exp", "run", "--queue", "-S", "lr=0.004", "-n", "lr-004")
    _sh(project, "dvc", "queue", "start", "-j", "2")
    deadline = time.monotonic() + 1800
    while True:  # bounded wait for both queued runs to finish
        status = _sh(project, "dvc", "queue", "status")
        if not any(word in status for word in ("Queued", "Running")):
            break
        assert time.monotonic() < deadline, status
        time.sleep(5)
    assert "Failed" not in status, _sh(project, "dvc", "queue", "logs", "lr-002") + status
    shown = json.loads(_sh(project, "dvc", "exp", "show", "--json"))
    names = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            rev = exp["revs"][0]
            data = rev.get("data") or {}
            lr = (data.get("params", {}).get("params.yaml", {}).get("data", {}) or {}).get("lr")
            metrics = data.get("metrics", {})
            names[exp.get("name") or rev.get("name")] = (lr, metrics)
    assert {"lr-001", "lr-002", "lr-004"} <= set(names), names.keys()
    for name, lr in (("lr-001", 0.001), ("lr-002", 0.002), ("lr-004", 0.004)):
        got_lr, metrics = names[name]
        assert got_lr == lr
        assert f"metrics/test/{MODELS[0]}.json" in metrics
    diff = _sh(project, "dvc", "metrics", "diff", "--all")
    assert "macro_auc" in diff
