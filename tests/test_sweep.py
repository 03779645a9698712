"""``cxr sweep`` and sharing results through remotes: the grid, the job lines, and the whole loop on localhost.

The loop is the one a lab runs over machines: a baseline pushed to a bare Git remote and a
local-folder DVC remote; two worker clones each run one job line as ``cxr sweep`` wrote it (clone,
``dvc exp run --pull``, ``dvc exp push``); a third clone first ``dvc pull``s the baseline (a clean
``dvc status``, ``cxr predict`` without training) and then ``dvc exp pull``s both experiments and
shows them side by side, again without training anything.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cxr_core.devtools import sweep
from cxr_core.labels import LABELS

ROOT = Path(__file__).parents[1]
MODEL = "test_resnet"
GIT = ("git", "-c", "user.name=t", "-c", "user.email=t@t")


def _raw_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


# ---------------------------------------------------------------------------------------------
# the grid


def test_a_set_is_a_grid_axis_with_commas_inside_brackets_kept() -> None:
    assert sweep.parse_set("lr=0.0005,0.001") == ("lr", ["0.0005", "0.001"])
    assert sweep.parse_set("cam.thresholds=[0.1,0.2],[0.3]") == ("cam.thresholds", ["[0.1,0.2]", "[0.3]"])
    assert sweep.parse_set(" train.warmup_epochs = 1 ") == ("train.warmup_epochs", ["1"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr", "expected key=value"),
        ("lr=", "expected key=value"),
        ("lr=0.1,,0.2", "expected key=value"),
        ("seeds=[0],[1]", "give seeds with --seeds"),
        ("models=[densenet121]", "give models with --models"),
    ],
)
def test_a_malformed_set_is_refused_naming_it(text: str, message: str) -> None:
    with pytest.raises(sweep.SweepError, match=message):
        sweep.parse_set(text)


def test_the_grid_is_every_model_seed_and_params_point_with_distinct_names() -> None:
    jobs = sweep.expand(["densenet121", "swin_base"], [0, 1, 2], [("lr", ["0.0005", "0.001"])], "lab")
    assert len(jobs) == 12 and len({j.name for j in jobs}) == 12
    assert jobs[0] == sweep.Job(
        "lab-densenet121-s0-lr0.0005", ("models=[densenet121]", "seeds=[0]", "lr=0.0005")
    )
    assert jobs[-1].name == "lab-swin_base-s2-lr0.001"
    two_axes = sweep.expand(["m"], [0], [("lr", ["1", "2"]), ("train.warmup_epochs", ["0", "1"])], "p")
    assert [j.name for j in two_axes] == ["p-m-s0-lr1-warmup_epochs0", "p-m-s0-lr1-warmup_epochs1",
                                          "p-m-s0-lr2-warmup_epochs0", "p-m-s0-lr2-warmup_epochs1"]  # fmt: skip
    with pytest.raises(sweep.SweepError, match="names a key twice"):
        sweep.expand(["m"], [0], [("lr", ["1"]), ("lr", ["2"])], "p")
    with pytest.raises(sweep.SweepError, match="same experiment name"):
        sweep.expand(["m"], [0], [("cam.thresholds", ["[0.1]", "(0.1)"])], "p")


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        ([("lrr", ["0.1"])], "params.yaml has no key 'lrr'"),
        ([("train.nope", ["1"])], "params.yaml has no key 'train.nope'"),
        ([("lr", ["0.001", "-1"])], "sweep job t-test_resnet-s0-lr-1 (models=[test_resnet] seeds=[0] lr=-1): params.yaml: lr = -1 is not allowed"),
        ([("train.epochs", ["[1"])], "is not a value DVC can set"),
    ],
)  # fmt: skip
def test_a_bad_grid_point_is_refused_before_any_job_is_written(axes, message: str) -> None:
    jobs = sweep.expand([MODEL], [0], axes, "t")
    with pytest.raises(sweep.SweepError) as err:
        sweep.check_jobs(_raw_params(), jobs)
    assert message in str(err.value)


def test_an_unknown_model_is_refused_with_the_model_table_lookup() -> None:
    from cxr_core.models.registry import get_spec

    jobs = sweep.expand(["densenet121", "densenet12"], [0], [], "t")
    with pytest.raises(sweep.SweepError, match="sweep job t-densenet12-s0 .*unknown model 'densenet12'"):
        sweep.check_jobs(_raw_params(), jobs, {"model": get_spec})
    sweep.check_jobs(_raw_params(), jobs[:1], {"model": get_spec})


# ---------------------------------------------------------------------------------------------
# the job lines and the SLURM array


def test_a_job_line_clones_the_commit_runs_one_experiment_and_pushes_it(tmp_path: Path) -> None:
    job = sweep.Job("t-m-s0-lr0.001", ("models=[m]", "seeds=[0]", "lr=0.001"))
    line = sweep.job_command(
        job, sweep.Source("origin", "ssh://host/lab repo.git", "abc123"), tmp_path / "cache"
    )
    steps = line.split(" && ")
    assert (
        steps[1] == "git clone -q 'ssh://host/lab repo.git' \"$w\"" and steps[3] == "git checkout -q abc123"
    )
    assert f"dvc cache dir --local {tmp_path / 'cache'}" in steps
    assert "dvc exp run --pull -n t-m-s0-lr0.001 -S 'models=[m]' -S 'seeds=[0]' -S lr=0.001" in steps
    assert steps[-3:] == ["dvc exp push origin t-m-s0-lr0.001", "cd ..", 'rm -rf "$w"']


def test_the_slurm_array_runs_job_i_in_task_i(tmp_path: Path) -> None:
    script = sweep.slurm_script(["echo zero", "echo 'one two' && echo three"], ["--gpus=1"], max_parallel=4)
    assert "#SBATCH --array=0-1%4" in script and "#SBATCH --gpus=1" in script
    path = tmp_path / "sweep.sbatch"
    path.write_text(script)
    done = subprocess.run(
        ["bash", str(path)], env={**os.environ, "SLURM_ARRAY_TASK_ID": "1"}, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout == "one two\nthree\n", done.stderr


def test_sweep_refuses_a_repository_without_a_git_remote(tmp_path: Path) -> None:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    result = CliRunner().invoke(sweep.main, ["--params", str(tmp_path / "params.yaml"), "-S", "lr=0.001"])
    assert result.exit_code == 1 and "no Git remote 'origin'" in result.output, result.output


def test_sweep_is_a_cxr_command() -> None:
    from cxr_core.app.cli import main

    assert main.commands["sweep"] is sweep.main


# ---------------------------------------------------------------------------------------------
# the loop on localhost


def _sh(cwd: Path, *args: str, timeout: int = 1200, env: dict | None = None) -> str:
    environ = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        **(env or {}),
    }
    done = subprocess.run(args, cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict[str, Path]:
    """A tiny project run once and pushed: bare Git remote + local-folder DVC remote."""
    root = tmp_path_factory.mktemp("lab")
    remote, store, repo = root / "remote.git", root / "dvc-store", root / "lab"
    repo.mkdir()
    for name in ("cxr_core", "stages"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params.update(models=[MODEL], seeds=[0])
    params["data"]["phantom"].update(images=80, image_px=256)
    params["preprocess"]["image_size"] = 64
    params["train"].update(epochs=1, batch_size=8)
    params["test"]["bootstrap"] = 20
    params["sanity"]["images"] = 4
    params["report"]["examples"] = 2
    params["external"]["phantom"].update(images=20, image_px=64)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _sh(root, "git", "init", "-q", "--bare", "-b", "main", str(remote))
    _sh(repo, "git", "init", "-q", "-b", "main")
    _sh(repo, "dvc", "init", "-q")
    _sh(repo, "dvc", "remote", "add", "-d", "storage", str(store))  # .dvc/config: every clone sees it
    _sh(repo, "git", "remote", "add", "origin", str(remote))
    _sh(repo, "git", "add", "-A")
    _sh(repo, *GIT, "commit", "-qm", "tiny config")  # DVCLive needs a commit to log against
    _sh(repo, "dvc", "repro")
    _sh(repo, "git", "add", "-A")
    _sh(repo, *GIT, "commit", "-qm", "baseline run")
    _sh(repo, "dvc", "push")
    _sh(repo, "git", "push", "-q", "origin", "main")
    return {"root": root, "remote": remote, "store": store, "repo": repo}


def _clone(lab: dict[str, Path], name: str) -> Path:
    target = lab["root"] / name
    _sh(lab["root"], "git", "clone", "-q", str(lab["remote"]), str(target))
    return target


@pytest.mark.slow
def test_dvc_pull_from_the_remote_gives_a_clean_workspace_where_predict_works(lab) -> None:
    colleague = _clone(lab, "colleague")
    _sh(colleague, "dvc", "pull")
    assert "Data and pipelines are up to date" in _sh(colleague, "dvc", "status")
    assert (colleague / "data" / "models" / MODEL / "seed0" / "best.pt").is_file()
    image = next((lab["repo"] / "data" / "raw" / "images").rglob("*.png"))
    rows = list(csv.reader(io.StringIO(_sh(colleague, "cxr", "predict", str(image)))))
    assert rows[0][: 1 + len(LABELS)] == ["file", *LABELS] and len(rows) == 2
    assert not (colleague / "logs").exists()  # no stage ran: stages write their timings there


@pytest.mark.slow
def test_a_sweep_over_two_workers_is_gathered_by_a_third_clone_without_retraining(lab) -> None:
    jobs = _sh(lab["repo"], "cxr", "sweep", "-S", "lr=0.001,0.002", "--prefix", "t")
    lines = jobs.strip().splitlines()
    names = [f"t-{MODEL}-s0-lr0.001", f"t-{MODEL}-s0-lr0.002"]
    assert len(lines) == 2 and all(
        f"dvc exp push origin {n}" in line for n, line in zip(names, lines, strict=True)
    )
    scratch = lab["root"] / "scratch"
    scratch.mkdir()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TMPDIR": str(scratch),
    }
    logs = [scratch.parent / f"worker{i}.log" for i in range(len(lines))]
    workers = [  # two workers at once, one job each, each in its own fresh clone
        subprocess.Popen(
            ["bash", "-c", line], cwd=lab["root"], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
        )
        for line, log in zip(lines, logs, strict=True)
    ]
    for worker, log in zip(workers, logs, strict=True):
        worker.wait(timeout=1800)
        output = log.read_text()
        assert worker.returncode == 0, output[-6000:]
        assert "Running stage 'train@" in output and "Running stage 'preprocess'" not in output  # data pulled
    assert not list(scratch.glob("cxr-sweep-*"))  # each job removed its clone
    assert set(_sh(lab["repo"], "dvc", "exp", "list", "--name-only", "origin").split()) == set(names)

    reviewer = _clone(lab, "reviewer")
    _sh(reviewer, "dvc", "exp", "pull", "origin")
    shown = json.loads(_sh(reviewer, "dvc", "exp", "show", "--json"))
    runs = {
        exp["name"]: exp["revs"][0]["data"] for commit in shown for exp in commit.get("experiments") or []
    }
    assert set(runs) == set(names)
    aucs = {}
    for name, data in runs.items():
        assert data["params"]["params.yaml"]["data"]["lr"] == float(name.rsplit("lr", 1)[1])
        aucs[name] = data["metrics"]["metrics/headline.json"]["data"]["models"][MODEL]["auc"]
    assert len(set(aucs.values())) == 2, aucs  # two different trainings
    os.environ["COLUMNS"] = "200"
    try:
        board = _sh(reviewer, "cxr", "leaderboard", "--no-pager")
    finally:
        del os.environ["COLUMNS"]
    assert all(name in board for name in names) and f"models.{MODEL}.auc" in board, board

    _sh(reviewer, "dvc", "exp", "apply", names[1])
    assert "Data and pipelines are up to date" in _sh(reviewer, "dvc", "status")  # outputs came with it
    assert yaml.safe_load((reviewer / "params.yaml").read_text())["lr"] == 0.002
    assert (reviewer / "data" / "models" / MODEL / "seed0" / "best.pt").is_file()
    assert not (reviewer / "logs").exists()  # nothing was trained or run here
