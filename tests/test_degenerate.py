"""Degenerate maps (cxr_core.explain.degenerate): flat, all-zero and NaN maps flagged and counted."""

from __future__ import annotations

import numpy as np

from cxr_core.explain.degenerate import degeneracy_summary, degenerate_maps


def test_degenerate_maps_flag_constant_zero_and_nan():
    rng = np.random.default_rng(0)
    maps = rng.random((5, 8, 8)).astype(np.float32)
    maps[1] = 0.0
    maps[2] = 0.5
    maps[3, 2, 2] = np.nan
    assert degenerate_maps(maps).tolist() == [False, True, True, True, False]
    assert degenerate_maps(maps[0]).tolist() == [False]
    summary = degeneracy_summary({"GradCAM": maps, "EigenCAM": maps[[0, 4]]}, model="m")
    assert summary["GradCAM"] == {
        "model": "m",
        "method": "GradCAM",
        "maps": 5,
        "degenerate": 3,
        "degenerate_fraction": 0.6,
        "nonfinite": 1,
        "all_zero": 1,
        "constant_nonzero": 1,
    }
    assert summary["EigenCAM"]["degenerate_fraction"] == 0.0
