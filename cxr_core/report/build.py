"""The report stage's tables and figures: the paper's Tables 5-8 and Figures 1, 6, 7, and more.

Three rules keep a report honest:

* **Provenance.** Every number printed in ``report.md`` is a :class:`Number`, made from the metrics
  file it came from and the JSON key path inside it. The report writes these to a side-car
  (``provenance.csv``), so a test can re-read every source file and check every printed number.
* **Labelled data.** The header says in big letters when the numbers come from the synthetic phantom,
  so a phantom report can never be mistaken for the NIH study; the literature rows of Table 6 are
  marked as other papers' numbers.
* **Nothing silently skipped.** A missing input file is an error naming it and the DVC stage that
  writes it; a method missing from one model's metrics is printed as ``n/a``.

Figures are drawn on :class:`matplotlib.figure.Figure` objects (Agg, no pyplot state), so the module
is safe to call from tests and never opens a window.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_core.explain.scoring import SavedHeatmaps
from cxr_core.labels import ABBREVIATIONS, BOX_LABELS, LABELS, NO_FINDING

logger = logging.getLogger(__name__)

NA = "n/a"
DECIMALS = 3
#: The random-map control; every other method's localisation numbers get its value beside them.
CONTROL_METHOD = "RandomCAM"
#: Methods with a table number in the paper (section 4.2.3); others are "beyond the paper".
PAPER_IOU_TABLES: dict[str, str] = {"GradCAM": "Table 7", "EigenCAM": "Table 8"}
#: Methods drawn in the example heatmap grid, in this order (the two the paper uses).
EXAMPLE_METHODS: tuple[str, ...] = ("GradCAM", "EigenCAM")
PHANTOM_BANNER = "PHANTOM (synthetic stand-in, not the NIH study)"
NIH_NAME = "NIH ChestX-ray14"
#: ``provenance.csv`` file name of the paper's literature rows (not a file: the constant below).
LITERATURE_SOURCE = "paper:Table 6"

#: The paper's Tables 5-6 header, in its order, as (label, column). Its text says "'pneumothorax'
#: and 'pneumonia' are abbreviated as 'pneul' and 'pneu2'", and the quoted literature values agree
#: (Yan et al.'s pneumothorax AUC 0.8759 sits under Pneu1), so Pneu1 = Pneumothorax here.
PAPER_AUC_ORDER: tuple[str, ...] = (
    "Atelectasis",
    "Consolidation",
    "Infiltration",
    "Pneumothorax",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Effusion",
    "Pneumonia",
    "Pleural_Thickening",
    "Cardiomegaly",
    "Nodule",
    "Hernia",
    "Mass",
)
PAPER_AUC_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (label, ABBREVIATIONS[label]) for label in PAPER_AUC_ORDER
)
#: The paper's Tables 7-8 header for the 8 box classes (it spells the two "Pneu" findings out).
PAPER_BOX_COLUMNS: tuple[tuple[str, str], ...] = (
    ("Atelectasis", "Atel"),
    ("Cardiomegaly", "Card"),
    ("Effusion", "Effu"),
    ("Infiltration", "Infi"),
    ("Mass", "Mass"),
    ("Nodule", "Nodu"),
    ("Pneumonia", "Pneumonia"),
    ("Pneumothorax", "Pneumothorax"),
)

#: Paper names of the six models (Tables 5-8); any other model keeps its params name.
DISPLAY_NAMES: dict[str, str] = {
    "densenet121": "DenseNet-121",
    "densenet169": "DenseNet-169",
    "efficientnet_b0": "ENet-b0",
    "efficientnet_b1": "ENet-b1",
    "swin_small": "Swin-Small",
    "swin_base": "Swin-Base",
}


@dataclass(frozen=True)
class LiteratureRow:
    """One row of the paper's Table 6: AUCs another study reports on the real NIH test split."""

    name: str
    citation: str
    auc: Mapping[str, str]  # full label name -> AUC exactly as the paper prints it ("0.8470", "0.78")
    average: str


def _paper_order(printed: str) -> dict[str, str]:
    """A Table 6 row as the paper prints it (14 AUCs in :data:`PAPER_AUC_ORDER`) -> label -> text."""
    return dict(zip(PAPER_AUC_ORDER, printed.split(), strict=True))


#: Copied verbatim from the paper's Table 6, "Comparison of AUCs with literature and our best model"
#: (paper/paper.txt, section 4.2.2; columns in :data:`PAPER_AUC_ORDER`, then "Average"), kept as the
#: printed strings so trailing zeros survive. References are the paper's [36], [10], [33]; the first
#: row is the paper's own best model. All four were measured on the real NIH ChestX-ray14 official
#: test split, never on this pipeline's outputs.
LITERATURE_TABLE6: tuple[LiteratureRow, ...] = (
    LiteratureRow(
        "Original study: DenseNet-169",
        "the replicated paper (Crawley, Durham MEng thesis), Tables 5-6",
        _paper_order("0.76 0.74 0.69 0.84 0.84 0.90 0.81 0.83 0.71 0.76 0.89 0.74 0.91 0.81"),
        "0.8024",
    ),
    LiteratureRow(
        "Yan et al. [36] (SOTA)",
        "C. Yan, J. Yao, R. Li, Z. Xu, J. Huang. Weakly supervised deep learning for thoracic disease "
        "classification and localization on chest X-rays. ACM BCB 2018",
        _paper_order(
            "0.792 0.7598 0.7095 0.8759 0.8478 0.9422 0.8326 0.8415 0.7397 0.8083 0.8814 0.8105 0.9341 0.8470"
        ),
        "0.8302",
    ),
    LiteratureRow(
        "Guendel et al. [10]",
        "S. Guendel, S. Grbic, B. Georgescu, S. Liu, A. Maier, D. Comaniciu. Learning to recognize "
        "abnormalities in chest X-rays with location-aware dense networks. CIARP 2018",
        _paper_order("0.767 0.745 0.709 0.846 0.835 0.895 0.818 0.828 0.731 0.761 0.883 0.758 0.896 0.821"),
        "0.807",
    ),
    LiteratureRow(
        "Taslimi et al. [33]",
        "S. Taslimi, S. Taslimi, N. Fathi, M. Salehi, M. H. Rohban. SwinCheX: Multi-label classification "
        "on chest X-ray images with transformers. arXiv 2022",
        _paper_order("0.781 0.748 0.701 0.871 0.848 0.914 0.826 0.824 0.713 0.778 0.875 0.78 0.855 0.822"),
        "0.81",
    ),
)


