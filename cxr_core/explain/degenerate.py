"""Degenerate maps: flat, all-zero or non-finite maps found, counted, and zeroed before they are scored.

A degenerate map is kept visible (NaN stays NaN in the CAM code) so that it can be counted here, and
stored as 0 so that it points nowhere and covers nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

if TYPE_CHECKING:
    from cxr_core.explain.cams.base_cam import CamMaps


def degenerate_maps(maps: np.ndarray | Tensor, atol: float = 1e-6) -> np.ndarray:
    """Per map: True when it is non-finite anywhere or constant (all-zero included). (B,) bool."""
    m = maps.detach().cpu().numpy() if isinstance(maps, Tensor) else np.asarray(maps)
    if m.ndim < 2:
        raise ValueError(f"maps must be (B, H, W) or (H, W), got shape {m.shape}")
    if m.ndim == 2:
        m = m[None]
    flat = m.reshape(m.shape[0], -1)
    if flat.shape[1] == 0:
        return np.ones(flat.shape[0], dtype=bool)
    finite = np.isfinite(flat).all(axis=1)
    with np.errstate(invalid="ignore"):
        spread = np.where(finite, np.ptp(np.where(np.isfinite(flat), flat, 0), axis=1), np.inf)
    return ~finite | (spread <= atol)


def degeneracy_summary(
    heatmaps: dict[str, np.ndarray], model: str | None = None, atol: float = 1e-6
) -> dict[str, dict[str, object]]:
    """Per method: how many maps are degenerate and why (for the model's metrics / logs)."""
    out: dict[str, dict[str, object]] = {}
    for method, maps in heatmaps.items():
        m = np.asarray(maps)
        if m.ndim == 2:
            m = m[None]
        flat = m.reshape(m.shape[0], -1)
        nonfinite = ~np.isfinite(flat).all(axis=1) if flat.size else np.zeros(len(flat), bool)
        degenerate = degenerate_maps(m, atol) if len(m) else np.zeros(0, bool)
        all_zero = ~nonfinite & (np.abs(np.where(np.isfinite(flat), flat, 0)).max(axis=1, initial=0) <= atol)
        n = int(m.shape[0])
        out[method] = {
            "model": model,
            "method": method,
            "maps": n,
            "degenerate": int(degenerate.sum()),
            "degenerate_fraction": float(degenerate.mean()) if n else 0.0,
            "nonfinite": int(nonfinite.sum()),
            "all_zero": int(all_zero.sum()),
            "constant_nonzero": int((degenerate & ~nonfinite & ~all_zero).sum()),
        }
    return out


def clean_maps(cam: CamMaps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The normalised maps, the raw float32 maps and the degeneracy flags; a degenerate map (flat,
    all-zero, non-finite) is 0 in both, so it points nowhere and covers nothing."""
    bad = degenerate_maps(cam.maps)
    maps = np.where(bad[:, None, None], 0.0, np.nan_to_num(cam.maps))
    raw = np.where(bad[:, None, None], 0.0, np.nan_to_num(cam.raw)).astype(np.float32)
    return maps, raw, bad
