"""Train / validation / test / localisation sets.

* test: NIH's official ``test_list.txt`` (as the paper and the literature use it);
* validation: ``val_fraction`` of ``train_val_list.txt``, stratified on the 14 labels by iterative
  stratification (Sechidis et al. 2011) over *patients*, so no patient has images on both sides
  (``group_by: image`` gives the paper's per-image split instead);
* localisation: the ``BBox_List_2017.csv`` boxes of cached images, ``Infiltrate`` read as
  ``Infiltration`` and boxes scaled from the 1024 x 1024 PNG space to the cache size S; split by
  patient, stratified on the box finding, into a ``tune`` half (where localisation thresholds are
  chosen) and a ``report`` half (where they are measured): all of NIH's boxes are on test images,
  so a threshold picked on all of them would be picked on the numbers it reports (Choe et al. 2020).

Only images that made it into the cache are used; everything is deterministic from ``seed``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.data import metadata as md
from cxr_core.data.metadata import BOX_SPACE, labels_matrix
from cxr_core.data.tables import LOC_COLUMNS, LOC_SUBSETS, SPLIT_COLUMNS, SPLIT_NAMES, LocTable, SplitTable
from cxr_core.labels import BOX_LABELS, LABEL_INDEX, LABELS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Splits:
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    loc: pd.DataFrame


def stratified_group_split(groups: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the rows put in the ``fraction`` fold, whole groups at a time.

    Iterative stratification (Sechidis, Tsoumakas & Vlahavas 2011) on groups: the rarest label
    is placed first, each group going to the fold that still wants most of that label, so rare
    labels end up near ``fraction`` in both folds.
    """
    rng = np.random.default_rng(seed)
    uniq, inverse = np.unique(groups, return_inverse=True)
    n_groups = len(uniq)
    group_labels = np.zeros((n_groups, labels.shape[1]), dtype=np.int64)
    np.add.at(group_labels, inverse, labels.astype(np.int64))
    group_sizes = np.bincount(inverse, minlength=n_groups).astype(np.float64)

    fractions = np.array([fraction, 1.0 - fraction])
    want_labels = fractions[:, None] * group_labels.sum(axis=0)[None, :]  # fold x label
    want_size = fractions * len(groups)
    fold = np.full(n_groups, -1)
    order = rng.permutation(n_groups)  # random tie-breaking order, fixed by the seed

    def assign(g: int, wanted: np.ndarray) -> None:
        best = np.flatnonzero(wanted == wanted.max())
        if len(best) > 1:
            sizes = want_size[best]
            best = best[sizes == sizes.max()]
        f = int(best[0]) if len(best) == 1 else int(rng.choice(best))
        fold[g] = f
        want_labels[f] -= group_labels[g]
        want_size[f] -= group_sizes[g]

    while True:
        open_groups = order[fold[order] < 0]
        remaining = group_labels[open_groups].sum(axis=0)
        if not remaining.any():
            break
        label = int(np.argmin(np.where(remaining > 0, remaining, np.iinfo(np.int64).max)))
        for g in open_groups[group_labels[open_groups, label] > 0]:
            assign(int(g), want_labels[:, label].copy())
    for g in order[fold[order] < 0]:
        assign(int(g), want_size.copy())
    return fold[inverse] == 0


