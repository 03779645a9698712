"""The ``cam`` section's knobs that change a heatmap, as one object the batch loop takes.

Its own module, importing nothing of the package, so every method can read its knob from it
(``from_settings``) without the settings knowing the methods.
"""

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

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

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
