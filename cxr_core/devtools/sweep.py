"""``cxr sweep``: a grid of experiments (models x seeds x params) as independent ``dvc exp run`` jobs.

DVC's way to spread experiments over machines is its own sharing, not a scheduler: every job runs
``dvc exp run`` in its own clone and ends with ``dvc exp push``, which sends the experiment to the
Git remote and its outputs to the DVC remote; a reviewer runs ``dvc exp pull`` and
``cxr leaderboard`` and retrains nothing. This writes the jobs for whatever runs them: one shell
command per line (``--format lines``: GNU parallel, xargs, ssh) or a SLURM array script
(``--format slurm``). A job clones the Git remote at this commit into a fresh temporary folder,
runs ``dvc exp run --pull`` (the unchanged data stages come from the DVC remote, not recomputed)
and pushes. Every grid point is validated against the params schema first, so a typo fails here
rather than in fifty jobs on a cluster.
"""

from __future__ import annotations

import copy
import itertools
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from cxr_core.devtools.tools import ToolNotFoundError, find_tool
from cxr_core.errors import CxrError
from cxr_core.params import ParamsError, load_params, validate

#: Keys the grid sets with their own options (one model and one seed per job).
OWN_OPTIONS = {"models": "--models", "seeds": "--seeds"}


class SweepError(CxrError):
    """The grid, the Git remote or the DVC remote is not usable for a sweep; the message says which."""


@dataclass(frozen=True)
class Job:
    """One experiment: its name and its ``dvc exp run -S`` overrides (Hydra syntax, as DVC takes them)."""

    name: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Source:
    """Where jobs clone from: the Git remote's name and URL, and the commit they run."""

    remote: str
    url: str
    commit: str


def split_values(text: str) -> list[str]:
    """``0.001,0.002`` -> two values; commas inside brackets stay (``[0,1],[2]`` -> two lists)."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    return [*values, current]


def parse_set(text: str) -> tuple[str, list[str]]:
    """``-S key=v1,v2`` -> (key, [v1, v2]): DVC's spelling of a grid axis."""
    key, sep, values = text.partition("=")
    key = key.strip()
    items = [v.strip() for v in split_values(values)] if sep else []
    if not key or not items or any(not v for v in items):
        raise SweepError(
            f"-S {text!r}: expected key=value or key=value1,value2,... (e.g. -S lr=0.0005,0.001)"
        )
    if key in OWN_OPTIONS:
        raise SweepError(
            f"-S {text!r}: give {key} with {OWN_OPTIONS[key]} (each job trains one model and one seed)"
        )
    return key, items


def _name_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "_"


def expand(
    models: Sequence[str], seeds: Sequence[int], axes: Sequence[tuple[str, list[str]]], prefix: str
) -> list[Job]:
    """Every (model, seed, params point) as a job named ``<prefix>-<model>-s<seed>[-<key><value>...]``."""
    keys = [key for key, _ in axes]
    if len(set(keys)) != len(keys):
        raise SweepError(f"-S names a key twice ({keys}); give its values once, comma-separated")
    short = [key.rsplit(".", 1)[-1] for key in keys]
    jobs = []
    for model, seed in itertools.product(models, seeds):
        for point in itertools.product(*(values for _, values in axes)):
            name = "-".join([_name_part(prefix), _name_part(model), f"s{seed}"])
            name += "".join(f"-{_name_part(k)}{_name_part(v)}" for k, v in zip(short, point, strict=True))
            overrides = (
                f"models=[{model}]",
                f"seeds=[{seed}]",
                *(f"{k}={v}" for k, v in zip(keys, point, strict=True)),
            )
            jobs.append(Job(name, overrides))
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise SweepError(
            f"two grid points get the same experiment name ({twice[:3]}); use values that differ as text"
        )
    return jobs


