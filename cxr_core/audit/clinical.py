"""One run's clinical audit: operating points, calibration, subgroups and the adjudicated labels.

Everything chosen from data is chosen on the validation split: the temperature (fitted on the
validation logits, when ``clinical.temperature_scaling``) and the per-finding thresholds (the
``clinical.operating_point`` rule on the validation scores). The test split is only scored: at
those thresholds (sensitivity, specificity, PPV, NPV), for calibration (before and after the
temperature), per subgroup (sex, age band, view) and against Google's adjudicated labels, every
interval from the test stage's patient bootstrap draws.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cxr_core.audit.subgroups import adjudicated_scores, subgroup_attributes, subgroup_audit
from cxr_core.evaluate.calibration import (
    apply_temperature,
    calibration_summary,
    fit_temperature,
    reliability_curve,
)
from cxr_core.evaluate.operating import choose_thresholds, operating_json, operating_metrics
from cxr_core.files import contract, read_csv, read_json, write_csv, write_json

#: ``metrics/clinical/<model>/seed<k>.json`` top-level keys.
CLINICAL_KEYS: tuple[str, ...] = ("model", "seed", "operating", "calibration", "subgroups", "adjudicated")
_PRODUCER = "the clinical stage (clinical@<model>-<seed>)"


@dataclass(frozen=True)
class ClinicalSettings:
    """The ``clinical`` section of params, with the test stage's bootstrap size, level and seed."""

    operating_point: str
    target_sensitivity: float
    bins: int
    temperature_scaling: bool
    temperature_bounds: tuple[float, float]
    temperature_tol: float
    age_bands: tuple[int, ...]
    n_boot: int
    ci: float
    seed: int

    @classmethod
    def from_params(cls, cfg: Mapping[str, Any]) -> ClinicalSettings:
        c, test = cfg["clinical"], cfg["test"]
        return cls(
            operating_point=c["operating_point"],
            target_sensitivity=float(c["target_sensitivity"]),
            bins=int(c["calibration_bins"]),
            temperature_scaling=bool(c["temperature_scaling"]),
            temperature_bounds=(float(c["temperature_min"]), float(c["temperature_max"])),
            temperature_tol=float(c["temperature_tol"]),
            age_bands=tuple(int(a) for a in c["age_bands"]),
            n_boot=int(test["bootstrap"]),
            ci=float(test["ci"]),
            seed=int(cfg["seed"]),
        )


@dataclass(frozen=True)
class Split:
    """One split's images as the audit needs them: targets and logits N x C, and the model's
    probabilities (for the test split: the test stage's, so every raw number is the test stage's)."""

    images: np.ndarray
    patients: np.ndarray
    targets: np.ndarray
    logits: np.ndarray
    probs: np.ndarray


@contract("metrics/clinical/<model>/seed<k>.json", writer="clinical@<model>-<k>", fields=CLINICAL_KEYS)
class ClinicalMetrics:
    """Operating points on test, calibration before / after, subgroup audit, adjudicated labels."""

    @staticmethod
    def write(path: str | os.PathLike, doc: Mapping[str, Any]) -> None:
        write_json(path, dict(doc))

    @staticmethod
    def read(path: str | os.PathLike) -> dict:
        return read_json(path, _PRODUCER, CLINICAL_KEYS)


#: ``plots/reliability/<model>/seed<k>.csv``: reliability points before and after the temperature.
RELIABILITY_COLUMNS: tuple[str, ...] = (
    "scale",
    "label",
    "bin",
    "mean_predicted",
    "fraction_positive",
    "count",
)


@contract("plots/reliability/<model>/seed<k>.csv", writer="clinical@<model>-<k>", fields=RELIABILITY_COLUMNS)
class ReliabilityTable:
    """Equal-mass reliability curves per finding and pooled (``all``), ``raw`` and ``scaled``."""

    @staticmethod
    def write(path: str | os.PathLike, table: pd.DataFrame) -> None:
        write_csv(path, table[list(RELIABILITY_COLUMNS)])

    @staticmethod
    def read(path: str | os.PathLike) -> pd.DataFrame:
        return read_csv(path, _PRODUCER, RELIABILITY_COLUMNS, dtype={"label": str, "scale": str})


def clinical_audit(
    val: Split,
    test: Split,
    label_table: pd.DataFrame,
    adjudicated: pd.DataFrame,
    settings: ClinicalSettings,
) -> tuple[dict[str, Any], dict[str, Any], pd.DataFrame]:
    """(metrics JSON body, operating points, reliability table) of one run.

    Without a temperature the thresholds are chosen on ``val.probs`` and applied to ``test.probs``;
    with one, on and to ``sigmoid(logit / T)`` of each split.
    """
    temperature = None
    if settings.temperature_scaling:
        temperature = fit_temperature(
            val.targets, val.logits, bounds=settings.temperature_bounds, tol=settings.temperature_tol
        )
    raw = test.probs
    if temperature is None:
        val_scores, test_scores = val.probs, raw
    else:
        val_scores, test_scores = (
            apply_temperature(val.logits, temperature),
            apply_temperature(test.logits, temperature),
        )
    thresholds = choose_thresholds(
        val.targets, val_scores, settings.operating_point, settings.target_sensitivity
    )
    boot = {"n_boot": settings.n_boot, "ci": settings.ci, "seed": settings.seed}
    operating = operating_metrics(test.targets, test_scores, thresholds, test.patients, **boot)
    # Brent stops within tol (on log T) of a bound, never on it: an optimum there means the search
    # range, not the data, set the temperature (e.g. perfectly separated validation scores)
    at_bound = temperature is not None and any(
        abs(np.log(temperature) - np.log(bound)) <= 2 * settings.temperature_tol
        for bound in settings.temperature_bounds
    )
    calibration = {
        "temperature": temperature,
        "temperature_at_bound": bool(at_bound),
        "bins": settings.bins,
        "raw": calibration_summary(test.targets, raw, settings.bins),
        "scaled": None
        if temperature is None
        else calibration_summary(test.targets, test_scores, settings.bins),
    }
    curves = [reliability_curve(test.targets, raw, settings.bins).assign(scale="raw")]
    if temperature is not None:
        curves.append(reliability_curve(test.targets, test_scores, settings.bins).assign(scale="scaled"))
    attributes = subgroup_attributes(label_table, test.images, age_edges=settings.age_bands)
    doc = {
        "operating": {
            "method": settings.operating_point,
            "chosen_on": "val",
            "scores": "raw" if temperature is None else "scaled",
            "test": operating_json(operating),
        },
        "calibration": calibration,
        "subgroups": subgroup_audit(test.targets, test_scores, thresholds, test.patients, attributes, **boot),
        "adjudicated": adjudicated_scores(test.images, test.targets, raw, adjudicated, test.patients, **boot),
    }
    points = {"method": settings.operating_point, "temperature": temperature, "thresholds": thresholds}
    return doc, points, pd.concat(curves, ignore_index=True)
