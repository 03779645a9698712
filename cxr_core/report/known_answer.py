"""The phantom's known answer, checked in every phantom report: did each model learn the signs?

The phantom's signs are learnable by construction, so a model that stays near chance there points
at slow learning or a wiring bug, and the report must say which models pass rather than leave it
to the reader. The targets are ``report.known_answer``: a macro test AUC per kind of model
(transformers trained from scratch learn more slowly) and a pointing game of the model's best CAM
method at least ``pointing_ratio`` times the random map's. In a control run
(``train.shuffle_labels``) the expectation flips: the AUC's confidence interval must hold 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cxr_core.explain.class_means import first_best
from cxr_core.models.registry import get_spec
from cxr_core.report.inputs import CONTROL_METHOD, ModelResults, method_names
from cxr_core.report.provenance import Cell, Table, ci_cell, finite, lookup, number, plain_cell

#: Families held to the transformer target; every other family is held to the CNN one.
TRANSFORMER_FAMILIES: frozenset[str] = frozenset({"swin"})
#: How the "target" column names each target (its value is in the table's note: cells hold only
#: numbers that come from a JSON file).
KIND_NAMES: dict[str, str] = {"cnn_auc": "CNN", "transformer_auc": "transformer"}


def _best_method(m: ModelResults) -> str | None:
    """The CAM method (not the random control; :func:`method_names` drops the baselines) with the
    highest class-mean pointing game; the first in report order on ties (within the tolerance of
    :func:`cxr_core.explain.class_means.first_best`, so float noise in the JSON cannot pick)."""
    scored = [
        (name, lookup(m.localise, ("methods", name, "pointing", "mean")))
        for name in method_names([m])
        if name != CONTROL_METHOD
    ]
    scored = [(name, v) for name, v in scored if finite(v) is not None]
    return scored[first_best([v for _, v in scored])][0] if scored else None


def known_answer_table(models: Sequence[ModelResults], params: Mapping[str, Any]) -> Table:
    """One row per run: macro AUC [CI] against its target, best CAM pointing against the random map's."""
    targets, control = params["report"]["known_answer"], bool(params["train"]["shuffle_labels"])
    columns = ["macro AUC [95% CI]", "target", "best CAM pointing", "RandomCAM pointing", "verdict"]
    title = (
        "Known answer: control run (labels permuted), each macro AUC's 95% CI must hold 0.5"
        if control
        else "Known answer: did each model learn the phantom's signs?"
    )
    table = Table("known_answer", title, "model", columns)
    for m in models:
        kind = "transformer_auc" if get_spec(m.name).family in TRANSFORMER_FAMILIES else "cnn_auc"
        auc = number(m.test, m.test_path, ("macro_auc",))
        low = number(m.test, m.test_path, ("macro_auc_ci", "0"), role="ci_low")
        high = number(m.test, m.test_path, ("macro_auc_ci", "1"), role="ci_high")
        target = float(targets[kind])
        best = _best_method(m)
        pointing = number(m.localise, m.localise_path, ("methods", str(best), "pointing", "mean"))
        rand = number(
            m.localise, m.localise_path, ("methods", CONTROL_METHOD, "pointing", "mean"), role="random"
        )
        if control and (low.value is None or high.value is None):
            verdict = "no CI (test.bootstrap is 0)"
        elif control:
            at_chance = low.value <= 0.5 <= high.value
            verdict = "at chance" if at_chance else "**NOT at chance: look for a leak**"
        else:
            misses = []
            if auc.value is None or auc.value < target:
                misses.append("AUC")
            if (
                pointing.value is None
                or rand.value is None
                or pointing.value < targets["pointing_ratio"] * rand.value
            ):
                misses.append("pointing")
            verdict = "pass" if not misses else f"**FAIL** ({', '.join(misses)})"
        table.add_row(
            f"{m.display} (seed {m.seed})",
            [
                ci_cell(auc, low, high),
                Cell("chance" if control else KIND_NAMES[kind]),
                Cell(f"{pointing.text} ({best})", (pointing,)) if best else plain_cell(pointing),
                plain_cell(rand),
                Cell(verdict),
            ],
        )
    table.notes.append(
        f"Targets (`report.known_answer` in params.yaml): macro test AUC >= {targets['cnn_auc']} for a CNN and "
        f">= {targets['transformer_auc']} for a transformer, and the best CAM method's pointing game (class "
        f"mean, all boxes) >= {targets['pointing_ratio']} x the random map's. The best method is picked on the "
        "test boxes: this is a wiring check, not a result. A run that fails learned too little in its epochs "
        "or is miswired; `configs/known-answer.yaml` trains long enough for all six models of the paper to "
        'pass, and a run with `train.shuffle_labels: true` must stay at chance (README: "The known answer").'
    )
    return table
