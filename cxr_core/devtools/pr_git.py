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


#: what DVC calls the working tree in its tables
WORKSPACE = "workspace"
#: an experiment's ref: ``refs/exps/<2 hex>/<38 hex of its baseline>/<name>``
_EXP_REF = re.compile(r"refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/(?P<name>[^/]+)")


@dataclass(frozen=True)
class Revision:
    """One side of the comparison: a commit (a branch, tag, hash or ``dvc exp`` name) or the workspace.

    ``name`` is what was asked for (``origin/<name>`` where only that exists), ``sha`` its commit
    (empty for the workspace). git is always given the commit, and so is DVC for an experiment
    (DVC looks experiment names up among the current HEAD's first).
    """

    name: str
    sha: str = ""
    exp: bool = False

    @property
    def is_workspace(self) -> bool:
        return not self.sha

    @property
    def dvc(self) -> str:
        """The revision as ``dvc ... diff`` is given it (and names it in its tables)."""
        if self.is_workspace:
            return WORKSPACE
        return self.sha if self.exp else self.name

    @property
    def label(self) -> str:
        """Markdown for titles: ``workspace``, `` `main` (1a2b3c4)`` or ``experiment `name` (1a2b3c4)``."""
        if self.is_workspace:
            return WORKSPACE
        if self.sha.startswith(self.name) and len(self.name) < len(self.sha):  # an abbreviated hash
            return f"`{self.name}`"
        return f"{'experiment ' if self.exp else ''}`{self.name}` ({self.sha[:7]})"


#: the working tree as the head of a comparison
WORKSPACE_REV = Revision(WORKSPACE)


def _experiments(repo: Repo, name: str) -> list[str]:
    """Commits of the ``dvc exp`` experiments called ``name`` (any baseline): their git refs."""
    refs = repo.git_out("for-each-ref", "--format=%(objectname) %(refname)", "refs/exps/") or ""
    found = []
    for line in refs.splitlines():
        sha, _, ref = line.partition(" ")
        match = _EXP_REF.fullmatch(ref)
        if match and match["name"] == name and sha not in found:
            found.append(sha)
    return found


def resolve_rev(repo: Repo, name: str, role: str = "base") -> Revision:
    """The commit of ``name``: a git revision, ``origin/<name>`` when only that exists (a CI checkout
    of a PR: ``actions/checkout`` fetches the base branch as ``origin/main`` but creates no local
    ``main``), else a ``dvc exp`` experiment of that name. ``role`` (base, head) names it in errors.
    """
    if name.startswith("-"):  # would reach git and dvc as an option
        candidates = []
    elif name.startswith("origin/"):
        candidates = [name]
    else:
        candidates = [name, f"origin/{name}"]
    for candidate in candidates:
        sha = repo.git_out("rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}")
        if sha:
            return Revision(candidate, sha.strip())
    experiments = _experiments(repo, name) if candidates else []
    if len(experiments) == 1:
        return Revision(name, experiments[0], exp=True)
    if experiments:
        raise PrReportError(
            f"ambiguous {role} {name!r}: {len(experiments)} experiments of that name in {repo.root} "
            f"(commits {', '.join(s[:7] for s in experiments)}); give the commit instead"
        )
    raise PrReportError(
        f"unknown {role} revision {name!r}: no such commit, branch, tag or `dvc exp` experiment in "
        f"{repo.root} (fetch it first, e.g. `git fetch origin {name}` or `dvc exp pull origin {name}`, "
        "or clone with full history)"
    )


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PrReportError(f"{where}: not valid JSON ({exc})") from exc


def text_at(repo: Repo, rev: Revision, path: str) -> str | None:
    """A git-tracked file's text at ``rev`` (``git show``), or in the working tree; None if absent."""
    if rev.is_workspace:
        file = repo.root / path
        return file.read_text(errors="replace") if file.is_file() else None
    return repo.git_out("show", f"{rev.sha}:./{path}")


def read_at(repo: Repo, rev: Revision, path: str) -> Any | None:
    """A JSON file at ``rev`` (committed, or in the working tree), None when that side lacks it."""
    text = text_at(repo, rev, path)
    where = str(repo.root / path) if rev.is_workspace else f"{path} at {rev.name}"
    return None if text is None else _parse_json(text, where)


def _json_or_none(text: str | None) -> Any | None:
    try:
        return None if text is None else json.loads(text)
    except json.JSONDecodeError:
        return None


def metrics_docs(repo: Repo, base: Revision, head: Revision, path: str) -> tuple[Any | None, Any | None]:
    """A metrics file at the base and at the head, None where absent or not JSON.

    Only read to find the intervals of changed values: a YAML metrics file or one kept in DVC's
    cache (not in git) has none here, and its rows are summarised without them.
    """
    return _json_or_none(text_at(repo, base, path)), _json_or_none(text_at(repo, head, path))


def exists_at(repo: Repo, rev: Revision, path: str) -> bool:
    """Whether ``path`` is at ``rev``: committed there, or in the working tree."""
    if rev.is_workspace:
        return (repo.root / path).is_file()
    return repo.git_out("cat-file", "-e", f"{rev.sha}:./{path}") is not None