class MissingInputError(FileNotFoundError):
    """Report inputs are missing; the message names every file and the stage that writes it."""


class InputFormatError(ValueError):
    """A report input exists but lacks a key or column the report needs."""


# --------------------------------------------------------------------------------------------------
# Paths and inputs


@dataclass(frozen=True)
class ReportPaths:
    """Where the report reads and writes (the stage's command-line folders)."""

    metrics: Path
    plots: Path
    splits: Path
    cache: Path
    heatmaps: Path
    raw: Path
    out: Path

    def test_json(self, model: str) -> Path:
        return self.metrics / "test" / f"{model}.json"

    def localise_json(self, model: str) -> Path:
        return self.metrics / "localise" / f"{model}.json"

    def train_dir(self, model: str) -> Path:
        return self.metrics / "train" / model

    def train_tsv(self, model: str, metric: str) -> Path:
        return self.train_dir(model) / "plots" / "metrics" / f"{metric}.tsv"

    def train_summary(self, model: str) -> Path:
        return self.train_dir(model) / "metrics.json"

    def roc_csv(self, model: str) -> Path:
        return self.plots / "roc" / f"{model}.csv"

    def heatmaps_npz(self, model: str) -> Path:
        return self.heatmaps / f"{model}.npz"

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


def required_inputs(paths: ReportPaths, models: Sequence[str]) -> list[tuple[Path, str]]:
    """Every file the report reads, with the DVC stage that writes it (heatmap inputs: see below)."""
    needed: list[tuple[Path, str]] = [
        (paths.manifest, "download"),
        (paths.split_json, "split"),
    ]
    for m in models:
        needed += [
            (paths.test_json(m), f"test@{m}"),
            (paths.roc_csv(m), f"test@{m}"),
            (paths.localise_json(m), f"localise@{m}"),
            (paths.train_summary(m), f"train@{m}"),
            (paths.train_tsv(m, "val_loss"), f"train@{m}"),
        ]
    return needed


def example_inputs(paths: ReportPaths, model: str) -> list[tuple[Path, str]]:
    """Files the example heatmap grid reads (only the best model's heatmaps)."""
    return [
        (paths.loc_csv, "split"),
        (paths.images_npy, "preprocess"),
        (paths.heatmaps_npz(model), f"cams@{model}"),
    ]


def check_inputs(needed: Iterable[tuple[Path, str]]) -> None:
    """Raise :class:`MissingInputError` listing *every* missing file, so one run shows all gaps."""
    missing = [(p, stage) for p, stage in needed if not Path(p).is_file()]
    if missing:
        lines = [f"  {p}  (written by stage '{stage}': run `dvc repro {stage}`)" for p, stage in missing]
        raise MissingInputError("report: missing input file(s):\n" + "\n".join(lines))


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise InputFormatError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise InputFormatError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _require_keys(doc: Mapping[str, Any], keys: Iterable[str], path: Path, stage: str) -> None:
    absent = [k for k in keys if k not in doc]
    if absent:
        raise InputFormatError(
            f"{path}: missing key(s) {absent}; re-run stage '{stage}' (see docs/architecture.md)"
        )


def _read_history(paths: ReportPaths, model: str) -> pd.DataFrame:
    """Per-epoch DVCLive values as one frame indexed by epoch; ``val_loss`` must be there."""
    frame: pd.DataFrame | None = None
    for metric in ("val_loss", "train_loss", "val_macro_auc", "lr"):
        path = paths.train_tsv(model, metric)
        if not path.is_file():
            continue
        tsv = pd.read_csv(path, sep="\t")
        if "step" not in tsv.columns or metric not in tsv.columns:
            raise InputFormatError(f"{path}: expected columns 'step' and '{metric}', got {list(tsv.columns)}")
        tsv = tsv[["step", metric]].drop_duplicates("step", keep="last").set_index("step")
        frame = tsv if frame is None else frame.join(tsv, how="outer")
    if frame is None:  # check_inputs looks for val_loss.tsv first; this guards direct callers
        raise MissingInputError(
            f"{paths.train_tsv(model, 'val_loss')}: missing; run `dvc repro train@{model}`"
        )
    frame.index.name = "epoch"
    return frame.sort_index()


@dataclass
class ModelResults:
    """Everything the report reads for one model."""

    name: str
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
        return _finite(self.test.get("macro_auc"))

    def method(self, name: str) -> dict | None:
        return self.localise.get("methods", {}).get(name)


