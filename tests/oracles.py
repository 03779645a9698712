"""Slow reference implementations the tests check the vectorised code against."""

from __future__ import annotations

import numpy as np


def explicit_resamples(groups: np.ndarray, n_boot: int, seed: int) -> list[np.ndarray]:
    """Image indices of each patient-bootstrap replicate, drawn with the same RNG calls as
    ``cxr_core.evaluate.metrics._patient_counts`` (P patients in np.unique order = one multinomial
    count vector per replicate), so a slow loop over them must reproduce the fast replicates."""
    patients, codes = np.unique(groups, return_inverse=True)
    p = patients.shape[0]
    counts = np.random.default_rng(seed).multinomial(p, np.full(p, 1.0 / p), size=n_boot)
    members = [np.flatnonzero(codes == k) for k in range(p)]
    return [np.concatenate([members[k] for k in np.repeat(np.arange(p), counts[r])]) for r in range(n_boot)]
