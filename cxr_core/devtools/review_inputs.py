"""What the paired review reads from each side of a comparison: params, test scores, box records.

The base's predictions and box records are DVC outputs of another commit, so they are read through
DVC's file system at that commit (``dvc.api.DVCFileSystem``: the local cache, else a configured
remote); the head's come from the working tree, or the same way for a commit or ``dvc exp`` name.
Two kinds of failure, kept apart on purpose:

* a file that cannot be had (not an output at that revision, not in the cache, no remote that has
  it, the pipeline not run in the workspace) is :class:`Unavailable`: the review says so in one line
  and the report falls back to the unpaired headline;
* a file that is there but cannot be read is a :class:`~cxr_core.devtools.pr_git.PrReportError`
  naming the revision and the file (exit 1): the review must not quietly skip a broken result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from cxr_core.data.tables import LocTable
from cxr_core.devtools.pr_git import PrReportError, Repo, Revision, exists_at, text_at
from cxr_core.errors import ArtifactError
from cxr_core.evaluate.predictions import Predictions
from cxr_core.explain.scoring import BoxRecords
from cxr_core.files import read_npz
from cxr_core.labels import LABELS

PARAMS = "params.yaml"
#: the arrays of a predictions file the comparison needs (``cxr_core.compare.study.Predictions``);
#: older files without ``logits`` stay comparable
SCORE_ARRAYS = ("rows", "patients", "probs", "targets")


def run_path(file_type: Any, model: str, seed: int) -> str:
    """A run's file as the project lays it out (the registered contract's path, e.g.
    ``data/predictions/<model>/seed<k>.npz``), relative to the project root."""
    top = file_type.CONTRACT.path.partition("/")[0]
    return file_type.CONTRACT.run_file_under(top, model, seed).as_posix()


class Unavailable(Exception):
    """A file of one side cannot be had (or two sides cannot be paired); the message says why."""


@dataclass(frozen=True)
class Scores:
    """One run's test scores: cache rows, patients, N x 14 probabilities and 0/1 targets."""

    rows: np.ndarray
    patients: np.ndarray
    probs: np.ndarray
    targets: np.ndarray

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray]) -> Scores:
        """Checked: one row, patient and target row per probability row, 14 findings each."""
        n = len(arrays["rows"])
        shapes = {k: arrays[k].shape for k in ("probs", "targets")}
        if len(arrays["patients"]) != n or any(s != (n, len(LABELS)) for s in shapes.values()):
            listed = ", ".join(f"{k} {s}" for k, s in shapes.items())
            raise ValueError(
                f"{listed} and {len(arrays['patients'])} patients do not fit {n} rows x {len(LABELS)}"
            )
        return cls(*(np.asarray(arrays[k]) for k in SCORE_ARRAYS))

    def same_images(self, other: Scores) -> bool:
        """Scored the same images, in the same order, with the same patients and targets."""
        return all(
            np.array_equal(getattr(self, k), getattr(other, k)) for k in ("rows", "patients", "targets")
        )


def _dvc_outputs(lock_text: str | None) -> list[str]:
    """Output paths of a dvc.lock (files and folders), [] when absent or unreadable."""
    try:
        lock = yaml.safe_load(lock_text) if lock_text else None
    except yaml.YAMLError:
        return []
    stages = lock.get("stages") if isinstance(lock, Mapping) else None
    if not isinstance(stages, Mapping):
        return []
    return [
        str(out["path"])
        for stage in stages.values()
        if isinstance(stage, Mapping)
        for out in stage.get("outs") or []
        if isinstance(out, Mapping) and "path" in out
    ]


