"""External validation: the NIH-trained models scored on a data set they never saw.

Classification: each mapped class's score is the maximum of the model's probabilities for its NIH
findings (a direct match has one), its AUC is read on the rows where the data set labels it (blank
and uncertain are missing, never negative), with a patient-clustered bootstrap CI. The same mapped
class is scored on the NIH test set, so the drop (external - NIH) compares like with like; the two
sets are independent samples, so the drop's interval comes from independent bootstraps (the NIH
one is test@'s own: same seed, same draws).

Boxes (VinDr-CXR): every (image, class) with boxes is explained for the class's most probable NIH
finding; a map hits when its peak lies in the union of the readers' boxes, and its IoU with that
union is read at the threshold chosen on the tune half of the NIH boxes (localise@): nothing is
tuned on the external set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from cxr_core.data.external.base import MappedClass
from cxr_core.evaluate.metrics import (
    _check_ci,
    _json_float,
    _patient_counts,
    _percentile_interval,
    weighted_auc,
)
from cxr_core.explain.cams.batch_loop import cams_in_batches
from cxr_core.explain.cams.settings import CamSettings
from cxr_core.explain.class_means import class_means
from cxr_core.explain.degenerate import clean_maps
from cxr_core.explain.geometry import box_mask, paper_iou, pointing_hit
from cxr_core.models.registry import ModelSpec
from cxr_core.runtime import Runtime

#: Replicates per chunk of the weighted AUC (bounds memory on large sets such as PadChest).
_CHUNK = 50


def mapped(values: np.ndarray, classes: Sequence[MappedClass]) -> np.ndarray:
    """N x 14 NIH probabilities (or 0/1 targets) -> N x K: each class's max over its NIH findings."""
    v = np.asarray(values, dtype=np.float64)
    return np.stack([v[:, list(c.nih_index)].max(axis=1) for c in classes], axis=1)


