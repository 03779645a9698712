"""What the report reads: the input files, the stage that writes each, and one model's results.

Nothing is silently skipped: a missing input file is an error naming it and the DVC stage that
writes it; a method missing from one model's metrics is printed as ``n/a`` downstream.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cxr_core.audit.clinical import ClinicalMetrics, ReliabilityTable
from cxr_core.errors import CxrError
from cxr_core.evaluate.metrics import RocTable, TestMetrics
from cxr_core.evaluate.predictions import Predictions
from cxr_core.explain.baselines import BASELINES
from cxr_core.explain.heatmap_file import SavedHeatmaps
from cxr_core.explain.sanity_metrics import SanityMetrics
from cxr_core.explain.scoring import LocaliseMetrics
from cxr_core.models.registry import get_spec
from cxr_core.report.provenance import finite
from cxr_core.train.live import EpochLog

#: The random-map control; every other method's localisation numbers get its value beside them.
CONTROL_METHOD = "RandomCAM"
PHANTOM_BANNER = "PHANTOM (synthetic stand-in, not the NIH study)"
NIH_NAME = "NIH ChestX-ray14"


class MissingInputError(CxrError, FileNotFoundError):
    """Report inputs are missing; the message names every file and the stage that writes it."""


class InputFormatError(CxrError, ValueError):
    """A report input exists but lacks a key or column the report needs."""


@dataclass(frozen=True)
class ReportPaths:
    """Where the report reads and writes (the stage's command-line folders)."""

    metrics: Path
    plots: Path
    splits: Path
    cache: Path
    heatmaps: Path
    predictions: Path
    raw: Path
    out: Path

    def test_json(self, model: str, seed: int) -> Path:
        return TestMetrics.CONTRACT.run_file_under(self.metrics, model, seed)  # type: ignore[attr-defined]

    def localise_json(self, model: str, seed: int) -> Path:
        return LocaliseMetrics.CONTRACT.run_file_under(self.metrics, model, seed)  # type: ignore[attr-defined]

    def train_dir(self, model: str, seed: int) -> Path:
        return EpochLog.CONTRACT.run_file_under(self.metrics, model, seed)  # type: ignore[attr-defined]

    def train_tsv(self, model: str, seed: int, metric: str) -> Path:
        return self.train_dir(model, seed) / "plots" / "metrics" / f"{metric}.tsv"

    def train_summary(self, model: str, seed: int) -> Path:
        return self.train_dir(model, seed) / "metrics.json"

    def roc_csv(self, model: str, seed: int) -> Path:
        return RocTable.CONTRACT.run_file_under(self.plots, model, seed)  # type: ignore[attr-defined]

    def heatmaps_npz(self, model: str, seed: int) -> Path:
        return SavedHeatmaps.CONTRACT.run_file(self.heatmaps, model, seed)  # type: ignore[attr-defined]

    def predictions_npz(self, model: str, seed: int) -> Path:
        return Predictions.CONTRACT.run_file(self.predictions, model, seed)  # type: ignore[attr-defined]

    def clinical_json(self, model: str, seed: int) -> Path:
        return ClinicalMetrics.CONTRACT.run_file_under(self.metrics, model, seed)  # type: ignore[attr-defined]

    def reliability_csv(self, model: str, seed: int) -> Path:
        return ReliabilityTable.CONTRACT.run_file_under(self.plots, model, seed)  # type: ignore[attr-defined]

    def sanity_json(self, model: str, seed: int) -> Path:
        return SanityMetrics.CONTRACT.run_file_under(self.metrics, model, seed)  # type: ignore[attr-defined]

    def external_json(self, name: str) -> Path:
        return self.metrics / "external" / f"{name}.json"

    @property
    def compare_json(self) -> Path:
        return self.metrics / "compare.json"

    @property
    def headline_json(self) -> Path:
        """Written by the report: the compact leaderboard ``dvc exp show`` displays."""
        return self.metrics / "headline.json"

    @property
    def known_answer_json(self) -> Path:
        """Written by the report: each run's known-answer verdict (``make known-answer`` reads it)."""
        return self.metrics / "known_answer.json"

    @property
    def split_json(self) -> Path:
        return self.metrics / "split.json"

    @property
    def manifest(self) -> Path:
        return self.raw / "manifest.json"

    @property
    def loc_csv(self) -> Path:
        return self.splits / "loc.csv"

    @property
    def images_npy(self) -> Path:
        return self.cache / "images.npy"

    @property
    def figures(self) -> Path:
        return self.plots / "figures"


def run_stage(stage: str, model: str, seed: int) -> str:
    """DVC's name of a matrix stage's run: ``test@densenet121-0``."""
    return f"{stage}@{model}-{seed}"


def required_inputs(
    paths: ReportPaths, models: Sequence[str], seeds: Sequence[int], external: Sequence[str] = ()
) -> list[tuple[Path, str]]:
    """Every file the report reads, with the DVC stage that writes it (heatmap inputs: see below)."""
    needed: list[tuple[Path, str]] = [
        (paths.manifest, "download"),
        (paths.split_json, "split"),
        (paths.compare_json, "compare"),
    ]
    needed += [(paths.external_json(name), f"external@{name}") for name in external]
    for m in models:
        for k in seeds:
            needed += [
                (paths.test_json(m, k), run_stage("test", m, k)),
                (paths.roc_csv(m, k), run_stage("test", m, k)),
                (paths.localise_json(m, k), run_stage("localise", m, k)),
                (paths.train_summary(m, k), run_stage("train", m, k)),
                (paths.train_tsv(m, k, "val_loss"), run_stage("train", m, k)),
                (paths.clinical_json(m, k), run_stage("clinical", m, k)),
                (paths.reliability_csv(m, k), run_stage("clinical", m, k)),
                (paths.sanity_json(m, k), run_stage("sanity", m, k)),
            ]
    return needed


def example_inputs(paths: ReportPaths, model: str, seed: int) -> list[tuple[Path, str]]:
    """Files the example heatmap grid reads (the best model's heatmaps and probabilities, first seed)."""
    return [
        (paths.loc_csv, "split"),
        (paths.images_npy, "preprocess"),
        (paths.heatmaps_npz(model, seed), run_stage("cams", model, seed)),
        (paths.predictions_npz(model, seed), run_stage("test", model, seed)),
    ]


def check_inputs(needed: Iterable[tuple[Path, str]]) -> None:
    """Raise :class:`MissingInputError` listing *every* missing file, so one run shows all gaps."""
    missing = [(p, stage) for p, stage in needed if not Path(p).is_file()]
    if missing:
        lines = [f"  {p}  (written by stage '{stage}': run `dvc repro {stage}`)" for p, stage in missing]
        raise MissingInputError("report: missing input file(s):\n" + "\n".join(lines))


def read_json(path: Path, stage: str, keys: Iterable[str] = ()) -> dict:
    """The JSON object ``stage`` wrote at ``path``, with ``keys``; every error names both."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: missing (written by stage '{stage}': run `dvc repro {stage}`)")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputFormatError(f"{path}: not valid JSON ({exc}); re-run stage '{stage}'") from exc
    if not isinstance(doc, dict):
        raise InputFormatError(
            f"{path}: expected a JSON object, got {type(doc).__name__}; re-run stage '{stage}'"
        )
    _require_keys(doc, keys, path, stage)
    return doc


def _require_keys(doc: Mapping[str, Any], keys: Iterable[str], path: Path, stage: str) -> None:
    absent = [k for k in keys if k not in doc]
    if absent:
        raise InputFormatError(
            f"{path}: missing key(s) {absent}; re-run stage '{stage}' (see docs/architecture.md)"
        )


def _read_history(paths: ReportPaths, model: str, seed: int) -> pd.DataFrame:
    """Per-epoch DVCLive values of one run, indexed by epoch (``val_loss`` must be there)."""
    return EpochLog.read(paths.train_dir(model, seed))


@dataclass
class ModelResults:
    """Everything the report reads for one (model, seed) run."""

    name: str
    seed: int
    test: dict
    test_path: Path
    localise: dict
    localise_path: Path
    train: dict
    train_path: Path
    history: pd.DataFrame  # index epoch; columns val_loss (+ train_loss, val_macro_auc, lr if logged)
    roc: pd.DataFrame  # label, fpr, tpr

    @property
    def display(self) -> str:
        return display_name(self.name)

    @property
    def macro_auc(self) -> float | None:
        return finite(self.test.get("macro_auc"))

    def method(self, name: str) -> dict | None:
        return self.localise.get("methods", {}).get(name)


def load_model_results(paths: ReportPaths, model: str, seed: int) -> ModelResults:
    """Read and shape-check one run's metrics (files must exist: see :func:`check_inputs`)."""
    test_path, loc_path = paths.test_json(model, seed), paths.localise_json(model, seed)
    return ModelResults(
        name=model,
        seed=seed,
        test=TestMetrics.read(test_path),
        test_path=test_path,
        localise=LocaliseMetrics.read(loc_path),
        localise_path=loc_path,
        train=read_json(paths.train_summary(model, seed), run_stage("train", model, seed)),
        train_path=paths.train_summary(model, seed),
        history=_read_history(paths, model, seed),
        roc=RocTable.read(paths.roc_csv(model, seed)),
    )


def display_name(model: str) -> str:
    """How tables and figures name a model: the paper's name for its six, else the params name."""
    return get_spec(model).display_name


def best_model(models: Sequence[ModelResults], name: str | None = None) -> ModelResults | None:
    """The model called ``name`` (the comparison's best, over all seeds) if given, else the one with
    the highest macro AUC (first in params order on ties); None if none has one."""
    if name is not None:
        return next((m for m in models if m.name == name), None)
    scored = [m for m in models if m.macro_auc is not None]
    if not scored:
        return None
    return max(scored, key=lambda m: m.macro_auc)  # max keeps the first of equal keys


def method_names(models: Sequence[ModelResults], configured: Sequence[str] = ()) -> list[str]:
    """CAM methods to report: the configured ones first (even if absent: shown as n/a), then any other
    found; the image-independent baselines are not CAM methods (the held-out tables show them)."""
    found = [name for m in models for name in m.localise.get("methods", {}) if name not in BASELINES]
    return list(dict.fromkeys([*configured, *sorted(set(found) - set(configured))]))


def threshold_keys(models: Sequence[ModelResults], metric: str = "iou") -> list[str]:
    """Heatmap-threshold keys (``t010`` ...) found in any model / method, in numeric order."""
    keys = {
        k
        for m in models
        for method in m.localise.get("methods", {}).values()
        if isinstance(method, dict)
        for k in (method.get(metric) or {})
    }
    return sorted(keys, key=key_value)


def cutoff_keys(models: Sequence[ModelResults]) -> list[str]:
    """Box-accuracy cut-off keys (``T010`` ...) found anywhere, in numeric order."""
    keys = {
        c
        for m in models
        for method in m.localise.get("methods", {}).values()
        if isinstance(method, dict)
        for metric in ("box_acc_iou", "box_acc_iobb")
        for per_t in (method.get(metric) or {}).values()
        if isinstance(per_t, dict)
        for c in per_t
    }
    return sorted(keys, key=key_value)


def key_value(key: str) -> float:
    """``t010`` / ``T025`` -> 0.10 / 0.25 (docs/architecture.md: the key is ``t`` + round(100 a))."""
    return int(key[1:]) / 100.0


def data_source(manifest: Mapping[str, Any]) -> tuple[str, bool]:
    """(what the header calls the data, whether it is the phantom), from ``data/raw/manifest.json``."""
    source = str(manifest.get("source", ""))
    if source == "synthetic":
        return PHANTOM_BANNER, True
    if source == "nih":
        return NIH_NAME, False
    return f"{NIH_NAME} (local copy: {source})", False
