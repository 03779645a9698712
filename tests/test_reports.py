"""The report stage: files, the data-source header, every printed number against its source, Table 6.

The inputs are fake but consistent (2 models, 14 labels, 3 CAM methods incl. the RandomCAM control,
a tiny cache and heatmaps), drawn from a seeded RNG so that no two numbers coincide: a number printed
under the wrong model, class or threshold cannot match its source by accident.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from cxr_core.audit.clinical import (
    ClinicalMetrics,
    ClinicalSettings,
    ReliabilityTable,
    Split,
    clinical_audit,
)
from cxr_core.audit.external_metrics import ExternalMetrics
from cxr_core.compare.study import CompareSettings, ComparisonMetrics, compare_study
from cxr_core.data.metadata import BOX_SPACE
from cxr_core.data.tables import LocTable
from cxr_core.evaluate.predictions import Predictions
from cxr_core.explain.heatmap_file import SavedHeatmaps
from cxr_core.explain.sanity_metrics import SanityMetrics
from cxr_core.labels import BOX_LABELS, LABELS
from cxr_core.report import ReportPaths, figures, inputs, literature, make_report, provenance
from stages.report import main as report_main

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = ["densenet121", "swin_small"]
METHODS = ["GradCAM", "EigenCAM", "RandomCAM"]
THRESHOLDS = ["t010", "t015", "t025", "t035", "t045"]
CUTOFFS = ["T010", "T025", "T050"]
SIZE = 32
EXAMPLES = 3

#: The paper's (Crawley, Durham MEng thesis) Table 6, transcribed again here independently of
#: cxr_core.report.literature: columns Atel Cons Infi Pneu1 Edem Emph Fibr Effu Pneu2 Pleu Card Nodu Hern Mass Average.
PAPER_TABLE6 = """\
DenseNet-169 (ours)\t0.76\t0.74\t0.69\t0.84\t0.84\t0.90\t0.81\t0.83\t0.71\t0.76\t0.89\t0.74\t0.91\t0.81\t0.8024
Yan et al. [36] (SOTA)\t0.792\t0.7598\t0.7095\t0.8759\t0.8478\t0.9422\t0.8326\t0.8415\t0.7397\t0.8083\t0.8814\t0.8105\t0.9341\t0.8470\t0.8302
Gundel et al. [10]\t0.767\t0.745\t0.709\t0.846\t0.835\t0.895\t0.818\t0.828\t0.731\t0.761\t0.883\t0.758\t0.896\t0.821\t0.807
Taslimi et al. [33]\t0.781\t0.748\t0.701\t0.871\t0.848\t0.914\t0.826\t0.824\t0.713\t0.778\t0.875\t0.78\t0.855\t0.822\t0.81
"""
#: The paper's header and its text: "'pneumothorax' and 'pneumonia' are abbreviated as 'pneul' and 'pneu2'".
PAPER_ABBREVIATIONS = {
    "Atel": "Atelectasis",
    "Cons": "Consolidation",
    "Infi": "Infiltration",
    "Pneu1": "Pneumothorax",
    "Edem": "Edema",
    "Emph": "Emphysema",
    "Fibr": "Fibrosis",
    "Effu": "Effusion",
    "Pneu2": "Pneumonia",
    "Pleu": "Pleural_Thickening",
    "Card": "Cardiomegaly",
    "Nodu": "Nodule",
    "Hern": "Hernia",
    "Mass": "Mass",
}
PAPER_COLUMNS = list(PAPER_ABBREVIATIONS)
#: The paper's Table 7 / 8 header ("Model Name - Threshold ... Avg").
PAPER_BOX_HEADER = ["Atel", "Card", "Effu", "Infi", "Mass", "Nodu", "Pneumonia", "Pneumothorax", "Avg"]
BOX_ABBREVIATIONS = {a: PAPER_ABBREVIATIONS.get(a, a) for a in PAPER_BOX_HEADER[:-1]}

NUMBER = re.compile(r"n/a|-?\d+(?:\.\d+)?")


@dataclass
class Inputs:
    root: Path
    params: Path
    test: dict[str, dict]
    localise: dict[str, dict]


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def _split_json(rng: np.random.Generator) -> dict:
    out: dict[str, Any] = {}
    for name, n in (("train", 300), ("val", 40), ("test", 160)):
        positives = {lab: int(rng.integers(5, 60)) for lab in LABELS}
        out[name] = {
            "images": n,
            "patients": n // 3,
            "no_finding": int(rng.integers(20, 90)),
            "positives": positives,
            "prevalence": {lab: round(p / n, 5) for lab, p in positives.items()},
        }
    out["loc"] = {"images": 11, "boxes": 12, "patients": 9, "boxes_per_label": dict.fromkeys(BOX_LABELS, 1)}
    out["shared_patients"] = {"train_val": 0, "train_test": 0, "val_test": 0}
    return out


def _test_json(rng: np.random.Generator, offset: float, undefined: tuple[str, ...] = ()) -> dict:
    auc = {lab: None if lab in undefined else float(rng.uniform(0.55, 0.85) + offset) for lab in LABELS}
    ci = {
        lab: [None, None] if a is None else [a - rng.uniform(0.01, 0.05), a + rng.uniform(0.01, 0.05)]
        for lab, a in auc.items()
    }
    defined = [a for a in auc.values() if a is not None]
    macro = float(np.mean(defined))
    return {
        "auc": auc,
        "auc_ci": ci,
        "auprc": {lab: float(rng.uniform(0.1, 0.5)) for lab in LABELS},
        "macro_auc": macro,
        "macro_auc_ci": [macro - 0.02, macro + 0.03],
        "macro_auprc": 0.3,
        "n_images": 160,
        "n_patients": 53,
        "positives": dict.fromkeys(LABELS, 10),
    }


def _method(
    rng: np.random.Generator, scale: float, degenerate: float = 0.0, drop_class: str | None = None
) -> dict:
    def per_class() -> dict:
        vals = {lab: float(rng.uniform(0, scale)) for lab in BOX_LABELS if lab != drop_class}
        return vals | {"mean": float(np.mean(list(vals.values())))}

    return {
        "iou": {t: per_class() for t in THRESHOLDS},
        "box_acc_iou": {t: {c: float(rng.uniform(0, scale)) for c in CUTOFFS} for t in THRESHOLDS},
        "box_acc_iobb": {t: {c: float(rng.uniform(0, scale)) for c in CUTOFFS} for t in THRESHOLDS},
        "pointing": per_class(),
        "degenerate_fraction": degenerate,
        "heldout": {
            "chosen_on": "tune",
            "thresholds": {
                "iou": float(rng.choice([0.2, 0.4])),
                "maxboxacc": {d: float(rng.choice([0.1, 0.3])) for d in ("d030", "d050", "d070")},
            },
            "report": {name: per_class() for name in ("energy", "pointing", "iou_tuned", "maxboxacc")},
        },
    }


def _localise_json(
    rng: np.random.Generator, methods: list[str], degenerate: float = 0.0, model: str = "m"
) -> dict:
    out = {
        name: _method(
            rng, 0.1 if name == "RandomCAM" else 0.6, degenerate if name == "GradCAM" else 0.0, "Nodule"
        )
        for name in methods
    }
    subsets = {"tune": 6, "report": 6}
    return {
        "model": model,
        "n_boxes": 12,
        "n_images": 11,
        "image_size": SIZE,
        "subsets": subsets,
        "methods": out,
    }


def _dvclive(folder: Path, rng: np.random.Generator, epochs: int) -> None:
    plots = folder / "plots" / "metrics"
    plots.mkdir(parents=True)
    steps = np.arange(1, epochs + 1)
    val = 0.6 / steps + rng.uniform(0, 0.02, epochs)
    for name, values in (("val_loss", val), ("train_loss", val * 0.8), ("lr", np.full(epochs, 5e-4))):
        pd.DataFrame({"step": steps, name: values}).to_csv(plots / f"{name}.tsv", sep="\t", index=False)
    best = int(np.argmin(val))
    summary = {
        "val_loss": float(val[-1]),
        "step": epochs,
        "best_epoch": best + 1,
        "best_val_loss": float(val[best]),
    }
    summary |= {
        "best_val_macro_auc": float(rng.uniform(0.6, 0.9)),
        "epochs_trained": epochs,
        "stopped_early": False,
    }
    _write_json(folder / "metrics.json", summary)


def _roc(path: Path, rng: np.random.Generator) -> None:
    rows = []
    for lab in LABELS:
        fpr = np.r_[0.0, np.sort(rng.uniform(0, 1, 8)), 1.0]
        tpr = np.maximum.accumulate(np.clip(fpr + rng.uniform(0, 0.3, fpr.size), 0, 1))
        tpr[0], tpr[-1] = 0.0, 1.0
        rows.append(pd.DataFrame({"label": lab, "fpr": fpr, "tpr": tpr}))
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.concat(rows).to_csv(path, index=False)


def _loc_and_images(root: Path, rng: np.random.Generator) -> int:
    labels = [*BOX_LABELS, "Cardiomegaly", "Effusion", "Mass", "Nodule"]
    k = len(labels)
    xs = rng.uniform(2, 14, k)
    ys = rng.uniform(2, 14, k)
    ws, hs = rng.uniform(4, 14, k), rng.uniform(4, 14, k)
    scale = BOX_SPACE / SIZE
    loc = pd.DataFrame(
        {
            "row": np.arange(k) + 5,
            "image": [f"{i:08d}_000.png" for i in range(k)],
            "patient": np.arange(k) // 2,
            "label": labels,
            "label_index": [LABELS.index(lab) for lab in labels],
            "x": xs,
            "y": ys,
            "w": ws,
            "h": hs,
            "x1024": xs * scale,
            "y1024": ys * scale,
            "w1024": ws * scale,
            "h1024": hs * scale,
            "subset": np.where((np.arange(k) // 2) % 2 == 0, "tune", "report"),
        }
    )
    LocTable(loc).write(root / "data" / "splits")
    (root / "data" / "cache").mkdir(parents=True)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    body = (120 + 80 * np.exp(-((xx - 16) ** 2 + (yy - 16) ** 2) / 120)).astype(np.uint8)
    images = np.stack([body + rng.integers(0, 30, (SIZE, SIZE), dtype=np.uint8) for _ in range(k + 10)])
    np.save(root / "data" / "cache" / "images.npy", images)
    names = [f"{i:08d}_000.png" for i in range(len(images))]
    pd.DataFrame({"row": np.arange(len(images)), "image": names}).to_csv(
        root / "data" / "cache" / "index.csv", index=False
    )
    return k


def _heatmaps(path: Path, rng: np.random.Generator, k: int, methods: list[str]) -> None:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    arrays = {}
    for name in methods:
        centres = rng.uniform(4, 28, (k, 2))
        maps = np.exp(-((xx[None] - centres[:, :1, None]) ** 2 + (yy[None] - centres[:, 1:, None]) ** 2) / 40)
        arrays[name] = np.uint8(255 * maps)
    probs = rng.uniform(0, 1, (k, len(LABELS))).astype(np.float32)
    raw = {name: rng.uniform(0, 2, (k, 4, 4)).astype(np.float32) for name in methods}
    SavedHeatmaps(arrays, {name: np.zeros(k, bool) for name in methods}, raw).save(path)
    # the run's test predictions for the same images (loc rows 5..5+k), as the test stage writes them
    rows = np.arange(k) + 5
    names = np.array([f"{i:08d}_000.png" for i in range(k)])
    targets = (probs > 0.5).astype(np.uint8)
    root = path.parents[3]
    predictions = Predictions(names, rows, rows // 2, probs, targets, logits=np.log(probs))
    predictions.save(root / "data" / "predictions" / path.parent.name / path.name)


EPOCHS = 7  # set in the fake params, so the header test does not depend on the shipped value
FINGERPRINT = hashlib.sha256(b"fake raw images").hexdigest()


def build_inputs(root: Path, source: str = "synthetic") -> Inputs:
    """Consistent fake inputs for every file the report reads; swin_small has the higher macro AUC."""
    rng = np.random.default_rng(7)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["models"] = MODELS
    params["cam"]["methods"] = METHODS
    params["report"]["examples"] = EXAMPLES
    params["preprocess"]["image_size"] = SIZE
    params["train"]["epochs"] = EPOCHS
    params["external"]["datasets"] = ["phantom"] if source == "synthetic" else []  # as configs/paper.yaml
    params_path = root / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))

    manifest = {
        "source": source,
        "label_file": "Data_Entry_2017_v2020.csv",
        "layout": "official",
        "image_root": "images",
        "images": 500,
        "missing": [],
        "fingerprint": FINGERPRINT,
    }
    _write_json(root / "data" / "raw" / "manifest.json", manifest)
    _write_json(root / "metrics" / "split.json", _split_json(rng))
    tests = {"densenet121": _test_json(rng, 0.0), "swin_small": _test_json(rng, 0.1, undefined=("Hernia",))}
    locs = {
        "densenet121": _localise_json(rng, METHODS, degenerate=0.25),
        "swin_small": _localise_json(rng, ["GradCAM", "RandomCAM"]),  # no EigenCAM: n/a in Table 8
    }
    k = _loc_and_images(root, rng)
    for epochs, m in zip((4, 3), MODELS, strict=True):
        _write_json(root / "metrics" / "test" / m / "seed0.json", tests[m])
        _write_json(root / "metrics" / "localise" / m / "seed0.json", locs[m])
        _dvclive(root / "metrics" / "train" / m / "seed0", rng, epochs)
        _roc(root / "plots" / "roc" / m / "seed0.csv", rng)
        _heatmaps(root / "data" / "heatmaps" / m / "seed0.npz", rng, k, METHODS)
    _compare_json(root, rng, params)
    _clinical(root, rng, params)
    _sanity(root, rng)
    _external(root, rng)
    return Inputs(root, params_path, tests, locs)


def _external(root: Path, rng: np.random.Generator) -> None:
    """metrics/external/phantom.json: two classes (one a proxy), and boxes for densenet121 only."""
    classes = [
        {"name": "Effusion", "nih": ["Effusion"], "source": "Pleural Effusion", "kind": "direct"},
        {"name": "Lung Lesion", "nih": ["Mass", "Nodule"], "source": "Lung Lesion", "kind": "proxy"},
    ]

    def pair() -> tuple[float, list[float]]:
        v = float(rng.uniform(0.55, 0.9))
        return v, [v - 0.05, v + 0.05]

    runs = {}
    for m in MODELS:
        per_class = {}
        for c in classes:
            (auc, auc_ci), (nih, nih_ci) = pair(), pair()
            per_class[c["name"]] = {
                "kind": c["kind"], "nih": c["nih"], "auc": auc, "auc_ci": auc_ci, "nih_auc": nih,
                "nih_auc_ci": nih_ci, "drop": auc - nih, "drop_ci": [auc - nih - 0.1, auc - nih + 0.1],
                "n_labelled": 90, "positives": 12, "missing": 4, "nih_positives": 20,
                "in_macro": c["kind"] == "direct",
            }  # fmt: skip
        run = {
            "classes": per_class,
            "macro_classes": [c["name"] for c in classes],
            "macro_auc": 0.7, "macro_auc_ci": [0.6, 0.8], "nih_macro_auc": 0.8,
            "nih_macro_auc_ci": [0.75, 0.85], "macro_drop": -0.1, "macro_drop_ci": [-0.2, 0.0],
        }  # fmt: skip
        if m == "densenet121":
            run["boxes"] = {
                "n_targets": 5,
                "n_images": 4,
                "methods": {
                    method: {"iou_threshold": 0.5, "pointing": {"Effusion": 0.6, "mean": 0.6},
                             "iou_tuned": {"Effusion": 0.3, "mean": 0.3}}
                    for method in METHODS
                },
            }  # fmt: skip
        runs[m] = {"seed0": run}
    ExternalMetrics.write(
        root / "metrics" / "external" / "phantom.json",
        {
            "dataset": "phantom", "phantom": True, "label_file": "CheXpert-v1.0-small/valid.csv",
            "settings": {"csv": "valid.csv", "uncertain": "missing", "frontal_only": True},
            "bootstrap_group": "patient", "min_positives": 5,
            "n_images": 94, "n_patients": 50, "n_boxes": 0, "classes": classes,
            "left_out": {"lateral_skipped": 9, "unreadable": 0, "leakage_dropped": 0},
            "leakage": {"checked_against": "NIH train + val images", "n_reference": 400, "min_correlation": 0.99,
                        "fingerprint": {"side": 64, "sigma": 1.0},
                        "action": "refuse", "matches": 0, "nih_derived_markers": []},
            "n_boot": 1000, "ci": 0.95, "seed": 0, "models": runs,
        },
    )  # fmt: skip


def _sanity(root: Path, rng: np.random.Generator) -> None:
    """metrics/sanity/: GradCAM passes the randomisation check, EigenCAM fails on densenet121."""
    steps = ["head", "head+features.norm5"]
    for m in MODELS:
        methods = {}
        for method in METHODS:
            final = 0.9 if method == "RandomCAM" or (m, method) == ("densenet121", "EigenCAM") else 0.2
            methods[method] = {
                "spearman": {"head": float(rng.uniform(0.5, 1.0)), steps[-1]: final},
                "final_spearman": final,
                "passes": final < 0.5,
                "faithfulness": float(rng.uniform(-0.05, 0.2)),
            }
        doc = {
            "model": m,
            "n_images": 8,
            "subset": "report",
            "steps": steps,
            "modules": {"head": ["classifier"], steps[-1]: ["classifier", "features.norm5"]},
            "max_rank_correlation": 0.5,
            "faithfulness": "cam_mult",
            "road_percentiles": [20, 40, 60, 80],
            "methods": methods,
        }
        SanityMetrics.write(root / "metrics" / "sanity" / m / "seed0.json", doc)


def _clinical(root: Path, rng: np.random.Generator, params: dict) -> None:
    """metrics/clinical/ and plots/reliability/ from the real clinical audit on fake val / test runs."""
    n_val, n_test = 90, 150
    images = np.array([f"{i:08d}_000.png" for i in range(n_val + n_test)])
    label_table = pd.DataFrame(
        {
            "image": images,
            "age": rng.integers(5, 95, images.size),
            "sex": rng.choice(["M", "F"], images.size),
            "view": rng.choice(["PA", "AP"], images.size),
        }
    )
    adjudicated = pd.DataFrame({"image": images[n_val:][::2], "set": "test"})
    for name in ("fracture", "pneumothorax", "airspace_opacity", "nodule_or_mass"):
        adjudicated[name] = (rng.uniform(size=len(adjudicated)) < 0.3).astype(float)
    settings = ClinicalSettings.from_params({**params, "test": {**params["test"], "bootstrap": 100}})
    for m, signal in (("densenet121", 1.0), ("swin_small", 2.0)):
        splits = []
        for part in (slice(0, n_val), slice(n_val, None)):
            k = images[part].size
            targets = (rng.uniform(size=(k, len(LABELS))) < 0.3).astype(np.uint8)
            logits = signal * (targets - 0.5) + rng.normal(size=targets.shape)
            probs = (1 / (1 + np.exp(-logits))).astype(np.float32)
            splits.append(Split(images[part], np.arange(k) // 3, targets, logits, probs))
        doc, points, curves = clinical_audit(*splits, label_table, adjudicated, settings)
        ClinicalMetrics.write(
            root / "metrics" / "clinical" / m / "seed0.json", {"model": m, "seed": 0, **doc}
        )
        ReliabilityTable.write(root / "plots" / "reliability" / m / "seed0.csv", curves)


def _compare_json(root: Path, rng: np.random.Generator, params: dict) -> None:
    """metrics/compare.json from the real compare code on fake runs in which swin_small is better."""
    n = 120
    targets = (rng.uniform(size=(n, len(LABELS))) < 0.3).astype(np.uint8)
    patients = np.arange(n) // 3
    rows = np.arange(n)
    runs = {}
    for m, signal in (("densenet121", 0.2), ("swin_small", 0.8)):
        probs = (signal * targets + rng.uniform(size=targets.shape)).astype(np.float32) / 2
        names = np.array([f"{i:08d}_000.png" for i in rows])
        runs[m] = [Predictions(names, rows, patients, probs, targets, logits=np.log(probs))]  # logits unused
    loc = LocTable.read(root / "data" / "splits").table
    records = {}
    for m, p_hit in (("densenet121", 0.3), ("swin_small", 0.7)):
        frames = []
        for method in [*METHODS, "BoxPrior", "UniformMap"]:
            hit = rng.uniform(size=len(loc)) < (0.1 if method in ("RandomCAM", "UniformMap") else p_hit)
            frames.append(
                loc[["row", "label", "subset"]].assign(
                    method=method,
                    pointing_hit=hit,
                    box_iou_t025=rng.uniform(size=len(loc)),
                    energy=rng.uniform(0, p_hit, size=len(loc)),
                    iou_tuned=rng.uniform(0, p_hit, size=len(loc)),
                    maxboxacc=rng.choice([0, 1 / 3, 2 / 3, 1], size=len(loc)),
                )
            )
        records[m] = [pd.concat(frames, ignore_index=True)]
    settings = CompareSettings(
        n_boot=200,
        ci=0.95,
        seed=0,
        alpha=0.05,
        min_auc_difference=0.0,
        min_rate_difference=0.0,
        box_threshold=0.25,
        box_cutoff=0.1,
    )
    doc = compare_study(runs, records, loc, params["seeds"], settings)
    ComparisonMetrics.write(root / "metrics" / "compare.json", doc)


def report_paths(case: Inputs, out: str = "reports") -> ReportPaths:
    r = case.root
    return ReportPaths(
        metrics=r / "metrics",
        plots=r / "plots",
        splits=r / "data/splits",
        cache=r / "data/cache",
        heatmaps=r / "data/heatmaps",
        predictions=r / "data/predictions",
        raw=r / "data/raw",
        out=r / out,
    )


def run_stage(case: Inputs, out: str = "reports") -> Any:
    """``python -m stages.report`` with every folder option pointing into the fixture's root."""
    r = case.root
    args = ["--params", str(case.params), "--metrics", str(r / "metrics"), "--plots", str(r / "plots")]
    args += ["--splits", str(r / "data/splits"), "--cache", str(r / "data/cache")]
    args += [
        "--heatmaps",
        str(r / "data/heatmaps"),
        "--predictions",
        str(r / "data/predictions"),
        "--raw",
        str(r / "data/raw"),
        "--out",
        str(r / out),
    ]
    return CliRunner().invoke(report_main, args)


