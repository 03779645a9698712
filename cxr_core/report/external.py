"""The external validation section: every model on each evaluation-only set, beside its NIH result.

Numbers come from ``metrics/external/<name>.json`` (external@<name>); the NIH column is the same
mapped class scored on the NIH test split, so the drop compares like with like.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_core.audit.external_metrics import ExternalMetrics
from cxr_core.report.inputs import display_name
from cxr_core.report.provenance import Cell, JsonNumbers, Table, ci_cell

#: How the report names each external set.
DATASET_NAMES: dict[str, str] = {
    "phantom": "the NIH phantom's signs on new patients, shifted, in CheXpert's layout",
    "chexpert": "CheXpert (Irvin et al. 2019)",
    "vindr": "VinDr-CXR (Nguyen et al. 2022)",
    "padchest": "PadChest (Bustos et al. 2020)",
}


@dataclass(frozen=True)
class ExternalRun(JsonNumbers):
    """One set's ``metrics/external/<name>.json`` and where it was read from."""

    name: str
    doc: dict[str, Any]
    path: Path

    def ci(self, *keys: Any, value: str, interval: str) -> Cell:
        return ci_cell(
            self.num(*keys, value),
            self.num(*keys, interval, "0", role="ci_low"),
            self.num(*keys, interval, "1", role="ci_high"),
        )

    @property
    def title(self) -> str:
        what = DATASET_NAMES.get(self.name, self.name)
        return f"the PHANTOM external set ({what}; synthetic, not real data)" if self.doc["phantom"] else what


def load_external(path: Path, name: str) -> ExternalRun:
    return ExternalRun(name, ExternalMetrics.read(path), path)


def _label_map(run: ExternalRun) -> str:
    parts = []
    for c in run.doc["classes"]:
        nih = " / ".join(c["nih"])
        parts.append(
            f"{c['name']} <- {c['source']}" + (f" (proxy: max of {nih})" if c["kind"] == "proxy" else "")
        )
    return "; ".join(parts)


#: How each reading setting is described in the notes (anything else is printed as ``key = value``).
_UNCERTAIN = {
    "missing": "uncertain (-1) labels are missing (U-Ignore)",
    "positive": "uncertain (-1) labels count as positive (U-Ones)",
    "negative": "uncertain (-1) labels count as negative (U-Zeros)",
}


def _settings(settings: dict[str, Any]) -> str:
    parts = []
    for key, value in settings.items():
        if key == "uncertain":
            parts.append(_UNCERTAIN.get(value, f"uncertain = {value}"))
        elif key == "frontal_only":
            parts.append("frontal views only" if value else "frontal and lateral views")
        else:
            parts.append(f"{key} = {value}")
    return "; ".join(parts)


def _notes(run: ExternalRun) -> list[str]:
    d = run.doc
    left = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(d["left_out"].items()) if v) or "none"
    leak = d["leakage"]
    side = leak["fingerprint"]["side"]
    markers = (
        f" Files of an NIH-derived set found: {'; '.join(leak['nih_derived_markers'])}."
        if leak["nih_derived_markers"]
        else ""
    )
    group = "patients" if d["bootstrap_group"] == "patient" else "images (the set publishes no patient ids)"
    return [
        f"{d['n_images']} images of {d['n_patients']} patients from `{d['label_file']}` ({_settings(d['settings'])}); "
        f"left out: {left}. Scored classes (the set's label -> the NIH findings whose probability scores it): "
        f"{_label_map(run)}. Findings the set does not label are not scored; blank labels are missing.",
        f"Leakage guard: every image compared with the {leak['n_reference']} NIH train / val images "
        f"({side} x {side} high-passed thumbnail correlation >= {leak['min_correlation']}): {leak['matches']} "
        f"near-copies ({leak['action']}).{markers}",
        "Nothing is fitted, tuned or thresholded on this set. CIs: bootstrap over "
        f"{group} ({d['n_boot']} replicates); the drop is external minus NIH test AUC of the same mapped "
        "classes, its interval from independent bootstraps of the two sets. The macro averages the classes "
        f"with at least {d['min_positives']} positives and negatives on both sets (the others are marked "
        "`(few)` per class). A model near chance on NIH stays near chance here: only a model that learned "
        "the findings can show a drop.",
    ]


def external_tables(run: ExternalRun, models: Sequence[str], seed: int) -> list[Table]:
    """Summary (macro AUC, NIH, drop), per-class AUCs with their drops, and box scores if any."""
    key = f"seed{seed}"
    summary = Table(
        f"external_{run.name}",
        f"External validation on {run.title}: macro AUC over the scored classes",
        "Model",
        ["External AUC [CI]", "NIH test AUC, same classes [CI]", "Drop [CI]"],
        notes=_notes(run),
    )
    classes = [c["name"] for c in run.doc["classes"]]
    per_class = Table(
        f"external_{run.name}_classes",
        f"External validation on {run.title}: AUC per class (drop against NIH test in brackets)",
        "Model",
        classes,
    )
    present = [m for m in models if key in run.doc["models"].get(m, {})]
    if present:  # the counts are the same for every model: read from the first
        counts = []
        for c in classes:
            where = ("models", present[0], key, "classes", c)
            pos = run.num(*where, "positives", kind="int")
            nih_pos = run.num(*where, "nih_positives", kind="int")
            counts.append(Cell(f"{pos.text} / {nih_pos.text}", (pos, nih_pos)))
        per_class.add_row("positives (external / NIH test)", counts)
    for m in present:
        base = ("models", m, key)
        summary.add_row(
            display_name(m),
            [
                run.ci(*base, value="macro_auc", interval="macro_auc_ci"),
                run.ci(*base, value="nih_macro_auc", interval="nih_macro_auc_ci"),
                run.ci(*base, value="macro_drop", interval="macro_drop_ci"),
            ],
        )
        cells = []
        for c in classes:
            auc, drop = run.num(*base, "classes", c, "auc"), run.num(*base, "classes", c, "drop")
            sign = "+" if drop.value is not None and drop.value >= 0 else ""
            few = "" if run.doc["models"][m][key]["classes"][c].get("in_macro") else " (few)"
            cells.append(Cell(f"{auc.text} ({sign}{drop.text}){few}", (auc, drop)))
        per_class.add_row(display_name(m), cells)
    tables = [summary, per_class]
    first = run.doc["models"][present[0]][key] if present else None
    if first is not None and "boxes" in first:
        methods = list(first["boxes"]["methods"])
        boxes = Table(
            f"external_{run.name}_boxes",
            f"External boxes on {run.title}: pointing game / IoU at the NIH-tuned threshold (class means)",
            "Model",
            methods,
            notes=[
                f"{first['boxes']['n_targets']} (image, finding) targets on {first['boxes']['n_images']} images; "
                "a map hits when its maximum lies in the union of the readers' boxes of that finding; the IoU "
                "threshold of each method is the one chosen on the tune half of the NIH boxes (localise@)."
            ],
        )
        for m in present:
            cells = []
            for method in methods:
                b = ("models", m, key, "boxes", "methods", method)
                p, iou = run.num(*b, "pointing", "mean"), run.num(*b, "iou_tuned", "mean")
                cells.append(Cell(f"{p.text} / {iou.text}", (p, iou)))
            boxes.add_row(display_name(m), cells)
        tables.append(boxes)
    return tables