class Side:
    """One side of the comparison (``role``: base or head) and the files the review reads there.

    Files of a commit are copied into ``scratch`` once; the DVC file system is opened on first use
    (about a second) and only when a file is needed.
    """

    def __init__(self, repo: Repo, rev: Revision, role: str, scratch: Path) -> None:
        self.repo, self.rev, self.role = repo, rev, role
        self.scratch = scratch / role
        self._fs: Any = None
        self._outputs: list[str] | None = None

    @property
    def where(self) -> str:
        """``the base `main` (1a2b3c4)`` / ``the head (workspace)``: for messages."""
        return (
            f"the {self.role} ({self.rev.label})"
            if self.rev.is_workspace
            else f"the {self.role} {self.rev.label}"
        )

    def params(self) -> Mapping[str, Any]:
        """``params.yaml`` of this side ({} when it has none)."""
        text = text_at(self.repo, self.rev, PARAMS)
        try:
            doc = yaml.safe_load(text) if text else None
        except yaml.YAMLError as exc:
            raise PrReportError(f"{PARAMS} of {self.where} is not valid YAML: {exc}") from None
        return doc if isinstance(doc, Mapping) else {}

    def _declared(self, path: str) -> bool:
        """Whether the revision's dvc.lock has ``path`` as an output (or inside one), or git tracks it."""
        if self._outputs is None:
            self._outputs = _dvc_outputs(text_at(self.repo, self.rev, "dvc.lock"))
        inside = any(path == out or path.startswith(out.rstrip("/") + "/") for out in self._outputs)
        return inside or exists_at(self.repo, self.rev, path)

    def _filesystem(self) -> Any:
        if self._fs is None:
            try:
                from dvc.api import DVCFileSystem
            except ImportError as exc:
                raise Unavailable(
                    f"DVC cannot be imported in this Python ({exc}), so no revision's outputs can be read"
                ) from None
            self._fs = DVCFileSystem(str(self.repo.root), rev=self.rev.sha)
        return self._fs

    def local(self, path: str) -> Path:
        """A local copy of ``path`` (the file itself in the workspace), or :class:`Unavailable`."""
        if self.rev.is_workspace:
            file = self.repo.root / path
            if not file.is_file():
                raise Unavailable(f"`{path}` is not in the workspace (run `dvc repro`, or `dvc pull`)")
            return file
        target = self.scratch / path
        if target.is_file():
            return target
        if not self._declared(path):
            raise Unavailable(f"{self.where} has no `{path}` (not an output in its dvc.lock)")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._filesystem().get_file(path, str(target))
        except Unavailable:
            raise
        except Exception as exc:  # dvc-data raises FileNotFoundError, DataIndexDirError, remote errors...
            target.unlink(missing_ok=True)
            detail = "" if isinstance(exc, FileNotFoundError) else f" ({type(exc).__name__}: {exc})"
            where = f"`{path}` of {self.where}"
            raise Unavailable(
                f"{where} is neither in the local DVC cache nor on a configured remote{detail}"
            ) from None
        return target

    def _unreadable(self, path: str, local: Path, exc: Exception) -> PrReportError:
        message = str(exc).replace(str(local), f"`{path}`").removeprefix(f"`{path}`: ")
        return PrReportError(f"`{path}` of {self.where} cannot be read: {message}")

    def scores(self, model: str, seed: int) -> Scores:
        path = run_path(Predictions, model, seed)
        local = self.local(path)
        try:
            return Scores.of(read_npz(local, "the test stage (test@<model>-<seed>)", SCORE_ARRAYS))
        except (ArtifactError, ValueError) as exc:
            raise self._unreadable(path, local, exc) from None

    def boxes(self, model: str, seed: int) -> pd.DataFrame:
        path = run_path(BoxRecords, model, seed)
        local = self.local(path)
        try:
            return BoxRecords.read(local)
        except (ArtifactError, ValueError) as exc:
            raise self._unreadable(path, local, exc) from None

    def loc(self) -> pd.DataFrame:
        path = LocTable.CONTRACT.path  # type: ignore[attr-defined]
        local = self.local(path)
        try:
            return LocTable.read(local.parent).table
        except (ArtifactError, ValueError) as exc:
            raise self._unreadable(path, local, exc) from None