@pytest.fixture(scope="module")
def phantom_report(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    case = build_inputs(tmp_path_factory.mktemp("report"))
    result = run_stage(case)
    assert result.exit_code == 0, (result.output, result.exception)
    return case


def parse_tables(markdown: str) -> dict[str, dict[str, Any]]:
    """report.md tables back into {key: {"columns": [...], "rows": {label: [cell text, ...]}}}."""
    tables: dict[str, dict[str, Any]] = {}
    key = None
    for line in markdown.splitlines():
        if m := re.fullmatch(r"<!-- table: (\S+) -->", line):
            key = m.group(1)
            tables[key] = {"columns": None, "rows": {}}
        elif key and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if tables[key]["columns"] is None:
                tables[key]["columns"] = cells[1:]
            elif not set(cells[0]) <= set("-:"):
                assert cells[0] not in tables[key]["rows"], f"duplicate row {cells[0]!r} in {key}"
                tables[key]["rows"][cells[0]] = cells[1:]
        elif key and line.startswith("#") and tables[key]["columns"] is not None:
            key = None  # a heading after a table's rows ends it
    return tables


def expected_text(value: Any, kind: str) -> str:
    """The report's formatting rule, written again: 3 decimals, integers as such, n/a when missing."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return str(int(value)) if kind == "int" else f"{value:.3f}"


def literature_from_paper() -> dict[str, list[str]]:
    return {line.split("\t")[0]: line.split("\t")[1:] for line in PAPER_TABLE6.strip().splitlines()}


def resolve(file: str, keys: list[str]) -> Any:
    """The source value of a provenance row, read afresh from its file (or the paper's table)."""
    if file == provenance.LITERATURE_SOURCE:
        paper = literature_from_paper()
        row = {
            "Original study: DenseNet-169": "DenseNet-169 (ours)",
            "Guendel et al. [10]": "Gundel et al. [10]",
        }
        texts = paper[row.get(keys[0], keys[0])]
        if keys[1] == "average":
            return texts[-1]
        abbrev = next(a for a, n in PAPER_ABBREVIATIONS.items() if n == keys[1])
        return texts[PAPER_COLUMNS.index(abbrev)]
    node: Any = json.loads(Path(file).read_text())
    for k in keys:
        if isinstance(node, list):
            node = node[int(k)]
        elif isinstance(node, dict) and k in node:
            node = node[k]
        else:
            return None
    return node


# --------------------------------------------------------------------------------------------------


def test_outputs_exist(phantom_report: Inputs) -> None:
    r = phantom_report.root
    for rel in ("reports/report.md", "reports/provenance.csv", "plots/label_counts.csv"):
        assert (r / rel).is_file(), rel
    tables = {p.stem for p in (r / "reports" / "tables").glob("*.csv")}
    assert {"data", "training", "table5_auc", "table6_literature", "iou_GradCAM", "iou_EigenCAM"} <= tables
    assert {"iou_RandomCAM", "box_accuracy_GradCAM", "pointing_GradCAM", "degenerate"} <= tables
    assert {"operating_points", "calibration", "subgroups", "adjudicated"} <= tables
    for name in (
        "fig1_label_counts",
        "fig6_7_val_loss",
        "roc_curves",
        "iou_vs_threshold",
        "heatmap_examples",
        "reliability",
    ):
        assert (r / "plots" / "figures" / f"{name}.png").is_file(), name
    for m in MODELS:
        assert (r / "plots" / "iou_vs_threshold" / f"{m}.csv").is_file()


def test_header_says_phantom(phantom_report: Inputs) -> None:
    text = (phantom_report.root / "reports" / "report.md").read_text()
    assert text.startswith(f"# {inputs.PHANTOM_BANNER}\n")
    assert "NOT a result on NIH ChestX-ray14" in text
    head = text.split("<!-- table:")[0]
    assert f"image size {SIZE} px" in head and "lr 0.0005" in head and f"epochs (max) {EPOCHS}" in head
    assert "loss class_averaged_bce" in head and "pretrained false" in head
    assert "models densenet121, swin_small" in head
    assert "CONTROL RUN" not in head and "warm-up" not in head  # the shipped default has neither


def test_header_names_the_data_not_a_date_or_commit(phantom_report: Inputs) -> None:
    """The header identifies the data by the manifest's fingerprint; no date or commit makes it vary."""
    text = (phantom_report.root / "reports" / "report.md").read_text()
    head = text.split("<!-- table:")[0]
    assert f"500 images, fingerprint `{FINGERPRINT}`" in head
    assert not re.search(r"\d{4}-\d{2}-\d{2}", text)
    hexes = re.findall(r"\b(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b", text.replace(FINGERPRINT, ""))
    assert not hexes  # a git commit, short or full


def test_same_inputs_give_byte_identical_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs into two folders, the second from another working directory outside any git repo."""
    (tmp_path / "case").mkdir()
    case = build_inputs(tmp_path / "case")
    assert run_stage(case, out="run1").exit_code == 0
    plots = case.root / "plots"
    first_plots = {p.relative_to(plots): p.read_bytes() for p in plots.rglob("*") if p.is_file()}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert run_stage(case, out="run2").exit_code == 0
    one, two = case.root / "run1", case.root / "run2"
    written = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert {Path("report.md"), Path("provenance.csv"), Path("tables/table5_auc.csv")} <= set(written)
    for rel in written:
        assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel
    assert {p.relative_to(plots): p.read_bytes() for p in plots.rglob("*") if p.is_file()} == first_plots


def _expected_verdict(test: dict, loc: dict, target: float, ratio: float, judged: bool) -> str:
    """The known-answer rule written out independently of cxr_core.report.known_answer."""
    if not judged:
        return "not judged: too few epochs (`make known-answer`)"
    cams = {
        k: v["pointing"]["mean"]
        for k, v in loc["methods"].items()
        if k not in ("RandomCAM", "BoxPrior", "UniformMap", "CentreMap")
    }
    misses = [
        name
        for name, ok in (
            ("AUC", test["macro_auc"] >= target),
            ("pointing", max(cams.values()) >= ratio * loc["methods"]["RandomCAM"]["pointing"]["mean"]),
        )
        if not ok
    ]
    return "pass" if not misses else f"**FAIL** ({', '.join(misses)})"


@pytest.mark.parametrize(("epochs", "swin_epochs"), [(3, None), (20, None), (20, 1)])
def test_known_answer_table_applies_each_models_target(
    tmp_path: Path, epochs: int, swin_epochs: int | None
) -> None:
    """Each family is judged from its min_epochs on, counting the epochs it trained (its own
    ``train.epochs_by_family`` where set), and the verdicts in metrics/known_answer.json are the table's."""
    case = build_inputs(tmp_path)
    case_params = yaml.safe_load(case.params.read_text())
    case_params["report"]["examples"] = 0
    case_params["train"]["epochs"] = epochs
    case_params["train"]["epochs_by_family"] = {
        "densenet": None,
        "efficientnet": None,
        "swin": swin_epochs,
        "other": None,
    }
    case.params.write_text(yaml.safe_dump(case_params))
    assert run_stage(case).exit_code == 0
    r, params = case.root, case_params["report"]["known_answer"]
    table = parse_tables((r / "reports" / "report.md").read_text())["known_answer"]
    saved = json.loads((r / "metrics" / "known_answer.json").read_text())
    assert table["columns"][-1] == "verdict" and saved["epochs"] == epochs and not saved["control"]
    for m, kind, shown, family in (
        ("densenet121", "cnn_auc", "CNN", "densenet"),
        ("swin_small", "transformer_auc", "transformer", "swin"),
    ):
        test = json.loads((r / "metrics" / "test" / m / "seed0.json").read_text())
        loc = json.loads((r / "metrics" / "localise" / m / "seed0.json").read_text())
        row = table["rows"][f"{inputs.display_name(m)} (seed 0)"]
        trained = swin_epochs if family == "swin" and swin_epochs is not None else epochs
        judged = trained >= params["min_epochs"][family]
        assert saved["runs"][f"{m}/seed0"]["epochs"] == trained
        assert row[1] == shown
        assert row[-1] == _expected_verdict(test, loc, params[kind], params["pointing_ratio"], judged)
        expected = "not judged" if not judged else ("pass" if row[-1] == "pass" else "fail")
        assert saved["runs"][f"{m}/seed0"]["verdict"] == expected
        assert saved["runs"][f"{m}/seed0"]["macro_auc"] == test["macro_auc"]


@pytest.mark.parametrize(
    ("auc", "ci", "shuffled", "verdict"),
    [
        (0.66, [0.62, 0.70], False, "pass"),
        (0.64, [0.60, 0.68], False, "**FAIL** (AUC)"),
        (0.52, [0.46, 0.57], True, "at chance"),
        (0.66, [0.58, 0.72], True, "**NOT at chance: look for a leak**"),
        (0.50, [None, None], True, "no CI (test.bootstrap is 0)"),
    ],
)
def test_known_answer_verdicts_at_the_edges(tmp_path: Path, auc, ci, shuffled, verdict) -> None:
    case = build_inputs(tmp_path)
    case_params = yaml.safe_load(case.params.read_text())
    case_params["report"]["examples"] = 0
    case_params["train"]["shuffle_labels"] = shuffled
    case.params.write_text(yaml.safe_dump(case_params))
    path = tmp_path / "metrics" / "test" / "densenet121" / "seed0.json"
    _write_json(path, json.loads(path.read_text()) | {"macro_auc": auc, "macro_auc_ci": ci})
    assert run_stage(case).exit_code == 0
    table = parse_tables((tmp_path / "reports" / "report.md").read_text())["known_answer"]
    row = table["rows"]["DenseNet-121 (seed 0)"]
    assert row[-1] == verdict and row[1] == ("chance" if shuffled else "CNN")


def test_a_real_data_report_has_no_known_answer_section(tmp_path: Path) -> None:
    case = build_inputs(tmp_path, source="nih")
    case_params = yaml.safe_load(case.params.read_text())
    case_params["report"]["examples"] = 0
    case.params.write_text(yaml.safe_dump(case_params))
    assert run_stage(case).exit_code == 0
    assert "known_answer" not in parse_tables((tmp_path / "reports" / "report.md").read_text())


def test_header_of_a_control_run_says_so_and_names_the_warm_up(tmp_path: Path) -> None:
    case = build_inputs(tmp_path)
    case_params = yaml.safe_load(case.params.read_text())
    case_params["report"]["examples"] = 0
    case_params["train"].update(shuffle_labels=True, warmup_epochs=2)
    case_params["train"]["lr_scale"].update(swin=0.4, efficientnet=2)
    case.params.write_text(yaml.safe_dump(case_params))
    assert run_stage(case).exit_code == 0
    head = (tmp_path / "reports" / "report.md").read_text().split("<!-- table:")[0]
    assert "CONTROL RUN: `train.shuffle_labels` permuted the training labels" in head
    assert "lr 0.0005 (x2 for efficientnet, x0.4 for swin); lr warm-up 2 epoch(s); loss" in head


@pytest.mark.parametrize("source", ["nih", "/data/chestxray14"])
def test_header_real_data_not_phantom(tmp_path: Path, source: str) -> None:
    case = build_inputs(tmp_path, source=source)
    inputs_params = yaml.safe_load(case.params.read_text())
    inputs_params["report"]["examples"] = 0
    case.params.write_text(yaml.safe_dump(inputs_params))
    assert run_stage(case).exit_code == 0
    text = (tmp_path / "reports" / "report.md").read_text()
    assert text.startswith(f"# {inputs.NIH_NAME}")
    assert "PHANTOM" not in text and "phantom" not in text.lower()
    assert not (tmp_path / "plots" / "figures" / "heatmap_examples.png").exists()


def test_every_number_in_report_matches_its_source(phantom_report: Inputs) -> None:
    text = (phantom_report.root / "reports" / "report.md").read_text()
    tables = parse_tables(text)
    prov = pd.read_csv(phantom_report.root / "reports" / "provenance.csv", keep_default_na=False, dtype=str)
    assert set(prov["table"]) == set(tables)
    checked = 0
    for key, table in tables.items():
        part = prov[prov["table"] == key]
        for label, cells in table["rows"].items():
            for column, cell in zip(table["columns"], cells, strict=True):
                tokens = NUMBER.findall(cell)
                rows = part[(part["row"] == label) & (part["column"] == column)].sort_values("position")
                assert tokens == rows["text"].tolist(), (key, label, column, cell)
                for _, p in rows.iterrows():
                    source = resolve(p["file"], json.loads(p["keys"]))
                    want = source if p["kind"] == "literal" else expected_text(source, p["kind"])
                    assert p["text"] == want, (key, label, column, p["file"], p["keys"])
                    checked += 1
    assert checked == len(prov)  # nothing in the side-car that is not printed, nothing printed unchecked
    assert checked > 1000
    # every table line of report.md was parsed: no table without an anchor (header + separator + rows)
    table_lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert len(table_lines) == sum(2 + len(t["rows"]) for t in tables.values())


def test_table5_cells_sit_under_the_right_model_and_class(phantom_report: Inputs) -> None:
    """Independent of the side-car's key paths: row = model, column = abbreviation of the class."""
    tables = parse_tables((phantom_report.root / "reports" / "report.md").read_text())
    t5 = tables["table5_auc"]
    by_abbrev = PAPER_ABBREVIATIONS
    assert t5["columns"] == [*PAPER_COLUMNS, "Macro", "vs best"]
    compare = json.loads((phantom_report.root / "metrics" / "compare.json").read_text())
    for model in MODELS:
        cells = t5["rows"][inputs.display_name(model)]
        source = phantom_report.test[model]
        for column, cell in zip(t5["columns"], cells, strict=True):
            if column == "vs best":
                gap = compare["ranking"]["gap"].get(model)
                want = (
                    "best"
                    if gap is None
                    else f"{'worse' if gap['worse'] else 'n.s.'} (p {gap['p_holm']:.3f})"
                )
                assert cell == want, (model, cell)
                continue
            if column == "Macro":
                value, (lo, hi) = source["macro_auc"], source["macro_auc_ci"]
            else:
                label = by_abbrev[column]
                value, (lo, hi) = source["auc"][label], source["auc_ci"][label]
            want = "n/a" if value is None else f"{value:.3f} [{lo:.3f}, {hi:.3f}]"
            assert cell == want, (model, column)
    assert t5["rows"]["Swin-Small"][t5["columns"].index("Hern")] == "n/a"


def test_localisation_cells_have_the_control_beside_them(phantom_report: Inputs) -> None:
    tables = parse_tables((phantom_report.root / "reports" / "report.md").read_text())
    t7 = tables["iou_GradCAM"]
    assert t7["columns"] == PAPER_BOX_HEADER and tables["pointing_GradCAM"]["columns"] == PAPER_BOX_HEADER
    for row in t7["rows"]:  # every column of a row is the class its header names
        model, t = row.split(" - ")
        m = next(x for x in MODELS if inputs.display_name(x) == model)
        src = phantom_report.localise[m]["methods"]["GradCAM"]["iou"][f"t{round(float(t) * 100):03d}"]
        for column, cell in zip(t7["columns"], t7["rows"][row], strict=True):
            value = src.get("mean" if column == "Avg" else BOX_ABBREVIATIONS[column])
            assert cell.split(" (rand")[0] == ("n/a" if value is None else f"{value:.3f}"), (row, column)
    loc = phantom_report.localise["densenet121"]["methods"]
    cell = t7["rows"]["DenseNet-121 - 0.25"][t7["columns"].index("Card")]
    want = loc["GradCAM"]["iou"]["t025"]["Cardiomegaly"], loc["RandomCAM"]["iou"]["t025"]["Cardiomegaly"]
    assert cell == f"{want[0]:.3f} (rand {want[1]:.3f})"
    assert t7["rows"]["DenseNet-121 - 0.25"][t7["columns"].index("Nodu")] == "n/a (rand n/a)"
    pointing = tables["pointing_GradCAM"]["rows"]["Swin-Small"][-1]
    src = phantom_report.localise["swin_small"]["methods"]
    assert (
        pointing
        == f"{src['GradCAM']['pointing']['mean']:.3f} (rand {src['RandomCAM']['pointing']['mean']:.3f})"
    )
    box = tables["box_accuracy_GradCAM"]
    assert box["columns"] == ["IoU>=0.10", "IoU>=0.25", "IoU>=0.50", "IoBB>=0.10", "IoBB>=0.25", "IoBB>=0.50"]
    # the control's own table has no "(rand ...)"
    assert all("rand" not in c for cells in tables["iou_RandomCAM"]["rows"].values() for c in cells)


def test_method_missing_for_one_model_is_na(phantom_report: Inputs) -> None:
    tables = parse_tables((phantom_report.root / "reports" / "report.md").read_text())
    t8 = tables["iou_EigenCAM"]
    for t in ("0.10", "0.45"):
        assert all(
            c == "n/a (rand n/a)" or c.startswith("n/a (rand ") for c in t8["rows"][f"Swin-Small - {t}"]
        )
        assert not any(c.startswith("n/a") for c in t8["rows"][f"DenseNet-121 - {t}"][:4])
    text = (phantom_report.root / "reports" / "report.md").read_text()
    assert "### Table 7: GradCAM" in text and "### Table 8: EigenCAM" in text


def test_degenerate_methods_are_noted(phantom_report: Inputs) -> None:
    text = (phantom_report.root / "reports" / "report.md").read_text()
    assert "GradCAM on DenseNet-121" in text
    deg = parse_tables(text)["degenerate"]
    assert deg["rows"]["DenseNet-121"][deg["columns"].index("GradCAM")] == "0.250"
    assert deg["rows"]["Swin-Small"][deg["columns"].index("EigenCAM")] == "n/a"


def test_table6_literature_is_the_papers(phantom_report: Inputs) -> None:
    paper = literature_from_paper()
    for row, name in zip(literature.LITERATURE_TABLE6, paper, strict=True):
        printed = [row.auc[PAPER_ABBREVIATIONS[a]] for a in PAPER_COLUMNS] + [row.average]
        assert printed == paper[name], row.name
    t6 = parse_tables((phantom_report.root / "reports" / "report.md").read_text())["table6_literature"]
    lit_rows = [label for label in t6["rows"] if "[other paper, NIH data]" in label]
    assert len(lit_rows) == 4 and any("Yan" in r for r in lit_rows) and any("Taslimi" in r for r in lit_rows)
    by_abbrev = PAPER_ABBREVIATIONS
    assert t6["columns"] == [*PAPER_COLUMNS, "Average"]
    yan = next(r for r in literature.LITERATURE_TABLE6 if r.name.startswith("Yan"))
    cells = t6["rows"][f"{yan.name} [other paper, NIH data]"]
    for column, cell in zip(t6["columns"], cells, strict=True):
        assert cell == (yan.average if column == "Average" else yan.auc[by_abbrev[column]])
    assert "0.8470" in cells and "0.8302" in cells
    text = (phantom_report.root / "reports" / "report.md").read_text()
    assert "other studies' AUCs on the real NIH ChestX-ray14" in text


def test_best_model_has_the_highest_macro_auc(phantom_report: Inputs) -> None:
    macro = {m: phantom_report.test[m]["macro_auc"] for m in MODELS}
    best = max(macro, key=macro.get)
    assert best == "swin_small"  # not simply the first model
    t6 = parse_tables((phantom_report.root / "reports" / "report.md").read_text())["table6_literature"]
    ours = next(iter(t6["rows"]))
    assert ours.startswith(inputs.display_name(best)) and "this run" in ours
    assert t6["rows"][ours][-1] == f"{macro[best]:.3f}"
    results = [
        inputs.ModelResults(
            m, 0, phantom_report.test[m], Path(), {}, Path(), {}, Path(), pd.DataFrame(), pd.DataFrame()
        )
        for m in MODELS
    ]
    assert inputs.best_model(results).name == best
    assert inputs.best_model(results, "densenet121").name == "densenet121"  # the comparison's pick wins
    headline = json.loads((phantom_report.root / "metrics" / "headline.json").read_text())
    assert headline["best"] == {
        "model": best,
        "seed": 0,
        "checkpoint": f"data/models/{best}/seed0/best.pt",
        "macro_auc": macro[best],
    }
    compare = json.loads((phantom_report.root / "metrics" / "compare.json").read_text())
    assert headline["loc_method"] == "GradCAM"  # report.headline_method: fixed, not the test's best
    for m in MODELS:
        row = headline["models"][m]
        assert (row["auc"], [row["auc_lo"], row["auc_hi"]]) == (
            macro[m],
            phantom_report.test[m]["macro_auc_ci"],
        )
        assert row["loc"] == phantom_report.localise[m]["methods"]["GradCAM"]["pointing"]["mean"]
        assert (row["auc_mean"], row["auc_sd"]) == (compare["seed_runs"][m]["mean"], None)
        assert row["seeds"] == 1


def test_figures_are_valid_pngs(phantom_report: Inputs) -> None:
    for path in (phantom_report.root / "plots" / "figures").glob("*.png"):
        assert path.stat().st_size > 5_000, path
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.format == "PNG" and min(img.size) >= 200, (path, img.size)
            assert np.asarray(img.convert("L")).std() > 5, path  # not a blank canvas


def test_plot_data_matches_metrics(phantom_report: Inputs) -> None:
    r = phantom_report.root
    iou = pd.read_csv(r / "plots" / "iou_vs_threshold" / "swin_small.csv")
    assert list(iou.columns) == ["threshold", *METHODS]
    assert iou["threshold"].tolist() == [0.1, 0.15, 0.25, 0.35, 0.45]
    src = phantom_report.localise["swin_small"]["methods"]
    for meth in ("GradCAM", "RandomCAM"):
        assert np.allclose(iou[meth], [src[meth]["iou"][t]["mean"] for t in THRESHOLDS])
    assert iou["EigenCAM"].isna().all()  # swin_small has no EigenCAM: an empty column, not a fake line
    counts = pd.read_csv(r / "plots" / "label_counts.csv").set_index("label")
    split = json.loads((r / "metrics" / "split.json").read_text())
    assert counts.loc["Mass", "total"] == sum(split[s]["positives"]["Mass"] for s in ("train", "val", "test"))
    assert counts.loc["No Finding", "total"] == sum(split[s]["no_finding"] for s in ("train", "val", "test"))
    t5 = pd.read_csv(r / "reports" / "tables" / "table5_auc.csv").set_index("model")
    assert t5.loc["DenseNet-121", "Card"] == pytest.approx(
        phantom_report.test["densenet121"]["auc"]["Cardiomegaly"]
    )
    assert t5.loc["DenseNet-121", "Card_ci_low"] == pytest.approx(
        phantom_report.test["densenet121"]["auc_ci"]["Cardiomegaly"][0]
    )


@pytest.mark.parametrize(
    ("asked", "drawn", "not_computed"),
    [
        (["EigenCAM"], ("EigenCAM",), ()),
        (["EigenCAM", "GradCAM"], ("EigenCAM", "GradCAM"), ()),
        (["LayerCAM", "RandomCAM"], ("RandomCAM",), ("LayerCAM",)),
        (["LayerCAM"], (), ("LayerCAM",)),
    ],
)
def test_example_methods_decide_the_grid(
    tmp_path: Path, asked: list[str], drawn: tuple[str, ...], not_computed: tuple[str, ...]
) -> None:
    """``report.example_methods`` picks the grid's methods, in its order; one not computed is named."""
    case = build_inputs(tmp_path)
    params = yaml.safe_load(case.params.read_text())
    params["report"]["example_methods"] = asked
    report = make_report(params, report_paths(case))
    assert report.examples is not None and report.examples.model == "swin_small"  # the best model
    assert (report.examples.methods, report.examples.not_computed) == (drawn, not_computed)
    text = (tmp_path / "reports" / "report.md").read_text()
    png = tmp_path / "plots" / "figures" / "heatmap_examples.png"
    assert png.is_file() == bool(drawn)
    assert (f"*Example heatmaps of Swin-Small: {', '.join(drawn)}*" in text) == bool(drawn)
    assert ("LayerCAM (report.example_methods) not computed for Swin-Small" in text) == bool(not_computed)


def test_example_figure_draws_the_grid_methods(phantom_report: Inputs) -> None:
    loc, images, heatmaps = figures.load_examples(report_paths(phantom_report), "densenet121", 0)
    grid = figures.example_grid(loc, heatmaps, "densenet121", ["EigenCAM", "LayerCAM"], EXAMPLES)
    assert grid.methods == ("EigenCAM",) and grid.not_computed == ("LayerCAM",)
    fig = figures.heatmap_examples_figure(grid, loc, images, heatmaps)
    axes = np.array(fig.axes).reshape(EXAMPLES, 2)
    assert [ax.get_title() for ax in axes[:, 1]] == ["EigenCAM"] * EXAMPLES
    for ax, pos in zip(axes[:, 1], grid.picks, strict=True):  # the overlay is that method's map
        np.testing.assert_array_equal(ax.images[1].get_array(), heatmaps["EigenCAM"][pos])
    assert fig.get_suptitle().startswith("Example heatmaps: DenseNet-121")


@pytest.mark.parametrize(
    ("rel", "stage"),
    [
        ("metrics/localise/densenet121/seed0.json", "localise@densenet121-0"),
        ("metrics/test/swin_small/seed0.json", "test@swin_small-0"),
        ("metrics/train/swin_small/seed0/plots/metrics/val_loss.tsv", "train@swin_small-0"),
        ("data/heatmaps/swin_small/seed0.npz", "cams@swin_small-0"),
        ("metrics/compare.json", "compare"),
        ("metrics/sanity/densenet121/seed0.json", "sanity@densenet121-0"),
    ],
)
def test_missing_input_names_file_and_stage(tmp_path: Path, rel: str, stage: str) -> None:
    case = build_inputs(tmp_path)
    (tmp_path / rel).unlink()
    result = run_stage(case)
    assert result.exit_code != 0
    assert str(tmp_path / rel) in result.output and f"'{stage}'" in result.output
    assert not (tmp_path / "reports" / "report.md").exists()


def test_malformed_metrics_are_named(tmp_path: Path) -> None:
    case = build_inputs(tmp_path)
    path = tmp_path / "metrics" / "test" / "densenet121" / "seed0.json"
    doc = json.loads(path.read_text())
    del doc["auc_ci"]
    path.write_text(json.dumps(doc))
    result = run_stage(case)
    assert result.exit_code != 0 and str(path) in result.output and "auc_ci" in result.output


# --------------------------------------------------------------------------------------------------
# Small units


def test_read_json_names_file_and_stage(tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    with pytest.raises(inputs.MissingInputError, match=r"split\.json: missing .*dvc repro split"):
        inputs.read_json(path, "split")
    for text, why in (("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object")):
        path.write_text(text)
        with pytest.raises(inputs.InputFormatError, match=why) as exc:
            inputs.read_json(path, "split")
        assert str(path) in str(exc.value) and "'split'" in str(exc.value)
    path.write_text('{"source": "nih"}')
    with pytest.raises(inputs.InputFormatError, match=r"\['fingerprint'\].*'download'"):
        inputs.read_json(path, "download", ("source", "fingerprint"))
    assert inputs.read_json(path, "download", ("source",)) == {"source": "nih"}


def test_paper_columns_cover_every_label() -> None:
    assert sorted(literature.PAPER_AUC_ORDER) == sorted(LABELS)
    assert [label for label, _ in literature.PAPER_BOX_COLUMNS] == list(BOX_LABELS)
    assert dict((c, n) for n, c in literature.PAPER_AUC_COLUMNS) == PAPER_ABBREVIATIONS


def test_formatting_and_keys() -> None:
    assert provenance.format_value(0.81234) == "0.812"
    assert provenance.format_value(None) == "n/a" and provenance.format_value(float("nan")) == "n/a"
    assert provenance.format_value(12.0, "int") == "12"
    assert inputs.key_value("t010") == pytest.approx(0.10) and inputs.key_value("T025") == pytest.approx(0.25)
    assert provenance.lookup({"a": [1, {"b": 2}]}, ("a", "1", "b")) == 2
    assert provenance.lookup({"a": None}, ("a", "b")) is None


def test_choose_examples_spreads_over_classes() -> None:
    loc = pd.DataFrame({"label": ["Cardiomegaly"] * 4 + ["Nodule"] * 2 + ["Mass"]})
    picks = figures.choose_examples(loc, 5)
    assert picks == [0, 6, 4, 1, 5]  # BOX_LABELS order: Cardiomegaly, Mass, Nodule, then round 2
    assert len(figures.choose_examples(loc, 20)) == len(loc)


def test_method_order_puts_configured_first() -> None:
    def fake(methods: dict) -> inputs.ModelResults:
        return inputs.ModelResults(
            "m", 0, {}, Path(), {"methods": methods}, Path(), {}, Path(), pd.DataFrame(), pd.DataFrame()
        )

    models = [fake({"LayerCAM": {}, "GradCAM": {}}), fake({"AblationCAM": {}})]
    assert inputs.method_names(models, ["GradCAM", "EigenCAM"]) == [
        "GradCAM",
        "EigenCAM",
        "AblationCAM",
        "LayerCAM",
    ]


@pytest.mark.parametrize(
    "victim",
    [
        "metrics/split.json",
        "metrics/test/densenet121/seed0.json",
        "plots/roc/swin_small/seed0.csv",
        "metrics/compare.json",
        "data/splits/loc.csv",
    ],
)
def test_a_corrupt_input_stops_the_stage_naming_the_file(tmp_path: Path, victim: str) -> None:
    case = build_inputs(tmp_path)
    (tmp_path / victim).write_bytes(b"\x00\x01 not what the stage wrote \xff\n")
    result = run_stage(case)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert Path(victim).name in result.output and "Traceback" not in result.output


def test_verdict_follows_the_comparison(phantom_report: Inputs) -> None:
    text = (phantom_report.root / "reports" / "report.md").read_text()
    compare = json.loads((phantom_report.root / "metrics" / "compare.json").read_text())
    assert compare["ranking"]["best"] == "swin_small" and compare["ranking"]["gap"]["densenet121"]["worse"]
    head = text.split("<!-- table:")[0]
    assert "**Verdict (classification).** Swin-Small classifies best: every other model is" in head
    assert "significantly worse (DenseNet-121)." in head
    assert "conditional on the trained runs (one training run per model)" in head
    assert "`compare.min_auc_difference`" in head
    tables = parse_tables(text)
    assert list(tables["pairwise_macro_auc"]["rows"]) == ["DenseNet-121 vs Swin-Small"]
    assert set(tables["vs_random_pointing"]["rows"]) == {"DenseNet-121", "Swin-Small"}


def test_localisation_leads_with_heldout_numbers_baselines_and_the_sanity_verdict(
    phantom_report: Inputs,
) -> None:
    text = (phantom_report.root / "reports" / "report.md").read_text()
    section = text[text.index("## Localisation") :]
    order = [
        section.index(f"<!-- table: {key} -->")
        for key in ("heldout_maxboxacc", "heldout_energy", "iou_GradCAM")
    ]
    assert order == sorted(order), "held-out tables must come before the paper's Table 7"
    tables = parse_tables(text)
    energy = tables["heldout_energy"]
    assert energy["columns"] == ["value", "- RandomCAM", "- BoxPrior", "- UniformMap", "randomisation check"]
    compare = json.loads((phantom_report.root / "metrics" / "compare.json").read_text())
    held = compare["localisation"]["heldout"]["metrics"]["energy"]["densenet121"]
    row = energy["rows"]["DenseNet-121 - GradCAM"]
    assert row[0].startswith(expected_text(held["value"]["GradCAM"]["value"], "float") + " [")
    gap = held["vs_baseline"]["GradCAM"]["BoxPrior"]
    assert row[2].startswith(expected_text(gap["diff"], "float")) and row[2].endswith("*") == gap["better"]
    assert row[4].startswith("passes (rho 0.200")
    assert energy["rows"]["DenseNet-121 - EigenCAM"][4].startswith("FAILS (rho 0.900")
    assert "DenseNet-121 - RandomCAM" not in energy["rows"]  # a baseline, shown in its own table
    assert set(tables["heldout_baselines"]["rows"]) == {"RandomCAM", "BoxPrior", "UniformMap"}
    flagged = section[section.index("**Randomisation check failed**") :].split("\n")[0]
    assert "EigenCAM on DenseNet-121" in flagged and "GradCAM on" not in flagged
    assert "RandomCAM on" not in flagged  # the control fails by construction, said once in words


def test_calibration_table_flags_a_temperature_at_its_bound_and_a_worse_scaled_ece() -> None:
    from cxr_core.report.clinical import ClinicalRun, calibration_table

    def run(model: str, temperature: float, at_bound: bool, ece_scaled: float) -> ClinicalRun:
        cal = {"temperature": temperature, "temperature_at_bound": at_bound,
               "raw": {"overall": {"ece": 0.263, "brier": 0.2}},
               "scaled": {"overall": {"ece": ece_scaled, "brier": 0.19}}}  # fmt: skip
        return ClinicalRun(model, {"calibration": cal}, Path(f"metrics/clinical/{model}/seed0.json"))

    table = calibration_table(
        [run("efficientnet_b1", 20.0, True, 0.399), run("densenet121", 0.655, False, 0.121)]
    )
    cells = {row[0]: row[1] for row in table.rows}
    assert cells["ENet-b1"][0].text == "20.000 (at bound)" and cells["DenseNet-121"][0].text == "0.655"
    notes = " ".join(table.notes)
    assert "**Temperature at its search bound** for ENet-b1 " in notes
    assert "Scaling made the test ECE worse for ENet-b1:" in notes and "DenseNet-121" not in notes


def test_pairwise_tables_say_their_intervals_are_not_multiplicity_adjusted(phantom_report: Inputs) -> None:
    report = (phantom_report.root / "reports" / "report.md").read_text()
    for table in ("pairwise_macro_auc", "pairwise_pointing"):
        section = report.split(f"<!-- table: {table} -->")[1].split("<!-- table:")[0]
        assert "not adjusted for multiplicity" in section and "Holm p above `compare.alpha`" in section, table


def test_first_screen_is_the_summary_and_its_links_resolve(phantom_report: Inputs) -> None:
    """The first 60 lines hold the data source, the verdicts, every model's summary row and the whole
    known answer; each "Details" link names a section heading that exists further down."""
    text = (phantom_report.root / "reports" / "report.md").read_text()
    screen = "\n".join(text.splitlines()[:60])
    assert "- Data source: **PHANTOM" in screen and "**Verdict (classification).**" in screen
    summary, known = parse_tables(screen)["summary"], parse_tables(screen)["known_answer"]
    assert len(summary["rows"]) == len(known["rows"]) == len(MODELS)
    assert summary["columns"] == ["Macro AUC [95% CI]", "vs best", "Pointing (GradCAM)"]
    assert screen.index("<!-- table: summary -->") < screen.index("<!-- table: known_answer -->")
    assert known == parse_tables(text)["known_answer"]  # the whole table, not cut by the screen's end
    links = re.findall(r"\[([^\]]+)\]\((#[^)]+)\)", text.split("## Summary", 1)[0].split("Details:", 1)[1])
    headings = {line[3:] for line in text.splitlines() if line.startswith("## ")}
    assert [title for title, _ in links][:3] == ["Data", "Training", "Classification"]
    for title, target in links:
        assert title in headings and target == "#" + re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(
            " ", "-"
        )
