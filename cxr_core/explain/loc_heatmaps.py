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

import numpy as np
from torch import nn
from tqdm import tqdm

from cxr_core.data.tables import LocTable
from cxr_core.explain.cams.batch_loop import cams_in_batches
from cxr_core.explain.cams.settings import CamSettings
from cxr_core.explain.degenerate import clean_maps
from cxr_core.explain.geometry import to_uint8
from cxr_core.explain.heatmap_file import SavedHeatmaps
from cxr_core.models.registry import ModelSpec
from cxr_core.runtime import Runtime

log = logging.getLogger(__name__)


def loc_heatmaps(
    model: nn.Module,
    spec: ModelSpec,
    images: np.ndarray,
    loc: LocTable,
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
    return SavedHeatmaps(maps, degenerate, raw_maps)
