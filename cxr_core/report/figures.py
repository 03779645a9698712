"""The report's figures and the data behind them (Figures 1, 6-7, ROC curves, IoU, example heatmaps).

Figures are drawn on :class:`matplotlib.figure.Figure` objects (Agg, no pyplot state), so the module
is safe to call from tests and never opens a window.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_core.data.cache import load_cache
from cxr_core.data.tables import LocTable
from cxr_core.evaluate.predictions import Predictions
from cxr_core.explain.heatmap_file import SavedHeatmaps
from cxr_core.labels import BOX_LABELS, LABELS, NO_FINDING
from cxr_core.report.inputs import (
    CONTROL_METHOD,
    InputFormatError,
    ModelResults,
    ReportPaths,
    display_name,
    key_value,
    run_stage,
    threshold_keys,
)
from cxr_core.report.provenance import finite, format_value, lookup

logger = logging.getLogger(__name__)


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    logger.info("wrote %s", path)
    return path


def label_counts(split: Mapping[str, Any]) -> pd.DataFrame:
    """Images per finding (and No Finding) per split, summed over train + val + test (Figure 1 data)."""
    rows = []
    for name in [*LABELS, NO_FINDING]:
        row: dict[str, Any] = {"label": name}
        for part in ("train", "val", "test"):
            entry = split[part]
            row[part] = int(entry["no_finding"] if name == NO_FINDING else entry["positives"][name])
        row["total"] = row["train"] + row["val"] + row["test"]
        rows.append(row)
    return pd.DataFrame(rows)


def plot_label_counts(counts: pd.DataFrame, path: Path, source: str) -> Path:
    """Figure 1: stacked bars of images per label in the data actually used."""
    fig = _figure(9, 5)
    ax = fig.subplots()
    bottom = np.zeros(len(counts))
    for part in ("train", "val", "test"):
        ax.bar(counts["label"], counts[part], bottom=bottom, label=part)
        bottom += counts[part].to_numpy()
    ax.set_ylabel("images")
    ax.set_title(f"Figure 1: images per label ({source})")
    ax.set_xticks(
        range(len(counts)), [str(x).replace("_", " ") for x in counts["label"]], rotation=60, ha="right"
    )
    ax.legend()
    return _save(fig, path)


def plot_reliability(curves: pd.DataFrame, model: str, path: Path) -> Path:
    """Reliability diagram of one run, all findings pooled: observed frequency vs predicted probability,
    before and after temperature scaling (``plots/reliability/<model>/seed<k>.csv``)."""
    fig = _figure(5, 5)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    pooled = curves[curves["label"] == "all"]
    for scale, part in pooled.groupby("scale", sort=True):
        ax.plot(part["mean_predicted"], part["fraction_positive"], marker="o", label=str(scale))
    ax.set_xlabel("mean predicted probability (equal-mass bins)")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability: {display_name(model)}, all findings pooled")
    ax.legend()
    return _save(fig, path)


def plot_val_loss(models: Sequence[ModelResults], path: Path) -> Path:
    """Figures 6-7: validation loss per epoch, one panel per model (3 per row, as the paper)."""
    from matplotlib.ticker import MaxNLocator

    cols = min(3, len(models))
    rows = math.ceil(len(models) / cols)
    fig = _figure(4 * cols, 3 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, m in zip(axes, models, strict=False):
        h = m.history
        ax.plot(h.index, h["val_loss"], marker="o", label="val loss")
        if "train_loss" in h:
            ax.plot(h.index, h["train_loss"], linestyle="--", alpha=0.6, label="train loss")
        best = finite(m.train.get("best_epoch"))
        if best is not None:
            ax.axvline(best, color="grey", linestyle=":", label="best epoch")
        ax.set_title(m.display)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend(fontsize="small")
    for ax in axes[len(models) :]:
        ax.set_visible(False)
    fig.suptitle("Figures 6-7: validation loss per epoch")
    return _save(fig, path)


def plot_roc_grid(models: Sequence[ModelResults], path: Path) -> Path:
    """ROC curves: one panel per class (14), one line per model; classes without an AUC stay empty."""
    fig = _figure(13, 13)
    axes = fig.subplots(4, 4).ravel()
    for ax, label in zip(axes, LABELS, strict=False):
        for m in models:
            curve = m.roc[m.roc["label"] == label]
            if len(curve):
                macro = format_value(m.macro_auc)
                ax.plot(curve["fpr"], curve["tpr"], label=f"{m.display} (macro AUC {macro})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(label.replace("_", " "), fontsize="medium")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    for ax in axes[len(LABELS) :]:
        ax.axis("off")
    handles, names = axes[0].get_legend_handles_labels()
    axes[len(LABELS)].legend(handles, names, loc="center")
    fig.supxlabel("false positive rate")
    fig.supylabel("true positive rate")
    return _save(fig, path)


def iou_vs_threshold(models: Sequence[ModelResults], methods: Sequence[str]) -> pd.DataFrame:
    """Long frame ``model, method, threshold, iou`` of the class-mean paper IoU (n/a rows left out)."""
    rows = [
        {"model": m.name, "method": meth, "threshold": key_value(t), "iou": v}
        for m in models
        for meth in methods
        for t in threshold_keys(models, "iou")
        if (v := finite(lookup(m.localise, ("methods", meth, "iou", t, "mean")))) is not None
    ]
    return pd.DataFrame(rows, columns=["model", "method", "threshold", "iou"])


def write_iou_vs_threshold(
    frame: pd.DataFrame, models: Sequence[ModelResults], methods: Sequence[str], out_dir: Path
) -> None:
    """One CSV per model, ``threshold`` + one column per method (empty = n/a).

    DVC draws a directory plot as one chart per file and can put several ``y`` columns in a chart
    but cannot split one column by a key, so this shape gives one chart per model with each method
    beside the RandomCAM control.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.csv"):
        stale.unlink()
    for m in models:
        part = frame[frame["model"] == m.name]
        wide = part.pivot_table(index="threshold", columns="method", values="iou", aggfunc="first")
        wide = wide.reindex(columns=list(methods)).reset_index()
        wide.columns.name = None
        wide.to_csv(out_dir / f"{m.name}.csv", index=False)