def load_model_results(paths: ReportPaths, model: str) -> ModelResults:
    """Read and shape-check one model's metrics (files must exist: see :func:`check_inputs`)."""
    test = _read_json(paths.test_json(model))
    _require_keys(
        test, ("auc", "auc_ci", "macro_auc", "macro_auc_ci"), paths.test_json(model), f"test@{model}"
    )
    loc = _read_json(paths.localise_json(model))
    _require_keys(loc, ("methods",), paths.localise_json(model), f"localise@{model}")
    roc = pd.read_csv(paths.roc_csv(model))
    if not {"label", "fpr", "tpr"} <= set(roc.columns):
        raise InputFormatError(
            f"{paths.roc_csv(model)}: expected columns label,fpr,tpr, got {list(roc.columns)}; "
            f"re-run stage 'test@{model}'"
        )
    return ModelResults(
        name=model,
        test=test,
        test_path=paths.test_json(model),
        localise=loc,
        localise_path=paths.localise_json(model),
        train=_read_json(paths.train_summary(model)),
        train_path=paths.train_summary(model),
        history=_read_history(paths, model),
        roc=roc,
    )


def display_name(model: str) -> str:
    """The paper's name for one of its six models; any other model keeps its params name."""
    return DISPLAY_NAMES.get(model, model)


def best_model(models: Sequence[ModelResults]) -> ModelResults | None:
    """The model with the highest macro AUC (first in params order on ties); None if none has one."""
    scored = [m for m in models if m.macro_auc is not None]
    if not scored:
        return None
    return max(scored, key=lambda m: m.macro_auc)  # max keeps the first of equal keys


def method_names(models: Sequence[ModelResults], configured: Sequence[str] = ()) -> list[str]:
    """Methods to report: the configured ones first (even if absent: shown as n/a), then any other found."""
    found = [name for m in models for name in m.localise.get("methods", {})]
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


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


# --------------------------------------------------------------------------------------------------
# Numbers with provenance, cells and tables


@dataclass(frozen=True)
class Number:
    """One printed number and where it came from (file + JSON key path)."""

    value: float | None
    text: str
    file: str
    keys: tuple[str, ...]
    kind: str = "float"  # "float": 3 decimals | "int" | "literal": a quoted number, as printed there
    role: str = "value"  # value | ci_low | ci_high | random


def lookup(doc: Any, keys: Sequence[str]) -> Any:
    """Walk ``keys`` into nested dicts / lists; None where any step is missing."""
    node = doc
    for key in keys:
        if isinstance(node, Mapping):
            node = node.get(key)
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return None
        if node is None:
            return None
    return node


def format_value(value: float | int | None, kind: str = "float") -> str:
    """The one formatting rule of the report: 3 decimals, integers as integers, n/a for missing."""
    v = _finite(value)
    if v is None:
        return NA
    return str(int(round(v))) if kind == "int" else f"{v:.{DECIMALS}f}"


def number(
    doc: Any, file: str | Path, keys: Sequence[str], *, kind: str = "float", role: str = "value"
) -> Number:
    """The value at ``keys`` in ``doc`` (read from ``file``), formatted and tagged with its source."""
    keys = tuple(str(k) for k in keys)
    raw = lookup(doc, keys)
    value = _finite(raw)
    return Number(value, format_value(value, kind), str(file), keys, kind, role)


def quoted(text: str, keys: Sequence[str]) -> Number:
    """A literature number, printed exactly as the paper prints it (never re-rounded)."""
    return Number(float(text), text, LITERATURE_SOURCE, tuple(keys), "literal")


@dataclass(frozen=True)
class Cell:
    """A table cell: its text and the numbers printed in it, in order."""

    text: str
    numbers: tuple[Number, ...] = ()


def plain_cell(n: Number) -> Cell:
    return Cell(n.text, (n,))


def ci_cell(value: Number, low: Number, high: Number) -> Cell:
    """``0.812 [0.801, 0.830]``; just the value when the interval was not computed (bootstrap 0)."""
    if low.value is None and high.value is None:
        return plain_cell(value)
    return Cell(f"{value.text} [{low.text}, {high.text}]", (value, low, high))


def control_cell(value: Number, control: Number | None) -> Cell:
    """``0.420 (rand 0.110)``: the random-map control's value beside every localisation number."""
    if control is None:
        return plain_cell(value)
    return Cell(f"{value.text} (rand {control.text})", (value, control))


