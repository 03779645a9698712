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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn
from tqdm import tqdm

from cxr_core.data.batches import normalise, to_device
from cxr_core.data.tables import LocTable
from cxr_core.explain.geometry import to_uint8
from cxr_core.explain.heatmaps import SavedHeatmaps
from cxr_core.explain.methods import CamMaps, check_eigen_sign, compute_cams, degenerate_maps, get_cam_method
from cxr_core.models.registry import ModelSpec
from cxr_core.runtime import Runtime, check_amp, check_device

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


def cams_in_batches(
    model: nn.Module,
    spec: ModelSpec,
    images: np.ndarray,
    rows: np.ndarray,
    classes: np.ndarray,
    settings: CamSettings,
    runtime: Runtime,
) -> Iterator[tuple[int, int, dict[str, CamMaps]]]:
    """``(start, stop, {method: CamMaps})`` for ``images[rows[start:stop]]`` explained for
    ``classes[start:stop]``, ``cam.batch_size`` at a time; the random control is seeded by position."""
    runtime.prepare(model).eval()
    step = settings.batch_size
    for start in range(0, len(rows), step):
        stop = min(start + step, len(rows))
        x = normalise(
            to_device(images[rows[start:stop]], runtime.device), channels_last=runtime.channels_last
        )
        yield (
            start,
            stop,
            compute_cams(
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
            ),
        )


def clean_maps(cam: CamMaps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The normalised maps, the raw float32 maps and the degeneracy flags; a degenerate map (flat,
    all-zero, non-finite) is 0 in both, so it points nowhere and covers nothing."""
    bad = degenerate_maps(cam.maps)
    maps = np.where(bad[:, None, None], 0.0, np.nan_to_num(cam.maps))
    raw = np.where(bad[:, None, None], 0.0, np.nan_to_num(cam.raw)).astype(np.float32)
    return maps, raw, bad


#: The registries a stage that computes CAMs checks its params against.
CAM_LOOKUPS = {
    "cam method": get_cam_method,
    "eigen sign": check_eigen_sign,
    "device": check_device,
    "amp": check_amp,
}


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
    rows, classes, k = loc.rows, loc.label_index, len(loc)
    size = images.shape[1:]
    maps = {m: np.zeros((k, *size), np.uint8) for m in settings.methods}
    raw: dict[str, list[np.ndarray]] = {m: [] for m in settings.methods}
    degenerate = {m: np.zeros(k, bool) for m in settings.methods}
    batches = cams_in_batches(model, spec, images, rows, classes, settings, runtime)
    total = -(-k // settings.batch_size)
    for start, stop, out in tqdm(batches, total=total, desc=f"CAMs {spec.name}", unit="batch"):
        for method, cam in out.items():
            clean, clean_raw, bad = clean_maps(cam)
            degenerate[method][start:stop] = bad
            maps[method][start:stop] = to_uint8(clean)
            raw[method].append(clean_raw)
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
