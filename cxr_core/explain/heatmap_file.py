"""The file ``cams@`` writes and ``localise@`` and the report read: one uint8 map per box and method.

numpy only, so scoring saved maps never imports torch or the CAM code (a CAM change re-runs
``cams@``, and ``localise@`` only when the maps it wrote changed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from cxr_core.data.tables import LocTable
from cxr_core.files import contract, malformed, read_npz, write_npz

_PRODUCER = "the CAM stage (cams@<model>-<seed>)"


@contract(
    "data/heatmaps/<model>/seed<k>.npz",
    writer="cams@<model>-<k>",
    fields=("methods", "maps_<method>", "raw_<method>", "degenerate_<method>"),
)
@dataclass(frozen=True)
class SavedHeatmaps:
    """Per method uint8 ``K x S x S`` maps and degeneracy flags, one per row of ``loc.csv``, and the
    raw maps: float32 ``K x h x w``, after the ReLU and before any normalisation, at the target
    layer's resolution (0 where the map is degenerate). Heatmaps only: the model's probabilities
    are the test stage's predictions file, which ``localise@`` and the report read."""

    maps: dict[str, np.ndarray]
    degenerate: dict[str, np.ndarray]
    raw: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        k = len(self)
        for m, maps in self.maps.items():
            if maps.dtype != np.uint8 or maps.ndim != 3 or len(maps) != k:
                raise ValueError(f"maps of {m} must be uint8 ({k}, S, S), got {maps.dtype} {maps.shape}")
            if self.degenerate[m].shape != (k,):
                raise ValueError(f"degenerate flags of {m} must be ({k},), got {self.degenerate[m].shape}")
            raw = self.raw[m]
            if raw.dtype != np.float32 or raw.ndim != 3 or len(raw) != k or not np.isfinite(raw).all():
                raise ValueError(
                    f"raw maps of {m} must be finite float32 ({k}, h, w), got {raw.dtype} {raw.shape}"
                )
            if (raw < 0).any():
                raise ValueError(f"raw maps of {m} must be >= 0 (after the ReLU)")

    def __len__(self) -> int:
        """Boxes (rows of ``loc.csv``) the maps are for."""
        return len(next(iter(self.maps.values()))) if self.maps else 0

    def save(self, path: str | os.PathLike) -> None:
        write_npz(
            path,
            {
                "methods": np.array(list(self.maps), dtype=str),
                **{f"maps_{m}": v for m, v in self.maps.items()},
                **{f"degenerate_{m}": v.astype(bool) for m, v in self.degenerate.items()},
                **{f"raw_{m}": v.astype(np.float32) for m, v in self.raw.items()},
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> SavedHeatmaps:
        arrays = read_npz(path, _PRODUCER, ("methods",))
        methods = [str(m) for m in arrays["methods"]]
        absent = [
            f"{kind}_{m}"
            for m in methods
            for kind in ("maps", "degenerate", "raw")
            if f"{kind}_{m}" not in arrays
        ]
        if absent:
            raise malformed(path, f"lacks array(s) {absent}", _PRODUCER)
        try:
            return cls(
                maps={m: arrays[f"maps_{m}"] for m in methods},
                degenerate={m: arrays[f"degenerate_{m}"] for m in methods},
                raw={m: arrays[f"raw_{m}"] for m in methods},
            )
        except ValueError as exc:
            raise malformed(path, str(exc), _PRODUCER) from None

    def check_matches(self, loc: LocTable, path: str | os.PathLike) -> None:
        """The maps must be one per row of ``loc`` (a re-split without re-running cams@ is stale)."""
        if len(self) != len(loc):
            raise malformed(
                path, f"holds {len(self)} maps per method for {len(loc)} boxes in loc.csv", _PRODUCER
            )