def _table(entry: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    table = entry[entry["image"].isin(set(names))]
    return table[SPLIT_COLUMNS].sort_values("row").reset_index(drop=True)


def localisation_set(
    boxes: pd.DataFrame, entry: pd.DataFrame, image_size: int, *, tune_fraction: float, seed: int
) -> pd.DataFrame:
    """Boxes of cached images, scaled from the 1024 PNG space to ``image_size``, with their subset."""
    merged = boxes.merge(entry[["image", "row", "patient"]], on="image", how="inner")
    scale = image_size / BOX_SPACE
    loc = pd.DataFrame(
        {
            "row": merged["row"],
            "image": merged["image"],
            "patient": merged["patient"],
            "label": merged["label"],
            "label_index": merged["label"].map(LABEL_INDEX),
            "x": merged["x"] * scale,
            "y": merged["y"] * scale,
            "w": merged["w"] * scale,
            "h": merged["h"] * scale,
            "x1024": merged["x"],
            "y1024": merged["y"],
            "w1024": merged["w"],
            "h1024": merged["h"],
        }
    )
    loc = loc.sort_values(["row", "label_index"]).reset_index(drop=True)
    onehot = loc["label_index"].to_numpy()[:, None] == np.array([LABEL_INDEX[b] for b in BOX_LABELS])[None]
    tune = stratified_group_split(loc["patient"].to_numpy(), onehot, tune_fraction, seed)
    loc["subset"] = np.where(tune, "tune", "report")
    return loc[LOC_COLUMNS]


def make_splits(
    entry: pd.DataFrame,
    index: pd.DataFrame,
    train_val_names: list[str],
    test_names: list[str],
    boxes: pd.DataFrame,
    *,
    val_fraction: float,
    group_by: str,
    seed: int,
    image_size: int,
    loc_tune_fraction: float,
) -> Splits:
    """Build the four sets from the Data_Entry table, the cache index and the official lists."""
    overlap = set(train_val_names) & set(test_names)
    if overlap:
        raise ValueError(f"{len(overlap)} image(s) are in both official lists, e.g. {sorted(overlap)[:3]}")
    cached = entry.merge(index[["row", "image"]], on="image", how="inner")
    dropped = len((set(train_val_names) | set(test_names)) - set(cached["image"]))
    if dropped:
        log.warning("%d listed image(s) are not in the cache (missing or skipped) and are left out", dropped)

    train_val = _table(cached, train_val_names)
    groups = train_val["patient"].to_numpy() if group_by == "patient" else np.arange(len(train_val))
    in_val = stratified_group_split(groups, labels_matrix(train_val), val_fraction, seed)
    return Splits(
        train=train_val[~in_val].reset_index(drop=True),
        val=train_val[in_val].reset_index(drop=True),
        test=_table(cached, test_names),
        loc=localisation_set(boxes, cached, image_size, tune_fraction=loc_tune_fraction, seed=seed),
    )


def splits_from_raw(
    raw_dir: Path,
    index: pd.DataFrame,
    *,
    val_fraction: float,
    group_by: str,
    seed: int,
    image_size: int,
    loc_tune_fraction: float,
) -> Splits:
    """:func:`make_splits` on the metadata files of a raw folder in the official layout."""
    raw_dir = Path(raw_dir)
    return make_splits(
        md.read_data_entry(raw_dir / md.DATA_ENTRY),
        index,
        md.read_image_list(raw_dir / md.TRAIN_VAL_LIST),
        md.read_image_list(raw_dir / md.TEST_LIST),
        md.read_bbox_list(raw_dir / md.BBOX_LIST),
        val_fraction=val_fraction,
        group_by=group_by,
        seed=seed,
        image_size=image_size,
        loc_tune_fraction=loc_tune_fraction,
    )


def write_splits(splits: Splits, out_dir: Path) -> None:
    """``train.csv``, ``val.csv``, ``test.csv`` and ``loc.csv`` (the files later stages read)."""
    for name in SPLIT_NAMES:
        SplitTable(getattr(splits, name)).write(out_dir, name)
    LocTable(splits.loc).write(out_dir)


def split_stats(splits: Splits) -> dict:
    """Images, patients and per-label positives / prevalence per split (``metrics/split.json``)."""
    stats: dict = {}
    for name in ("train", "val", "test"):
        table: pd.DataFrame = getattr(splits, name)
        positives = labels_matrix(table).sum(axis=0)
        n = max(len(table), 1)
        stats[name] = {
            "images": len(table),
            "patients": int(table["patient"].nunique()),
            "no_finding": int((labels_matrix(table).sum(axis=1) == 0).sum()),
            "positives": {lab: int(p) for lab, p in zip(LABELS, positives, strict=True)},
            "prevalence": {lab: round(float(p) / n, 5) for lab, p in zip(LABELS, positives, strict=True)},
        }
    stats["loc"] = {
        "images": int(splits.loc["image"].nunique()),
        "boxes": len(splits.loc),
        "patients": int(splits.loc["patient"].nunique()),
        "boxes_per_label": {lab: int((splits.loc["label"] == lab).sum()) for lab in BOX_LABELS},
        **{
            subset: {
                "boxes": int((part := splits.loc[splits.loc["subset"] == subset]).shape[0]),
                "patients": int(part["patient"].nunique()),
            }
            for subset in LOC_SUBSETS
        },
    }
    patients = {n: set(getattr(splits, n)["patient"]) for n in ("train", "val", "test")}
    stats["shared_patients"] = {
        "train_val": len(patients["train"] & patients["val"]),
        "train_test": len(patients["train"] & patients["test"]),
        "val_test": len(patients["val"] & patients["test"]),
    }
    return stats
