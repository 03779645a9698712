"""Score saved heatmaps against the localisation set: per-box records and the metrics summary.

Heatmaps are stored as the paper's 0..255 maps (uint8, ``np.uint8(255 * h)``), one per row of
``loc.csv`` and CAM method, so changing ``cam.thresholds`` re-scores them here without touching a
model. Every method (the random-map control included) is scored by the same code, at every
threshold, with three families of numbers:

* the paper's IoU (``sum(A*B) / sum(max(A, B))`` with ``A = H > a * 255``);
* Wang et al. (2017) boxes from the thresholded map's connected components, the best one scored by
  IoU and IoBB, summarised as accuracy at T in ``cam.box_thresholds``;
* the pointing game (is the maximum of the raw map, upsampled to the box space, inside the box:
  :func:`cxr_core.explain.geometry.pointing_hit`, never the 0..255 map, where hundreds of pixels tie);

and the held-out numbers of :mod:`cxr_core.explain.heldout` (thresholds chosen on the tune half of
the boxes, read on the report half): MaxBoxAccV2, the tuned IoU and the energy-based pointing game,
with the anatomy-only baselines of :mod:`cxr_core.explain.baselines` scored beside the methods.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxr_core.errors import ArtifactError
from cxr_core.explain.baselines import baseline_maps
from cxr_core.explain.class_means import class_means
from cxr_core.explain.geometry import best_box_scores, box_masks, energy_in_boxes, paper_iou, pointing_hit
from cxr_core.explain.heldout import HeldoutSettings, delta_key, heldout_scores
from cxr_core.files import contract, read_csv, read_json, write_csv, write_json

#: Records keep these loc.csv columns.
RECORD_KEYS = ["image", "row", "label"]
#: ``boxes.csv``: these columns, then ``maxbox_<d>`` per MaxBoxAccV2 cut-off and
#: ``iou_<t>, box_iou_<t>, box_iobb_<t>`` for each paper heatmap threshold.
RECORD_COLUMNS: tuple[str, ...] = (
    *RECORD_KEYS,
    "subset",
    "method",
    "prob",
    "positive_pred",
    "pointing_hit",
    "degenerate",
    "energy",
    "iou_tuned",
    "maxboxacc",
)
#: ``metrics/localise/<model>.json`` top-level keys.
LOCALISE_METRICS_KEYS: tuple[str, ...] = ("model", "n_boxes", "n_images", "image_size", "subsets", "methods")


@contract(
    "data/localisation/<model>/seed<k>.csv",
    writer="localise@<model>-<k>",
    fields=(*RECORD_COLUMNS, "maxbox_<d>", "iou_<t>", "box_iou_<t>", "box_iobb_<t>"),
)
class BoxRecords:
    """One row per (box, method): its scores at every threshold (what the metrics JSON averages).

    ``subset`` is the box's half (``tune`` / ``report``); ``energy`` the share of the raw map's mass
    in the box; ``iou_tuned`` and ``maxbox_<d>`` are scored at the thresholds chosen on the tune half,
    ``maxboxacc`` is the mean of the ``maxbox_<d>`` hits (its report class mean is MaxBoxAccV2)."""

    @staticmethod
    def write(path: str | os.PathLike, records: pd.DataFrame) -> None:
        write_csv(path, records)

    @staticmethod
    def read(path: str | os.PathLike) -> pd.DataFrame:
        return read_csv(
            path, "the localise stage (localise@<model>-<seed>)", RECORD_COLUMNS, dtype={"image": str}
        )


@contract(
    "metrics/localise/<model>/seed<k>.json", writer="localise@<model>-<k>", fields=LOCALISE_METRICS_KEYS
)
class LocaliseMetrics:
    """Per method: paper IoU per class x threshold, box accuracy, pointing game, degenerate share."""

    @staticmethod
    def write(path: str | os.PathLike, model: str, summary: dict) -> None:
        write_json(path, {"model": model, **summary})

    @staticmethod
    def read(path: str | os.PathLike) -> dict:
        return read_json(path, "the localise stage (localise@<model>-<seed>)", LOCALISE_METRICS_KEYS)


def threshold_key(a: float, prefix: str = "t") -> str:
    """``0.15 -> 't015'``: keys without dots, so DVC's flattened metric names stay readable."""
    return f"{prefix}{round(a * 100):03d}"