def plot_iou_vs_threshold(
    frame: pd.DataFrame, methods: Sequence[str], models: Sequence[ModelResults], path: Path
) -> Path:
    """Class-mean paper IoU against threshold: one panel per method, one line per model, control dashed."""
    cols = min(len(methods), 4) or 1
    rows = max(1, math.ceil(len(methods) / cols))
    fig = _figure(4 * cols, 3.2 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    control = frame[frame["method"] == CONTROL_METHOD].groupby("threshold")["iou"].mean()
    for ax, meth in zip(axes, methods, strict=False):
        for m in models:
            part = frame[(frame["method"] == meth) & (frame["model"] == m.name)]
            if len(part):
                ax.plot(part["threshold"], part["iou"], marker="o", label=m.display)
        if meth != CONTROL_METHOD and len(control):
            ax.plot(
                control.index,
                control.to_numpy(),
                color="black",
                linestyle="--",
                label=f"{CONTROL_METHOD} (mean)",
            )
        ax.set_title(meth)
        ax.set_xlabel("heatmap threshold")
        ax.set_ylabel("paper IoU (class mean)")
        ax.legend(fontsize="x-small")
    for ax in axes[len(methods) :]:
        ax.set_visible(False)
    return _save(fig, path)


def choose_examples(loc: pd.DataFrame, n: int) -> list[int]:
    """Positions of ``n`` loc boxes, round-robin over the box classes so the grid shows several findings."""
    queues = {name: list(np.flatnonzero(loc["label"].to_numpy() == name)) for name in BOX_LABELS}
    chosen: list[int] = []
    while len(chosen) < min(n, len(loc)):
        for name in BOX_LABELS:
            if queues[name] and len(chosen) < n:
                chosen.append(int(queues[name].pop(0)))
    return chosen


@dataclass(frozen=True)
class ExampleGrid:
    """What the example heatmap grid shows: one model's maps of ``methods`` on the loc boxes ``picks``."""

    model: str
    methods: tuple[str, ...]  # drawn, in ``report.example_methods`` order
    not_computed: tuple[str, ...]  # asked for in ``report.example_methods`` but not in the heatmaps
    picks: tuple[int, ...]  # positions in loc.csv


def example_grid(
    loc: pd.DataFrame, heatmaps: Mapping[str, np.ndarray], model: str, methods: Sequence[str], n: int
) -> ExampleGrid:
    """The grid for ``report.example_methods``: only the methods whose heatmaps were computed."""
    asked = list(dict.fromkeys(methods))
    computed = [meth for meth in asked if meth in heatmaps and meth != "probs"]
    absent = [meth for meth in asked if meth not in computed]
    return ExampleGrid(model, tuple(computed), tuple(absent), tuple(choose_examples(loc, n)))


def heatmap_examples_figure(
    grid: ExampleGrid, loc: pd.DataFrame, images: np.ndarray, heatmaps: Mapping[str, np.ndarray]
) -> Any:
    """Example grid: each row one loc box, the X-ray then each method's overlay, radiologist box drawn."""
    from matplotlib.patches import Rectangle

    fig = _figure(2.6 * (1 + len(grid.methods)), 2.6 * len(grid.picks))
    axes = fig.subplots(len(grid.picks), 1 + len(grid.methods), squeeze=False)
    probs = heatmaps.get("probs")
    for r, pos in enumerate(grid.picks):
        box = loc.iloc[pos]
        image = images[int(box["row"])]
        p = "" if probs is None else f", p={float(probs[pos, LABELS.index(box['label'])]):.2f}"
        panels = [("X-ray + box", None)] + [(meth, heatmaps[meth][pos]) for meth in grid.methods]
        for c, (name, heat) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
            if heat is not None:
                ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=255)
            ax.add_patch(
                Rectangle(
                    (box["x"], box["y"]), box["w"], box["h"], fill=False, edgecolor="lime", linewidth=1.5
                )
            )
            ax.set_title(f"{box['label']}{p}" if c == 0 else name, fontsize="small")
            ax.set_axis_off()
    fig.suptitle(f"Example heatmaps: {display_name(grid.model)} (green: radiologist box)")
    return fig


