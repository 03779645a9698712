"""Operating points: one decision threshold per finding, chosen on validation, scored on test.

An AUC says how well a model ranks; a reader of a clinical paper also wants to know what happens
at one threshold: how many findings are caught (sensitivity), how many normal films are cleared
(specificity), and how far a positive or negative call can be trusted (PPV, NPV). The threshold
is picked by a rule from :data:`THRESHOLD_RULES` on the *validation* probabilities only, then
applied unchanged to the test split, so nothing is tuned on the numbers that are reported.

Conventions:

* a call is positive when ``prob >= threshold``, and every candidate threshold is an observed
  validation probability (the convention of sklearn's ``roc_curve``), so the chosen value is one
  that actually splits the validation images;
* every rule breaks ties towards the *higher* threshold (fewer positive calls for an equally good
  score), compared on exact counts: the usual recipe, ``np.argmax`` over sklearn's decreasing
  ``roc_curve`` thresholds, does the same except where float ``tpr - fpr`` splits an exact tie;
* all three rules depend only on the order of the probabilities, so a monotone recalibration
  (temperature scaling) moves the threshold value but not which images are called positive;
* a class without positives or without negatives in validation has no threshold (NaN, ``null`` in
  JSON), and a rate whose denominator is 0 is NaN, never an exception.

Test-set intervals are percentile intervals of the patient-level bootstrap of
:mod:`cxr_core.evaluate.metrics`, with the same draws (same seed -> the same replicates as the
AUC intervals), so an operating point and an AUC of one replicate describe the same resample.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from cxr_core.evaluate.metrics import (
    _check_ci,
    _check_scores,
    _defined,
    _json_float,
    _patient_counts,
    _percentile_interval,
)
from cxr_core.files import contract, malformed, read_json, write_json
from cxr_core.labels import LABELS

# --------------------------------------------------------------------------------------------
# threshold rules (validation split)


def _curve(target: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Distinct scores in decreasing order with the TP and FP counts of ``prob >= score``.

    Returns ``(thresholds, tp, fp, n_pos, n_neg)``; counts are exact int64, so rules compare
    scores without rounding (two thresholds with the same TPR - FPR tie exactly).
    """
    order = np.argsort(-prob, kind="stable")
    scores = prob[order]
    positive = (target[order] == 1).astype(np.int64)
    last = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), scores.shape[0] - 1]  # end of each tie group
    tp = np.cumsum(positive)[last]
    fp = (last + 1) - tp
    n_pos = int(positive.sum())
    return scores[last], tp, fp, n_pos, scores.shape[0] - n_pos


def youden_threshold(target: np.ndarray, prob: np.ndarray, target_sensitivity: float) -> float:
    """The threshold maximising Youden's J = TPR - FPR (Youden 1950, *Cancer* 3:32-35).

    J is compared as the integer ``tp * n_neg - fp * n_pos`` (J times ``n_pos * n_neg``), so
    ties are exact; the first maximum in decreasing-threshold order is the highest threshold.
    ``target_sensitivity`` is unused (every rule takes the same arguments).
    """
    thresholds, tp, fp, n_pos, n_neg = _curve(target, prob)
    return float(thresholds[int(np.argmax(tp * n_neg - fp * n_pos))])


def max_f1_threshold(target: np.ndarray, prob: np.ndarray, target_sensitivity: float) -> float:
    """The threshold maximising F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (TP + FP + n_pos).

    Numerator and denominator are exact integers and IEEE division is correctly rounded, so equal
    F1 fractions give identical floats: ties are exact and the first maximum in decreasing-threshold
    order is the highest threshold. ``target_sensitivity`` is unused.
    """
    thresholds, tp, fp, n_pos, _ = _curve(target, prob)
    return float(thresholds[int(np.argmax(2 * tp / (tp + fp + n_pos)))])