def as_unit_maps(maps_uint8: np.ndarray) -> np.ndarray:
    """uint8 0..255 maps -> floats in [0, 1] that map back to the *same* 0..255 values.

    ``(u + 0.5) / 255`` (1.0 for 255) survives the scorer's ``np.uint8(255 * h)`` exactly
    (``u / 255`` would round some values down by one level).
    """
    return np.minimum((maps_uint8.astype(np.float64) + 0.5) / 255.0, 1.0)


def score_method(
    maps_uint8: np.ndarray,
    raw: np.ndarray,
    loc: pd.DataFrame,
    probs: np.ndarray,
    degenerate: np.ndarray,
    *,
    method: str,
    thresholds: Sequence[float],
    positive_threshold: float,
    heldout: HeldoutSettings,
) -> tuple[pd.DataFrame, dict]:
    """One record per box for one method, and the thresholds the held-out scores chose on tune.

    Paper IoU, best-box IoU / IoBB per paper threshold (on the 0..255 maps, the paper's rule), pointing
    hit and energy share (on the raw float maps), tuned IoU and MaxBoxAccV2 hits. A degenerate (flat
    or broken) map scores 0 everywhere.
    """
    size = maps_uint8.shape[-1]
    maps = as_unit_maps(maps_uint8)
    truth = loc[["x", "y", "w", "h"]].to_numpy(dtype=np.float64)
    labels = loc["label"].to_numpy()
    tune = (loc["subset"] == "tune").to_numpy()
    masks = box_masks(truth, size)
    iou = paper_iou(maps, masks, thresholds)  # K x T
    hits = pointing_hit(raw, masks) & ~degenerate
    box_iou = np.zeros((len(loc), len(thresholds)))
    box_iobb = np.zeros_like(box_iou)
    for k in range(len(loc)):
        box_iou[k], box_iobb[k] = best_box_scores(maps[k], truth[k], thresholds)
    tuned, chosen = heldout_scores(
        maps, masks, truth, labels, tune, sweep=np.asarray(heldout.sweep), maxboxacc_iou=heldout.maxboxacc_iou
    )
    label_prob = probs[np.arange(len(loc)), loc["label_index"].to_numpy()]
    records = loc[RECORD_KEYS].copy()
    records["subset"] = loc["subset"].to_numpy()
    records["method"] = method
    records["prob"] = label_prob
    records["positive_pred"] = label_prob >= positive_threshold
    records["pointing_hit"] = hits
    records["degenerate"] = degenerate
    records["energy"] = np.where(degenerate, 0.0, energy_in_boxes(raw, truth, size))
    for column in tuned.columns:
        records[column] = np.where(degenerate, 0.0, tuned[column].to_numpy())
    for j, a in enumerate(thresholds):
        records[f"iou_{threshold_key(a)}"] = np.where(degenerate, 0.0, iou[:, j])
        records[f"box_iou_{threshold_key(a)}"] = np.where(degenerate, 0.0, box_iou[:, j])
        records[f"box_iobb_{threshold_key(a)}"] = np.where(degenerate, 0.0, box_iobb[:, j])
    return records, chosen


def _per_class(values: pd.Series, labels: pd.Series) -> dict[str, float]:
    """Mean per box class and ``mean`` over the classes (:func:`cxr_core.explain.class_means.class_means`)."""
    return class_means(values.to_numpy(dtype=np.float64), labels.to_numpy())


def _class_mean(flags: pd.Series, labels: pd.Series) -> float:
    return _per_class(flags, labels)["mean"]


