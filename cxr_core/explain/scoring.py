"""Score saved heatmaps against the localisation set: per-box records and the metrics summary.

Heatmaps are stored as the paper's 0..255 maps (uint8, ``np.uint8(255 * h)``), one per row of
``loc.csv`` and CAM method, so changing ``cam.thresholds`` re-scores them here without touching a
model. Every method (the random-map control included) is scored by the same code, at every
threshold, with three families of numbers:

* the paper's IoU (``sum(A*B) / sum(max(A, B))`` with ``A = H > a * 255``);
* Wang et al. (2017) boxes from the thresholded map's connected components, the best one scored by
  IoU and IoBB, summarised as accuracy at T in ``cam.box_thresholds``;
* the pointing game (is the map's maximum inside the box).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxr_core.explain.geometry import best_box_scores, box_masks, paper_iou, pointing_hit
from cxr_core.files import contract, read_csv, read_json, write_csv, write_json
from cxr_core.labels import BOX_LABELS

#: Records keep these loc.csv columns.
RECORD_KEYS = ["image", "row", "label"]
#: ``boxes.csv``: these columns, then ``iou_<t>, box_iou_<t>, box_iobb_<t>`` for each heatmap threshold.
RECORD_COLUMNS: tuple[str, ...] = (
    *RECORD_KEYS,
    "method",
    "prob",
    "positive_pred",
    "pointing_hit",
    "degenerate",
)
#: ``metrics/localise/<model>.json`` top-level keys.
LOCALISE_METRICS_KEYS: tuple[str, ...] = ("model", "n_boxes", "n_images", "image_size", "methods")


@contract(
    "data/localisation/<model>/seed<k>.csv",
    writer="localise@<model>-<k>",
    fields=(*RECORD_COLUMNS, "iou_<t>", "box_iou_<t>", "box_iobb_<t>"),
)
class BoxRecords:
    """One row per (box, method): its scores at every threshold (what the metrics JSON averages)."""

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
    loc: pd.DataFrame,
    probs: np.ndarray,
    degenerate: np.ndarray,
    *,
    method: str,
    thresholds: Sequence[float],
    positive_threshold: float,
) -> pd.DataFrame:
    """One record per box for one method: paper IoU, best-box IoU / IoBB per threshold, pointing hit."""
    size = maps_uint8.shape[-1]
    maps = as_unit_maps(maps_uint8)
    truth = loc[["x", "y", "w", "h"]].to_numpy(dtype=np.float64)
    masks = box_masks(truth, size)
    iou = paper_iou(maps, masks, thresholds)  # K x T
    hits = pointing_hit(maps, masks) & ~degenerate
    box_iou = np.zeros((len(loc), len(thresholds)))
    box_iobb = np.zeros_like(box_iou)
    for k in range(len(loc)):
        box_iou[k], box_iobb[k] = best_box_scores(maps[k], truth[k], thresholds)
    label_prob = probs[np.arange(len(loc)), loc["label_index"].to_numpy()]
    records = loc[RECORD_KEYS].copy()
    records["method"] = method
    records["prob"] = label_prob
    records["positive_pred"] = label_prob >= positive_threshold
    records["pointing_hit"] = hits
    records["degenerate"] = degenerate
    for j, a in enumerate(thresholds):
        records[f"iou_{threshold_key(a)}"] = np.where(degenerate, 0.0, iou[:, j])
        records[f"box_iou_{threshold_key(a)}"] = np.where(degenerate, 0.0, box_iou[:, j])
        records[f"box_iobb_{threshold_key(a)}"] = np.where(degenerate, 0.0, box_iobb[:, j])
    return records


def _per_class(values: pd.Series, labels: pd.Series) -> dict[str, float]:
    """Mean per box class, and ``mean`` over the classes that have boxes (the paper's average)."""
    out = {lab: float(values[labels == lab].mean()) for lab in BOX_LABELS if (labels == lab).any()}
    out["mean"] = float(np.mean(list(out.values()))) if out else float("nan")
    return out


def _class_mean(flags: pd.Series, labels: pd.Series) -> float:
    return _per_class(flags.astype(float), labels)["mean"]


def summarise_method(
    records: pd.DataFrame, thresholds: Sequence[float], box_thresholds: Sequence[float]
) -> dict:
    """The JSON block of one method (format in docs/architecture.md)."""
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
    summary["pointing"] = _per_class(records["pointing_hit"].astype(float), labels)
    summary["degenerate_fraction"] = float(records["degenerate"].mean()) if len(records) else 0.0
    return summary


def score_heatmaps(
    heatmaps: dict[str, np.ndarray],
    degenerate: dict[str, np.ndarray],
    loc: pd.DataFrame,
    probs: np.ndarray,
    *,
    thresholds: Sequence[float],
    box_thresholds: Sequence[float],
    positive_threshold: float,
) -> tuple[pd.DataFrame, dict]:
    """All methods: the per-box table (long format) and the metrics JSON."""
    if any(len(m) != len(loc) for m in heatmaps.values()):
        raise ValueError(
            f"heatmaps have {[len(m) for m in heatmaps.values()]} maps for {len(loc)} boxes in loc.csv; "
            "re-run the cams stage (dvc repro cams@<model>-<seed>)"
        )
    tables, methods = [], {}
    for method, maps in heatmaps.items():
        records = score_method(
            maps,
            loc,
            probs,
            degenerate[method],
            method=method,
            thresholds=thresholds,
            positive_threshold=positive_threshold,
        )
        tables.append(records)
        methods[method] = summarise_method(records, thresholds, box_thresholds)
    summary = {
        "n_boxes": len(loc),
        "n_images": int(loc["image"].nunique()),
        "image_size": int(next(iter(heatmaps.values())).shape[-1]) if heatmaps else 0,
        "methods": methods,
    }
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(), summary
