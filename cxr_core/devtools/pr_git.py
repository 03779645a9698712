"""git and DVC access for ``cxr pr-report``: the project, the revision compared against, files at it.

Its own module so the report's parts (headline, metrics summary, plots, the paired review) read the
repository one way: git and DVC run as subprocesses (the tables are what those commands print), and
every failure a user can fix is a :class:`PrReportError` with a one-line message.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_core.devtools.tools import find_tool
from cxr_core.errors import CxrError


class PrReportError(CxrError):
    """The report cannot be built: not a repository, an unknown revision, a missing tool or file."""


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
    git = find_tool("git", "install git")
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
    return Repo(path, git, find_tool("dvc", "install the project (make install) or activate .venv", dvc))


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


def _json_or_none(text: str | None) -> Any | None:
    try:
        return None if text is None else json.loads(text)
    except json.JSONDecodeError:
        return None


def metrics_docs(repo: Repo, rev: str, path: str) -> tuple[Any | None, Any | None]:
    """A metrics file at ``rev`` and in the workspace, None where absent or not JSON.

    Only read to find the intervals of changed values: a YAML metrics file or one kept in DVC's
    cache (not in git) has none here, and its rows are summarised without them.
    """
    file = repo.root / path
    head = _json_or_none(file.read_text(errors="replace")) if file.is_file() else None
    return _json_or_none(repo.git_out("show", f"{rev}:./{path}")), head


def exists_at(repo: Repo, rev: str, path: str) -> bool:
    return repo.git_out("cat-file", "-e", f"{rev}:./{path}") is not None