@dataclass
class Table:
    """A report table: Markdown for report.md, numbers for its CSV, provenance for the side-car."""

    key: str  # file stem in reports/tables/
    title: str
    row_header: str
    columns: list[str]
    rows: list[tuple[str, list[Cell]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add_row(self, label: str, cells: list[Cell]) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(
                f"{self.key}: row {label!r} has {len(cells)} cells for {len(self.columns)} columns"
            )
        self.rows.append((label, cells))

    def markdown(self) -> str:
        head = [self.row_header, *self.columns]
        lines = [f"<!-- table: {self.key} -->", f"### {self.title}", ""]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * len(self.columns)) + "|")
        lines += ["| " + " | ".join([label] + [c.text for c in cells]) + " |" for label, cells in self.rows]
        lines += [""] + [f"{note}\n" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def frame(self) -> pd.DataFrame:
        """Numbers at full precision: one column per (column, role), e.g. ``Card``, ``Card_ci_low``."""
        records = []
        for label, cells in self.rows:
            record: dict[str, Any] = {self.row_header: label}
            for column, cell in zip(self.columns, cells, strict=True):
                for n in cell.numbers:
                    record[column if n.role == "value" else f"{column}_{n.role}"] = n.value
            records.append(record)
        return pd.DataFrame.from_records(records)

    def provenance(self) -> list[dict[str, Any]]:
        return [
            {
                "table": self.key,
                "row": label,
                "column": column,
                "position": i,
                "role": n.role,
                "text": n.text,
                "kind": n.kind,
                "file": n.file,
                "keys": json.dumps(list(n.keys)),
                "value": n.value,
            }
            for label, cells in self.rows
            for column, cell in zip(self.columns, cells, strict=True)
            for i, n in enumerate(cell.numbers)
        ]


def abbreviation_legend(columns: Sequence[tuple[str, str]]) -> str:
    """Which finding each column is (the paper's Pneu1 / Pneu2 are easy to swap)."""
    pairs = [f"{column} = {label.replace('_', ' ')}" for label, column in columns if column != label]
    return "Abbreviations: " + ", ".join(pairs) + "."


# --------------------------------------------------------------------------------------------------
# Tables


def data_table(split: Mapping[str, Any], split_path: Path) -> Table:
    """Images, patients and boxes of the data actually used (``metrics/split.json``)."""
    table = Table("data", "Data used (metrics/split.json)", "split", ["images", "patients", "boxes"])
    for name in ("train", "val", "test", "loc"):
        if name not in split:
            raise InputFormatError(f"{split_path}: no '{name}' entry; re-run stage 'split'")
        table.add_row(
            name,
            [plain_cell(number(split, split_path, (name, col), kind="int")) for col in table.columns],
        )
    table.notes.append("loc = the test images with radiologist boxes (the localisation set).")
    return table


def training_table(models: Sequence[ModelResults]) -> Table:
    """Epochs trained and the best epoch per model (DVCLive summary ``metrics/train/<m>/metrics.json``)."""
    keys = [
        ("epochs_trained", "int"),
        ("best_epoch", "int"),
        ("best_val_loss", "float"),
        ("best_val_macro_auc", "float"),
    ]
    table = Table("training", "Training (DVCLive summaries)", "model", [k for k, _ in keys])
    for m in models:
        table.add_row(
            m.display, [plain_cell(number(m.train, m.train_path, (k,), kind=kind)) for k, kind in keys]
        )
    return table


def auc_table(models: Sequence[ModelResults]) -> Table:
    """Table 5: per-class test AUC per model with 95% bootstrap CIs, and the macro mean."""
    columns = [column for _, column in PAPER_AUC_COLUMNS] + ["Macro"]
    table = Table("table5_auc", "Table 5: test AUC per class [95% CI]", "model", columns)
    for m in models:
        cells = [
            ci_cell(
                number(m.test, m.test_path, ("auc", name)),
                number(m.test, m.test_path, ("auc_ci", name, "0"), role="ci_low"),
                number(m.test, m.test_path, ("auc_ci", name, "1"), role="ci_high"),
            )
            for name in PAPER_AUC_ORDER
        ]
        cells.append(
            ci_cell(
                number(m.test, m.test_path, ("macro_auc",)),
                number(m.test, m.test_path, ("macro_auc_ci", "0"), role="ci_low"),
                number(m.test, m.test_path, ("macro_auc_ci", "1"), role="ci_high"),
            )
        )
        table.add_row(m.display, cells)
    table.notes.append(
        "Columns in the paper's order. Macro = mean over the classes with an AUC; "
        "CIs from a patient-level bootstrap. " + abbreviation_legend(PAPER_AUC_COLUMNS)
    )
    return table


def literature_table(best: ModelResults | None, phantom: bool) -> Table:
    """Table 6: the best model of this run beside the literature rows the paper quotes."""
    columns = [column for _, column in PAPER_AUC_COLUMNS] + ["Average"]
    table = Table(
        "table6_literature", "Table 6: best model vs. the literature (paper's Table 6)", "model", columns
    )
    if best is not None:
        cells = [plain_cell(number(best.test, best.test_path, ("auc", name))) for name in PAPER_AUC_ORDER]
        cells.append(plain_cell(number(best.test, best.test_path, ("macro_auc",))))
        table.add_row(f"{best.display} (this run, best macro AUC)", cells)
    for row in LITERATURE_TABLE6:
        printed = [*(row.auc[name] for name in PAPER_AUC_ORDER), row.average]
        keys = [*PAPER_AUC_ORDER, "average"]
        cells = [plain_cell(quoted(text, (row.name, key))) for text, key in zip(printed, keys, strict=True)]
        table.add_row(f"{row.name} [other paper, NIH data]", cells)
    where = (
        f"This run used the {PHANTOM_BANNER}: its row is NOT comparable with the literature rows."
        if phantom
        else "The literature rows used the same official test split but their own training set-ups."
    )
    table.notes.append(
        "**Rows marked [other paper, NIH data] are other studies' AUCs on the real NIH ChestX-ray14 "
        "official test split, quoted exactly as the paper's Table 6 prints them.** " + where
    )
    table.notes.append(
        "Sources: " + "; ".join(f"{row.name}: {row.citation}" for row in LITERATURE_TABLE6) + "."
    )
    if best is None:
        table.notes.append("No model of this run has a macro AUC, so no row of ours is shown.")
    return table


def _control(m: ModelResults, method: str, has_control: bool, keys: Sequence[str]) -> Number | None:
    """The RandomCAM value at the same keys for the same model (None when no run has a control)."""
    if method == CONTROL_METHOD or not has_control:
        return None
    return number(m.localise, m.localise_path, ("methods", CONTROL_METHOD, *keys), role="random")


def _method_title(method: str, what: str) -> str:
    paper = PAPER_IOU_TABLES.get(method)
    if what == "paper IoU" and paper:
        return f"{paper}: {method} paper IoU per class x threshold"
    suffix = " (random-map control)" if method == CONTROL_METHOD else " (beyond the paper)"
    return f"{method} {what}{suffix}"


def iou_table(
    models: Sequence[ModelResults], method: str, thresholds: Sequence[str], has_control: bool
) -> Table:
    """Tables 7 / 8 (and the same for any other method): paper IoU per box class and threshold."""
    columns = [column for _, column in PAPER_BOX_COLUMNS] + ["Avg"]
    table = Table(f"iou_{method}", _method_title(method, "paper IoU"), "model - threshold", columns)
    for m in models:
        for t in thresholds:
            cells = [
                control_cell(
                    number(m.localise, m.localise_path, ("methods", method, "iou", t, key)),
                    _control(m, method, has_control, ("iou", t, key)),
                )
                for key in [*(label for label, _ in PAPER_BOX_COLUMNS), "mean"]
            ]
            table.add_row(f"{m.display} - {key_value(t):.2f}", cells)
    table.notes.append(
        "IoU = sum(A*B) / sum(max(A, B)) with A = [heatmap > threshold x 255] and B the radiologist box "
        "(paper section 3.4); per-class mean over boxes, Avg = mean over the box classes. "
        + abbreviation_legend(PAPER_BOX_COLUMNS)
    )
    return table


def box_accuracy_table(
    models: Sequence[ModelResults],
    method: str,
    thresholds: Sequence[str],
    cutoffs: Sequence[str],
    has_control: bool,
) -> Table:
    """Accuracy at T of boxes drawn from the thresholded heatmap, scored by IoU and IoBB (Wang et al.)."""
    metrics = (("box_acc_iou", "IoU"), ("box_acc_iobb", "IoBB"))
    columns = [f"{label}>={key_value(c):.2f}" for _, label in metrics for c in cutoffs]
    table = Table(
        f"box_accuracy_{method}", _method_title(method, "box accuracy"), "model - heatmap threshold", columns
    )
    for m in models:
        for t in thresholds:
            cells = [
                control_cell(
                    number(m.localise, m.localise_path, ("methods", method, metric, t, c)),
                    _control(m, method, has_control, (metric, t, c)),
                )
                for metric, _ in metrics
                for c in cutoffs
            ]
            table.add_row(f"{m.display} - {key_value(t):.2f}", cells)
    table.notes.append(
        "Fraction of radiologist boxes whose best heatmap box (connected components of the thresholded "
        "map) reaches IoU / IoBB >= T (Wang et al. 2017)."
    )
    return table


def pointing_table(models: Sequence[ModelResults], method: str, has_control: bool) -> Table:
    """Pointing game per box class: is the heatmap's maximum inside the box."""
    columns = [column for _, column in PAPER_BOX_COLUMNS] + ["Avg"]
    table = Table(f"pointing_{method}", _method_title(method, "pointing game"), "model", columns)
    for m in models:
        cells = [
            control_cell(
                number(m.localise, m.localise_path, ("methods", method, "pointing", key)),
                _control(m, method, has_control, ("pointing", key)),
            )
            for key in [*(label for label, _ in PAPER_BOX_COLUMNS), "mean"]
        ]
        table.add_row(m.display, cells)
    return table


def degenerate_table(models: Sequence[ModelResults], methods: Sequence[str]) -> Table | None:
    """Fraction of flat (degenerate) heatmaps per model and method; None when every one is 0."""
    table = Table("degenerate", "Degenerate (flat) heatmaps", "model", list(methods))
    flagged: list[str] = []
    for m in models:
        cells = [
            plain_cell(number(m.localise, m.localise_path, ("methods", meth, "degenerate_fraction")))
            for meth in methods
        ]
        flagged += [
            f"{meth} on {m.display}" for meth, c in zip(methods, cells, strict=True) if c.numbers[0].value
        ]
        table.add_row(m.display, cells)
    if not flagged:
        return None
    table.notes.append(
        "**Note:** some heatmaps were flat (constant: they point nowhere, and a flat map is a "
        "miss in the pointing game): "
        + ", ".join(flagged)
        + ". Read those methods' numbers with the fractions above in mind."
    )
    return table


# --------------------------------------------------------------------------------------------------
# Header and report assembly


def git_commit(cwd: str | Path | None = None) -> str:
    """``git rev-parse --short HEAD``, or "unknown" outside a git repository / without git."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


def data_source(manifest: Mapping[str, Any]) -> tuple[str, bool]:
    """(what the header calls the data, whether it is the phantom), from ``data/raw/manifest.json``."""
    source = str(manifest.get("source", ""))
    if source == "synthetic":
        return PHANTOM_BANNER, True
    if source == "nih":
        return NIH_NAME, False
    return f"{NIH_NAME} (local copy: {source})", False


def header(params: Mapping[str, Any], manifest: Mapping[str, Any], date: str, commit: str) -> str:
    """Title, data source in big letters, config, date and commit: a report says what it is."""
    source, phantom = data_source(manifest)
    train = params["train"]
    lines = [f"# {source}", ""]
    if phantom:
        lines += [
            "> **Every number in this report was measured on a synthetic phantom data set generated by the "
            "pipeline. It is NOT a result on NIH ChestX-ray14 and must not be quoted or compared as one.**",
            "",
        ]
    lines += [
        "## Chest X-ray classification and localisation report",
        "",
        f"- Data source: **{source}** (raw data manifest: source = `{manifest.get('source')}`, "
        f"{manifest.get('images', NA)} images)",
        f"- Config: image size {params['preprocess']['image_size']} px; epochs (max) {train['epochs']}; "
        f"lr {params['lr']}; loss {train['loss']}; pretrained {str(train['pretrained']).lower()}; "
        f"models {', '.join(params['models'])}",
        f"- Generated: {date}; git commit `{commit}`",
        "",
    ]
    return "\n".join(lines)


@dataclass
class Report:
    """The assembled report: Markdown text and the tables behind it."""

    markdown: str
    tables: list[Table]
    best: str | None
    phantom: bool

    def provenance(self) -> pd.DataFrame:
        return pd.DataFrame.from_records([r for t in self.tables for r in t.provenance()])


def localisation_tables(models: Sequence[ModelResults], methods: Sequence[str]) -> list[Table]:
    """Tables 7, 8 and the same for every other method, then box accuracy and pointing game per method."""
    thresholds = threshold_keys(models, "iou")
    box_thresholds = threshold_keys(models, "box_acc_iou")
    cutoffs = cutoff_keys(models)
    has_control = any(m.method(CONTROL_METHOD) is not None for m in models)
    ordered = [meth for meth in PAPER_IOU_TABLES if meth in methods]
    ordered += [meth for meth in methods if meth not in PAPER_IOU_TABLES]
    tables: list[Table] = [iou_table(models, meth, thresholds, has_control) for meth in ordered]
    tables += [box_accuracy_table(models, meth, box_thresholds, cutoffs, has_control) for meth in ordered]
    tables += [pointing_table(models, meth, has_control) for meth in ordered]
    if not has_control:
        tables[0].notes.append(f"No {CONTROL_METHOD} control in the metrics: chance levels are not shown.")
    return tables


def build_report(
    params: Mapping[str, Any],
    manifest: Mapping[str, Any],
    split: Mapping[str, Any],
    split_path: Path,
    models: Sequence[ModelResults],
    figures: Mapping[str, Path],
    out_dir: Path,
    *,
    date: str,
    commit: str,
) -> Report:
    """Assemble report.md: header, data, training, Tables 5-8 and the localisation extras, figures."""
    _, phantom = data_source(manifest)
    best = best_model(models)
    methods = method_names(models, params["cam"]["methods"])

    def figure(key: str, caption: str) -> str:
        path = figures.get(key)
        if path is None:
            return ""
        return f"![{caption}]({Path(os.path.relpath(path, out_dir)).as_posix()})\n\n*{caption}*\n"

    sections: list[tuple[str, list[Table], list[str]]] = [
        (
            "Data",
            [data_table(split, split_path)],
            [figure("labels", "Figure 1: label counts of the data used")],
        ),
        (
            "Training",
            [training_table(models)],
            [figure("val_loss", "Figures 6-7: validation loss per epoch")],
        ),
        (
            "Classification",
            [auc_table(models), literature_table(best, phantom)],
            [figure("roc", "ROC curves per class")],
        ),
    ]
    loc_tables = localisation_tables(models, methods)
    degenerate = degenerate_table(models, methods)
    if degenerate is not None:
        loc_tables.append(degenerate)
    loc_text = [
        figure("iou", "Paper IoU (class mean) against heatmap threshold"),
        figure("examples", "Example heatmaps"),
    ]
    sections.append(("Localisation", loc_tables, loc_text))

    parts = [header(params, manifest, date, commit)]
    if best is not None:
        parts.append(f"Best model (highest macro test AUC): **{best.display}**.\n")
    for title, tables, extra in sections:
        parts.append(f"## {title}\n")
        parts += [t.markdown() for t in tables]
        parts += [e for e in extra if e]
    tables = [t for _, ts, _ in sections for t in ts]
    return Report("\n".join(parts), tables, best.name if best else None, phantom)


def write_report(report: Report, out_dir: Path) -> None:
    """report.md, one CSV per table (full precision) and the provenance side-car."""
    tables_dir = out_dir / "tables"
    tables_dir.mkdir(parents=True, exist_ok=True)
    for stale in tables_dir.glob("*.csv"):  # a method dropped since the last run must not linger
        stale.unlink()
    for table in report.tables:
        table.frame().to_csv(tables_dir / f"{table.key}.csv", index=False)
    report.provenance().to_csv(out_dir / "provenance.csv", index=False)
    (out_dir / "report.md").write_text(report.markdown)
    logger.info("wrote %s, %d tables in %s", out_dir / "report.md", len(report.tables), tables_dir)


# --------------------------------------------------------------------------------------------------
# Figures and the data behind them


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    logger.info("wrote %s", path)
    return path


def label_counts(split: Mapping[str, Any]) -> pd.DataFrame:
    """Images per finding (and No Finding) per split, summed over train + val + test (Figure 1 data)."""
    rows = []
    for name in [*LABELS, NO_FINDING]:
        row: dict[str, Any] = {"label": name}
        for part in ("train", "val", "test"):
            entry = split[part]
            row[part] = int(entry["no_finding"] if name == NO_FINDING else entry["positives"][name])
        row["total"] = row["train"] + row["val"] + row["test"]
        rows.append(row)
    return pd.DataFrame(rows)


def plot_label_counts(counts: pd.DataFrame, path: Path, source: str) -> Path:
    """Figure 1: stacked bars of images per label in the data actually used."""
    fig = _figure(9, 5)
    ax = fig.subplots()
    bottom = np.zeros(len(counts))
    for part in ("train", "val", "test"):
        ax.bar(counts["label"], counts[part], bottom=bottom, label=part)
        bottom += counts[part].to_numpy()
    ax.set_ylabel("images")
    ax.set_title(f"Figure 1: images per label ({source})")
    ax.set_xticks(
        range(len(counts)), [str(x).replace("_", " ") for x in counts["label"]], rotation=60, ha="right"
    )
    ax.legend()
    return _save(fig, path)


def plot_val_loss(models: Sequence[ModelResults], path: Path) -> Path:
    """Figures 6-7: validation loss per epoch, one panel per model (3 per row, as the paper)."""
    from matplotlib.ticker import MaxNLocator

    cols = min(3, len(models))
    rows = math.ceil(len(models) / cols)
    fig = _figure(4 * cols, 3 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, m in zip(axes, models, strict=False):
        h = m.history
        ax.plot(h.index, h["val_loss"], marker="o", label="val loss")
        if "train_loss" in h:
            ax.plot(h.index, h["train_loss"], linestyle="--", alpha=0.6, label="train loss")
        best = _finite(m.train.get("best_epoch"))
        if best is not None:
            ax.axvline(best, color="grey", linestyle=":", label="best epoch")
        ax.set_title(m.display)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend(fontsize="small")
    for ax in axes[len(models) :]:
        ax.set_visible(False)
    fig.suptitle("Figures 6-7: validation loss per epoch")
    return _save(fig, path)


def plot_roc_grid(models: Sequence[ModelResults], path: Path) -> Path:
    """ROC curves: one panel per class (14), one line per model; classes without an AUC stay empty."""
    fig = _figure(13, 13)
    axes = fig.subplots(4, 4).ravel()
    for ax, label in zip(axes, LABELS, strict=False):
        for m in models:
            curve = m.roc[m.roc["label"] == label]
            if len(curve):
                macro = format_value(m.macro_auc)
                ax.plot(curve["fpr"], curve["tpr"], label=f"{m.display} (macro AUC {macro})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(label.replace("_", " "), fontsize="medium")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    for ax in axes[len(LABELS) :]:
        ax.axis("off")
    handles, names = axes[0].get_legend_handles_labels()
    axes[len(LABELS)].legend(handles, names, loc="center")
    fig.supxlabel("false positive rate")
    fig.supylabel("true positive rate")
    return _save(fig, path)


def iou_vs_threshold(models: Sequence[ModelResults], methods: Sequence[str]) -> pd.DataFrame:
    """Long frame ``model, method, threshold, iou`` of the class-mean paper IoU (n/a rows left out)."""
    rows = [
        {"model": m.name, "method": meth, "threshold": key_value(t), "iou": v}
        for m in models
        for meth in methods
        for t in threshold_keys(models, "iou")
        if (v := _finite(lookup(m.localise, ("methods", meth, "iou", t, "mean")))) is not None
    ]
    return pd.DataFrame(rows, columns=["model", "method", "threshold", "iou"])


def write_iou_vs_threshold(
    frame: pd.DataFrame, models: Sequence[ModelResults], methods: Sequence[str], out_dir: Path
) -> None:
    """One CSV per model, ``threshold`` + one column per method (empty = n/a).

    DVC draws a directory plot as one chart per file and can put several ``y`` columns in a chart
    but cannot split one column by a key, so this shape gives one chart per model with each method
    beside the RandomCAM control.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.csv"):
        stale.unlink()
    for m in models:
        part = frame[frame["model"] == m.name]
        wide = part.pivot_table(index="threshold", columns="method", values="iou", aggfunc="first")
        wide = wide.reindex(columns=list(methods)).reset_index()
        wide.columns.name = None
        wide.to_csv(out_dir / f"{m.name}.csv", index=False)


def plot_iou_vs_threshold(
    frame: pd.DataFrame, methods: Sequence[str], models: Sequence[ModelResults], path: Path
) -> Path:
    """Class-mean paper IoU against threshold: one panel per method, one line per model, control dashed."""
    cols = min(len(methods), 4) or 1
    rows = max(1, math.ceil(len(methods) / cols))
    fig = _figure(4 * cols, 3.2 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    control = frame[frame["method"] == CONTROL_METHOD].groupby("threshold")["iou"].mean()
    for ax, meth in zip(axes, methods, strict=False):
        for m in models:
            part = frame[(frame["method"] == meth) & (frame["model"] == m.name)]
            if len(part):
                ax.plot(part["threshold"], part["iou"], marker="o", label=m.display)
        if meth != CONTROL_METHOD and len(control):
            ax.plot(
                control.index,
                control.to_numpy(),
                color="black",
                linestyle="--",
                label=f"{CONTROL_METHOD} (mean)",
            )
        ax.set_title(meth)
        ax.set_xlabel("heatmap threshold")
        ax.set_ylabel("paper IoU (class mean)")
        ax.legend(fontsize="x-small")
    for ax in axes[len(methods) :]:
        ax.set_visible(False)
    return _save(fig, path)


def choose_examples(loc: pd.DataFrame, n: int) -> list[int]:
    """Positions of ``n`` loc boxes, round-robin over the box classes so the grid shows several findings."""
    queues = {name: list(np.flatnonzero(loc["label"].to_numpy() == name)) for name in BOX_LABELS}
    chosen: list[int] = []
    while len(chosen) < min(n, len(loc)):
        for name in BOX_LABELS:
            if queues[name] and len(chosen) < n:
                chosen.append(int(queues[name].pop(0)))
    return chosen


def plot_heatmap_examples(
    loc: pd.DataFrame, images: np.ndarray, heatmaps: Mapping[str, np.ndarray], model: str, n: int, path: Path
) -> Path:
    """Example grid: each row one loc box, the X-ray then each method's overlay, radiologist box drawn."""
    from matplotlib.patches import Rectangle

    maps = [k for k in heatmaps if k != "probs"]
    methods = [meth for meth in EXAMPLE_METHODS if meth in heatmaps] or maps[:2]
    picks = choose_examples(loc, n)
    fig = _figure(2.6 * (1 + len(methods)), 2.6 * len(picks))
    axes = fig.subplots(len(picks), 1 + len(methods), squeeze=False)
    probs = heatmaps.get("probs")
    for r, pos in enumerate(picks):
        box = loc.iloc[pos]
        image = images[int(box["row"])]
        p = "" if probs is None else f", p={float(probs[pos, LABELS.index(box['label'])]):.2f}"
        panels = [("X-ray + box", None)] + [(meth, heatmaps[meth][pos]) for meth in methods]
        for c, (name, heat) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
            if heat is not None:
                ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=255)
            ax.add_patch(
                Rectangle(
                    (box["x"], box["y"]), box["w"], box["h"], fill=False, edgecolor="lime", linewidth=1.5
                )
            )
            ax.set_title(f"{box['label']}{p}" if c == 0 else name, fontsize="small")
            ax.set_axis_off()
    fig.suptitle(f"Example heatmaps: {display_name(model)} (green: radiologist box)")
    return _save(fig, path)


def load_examples(paths: ReportPaths, model: str) -> tuple[pd.DataFrame, np.ndarray, dict[str, np.ndarray]]:
    """loc.csv, the image cache (memmap) and the model's heatmaps, checked to line up."""
    loc = pd.read_csv(paths.loc_csv, dtype={"image": str})
    images = np.load(paths.images_npy, mmap_mode="r")
    saved = SavedHeatmaps.load(paths.heatmaps_npz(model))
    heatmaps = {**saved.maps, "probs": saved.probs}
    for name, arr in heatmaps.items():
        if len(arr) != len(loc):
            raise InputFormatError(
                f"{paths.heatmaps_npz(model)}: '{name}' has {len(arr)} rows but {paths.loc_csv} has {len(loc)} "
                f"boxes; re-run stage 'cams@{model}'"
            )
        if name != "probs" and arr.shape[1:] != images.shape[1:]:
            raise InputFormatError(
                f"{paths.heatmaps_npz(model)}: '{name}' maps are {arr.shape[1:]} but the cache images are "
                f"{images.shape[1:]}; re-run stage 'cams@{model}'"
            )
    return loc, images, heatmaps


# --------------------------------------------------------------------------------------------------
# The stage


def make_report(
    params: Mapping[str, Any],
    paths: ReportPaths,
    *,
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    commit: str | None = None,
) -> Report:
    """Read every input, draw the figures, write report.md + tables; returns the report."""
    models_cfg: list[str] = list(params["models"])
    check_inputs(required_inputs(paths, models_cfg))
    manifest = _read_json(paths.manifest)
    split = _read_json(paths.split_json)
    models = [load_model_results(paths, m) for m in models_cfg]
    best = best_model(models)
    source, _ = data_source(manifest)
    methods = method_names(models, params["cam"]["methods"])

    examples = int(params["report"]["examples"])
    example_model = (best or models[0]).name
    if examples > 0:
        check_inputs(example_inputs(paths, example_model))

    figures: dict[str, Path] = {}
    for stale in paths.figures.glob("*.png"):  # e.g. the example grid after report.examples -> 0
        stale.unlink()
    counts = label_counts(split)
    paths.plots.mkdir(parents=True, exist_ok=True)
    counts.to_csv(paths.plots / "label_counts.csv", index=False)
    figures["labels"] = plot_label_counts(counts, paths.figures / "fig1_label_counts.png", source)
    figures["val_loss"] = plot_val_loss(models, paths.figures / "fig6_7_val_loss.png")
    figures["roc"] = plot_roc_grid(models, paths.figures / "roc_curves.png")
    iou = iou_vs_threshold(models, methods)
    write_iou_vs_threshold(iou, models, methods, paths.plots / "iou_vs_threshold")
    figures["iou"] = plot_iou_vs_threshold(iou, methods, models, paths.figures / "iou_vs_threshold.png")
    if examples > 0:
        loc, images, heatmaps = load_examples(paths, example_model)
        figures["examples"] = plot_heatmap_examples(
            loc, images, heatmaps, example_model, examples, paths.figures / "heatmap_examples.png"
        )

    report = build_report(
        params,
        manifest,
        split,
        paths.split_json,
        models,
        figures,
        paths.out,
        date=now().strftime("%Y-%m-%d %H:%M UTC"),
        commit=commit if commit is not None else git_commit(),
    )
    write_report(report, paths.out)
    return report
