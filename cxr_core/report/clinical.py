"""The report's clinical section: operating points, calibration, subgroups, adjudicated labels.

Every number comes from ``metrics/clinical/<model>/seed<k>.json`` (the clinical stage), with its
key path in the provenance side-car. The per-finding tables are for the best model; calibration
and the adjudicated labels are shown for every model. Words are for a clinical reader: what a
threshold means, where it was chosen, what a gap is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_core.audit.clinical import ClinicalMetrics
from cxr_core.labels import LABELS
from cxr_core.report.inputs import display_name
from cxr_core.report.provenance import Cell, Number, Table, ci_cell, number, plain_cell

RATE_NAMES = {"sensitivity": "sensitivity", "specificity": "specificity", "ppv": "PPV", "npv": "NPV"}
SUBGROUP_NAMES = {"sex": "sex", "age": "age band", "view": "view position"}


@dataclass(frozen=True)
class ClinicalRun:
    """One run's clinical metrics and the file they came from."""

    model: str
    doc: dict
    path: Path

    def num(self, *keys: Any, kind: str = "float", role: str = "value") -> Number:
        return number(self.doc, self.path, [str(k) for k in keys], kind=kind, role=role)

    def with_ci(self, *keys: Any, ci_key: str | None = None) -> Cell:
        """``value [low, high]`` where the interval sits at ``<last key>_ci`` (or ``ci_key``)."""
        *base, last = [str(k) for k in keys]
        ci = ci_key or f"{last}_ci"
        return ci_cell(
            self.num(*base, last),
            self.num(*base, ci, "0", role="ci_low"),
            self.num(*base, ci, "1", role="ci_high"),
        )


def load_clinical(path: Path, model: str) -> ClinicalRun:
    return ClinicalRun(model, ClinicalMetrics.read(path), path)


def _level(run: ClinicalRun) -> str:
    return f"{100 * float(run.doc['subgroups']['ci']):g}%"


def operating_table(run: ClinicalRun) -> Table:
    """Per finding: the validation-chosen threshold and the test rates at it, with CIs."""
    op = run.doc["operating"]
    table = Table(
        "operating_points",
        f"Operating points of {display_name(run.model)}: test rates at thresholds chosen on validation "
        f"({op['method']}) [{_level(run)} CI]",
        "finding",
        ["threshold", *RATE_NAMES.values()],
    )
    for label in LABELS:
        base = ("operating", "test", label)
        cells = [plain_cell(run.num(*base, "threshold"))]
        cells += [run.with_ci(*base, rate) for rate in RATE_NAMES]
        table.add_row(label.replace("_", " "), cells)
    scores = "temperature-scaled probabilities" if op["scores"] == "scaled" else "the model's probabilities"
    table.notes.append(
        f"A finding is called present when its score ({scores}) is at or above the threshold. The threshold "
        f"was chosen on the validation split by the `{op['method']}` rule (`clinical.operating_point`) and then "
        "applied unchanged to the test split: nothing here was tuned on test. Sensitivity: share of test "
        "images with the finding that are called; specificity: share without it that are cleared; PPV / NPV: "
        "how often a positive / negative call is right. n/a: validation had no case (or no non-case) of the "
        "finding, so no threshold was chosen."
    )
    return table


