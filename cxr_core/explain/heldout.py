"""Localisation measured the held-out way: thresholds chosen on the tune half, numbers on the report half.

All of NIH's boxes are on test images, so a heatmap threshold picked because it scores best on the
boxes is tuned on the numbers it reports. Following Choe et al. (2020, "Evaluating weakly supervised
object localization methods right"), ``loc.csv`` splits the boxes by patient into ``tune`` and
``report``; every threshold here is chosen on ``tune`` rows only and every headline number is read
on ``report`` rows. Three per-box scores:

* **MaxBoxAccV2** (Choe et al.): for each IoU cut-off delta in ``localise.maxboxacc_iou`` the heatmap
  threshold tau whose boxes (every connected component's box, "all contours") most often reach
  IoU >= delta on tune; a report box scores the mean over delta of its hits at tau(delta). Choe et
  al.'s "max" is over thresholds on the split being scored; taking tau from tune gives the held-out,
  lower version, and tau maximises the class-mean accuracy (the pipeline's average), not the
  per-box one. Ties (equal class-mean hit counts, compared exactly) go to the lowest threshold, so
  a cut-off no tune box reaches gets tau = 0.
* **Tuned IoU**: the paper's IoU at the sweep threshold with the best tune class-mean IoU.
* **Energy-based pointing game** (Wang et al. 2020, Score-CAM): the share of the raw map's mass in the
  box; threshold-free, and computed on the un-normalised maps so a per-image min-max cannot move it.

Baselines (:mod:`cxr_core.explain.baselines`) and every CAM method are scored by the same code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cxr_core.explain.class_means import best_column
from cxr_core.explain.geometry import best_box_scores, paper_iou


def sweep_thresholds(step: float) -> np.ndarray:
    """The heatmap thresholds swept on tune: ``0, step, 2 step, ...`` below 1 (rounded, no float dust)."""
    if not 0 < step < 1:
        raise ValueError(f"sweep step must lie in (0, 1), got {step}")
    return np.round(np.arange(0.0, 1.0 - 1e-9, step), 6)


def choose_threshold(scores: np.ndarray, labels: np.ndarray, tune: np.ndarray, *, hits: bool = False) -> int:
    """Index of the column with the best class-mean score over the **tune** rows (lowest on ties).

    Only ``scores[tune]`` is read, so nothing about the report rows can move the choice; ties are
    decided by :func:`cxr_core.explain.class_means.best_column` (exact for ``hits``).
    """
    tune = np.asarray(tune, dtype=bool)
    if not tune.any():
        raise ValueError("the tune half of the box set is empty: no threshold can be chosen on it")
    return best_column(np.asarray(scores)[tune], np.asarray(labels)[tune], hits=hits)


def best_box_iou_sweep(maps: np.ndarray, boxes: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """``K x T``: the best IoU of any connected-component box of each map at each threshold."""
    out = np.zeros((len(maps), len(thresholds)))
    for k in range(len(maps)):
        out[k] = best_box_scores(maps[k], boxes[k], thresholds)[0]
    return out


def heldout_scores(
    maps: np.ndarray,
    masks: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    tune: np.ndarray,
    *,
    sweep: np.ndarray,
    maxboxacc_iou: Sequence[float],
) -> tuple[pd.DataFrame, dict]:
    """Per-box tuned IoU and MaxBoxAccV2 hits, and the thresholds chosen on ``tune``.

    ``maps``: ``K x S x S`` floats in [0, 1] (what the paper thresholds), ``masks`` their box masks,
    ``boxes`` ``K x 4`` in the same space. Returns the columns ``iou_tuned``, ``maxbox_d<delta>``
    (0/1 per cut-off) and ``maxboxacc`` (their mean), and the chosen thresholds.
    """
    iou = paper_iou(maps, masks, sweep)
    i_iou = choose_threshold(iou, labels, tune)
    columns = {"iou_tuned": iou[:, i_iou]}
    chosen: dict = {"iou": float(sweep[i_iou]), "maxboxacc": {}}
    # The component sweep is the costly part: every threshold on the tune rows (to choose), only the
    # chosen thresholds on the report rows (NaN elsewhere, never read: they count as not reached).
    tune = np.asarray(tune, dtype=bool)
    sweep = np.asarray(sweep, dtype=np.float64)
    best = np.full((len(maps), len(sweep)), np.nan)
    best[tune] = best_box_iou_sweep(maps[tune], boxes[tune], sweep)
    picks = {
        delta: choose_threshold((best >= delta).astype(np.float64), labels, tune, hits=True)
        for delta in maxboxacc_iou
    }
    needed = sorted(set(picks.values()))
    if needed and (~tune).any():
        best[np.ix_(~tune, needed)] = best_box_iou_sweep(maps[~tune], boxes[~tune], sweep[needed])
    hits = []
    for delta in maxboxacc_iou:
        reached = (best >= delta).astype(np.float64)
        i_box = picks[delta]
        key = delta_key(delta)
        columns[f"maxbox_{key}"] = reached[:, i_box]
        chosen["maxboxacc"][key] = float(sweep[i_box])
        hits.append(reached[:, i_box])
    columns["maxboxacc"] = np.mean(hits, axis=0) if hits else np.zeros(len(maps))
    return pd.DataFrame(columns), chosen


def delta_key(delta: float) -> str:
    """``0.3 -> 'd030'``: an IoU cut-off as a metric key without dots."""
    return f"d{round(delta * 100):03d}"


@dataclass(frozen=True)
class HeldoutSettings:
    """The ``localise`` section: the threshold sweep and MaxBoxAccV2's IoU cut-offs."""

    sweep: tuple[float, ...]
    maxboxacc_iou: tuple[float, ...]

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> HeldoutSettings:
        section = params["localise"]
        return cls(
            sweep=tuple(sweep_thresholds(section["sweep_step"]).tolist()),
            maxboxacc_iou=tuple(section["maxboxacc_iou"]),
        )