def class_aucs(
    labels: np.ndarray, scores: np.ndarray, groups: Any, *, n_boot: int, seed: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class AUC (K,) on each class's labelled rows, and its patient-bootstrap replicates
    (n_boot x K) from ONE draw of patients shared by all classes (so macro replicates are joint)."""
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    n, k = y.shape
    codes, counts = _patient_counts(np.asarray(groups), n, max(n_boot, 1), seed)
    auc = np.full(k, np.nan)
    reps = np.full((n_boot, k), np.nan)
    for c in range(k):
        valid = np.isfinite(y[:, c])
        if not valid.any():
            continue
        yc, sc = y[valid, c], s[valid, c]
        auc[c] = weighted_auc(yc, sc, np.ones(len(yc)))
        for lo in range(0, n_boot, _CHUNK):
            reps[lo : lo + _CHUNK, c] = weighted_auc(yc, sc, counts[lo : lo + _CHUNK][:, codes[valid]])
    return auc, reps


def _interval(values: np.ndarray, ci: float) -> list[float | None]:
    return [_json_float(v) for v in _percentile_interval(values, ci)]


def external_summary(
    classes: Sequence[MappedClass],
    ext: tuple[np.ndarray, np.ndarray, Any],
    nih: tuple[np.ndarray, np.ndarray, Any],
    *,
    n_boot: int,
    ci: float,
    seed: int,
    min_positives: int = 1,
) -> dict[str, Any]:
    """``ext`` = (labels N x K with NaN, probs N x 14, patients); ``nih`` = (targets M x 14, probs M x 14,
    patients) of the NIH test set. Per class and macro: AUC [CI] on both, the drop [CI], counts.

    The macro averages the classes with at least ``min_positives`` positives and negatives on both
    sets (fixed in advance: a class with a handful of positives has an AUC, but an interval that only
    the bootstrap draws containing those patients define)."""
    ci = _check_ci(ci)
    ext_labels, ext_probs, ext_groups = ext
    nih_targets, nih_probs, nih_groups = nih
    ext_auc, ext_reps = class_aucs(
        ext_labels, mapped(ext_probs, classes), ext_groups, n_boot=n_boot, seed=[seed, 1]
    )
    nih_mapped = mapped(nih_targets, classes)
    nih_auc, nih_reps = class_aucs(
        nih_mapped, mapped(nih_probs, classes), nih_groups, n_boot=n_boot, seed=seed
    )
    per_class: dict[str, Any] = {}
    enough = np.zeros(len(classes), bool)
    for k, c in enumerate(classes):
        y = ext_labels[:, k]
        counts = [
            int(np.nansum(y == 1)),
            int(np.nansum(y == 0)),
            int((nih_mapped[:, k] == 1).sum()),
            int((nih_mapped[:, k] == 0).sum()),
        ]
        enough[k] = min(counts) >= min_positives
        per_class[c.name] = {
            "kind": c.kind,
            "nih": list(c.nih),
            "auc": _json_float(ext_auc[k]),
            "auc_ci": _interval(ext_reps[:, k], ci),
            "nih_auc": _json_float(nih_auc[k]),
            "nih_auc_ci": _interval(nih_reps[:, k], ci),
            "drop": _json_float(ext_auc[k] - nih_auc[k]),
            "drop_ci": _interval(ext_reps[:, k] - nih_reps[:, k], ci),
            "n_labelled": int(np.isfinite(y).sum()),
            "positives": counts[0],
            "missing": int((~np.isfinite(y)).sum()),
            "nih_positives": counts[2],
            "in_macro": bool(enough[k] and np.isfinite(ext_auc[k]) and np.isfinite(nih_auc[k])),
        }
    both = np.isfinite(ext_auc) & np.isfinite(nih_auc) & enough
    if both.any():
        macro_ext, macro_nih = ext_reps[:, both].mean(axis=1), nih_reps[:, both].mean(axis=1)
    else:
        macro_ext = macro_nih = np.full(n_boot, np.nan)
    return {
        "classes": per_class,
        "macro_classes": [c.name for c, ok in zip(classes, both, strict=True) if ok],
        "macro_auc": _json_float(ext_auc[both].mean()) if both.any() else None,
        "macro_auc_ci": _interval(macro_ext, ci),
        "nih_macro_auc": _json_float(nih_auc[both].mean()) if both.any() else None,
        "nih_macro_auc_ci": _interval(macro_nih, ci),
        "macro_drop": _json_float(ext_auc[both].mean() - nih_auc[both].mean()) if both.any() else None,
        "macro_drop_ci": _interval(macro_ext - macro_nih, ci),
    }


def box_targets(boxes: pd.DataFrame, size: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """One target per (row, class) with boxes: rows (T,), class names, union masks (T x S x S).

    ``boxes`` has fractions of the image size (``boxes.csv``); every reader's box counts."""
    rows, names, masks = [], [], []
    for (row, label), group in boxes.groupby(["row", "label"], sort=True):
        mask = np.zeros((size, size), bool)
        for b in group.itertuples(index=False):
            mask |= box_mask((b.x0 * size, b.y0 * size, (b.x1 - b.x0) * size, (b.y1 - b.y0) * size), size)
        rows.append(int(row))
        names.append(str(label))
        masks.append(mask)
    return np.asarray(rows, np.int64), names, np.asarray(masks, bool).reshape(len(rows), size, size)


def external_box_scores(
    model: nn.Module,
    spec: ModelSpec,
    images: np.ndarray,
    probs: np.ndarray,
    boxes: pd.DataFrame,
    classes: Sequence[MappedClass],
    settings: CamSettings,
    runtime: Runtime,
    iou_thresholds: Mapping[str, float],
) -> dict[str, Any]:
    """Pointing game and IoU at the NIH-tuned threshold per CAM method, per class and class-mean."""
    size = images.shape[1]
    rows, names, masks = box_targets(boxes, size)
    by_name = {c.name: c for c in classes}
    targets = np.array(
        [
            by_name[n].nih_index[int(np.argmax(probs[r, list(by_name[n].nih_index)]))]
            for r, n in zip(rows, names, strict=True)
        ],
        dtype=np.int64,
    )
    hits = {m: np.zeros(len(rows), bool) for m in settings.methods}
    ious = {m: np.full(len(rows), np.nan) for m in settings.methods}
    for lo, hi, out in cams_in_batches(model, spec, images, rows, targets, settings, runtime):
        for method, cam in out.items():
            maps, raw, _ = clean_maps(cam)  # a degenerate map is 0: it points nowhere and covers nothing
            hits[method][lo:hi] = pointing_hit(raw, masks[lo:hi])
            if method in iou_thresholds:
                ious[method][lo:hi] = paper_iou(maps, masks[lo:hi], [iou_thresholds[method]])[:, 0]
    names_arr = np.asarray(names)
    order = [c.name for c in classes]
    result: dict[str, Any] = {"n_targets": len(rows), "n_images": int(np.unique(rows).size), "methods": {}}
    for method in settings.methods:
        threshold = iou_thresholds.get(method)
        pointing = {k: _json_float(v) for k, v in class_means(hits[method], names_arr, order).items()}
        if threshold is None:
            iou_tuned: dict[str, Any] = dict.fromkeys(pointing)
        else:
            iou_tuned = {k: _json_float(v) for k, v in class_means(ious[method], names_arr, order).items()}
        result["methods"][method] = {"iou_threshold": threshold, "pointing": pointing, "iou_tuned": iou_tuned}
    return result
