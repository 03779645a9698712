"""The phantom's known answer, checked in every phantom report: did each model learn the signs?

The phantom's signs are learnable by construction, so a model that stays near chance there points
at slow learning or a wiring bug, and the report must say which models pass rather than leave it
to the reader. The targets are ``report.known_answer``: a macro test AUC per kind of model
(transformers trained from scratch learn more slowly) and a pointing game of the model's best CAM
method at least ``pointing_ratio`` times the random map's. A family is judged only when the run
trained it for at least its ``min_epochs``: fewer epochs than it needs to learn the signs prove
nothing either way, so it is "not judged" there (``make known-answer`` trains long enough). In a
control run (``train.shuffle_labels``) the expectation flips: the AUC's confidence interval must
hold 0.5. The verdicts also go to ``metrics/known_answer.json``, which ``make known-answer`` reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cxr_core.errors import ArtifactError
from cxr_core.explain.class_means import first_best
from cxr_core.files import contract, read_json, write_json
from cxr_core.models.registry import get_spec
from cxr_core.params import train_epochs
from cxr_core.report.inputs import CONTROL_METHOD, ModelResults, method_names
from cxr_core.report.provenance import Cell, Number, Table, ci_cell, finite, lookup, number, plain_cell

#: Families held to the transformer target; every other family is held to the CNN one.
TRANSFORMER_FAMILIES: frozenset[str] = frozenset({"swin"})
#: How the "target" column names each target (its value is in the table's note: cells hold only
#: numbers that come from a JSON file).
KIND_NAMES: dict[str, str] = {"cnn_auc": "CNN", "transformer_auc": "transformer"}
PASS = "pass"


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


def trained_epochs(params: Mapping[str, Any], model: str) -> int:
    """The epochs ``model`` was set to train for (``train.epochs``, or its family's own)."""
    return train_epochs(params, get_spec(model).family)


def min_epochs(params: Mapping[str, Any], model: str) -> int:
    """The epochs ``model``'s family needs before its known answer is judged (``other`` if unlisted)."""
    table = params["report"]["known_answer"]["min_epochs"]
    family = get_spec(model).family
    return int(table[family] if family in table else table["other"])


@dataclass(frozen=True)
class Judged:
    """One run's known answer: the numbers it was judged on (with provenance) and the verdict."""

    m: ModelResults
    kind: str
    target: float
    auc: Number
    low: Number
    high: Number
    best: str | None
    pointing: Number
    random: Number
    verdict: str  # pass | fail | not judged | at chance | not at chance | no CI
    misses: tuple[str, ...] = ()

    def text(self) -> str:
        """The verdict as the report prints it."""
        if self.verdict == "fail":
            return f"**FAIL** ({', '.join(self.misses)})"
        if self.verdict == "not judged":
            return "not judged: too few epochs (`make known-answer`)"
        if self.verdict == "not at chance":
            return "**NOT at chance: look for a leak**"
        if self.verdict == "no CI":
            return "no CI (test.bootstrap is 0)"
        return self.verdict


def judge(m: ModelResults, params: Mapping[str, Any]) -> Judged:
    targets, control = params["report"]["known_answer"], bool(params["train"]["shuffle_labels"])
    kind = "transformer_auc" if get_spec(m.name).family in TRANSFORMER_FAMILIES else "cnn_auc"
    auc = number(m.test, m.test_path, ("macro_auc",))
    low = number(m.test, m.test_path, ("macro_auc_ci", "0"), role="ci_low")
    high = number(m.test, m.test_path, ("macro_auc_ci", "1"), role="ci_high")
    target = float(targets[kind])
    best = _best_method(m)
    pointing = number(m.localise, m.localise_path, ("methods", str(best), "pointing", "mean"))
    rand = number(m.localise, m.localise_path, ("methods", CONTROL_METHOD, "pointing", "mean"), role="random")
    misses: list[str] = []
    if control and (low.value is None or high.value is None):
        verdict = "no CI"
    elif control:
        verdict = "at chance" if low.value <= 0.5 <= high.value else "not at chance"
    elif trained_epochs(params, m.name) < min_epochs(params, m.name):
        verdict = "not judged"
    else:
        if auc.value is None or auc.value < target:
            misses.append("AUC")
        if (
            pointing.value is None
            or rand.value is None
            or pointing.value < targets["pointing_ratio"] * rand.value
        ):
            misses.append("pointing")
        verdict = "fail" if misses else PASS
    return Judged(m, kind, target, auc, low, high, best, pointing, rand, verdict, tuple(misses))


def judge_all(models: Sequence[ModelResults], params: Mapping[str, Any]) -> list[Judged]:
    return [judge(m, params) for m in models]


def known_answer_table(judged: Sequence[Judged], params: Mapping[str, Any]) -> Table:
    """One row per run: macro AUC [CI] against its target, best CAM pointing against the random map's."""
    targets, control = params["report"]["known_answer"], bool(params["train"]["shuffle_labels"])
    trained = ", ".join(
        f"{family} {train_epochs(params, family)}"
        for family in dict.fromkeys(get_spec(j.m.name).family for j in judged)
    )
    columns = ["macro AUC [95% CI]", "target", "best CAM pointing", "RandomCAM pointing", "verdict"]
    title = (
        "Known answer: control run (labels permuted), each macro AUC's 95% CI must hold 0.5"
        if control
        else "Known answer: did each model learn the phantom's signs?"
    )
    table = Table("known_answer", title, "model", columns)
    for j in judged:
        table.add_row(
            f"{j.m.display} (seed {j.m.seed})",
            [
                ci_cell(j.auc, j.low, j.high),
                Cell("chance" if control else KIND_NAMES[j.kind]),
                Cell(f"{j.pointing.text} ({j.best})", (j.pointing,)) if j.best else plain_cell(j.pointing),
                plain_cell(j.random),
                Cell(j.text()),
            ],
        )
    needs = ", ".join(f"{family} {n}" for family, n in targets["min_epochs"].items())
    table.notes.append(
        f"Targets (`report.known_answer` in params.yaml): macro test AUC >= {targets['cnn_auc']} for a CNN and "
        f">= {targets['transformer_auc']} for a transformer, and the best CAM method's pointing game (class "
        f"mean, all boxes) >= {targets['pointing_ratio']} x the random map's. A family is judged from the "
        f"epochs it needs to learn the signs (`min_epochs`: {needs}); this run trained {trained}. The best "
        "method is picked on the test boxes: this is a wiring check, not a result. A run that fails learned "
        "too little or is miswired; `make known-answer` runs `configs/known-answer.yaml`, long enough to "
        "judge all six models of the paper, and a run with `train.shuffle_labels: true` must stay at chance "
        "(docs/known-answer.md)."
    )
    return table


def known_answer_json(judged: Sequence[Judged], params: Mapping[str, Any], phantom: bool) -> dict[str, Any]:
    """``metrics/known_answer.json``: each run's verdict and the numbers it was judged on (empty off the phantom)."""
    runs = {
        f"{j.m.name}/seed{j.m.seed}": {
            "verdict": j.verdict,
            "misses": list(j.misses),
            "macro_auc": j.auc.value,
            "target": j.target,
            "epochs": trained_epochs(params, j.m.name),
            "min_epochs": min_epochs(params, j.m.name),
            "pointing": j.pointing.value,
            "pointing_method": j.best,
            "random_pointing": j.random.value,
        }
        for j in (judged if phantom else ())
    }
    return {
        "phantom": phantom,
        "control": bool(params["train"]["shuffle_labels"]),
        "epochs": int(params["train"]["epochs"]),
        "runs": runs,
    }


@contract("metrics/known_answer.json", writer="report", fields=("phantom", "control", "epochs", "runs"))
class KnownAnswerMetrics:
    """Each run's known-answer verdict (``runs``: ``<model>/seed<k>`` -> verdict and numbers)."""

    @staticmethod
    def write(path, doc: Mapping[str, Any]) -> None:
        write_json(path, dict(doc))

    @staticmethod
    def read(path) -> dict:
        return read_json(path, "the report stage", KnownAnswerMetrics.CONTRACT.fields)  # type: ignore[attr-defined]

    @staticmethod
    def parse(text: str, where: str) -> dict[str, Mapping[str, Any]]:
        """The ``runs`` of a file's text (as ``git show`` gives it), each with a string ``verdict``."""
        try:
            runs = json.loads(text)["runs"]
            if not isinstance(runs, dict) or not all(
                isinstance(r.get("verdict"), str) for r in runs.values()
            ):
                raise KeyError("verdict")
        except (ValueError, KeyError, AttributeError, TypeError) as exc:
            raise ArtifactError(
                f"{where}: not a known-answer file (expected runs.<model/seed>.verdict; {exc})"
            ) from None
        return runs
