"""One run's clinical audit (cxr_core.audit.clinical): what is chosen on validation, and its flags."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr_core.audit.clinical import ClinicalSettings, Split, clinical_audit
from cxr_core.evaluate.operating import choose_thresholds
from cxr_core.labels import LABELS


def _settings(**overrides) -> ClinicalSettings:
    base = dict(
        operating_point="youden",
        target_sensitivity=0.9,
        bins=5,
        temperature_scaling=True,
        temperature_bounds=(0.05, 20.0),
        temperature_tol=1e-6,
        age_bands=(0, 40, 80),
        n_boot=20,
        ci=0.95,
        seed=0,
    )
    return ClinicalSettings(**{**base, **overrides})


def _split(rng: np.random.Generator, n: int, separation: float, offset: int = 0) -> Split:
    targets = (rng.uniform(size=(n, len(LABELS))) < 0.4).astype(np.uint8)
    logits = separation * (targets - 0.5) + rng.normal(size=targets.shape)
    probs = (1 / (1 + np.exp(-logits))).astype(np.float32)
    images = np.array([f"{i + offset:08d}_000.png" for i in range(n)])
    return Split(images, np.arange(n) // 2, targets, logits, probs)


def _tables(test: Split) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = len(test.images)
    label_table = pd.DataFrame(
        {"image": test.images, "age": np.arange(n) % 90, "sex": np.resize(["M", "F"], n), "view": "PA"}
    )
    adjudicated = pd.DataFrame({"image": test.images, "set": "test"})
    for name in ("fracture", "pneumothorax", "airspace_opacity", "nodule_or_mass"):
        adjudicated[name] = (np.arange(n) % 3 == 0).astype(float)
    return label_table, adjudicated


def test_thresholds_and_temperature_come_from_validation_only() -> None:
    rng = np.random.default_rng(0)
    val, test = _split(rng, 80, 3.0), _split(rng, 60, 3.0, offset=1000)
    doc, points, _ = clinical_audit(val, test, *_tables(test), _settings(temperature_scaling=False))
    np.testing.assert_array_equal(points["thresholds"], choose_thresholds(val.targets, val.probs, "youden"))
    shuffled = Split(test.images, test.patients, test.targets[::-1].copy(), test.logits, test.probs)
    _, other, _ = clinical_audit(val, shuffled, *_tables(shuffled), _settings(temperature_scaling=False))
    np.testing.assert_array_equal(other["thresholds"], points["thresholds"])  # test labels change nothing
    assert doc["calibration"]["temperature"] is None and doc["calibration"]["scaled"] is None


def test_a_temperature_at_the_search_bound_is_flagged() -> None:
    rng = np.random.default_rng(1)
    test = _split(rng, 60, 3.0, offset=1000)
    separated = _split(rng, 80, 3.0)
    separated = Split(
        separated.images,
        separated.patients,
        separated.targets,
        40.0 * (separated.targets - 0.5),
        separated.probs,
    )  # perfectly separated validation logits push T to its lower bound
    doc, _, _ = clinical_audit(separated, test, *_tables(test), _settings())
    assert doc["calibration"]["temperature"] < 0.051 and doc["calibration"]["temperature_at_bound"]
    ordinary, _, _ = clinical_audit(_split(rng, 80, 3.0), test, *_tables(test), _settings())
    assert not ordinary["calibration"]["temperature_at_bound"]