def _apply(params: dict, override: str) -> None:
    """Set one ``key=value`` override (YAML value, as DVC reads it) in a raw params dict."""
    key, _, text = override.partition("=")
    *parents, last = key.split(".")
    node: Any = params
    for part in parents:
        node = node.get(part) if isinstance(node, Mapping) else None
    if not isinstance(node, Mapping) or last not in node:
        raise SweepError(
            f"-S {override}: params.yaml has no key {key!r} (a sweep changes existing keys only)"
        )
    try:
        node[last] = yaml.safe_load(text)
    except yaml.YAMLError:
        raise SweepError(
            f"-S {override}: {text!r} is not a value DVC can set (YAML: a number, a word, [a,b])"
        ) from None


def check_jobs(
    raw: Mapping[str, Any], jobs: Sequence[Job], lookups: Mapping[str, Callable] | None = None
) -> None:
    """Every job's params, as ``dvc exp run -S`` would write them, pass the schema (and the model table)."""
    for job in jobs:
        params = copy.deepcopy(dict(raw))
        for override in job.overrides:
            _apply(params, override)
        try:
            validate(params, lookups)
        except ParamsError as exc:
            raise SweepError(f"sweep job {job.name} ({' '.join(job.overrides)}): {exc}") from None


def job_command(job: Job, source: Source, cache_dir: Path | None = None) -> str:
    """One self-contained shell line: clone at the commit, run the experiment, push it, clean up."""
    q = shlex.quote
    steps = [
        'w="$(mktemp -d -t cxr-sweep-XXXXXX)"',
        f'git clone -q {q(source.url)} "$w"',
        'cd "$w"',
        f"git checkout -q {q(source.commit)}",
    ]
    if cache_dir is not None:
        steps.append(f"dvc cache dir --local {q(str(cache_dir))}")
    sets = " ".join(f"-S {q(o)}" for o in job.overrides)
    steps += [
        f"dvc exp run --pull -n {q(job.name)} {sets}",
        f"dvc exp push {q(source.remote)} {q(job.name)}",
        'cd .. && rm -rf "$w"',
    ]
    return " && ".join(steps)


def slurm_script(commands: Sequence[str], sbatch: Sequence[str], max_parallel: int | None) -> str:
    """A SLURM array script: task i runs ``commands[i]``."""
    limit = f"%{max_parallel}" if max_parallel else ""
    lines = [
        "#!/bin/bash",
        "#SBATCH --job-name=cxr-sweep",
        f"#SBATCH --array=0-{len(commands) - 1}{limit}",
        "#SBATCH --output=cxr-sweep-%A_%a.log",
        *(f"#SBATCH {option}" for option in sbatch),
        "# written by `cxr sweep --format slurm`: one `dvc exp run` per array task, each pushed with",
        "# `dvc exp push`; gather them with `dvc exp pull <git remote>` and `cxr leaderboard`",
        "set -euo pipefail",
        "JOBS=(",
        *(f"  {shlex.quote(c)}" for c in commands),
        ")",
        'bash -c "${JOBS[$SLURM_ARRAY_TASK_ID]}"',
    ]
    return "\n".join(lines) + "\n"


