"""``metrics/external/<name>.json``: one external set's scores for every (model, seed).

Apart from the scoring (``cxr_core.audit.external``) so that the report depends on the file's
format, not on the model and CAM code that fills it.
"""

from __future__ import annotations

import os

from cxr_core.files import contract, read_json, write_json

EXTERNAL_KEYS = (
    "dataset", "phantom", "label_file", "settings", "bootstrap_group", "n_images", "n_patients", "n_boxes",
    "classes", "left_out", "leakage", "n_boot", "ci", "seed", "min_positives", "models",
)  # fmt: skip


@contract("metrics/external/<name>.json", writer="external@<name>", fields=EXTERNAL_KEYS)
class ExternalMetrics:
    """One external set's scores for every (model, seed)."""

    @staticmethod
    def write(path: str | os.PathLike, metrics: dict) -> None:
        write_json(path, metrics)

    @staticmethod
    def read(path: str | os.PathLike) -> dict:
        return read_json(path, "the external stage (external@<name>)", EXTERNAL_KEYS)
