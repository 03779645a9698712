"""The file sanity@ writes and the report reads: each CAM method's randomisation verdict and faithfulness.

Kept apart from the checks themselves (:mod:`cxr_core.explain.sanity`, which runs models and CAMs),
so the report depends on the file format, not on the CAM code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxr_core.files import contract, read_json, write_json

#: ``metrics/sanity/<model>/seed<k>.json`` top-level keys.
SANITY_KEYS: tuple[str, ...] = (
    "model",
    "n_images",
    "subset",
    "steps",
    "max_rank_correlation",
    "faithfulness",
    "road_percentiles",
    "methods",
)


@contract("metrics/sanity/<model>/seed<k>.json", writer="sanity@<model>-<k>", fields=SANITY_KEYS)
class SanityMetrics:
    """Per CAM method: mean Spearman per cascade step, the verdict, and the mean faithfulness score."""

    @staticmethod
    def write(path: str | os.PathLike, doc: Mapping[str, Any]) -> None:
        write_json(path, dict(doc))

    @staticmethod
    def read(path: str | os.PathLike) -> dict:
        return read_json(path, "the sanity stage (sanity@<model>-<seed>)", SANITY_KEYS)


def sample_boxes(subset: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted positions of ``n`` boxes of the report half (all of them when it has fewer), seeded."""
    report = np.flatnonzero(np.asarray(subset) == "report")
    if len(report) <= n:
        return report
    return np.sort(np.random.default_rng(seed).choice(report, size=n, replace=False))


def sanity_metrics(
    model_name: str,
    randomisation: Mapping[str, Mapping[str, Any]],
    verdict: Mapping[str, Mapping[str, Any]],
    faithful: Mapping[str, np.ndarray],
    *,
    faithfulness: str,
    max_rank_correlation: float,
    road_percentiles: Sequence[int],
) -> dict[str, Any]:
    """The JSON document of one run (per-image correlations stay out: they belong to a debug log)."""
    methods = {}
    for method, result in randomisation.items():
        finite = faithful[method][np.isfinite(faithful[method])]
        methods[method] = {
            "spearman": dict(result["spearman"]),
            "final_spearman": verdict[method]["final_spearman"],
            "passes": bool(verdict[method]["passes"]),
            "faithfulness": float(finite.mean()) if finite.size else None,
        }
    first = next(iter(randomisation.values()))
    return {
        "model": model_name,
        "n_images": int(first["n_images"]),
        "subset": "report",
        "steps": list(first["steps"]),
        "modules": dict(first["modules"]),
        "max_rank_correlation": float(max_rank_correlation),
        "faithfulness": faithfulness,
        "road_percentiles": [int(p) for p in road_percentiles],
        "methods": methods,
    }