def sensitivity_threshold(target: np.ndarray, prob: np.ndarray, target_sensitivity: float) -> float:
    """The highest threshold whose validation sensitivity is at least ``target_sensitivity``.

    The screening rule: fix how many findings may be missed, then clear as many normal films as
    that allows. Sensitivity only grows as the threshold falls and reaches 1 at the lowest score,
    so such a threshold always exists for a target in (0, 1].
    """
    thresholds, tp, _, n_pos, _ = _curve(target, prob)
    return float(thresholds[int(np.argmax(tp / n_pos >= target_sensitivity))])


#: A threshold rule: (0/1 targets, probabilities, target sensitivity) of one class -> threshold.
ThresholdRule = Callable[[np.ndarray, np.ndarray, float], float]

#: ``clinical.operating_point`` in params.yaml -> rule.
THRESHOLD_RULES: dict[str, ThresholdRule] = {
    "youden": youden_threshold,
    "max_f1": max_f1_threshold,
    "sensitivity": sensitivity_threshold,
}


def get_threshold_rule(name: str) -> ThresholdRule:
    """The rule called ``name`` in :data:`THRESHOLD_RULES`."""
    try:
        return THRESHOLD_RULES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"operating point {name!r} is not a known threshold rule; expected one of {list(THRESHOLD_RULES)}"
        ) from None