def plot_heatmap_examples(
    grid: ExampleGrid, loc: pd.DataFrame, images: np.ndarray, heatmaps: Mapping[str, np.ndarray], path: Path
) -> Path:
    """Draw :func:`heatmap_examples_figure` and save it as a PNG."""
    return _save(heatmap_examples_figure(grid, loc, images, heatmaps), path)


def load_examples(
    paths: ReportPaths, model: str, seed: int
) -> tuple[pd.DataFrame, np.ndarray, dict[str, np.ndarray]]:
    """loc.csv, the image cache (memmap), one run's heatmaps and its probabilities of the boxes'
    images (the test stage's predictions file), checked to line up."""
    table = LocTable.read(paths.splits)
    loc = table.table
    images, _ = load_cache(paths.cache)
    path, stage = paths.heatmaps_npz(model, seed), run_stage("cams", model, seed)
    saved = SavedHeatmaps.load(path)
    predictions = paths.predictions_npz(model, seed)
    probs = Predictions.load(predictions).probs_for(table.rows, predictions)
    heatmaps = {**saved.maps, "probs": probs}
    for name, arr in heatmaps.items():
        if len(arr) != len(loc):
            raise InputFormatError(
                f"{path}: '{name}' has {len(arr)} rows but {paths.loc_csv} has {len(loc)} "
                f"boxes; re-run stage '{stage}'"
            )
        if name != "probs" and arr.shape[1:] != images.shape[1:]:
            raise InputFormatError(
                f"{path}: '{name}' maps are {arr.shape[1:]} but the cache images are "
                f"{images.shape[1:]}; re-run stage '{stage}'"
            )
    return loc, images, heatmaps