def summarise_method(
    records: pd.DataFrame,
    thresholds: Sequence[float],
    box_thresholds: Sequence[float],
    chosen: dict,
    maxboxacc_iou: Sequence[float],
) -> dict:
    """The JSON block of one method (format in docs/architecture.md).

    ``iou``, ``box_acc_*``, ``pointing``: the paper's fixed thresholds on all boxes (its Tables 7-8);
    ``heldout``: the thresholds chosen on the tune half and the numbers on the report half.
    """
    labels = records["label"]
    summary: dict = {"iou": {}, "box_acc_iou": {}, "box_acc_iobb": {}}
    for a in thresholds:
        key = threshold_key(a)
        summary["iou"][key] = _per_class(records[f"iou_{key}"], labels)
        for metric in ("iou", "iobb"):
            column = records[f"box_{metric}_{key}"]
            summary[f"box_acc_{metric}"][key] = {
                threshold_key(t, "T"): _class_mean(column >= t, labels) for t in box_thresholds
            }
    summary["pointing"] = _per_class(records["pointing_hit"], labels)
    summary["degenerate_fraction"] = float(records["degenerate"].mean()) if len(records) else 0.0
    report = records[records["subset"] == "report"]
    summary["heldout"] = {
        "chosen_on": "tune",
        "thresholds": chosen,
        "report": {
            "energy": _per_class(report["energy"], report["label"]),
            "pointing": _per_class(report["pointing_hit"], report["label"]),
            "iou_tuned": _per_class(report["iou_tuned"], report["label"]),
            "maxboxacc": _per_class(report["maxboxacc"], report["label"]),
            "maxbox": {
                delta_key(d): _class_mean(report[f"maxbox_{delta_key(d)}"], report["label"])
                for d in maxboxacc_iou
            },
        },
    }
    return summary


def score_heatmaps(
    heatmaps: dict[str, np.ndarray],
    raw: dict[str, np.ndarray],
    degenerate: dict[str, np.ndarray],
    loc: pd.DataFrame,
    probs: np.ndarray,
    *,
    thresholds: Sequence[float],
    box_thresholds: Sequence[float],
    positive_threshold: float,
    heldout: HeldoutSettings,
) -> tuple[pd.DataFrame, dict]:
    """Every method and the baselines: the per-box table (long format) and the metrics JSON."""
    if any(len(m) != len(loc) for m in heatmaps.values()):
        raise ValueError(
            f"heatmaps have {[len(m) for m in heatmaps.values()]} maps for {len(loc)} boxes in loc.csv; "
            "re-run the cams stage (dvc repro cams@<model>-<seed>)"
        )
    tune = (loc["subset"] == "tune").to_numpy()
    if len(loc) and (tune.all() or not tune.any()):
        half = "tune" if not tune.any() else "report"
        raise ArtifactError(
            f"loc.csv has no box in its {half} half (split.loc_tune_fraction leaves too few patients); "
            "thresholds are chosen on tune and numbers read on report, so both need boxes"
        )
    size = int(next(iter(heatmaps.values())).shape[-1]) if heatmaps else 0
    scored = {m: (heatmaps[m], raw[m], degenerate[m]) for m in heatmaps}
    if size:
        boxes = loc[["x", "y", "w", "h"]].to_numpy(dtype=np.float64)
        for name, (maps, raw_maps) in baseline_maps(boxes, loc["label"].to_numpy(), tune, size).items():
            scored[name] = (maps, raw_maps, np.zeros(len(loc), bool))
    tables, methods = [], {}
    for method, (maps, raw_maps, flags) in scored.items():
        records, chosen = score_method(
            maps,
            raw_maps,
            loc,
            probs,
            flags,
            method=method,
            thresholds=thresholds,
            positive_threshold=positive_threshold,
            heldout=heldout,
        )
        tables.append(records)
        methods[method] = summarise_method(records, thresholds, box_thresholds, chosen, heldout.maxboxacc_iou)
    summary = {
        "n_boxes": len(loc),
        "n_images": int(loc["image"].nunique()),
        "image_size": size,
        "subsets": {name: int((loc["subset"] == name).sum()) for name in ("tune", "report")},
        "methods": methods,
    }
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(), summary