def _check_target_sensitivity(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 < value <= 1.0:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {value!r}")
    return float(value)


def choose_thresholds(
    targets_val: Any, probs_val: Any, method: str, target_sensitivity: float = 0.9
) -> np.ndarray:
    """One threshold per class (C,) by rule ``method`` on validation data; NaN where undefined.

    A class needs positives and negatives in validation: without both, TPR or FPR is 0 / 0.
    """
    rule = get_threshold_rule(method)
    target_sensitivity = _check_target_sensitivity(target_sensitivity)
    t, p = _check_scores(targets_val, probs_val)
    out = np.full(t.shape[1], np.nan)
    for c in range(t.shape[1]):
        if _defined(t[:, c]):
            out[c] = rule(t[:, c], p[:, c], target_sensitivity)
    return out


# --------------------------------------------------------------------------------------------
# test-split metrics at fixed thresholds

#: The four cells of the confusion matrix, in the order the results list them.
CELLS: tuple[str, ...] = ("tp", "fp", "tn", "fn")

#: Rate -> (numerator cell, the cells summed in the denominator).
RATES: dict[str, tuple[str, tuple[str, str]]] = {
    "sensitivity": ("tp", ("tp", "fn")),
    "specificity": ("tn", ("tn", "fp")),
    "ppv": ("tp", ("tp", "fp")),
    "npv": ("tn", ("tn", "fn")),
}


def _check_thresholds(thresholds: Any, n_classes: int) -> np.ndarray:
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.shape != (n_classes,):
        raise ValueError(f"thresholds must have shape ({n_classes},), got {np.shape(thresholds)}")
    if np.isinf(thr).any():
        raise ValueError(
            f"thresholds must be finite or NaN (no threshold), got {thr[np.isinf(thr)].tolist()}"
        )
    return thr


def _cells(t: np.ndarray, p: np.ndarray, thr: np.ndarray) -> dict[str, np.ndarray]:
    """0/1 indicator (N x C, float64) of each confusion cell; a NaN threshold calls nothing."""
    with np.errstate(invalid="ignore"):
        call = p >= thr[None, :]
    truth = t == 1
    return {
        "tp": (truth & call).astype(np.float64),
        "fp": (~truth & call).astype(np.float64),
        "tn": (~truth & ~call).astype(np.float64),
        "fn": (truth & ~call).astype(np.float64),
    }


def _rates(counts: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV and NPV from (weighted) cell counts; NaN where 0 / 0."""
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for name, (num, (d1, d2)) in RATES.items():
            den = counts[d1] + counts[d2]
            out[name] = np.where(den > 0, counts[num] / np.where(den > 0, den, 1.0), np.nan)
    return out


def operating_replicates(
    targets: Any, probs: Any, thresholds: Any, groups: Any, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Every rate of every patient-bootstrap replicate (n_boot x C per rate); NaN where undefined.

    A replicate's confusion counts are ``draw counts (n_boot x P) @ per-patient counts (P x C)``:
    one matrix product per cell for all replicates and classes, exact for integer counts. A class
    without a threshold is NaN in every replicate.
    """
    t, p = _check_scores(targets, probs)
    thr = _check_thresholds(thresholds, t.shape[1])
    codes, counts = _patient_counts(groups, t.shape[0], n_boot, seed)
    draws = counts.astype(np.float64)
    weighted = {}
    for name, cell in _cells(t, p, thr).items():
        per_patient = np.zeros((draws.shape[1], t.shape[1]))
        np.add.at(per_patient, codes, cell)
        weighted[name] = draws @ per_patient
    rates = _rates(weighted)
    return {name: np.where(np.isfinite(thr)[None, :], value, np.nan) for name, value in rates.items()}


def operating_metrics(
    targets: Any,
    probs: Any,
    thresholds: Any,
    groups: Any,
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV per class at fixed thresholds, with patient-bootstrap CIs.

    Returns arrays: ``threshold`` (C,), the point counts ``tp`` / ``fp`` / ``tn`` / ``fn`` (C,),
    each rate (C,) and ``<rate>_ci`` (C x 2, percentile interval over the replicates in which the
    rate is defined). A class without a threshold (NaN) is NaN throughout; ``n_boot=0`` skips the
    bootstrap (intervals NaN). :func:`operating_json` makes it JSON-ready.
    """
    ci = _check_ci(ci)
    t, p = _check_scores(targets, probs)
    thr = _check_thresholds(thresholds, t.shape[1])
    has_threshold = np.isfinite(thr)
    point = {
        name: np.where(has_threshold, cell.sum(axis=0), np.nan) for name, cell in _cells(t, p, thr).items()
    }
    out: dict[str, np.ndarray] = {"threshold": thr, **point}
    intervals = {name: np.full((t.shape[1], 2), np.nan) for name in RATES}
    if n_boot > 0:  # clinical bootstrap 0: no intervals
        reps = operating_replicates(t, p, thr, groups, n_boot=n_boot, seed=seed)
        for name, values in reps.items():
            for c in range(t.shape[1]):
                intervals[name][c] = _percentile_interval(values[:, c], ci)
    for name, value in _rates(point).items():
        out[name] = value
        out[f"{name}_ci"] = intervals[name]
    return out


def operating_json(result: Mapping[str, np.ndarray], labels: Sequence[str] = LABELS) -> dict[str, Any]:
    """:func:`operating_metrics` as ``{label: {threshold, <rate>, <rate>_ci, tp, fp, tn, fn}}``.

    Keys hold no dots (``dvc metrics`` joins nested keys with dots); undefined values are ``None``
    and counts are ints.
    """
    n_classes = result["threshold"].shape[0]
    if len(labels) != n_classes:
        raise ValueError(f"labels has {len(labels)} names for {n_classes} classes")
    out: dict[str, Any] = {}
    for c, name in enumerate(labels):
        entry: dict[str, Any] = {"threshold": _json_float(result["threshold"][c])}
        for rate in RATES:
            entry[rate] = _json_float(result[rate][c])
            entry[f"{rate}_ci"] = [_json_float(v) for v in result[f"{rate}_ci"][c]]
        for cell in CELLS:
            value = result[cell][c]
            entry[cell] = int(value) if math.isfinite(value) else None
        out[name] = entry
    return out


# --------------------------------------------------------------------------------------------
# the operating-points file

#: ``data/operating/<model>/seed<k>.json``.
OPERATING_KEYS: tuple[str, ...] = ("model", "seed", "method", "chosen_on", "temperature", "thresholds")

_PRODUCER = "the clinical stage (clinical@<model>-<seed>)"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def operating_problem(
    doc: Mapping[str, Any], labels: Sequence[str] = LABELS, *, run: bool = True
) -> str | None:
    """What is wrong with an operating-points document, or None. ``run``: it must also name its
    model and seed (the pipeline's file; an export's config.json carries them elsewhere)."""
    if not isinstance(doc, Mapping):
        return f"operating points are {type(doc).__name__}, not a mapping"
    if run and (not isinstance(doc.get("model"), str) or not doc["model"]):
        return f"model must be a non-empty string, got {doc.get('model')!r}"
    seed = doc.get("seed")
    if run and (not isinstance(seed, (int, np.integer)) or isinstance(seed, (bool, np.bool_)) or seed < 0):
        return f"seed must be a non-negative integer, got {seed!r}"
    if doc.get("method") not in THRESHOLD_RULES:
        return f"method {doc.get('method')!r} is not one of {list(THRESHOLD_RULES)}"
    if doc.get("chosen_on") != "val":
        return f"chosen_on must be 'val' (thresholds are never chosen on test), got {doc.get('chosen_on')!r}"
    temp = doc.get("temperature")
    if temp is not None and not (_is_number(temp) and math.isfinite(temp) and temp > 0):
        return f"temperature must be a positive number or null (not fitted), got {temp!r}"
    thresholds = doc.get("thresholds")
    if not isinstance(thresholds, Mapping):
        return f"thresholds must map each label to a number or null, got {type(thresholds).__name__}"
    absent = [name for name in labels if name not in thresholds]
    unknown = [name for name in thresholds if name not in labels]
    if absent or unknown:
        return f"thresholds lack label(s) {absent} and hold unknown label(s) {unknown}"
    for name in labels:
        value = thresholds[name]
        if value is not None and not (_is_number(value) and 0.0 <= value <= 1.0):
            return f"thresholds[{name!r}] = {value!r} is not a probability in [0, 1] or null"
    return None


@contract("data/operating/<model>/seed<k>.json", writer="clinical@<model>-<k>", fields=OPERATING_KEYS)
class OperatingPoints:
    """Per-finding decision thresholds of one run, chosen on validation by one rule.

    ``temperature`` is the validation-fitted temperature the thresholds apply to (probabilities
    ``sigmoid(logit / temperature)``), or null when temperature scaling is off (raw probabilities).
    ``thresholds`` maps every label to its threshold, null where validation had no positives or no
    negatives of it.
    """

    @staticmethod
    def write(
        path: str | os.PathLike,
        *,
        model: str,
        seed: int,
        method: str,
        temperature: float | None,
        thresholds: Any,
        labels: Sequence[str] = LABELS,
    ) -> None:
        """``thresholds``: a (C,) array in label order (NaN = none) or a label -> value mapping."""
        if not isinstance(thresholds, Mapping):
            values = np.asarray(thresholds, dtype=np.float64)
            if values.shape != (len(labels),):
                raise ValueError(f"{path}: thresholds must have shape ({len(labels)},), got {values.shape}")
            thresholds = dict(zip(labels, values.tolist(), strict=True))
        thresholds = {
            k: (None if v is None or not math.isfinite(v) else float(v)) for k, v in thresholds.items()
        }
        doc = {
            "model": model,
            "seed": int(seed) if isinstance(seed, np.integer) else seed,
            "method": method,
            "chosen_on": "val",
            "temperature": None if temperature is None else float(temperature),
            "thresholds": thresholds,
        }
        problem = operating_problem(doc, labels)
        if problem:
            raise ValueError(f"{path}: {problem}")
        write_json(path, doc)

    @staticmethod
    def read(path: str | os.PathLike, labels: Sequence[str] = LABELS) -> dict[str, Any]:
        doc = read_json(path, _PRODUCER, OPERATING_KEYS)
        problem = operating_problem(doc, labels)
        if problem:
            raise malformed(path, problem, _PRODUCER)
        return doc

    @staticmethod
    def threshold_array(doc: Mapping[str, Any], labels: Sequence[str] = LABELS) -> np.ndarray:
        """A read document's thresholds as a (C,) float array in label order, NaN for null."""
        return np.array(
            [np.nan if doc["thresholds"][name] is None else doc["thresholds"][name] for name in labels],
            dtype=np.float64,
        )