def _listed(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def calibration_table(runs: Sequence[ClinicalRun]) -> Table:
    """Per model: the validation temperature and test ECE / Brier before and after it."""
    table = Table(
        "calibration",
        "Calibration on the test split: expected calibration error (equal-mass bins) and Brier score",
        "model",
        ["temperature", "ECE raw", "ECE scaled", "Brier raw", "Brier scaled"],
    )
    at_bound, worse = [], []
    for run in runs:
        cal = ("calibration",)
        temperature = run.num(*cal, "temperature")
        ece_raw, ece_scaled = (
            run.num(*cal, "raw", "overall", "ece"),
            run.num(*cal, "scaled", "overall", "ece"),
        )
        flagged = bool(run.doc["calibration"].get("temperature_at_bound"))
        if flagged:
            at_bound.append(display_name(run.model))
        if ece_raw.value is not None and ece_scaled.value is not None and ece_scaled.value > ece_raw.value:
            worse.append(display_name(run.model))
        table.add_row(
            display_name(run.model),
            [
                Cell(f"{temperature.text} (at bound)", (temperature,))
                if flagged
                else plain_cell(temperature),
                plain_cell(ece_raw),
                plain_cell(ece_scaled),
                plain_cell(run.num(*cal, "raw", "overall", "brier")),
                plain_cell(run.num(*cal, "scaled", "overall", "brier")),
            ],
        )
    table.notes.append(
        "Both over all 14 findings pooled; lower is better. A probability of 0.8 should come true about 8 "
        "times in 10: ECE is the average gap between the predicted probability and the observed frequency. "
        "Temperature scaling divides the logits by one temperature fitted on the validation split "
        "(`clinical.temperature_scaling`); it changes no ranking, so AUCs are unchanged. Per-finding values "
        "and the reliability curves: metrics/clinical/, plots/reliability/."
    )
    if at_bound:
        table.notes.append(
            f"**Temperature at its search bound** for {_listed(at_bound)} (`clinical.temperature_min` / "
            "`clinical.temperature_max`): the validation loss kept falling towards the bound, so the fit did "
            "not converge and its scaled numbers are not a calibration."
        )
    if worse:
        table.notes.append(
            f"Scaling made the test ECE worse for {_listed(worse)}: the temperature was fitted on the "
            "validation split, and that split's confidence does not carry over to the test split."
        )
    return table


def subgroup_table(run: ClinicalRun) -> Table:
    """Per sex / age band / view: macro AUC, its gap to the rest, and the underdiagnosis rate."""
    table = Table(
        "subgroups",
        f"Subgroup audit of {display_name(run.model)} on the test split [{_level(run)} CI]",
        "group",
        [
            "images",
            "patients",
            "findings",
            "macro AUC",
            "AUC gap",
            "mean TPR",
            "mean FPR",
            "underdiagnosis",
            "underdiagnosis gap",
        ],
    )
    for attribute, groups in run.doc["subgroups"]["attributes"].items():
        for group in groups:
            base = ("subgroups", "attributes", attribute, group)
            table.add_row(
                f"{SUBGROUP_NAMES.get(attribute, attribute)}: {group}",
                [
                    plain_cell(run.num(*base, "n_images", kind="int")),
                    plain_cell(run.num(*base, "n_patients", kind="int")),
                    plain_cell(run.num(*base, "macro_auc_classes", kind="int")),
                    run.with_ci(*base, "macro_auc"),
                    run.with_ci(*base, "gap", "macro_auc", "diff", ci_key="ci"),
                    plain_cell(run.num(*base, "mean_tpr")),
                    plain_cell(run.num(*base, "mean_fpr")),
                    run.with_ci(*base, "underdiagnosis"),
                    run.with_ci(*base, "gap", "underdiagnosis", "diff", ci_key="ci"),
                ],
            )
    table.notes.append(
        "Sex, age and view position from the label table (the model never sees them); an age band a-b holds "
        "ages a to under b. Gap = this group minus all other test images, on the same bootstrap resample of "
        "patients; an interval that excludes 0 is a difference these data support, not adjusted for the "
        "number of groups compared. findings: how many findings have an AUC in both the group and the rest "
        "(the macro AUC averages those, so rows with fewer are not directly comparable). TPR / FPR: at the "
        "validation thresholds above, averaged over findings. Underdiagnosis (adapted from Seyyed-Kalantari et "
        "al., Nature Medicine 2021, who used a No Finding output): share of the group's images with at least "
        "one finding in which every finding that has a threshold is called absent."
    )
    return table


def adjudicated_table(runs: Sequence[ClinicalRun], phantom: bool) -> Table:
    """Per model and mapped finding: AUC against the adjudicated and the NIH labels of the same images."""
    table = Table(
        "adjudicated",
        "Radiologist-adjudicated test labels (Majkowska et al., Radiology 2020) vs the NIH labels, same images",
        "model: finding",
        ["images", "AUC adjudicated", "AUC NIH", "difference", "kappa"],
    )
    for run in runs:
        findings = run.doc["adjudicated"]["findings"]
        for finding, entry in findings.items():
            base = ("adjudicated", "findings", finding)
            name = finding.replace("_", " ") + (" (proxy)" if entry.get("proxy") else "")
            table.add_row(
                f"{display_name(run.model)}: {name}",
                [
                    plain_cell(run.num(*base, "n_images", kind="int")),
                    run.with_ci(*base, "auc_adjudicated"),
                    run.with_ci(*base, "auc_nih"),
                    run.with_ci(*base, "diff"),
                    plain_cell(run.num(*base, "kappa")),
                ],
            )
    table.notes.append(
        "NIH's labels were mined from reports; Google's radiologists re-read these test images. The difference "
        "(adjudicated minus NIH AUC) is paired on one patient resample: it shows how much label noise moves the "
        "AUC (for airspace opacity, the proxy mapping too). Nodule or mass is scored with max(Nodule, Mass); airspace opacity has no NIH class and is scored "
        "against the proxy max(Consolidation, Infiltration, Pneumonia); fracture has no NIH class and is not "
        "scored. kappa: Cohen's agreement of the two label sets."
    )
    if phantom:
        table.notes.append(
            "PHANTOM: these 'adjudicated' labels are a stand-in derived from the phantom's own labels with a "
            "share of values flipped (`clinical.adjudicated_flip_rate`), not Google's."
        )
    return table