def _run(args: Sequence[str], cwd: Path) -> str:
    done = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SweepError(f"`{' '.join(args[1:])}` failed in {cwd}: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


def find_source(repo: Path, remote: str, git: str) -> Source:
    """The Git remote's URL and this commit, which must be on it (the jobs clone from there)."""
    try:
        url = _run([git, "remote", "get-url", remote], repo)
    except SweepError:
        raise SweepError(
            f"no Git remote {remote!r} in {repo}: the jobs clone from it and push their experiments to it; "
            f"add one (git remote add {remote} <url>) or name another with --git-remote"
        ) from None
    commit = _run([git, "rev-parse", "HEAD"], repo)
    if not _run([git, "branch", "-r", "--contains", commit, "--list", f"{remote}/*"], repo):
        raise SweepError(
            f"commit {commit[:12]} is not on {remote} ({url}), so the jobs cannot check it out: "
            f"git push {remote} HEAD first"
        )
    return Source(remote, url, commit)


def check_dvc_remote(repo: Path, dvc: str) -> str:
    """The default DVC remote of the committed ``.dvc/config`` (clones see no other)."""
    name = _run([dvc, "remote", "default", "--project"], repo)
    if not name:
        raise SweepError(
            "the jobs push outputs with `dvc exp push` and pull data with `dvc exp run --pull`, which need a "
            "default DVC remote in the committed .dvc/config: dvc remote add -d <name> <url reachable from "
            "every worker>, then git commit .dvc/config and git push"
        )
    return name


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--models", help="comma-separated model names [default: params.yaml models]")
@click.option("--seeds", help="comma-separated training seeds [default: params.yaml seeds]")
@click.option(
    "-S", "--set", "sets", multiple=True, help="grid axis key=v1,v2,... as for dvc exp run (repeatable)"
)
@click.option("--format", "fmt", type=click.Choice(["lines", "slurm"]), default="lines", show_default=True)
@click.option(
    "--git-remote", default="origin", show_default=True, help="Git remote the jobs clone from and push to"
)
@click.option("--prefix", default="sweep", show_default=True, help="experiment names start with this")
@click.option(
    "--cache-dir", type=click.Path(path_type=Path), help="a DVC cache shared by the jobs of a machine"
)
@click.option("--sbatch", multiple=True, help="an #SBATCH option for --format slurm, e.g. --sbatch=--gpus=1")
@click.option("--max-parallel", type=click.IntRange(1), help="--format slurm: at most this many jobs at once")
@click.option(
    "--params", "params_path", type=click.Path(path_type=Path), default=Path("params.yaml"), show_default=True
)
@click.option(
    "--out", type=click.Path(path_type=Path, dir_okay=False), help="write the jobs here [default: stdout]"
)
def main(
    models: str | None,
    seeds: str | None,
    sets: tuple[str, ...],
    fmt: str,
    git_remote: str,
    prefix: str,
    cache_dir: Path | None,
    sbatch: tuple[str, ...],
    max_parallel: int | None,
    params_path: Path,
    out: Path | None,
) -> None:
    """Write a grid of models x seeds x -S values as independent `dvc exp run` jobs (docs/scale.md).

    Each job clones the Git remote at this commit, runs one experiment and pushes it with
    `dvc exp push`; gather them with `dvc exp pull <git remote>` and `cxr leaderboard`.
    """
    from cxr_core.models.registry import get_spec

    try:
        repo = params_path.resolve().parent
        params = load_params(params_path)
        raw = yaml.safe_load(params_path.read_text())
        model_list = [m.strip() for m in models.split(",")] if models else params["models"]
        seed_list = _seeds(seeds) if seeds else params["seeds"]
        jobs = expand(model_list, seed_list, [parse_set(s) for s in sets], prefix)
        check_jobs(raw, jobs, {"model": get_spec})
        git = find_tool("git", "install git")
        dvc = find_tool("dvc", "install the project (make install) or put dvc on PATH")
        source = find_source(repo, git_remote, git)
        storage = check_dvc_remote(repo, dvc)
    except (CxrError, ToolNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    commands = [job_command(job, source, cache_dir.resolve() if cache_dir else None) for job in jobs]
    text = slurm_script(commands, sbatch, max_parallel) if fmt == "slurm" else "\n".join(commands) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
    click.echo(
        f"{len(jobs)} job(s) ({len(model_list)} model(s) x {len(seed_list)} seed(s) x "
        f"{len(jobs) // max(len(model_list) * len(seed_list), 1)} params point(s)) of commit {source.commit[:12]} "
        f"from {source.remote} ({source.url}); each ends with dvc exp push to it and to DVC remote {storage!r}. "
        f"Gather: dvc exp pull {source.remote} && cxr leaderboard",
        err=True,
    )


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise SweepError(f"--seeds {text!r}: expected comma-separated integers such as 0,1,2") from None


if __name__ == "__main__":
    main()
