"""The ``cam`` section's knobs that change a heatmap, as one object the batch loop takes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CamSettings:
    """The ``cam`` section's knobs that change a heatmap (``batch_size`` changes only speed)."""

    methods: tuple[str, ...]
    batch_size: int
    seed: int
    eigen_sign: str
    random_stride: int

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> CamSettings:
        cam = params["cam"]
        return cls(
            methods=tuple(cam["methods"]),
            batch_size=cam["batch_size"],
            seed=params["seed"],
            eigen_sign=cam["eigen_sign"],
            random_stride=cam["random_stride"],
        )
