"""The localisation set's heatmaps: every box's image explained for the box's own finding.

Images are explained in chunks of ``cam.batch_size``; the random control is seeded by the box's
position in the whole localisation set, so its maps (like EigenCAM's) do not depend on the chunk
size. Gradient maps can differ in the last float bits between batch sizes on CPU (about 2e-7),
which very rarely moves a uint8 level. Maps are stored as uint8
(``np.uint8(255 * h)``, the map the paper thresholds), so ``localise@`` can re-score any threshold
without the model, and beside them the raw maps (after the ReLU, before any normalisation, at the
target layer's resolution) for magnitude-based metrics such as the energy inside a box.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn
from tqdm import tqdm

from cxr_core.data.batches import normalise, to_device
from cxr_core.data.tables import LocTable
from cxr_core.explain.geometry import to_uint8
from cxr_core.explain.heatmaps import SavedHeatmaps
from cxr_core.explain.methods import compute_cams, degenerate_maps
from cxr_core.models.registry import ModelSpec
from cxr_core.runtime import Runtime

log = logging.getLogger(__name__)


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


def loc_heatmaps(
    model: nn.Module,
    spec: ModelSpec,
    images: np.ndarray,
    loc: LocTable,
    probs: np.ndarray,
    settings: CamSettings,
    runtime: Runtime,
) -> SavedHeatmaps:
    """Every box's heatmap by every method, from the uint8 cache ``images``; degenerate maps are zero."""
    runtime.prepare(model).eval()
    rows, classes, k = loc.rows, loc.label_index, len(loc)
    size = images.shape[1:]
    maps = {m: np.zeros((k, *size), np.uint8) for m in settings.methods}
    raw: dict[str, list[np.ndarray]] = {m: [] for m in settings.methods}
    degenerate = {m: np.zeros(k, bool) for m in settings.methods}
    step = settings.batch_size
    for start in tqdm(range(0, k, step), desc=f"CAMs {spec.name}", unit="batch"):
        stop = min(start + step, k)
        x = normalise(
            to_device(images[rows[start:stop]], runtime.device), channels_last=runtime.channels_last
        )
        out = compute_cams(
            model,
            spec,
            x,
            classes[start:stop],
            settings.methods,
            batch_size=step,
            seed=settings.seed,
            first_position=start,
            autocast_dtype=runtime.autocast_dtype,
            channels_last=runtime.channels_last,
            eigen_sign=settings.eigen_sign,
            random_stride=settings.random_stride,
        )
        for method, cam in out.items():
            bad = degenerate_maps(cam.maps)
            degenerate[method][start:stop] = bad
            maps[method][start:stop] = to_uint8(np.where(bad[:, None, None], 0.0, np.nan_to_num(cam.maps)))
            raw[method].append(np.where(bad[:, None, None], 0.0, np.nan_to_num(cam.raw)).astype(np.float32))
    for method, flags in degenerate.items():
        if flags.any():
            log.warning(
                "%s on %s: %d of %d maps degenerate (flat, all-zero or non-finite)",
                method,
                spec.name,
                flags.sum(),
                k,
            )
    raw_maps = {m: np.concatenate(r) if r else np.zeros((0, 1, 1), np.float32) for m, r in raw.items()}
    return SavedHeatmaps(maps, degenerate, np.asarray(probs, np.float32), raw_maps)
