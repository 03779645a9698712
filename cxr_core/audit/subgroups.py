"""Clinical audits of one model's test predictions: subgroups, and Google's adjudicated labels.

* :func:`subgroup_audit`: a CheXclusion-style audit (Seyyed-Kalantari et al., "CheXclusion:
  Fairness gaps in deep chest X-ray classifiers", PSB 2021; "Underdiagnosis bias of artificial
  intelligence algorithms applied to chest radiographs in under-served patient populations",
  Nature Medicine 2021). Per sex, age band and view position: per-class AUC, TPR and FPR at
  thresholds chosen on the validation split, the gap of each group to the rest of the test split,
  and the *underdiagnosis* rate (images with a finding that the model calls finding-free).
* :func:`adjudicated_scores`: AUCs against the radiologist-adjudicated labels of Majkowska et al.
  (Radiology 2020; :mod:`cxr_core.data.adjudicated`) next to the NIH labels of the same images.

Every interval is a percentile interval of the patient bootstrap with the draws of
:mod:`cxr_core.evaluate.metrics` (same seed, same patients drawn, as the test stage's CIs), and
every gap or difference is computed on one draw for both sides, so it is paired (the exact sparse
AUC kernel of :mod:`cxr_core.compare.paired`). A patient's
images can fall into two groups (two age bands or views over follow-ups): a drawn patient brings
each of their images into the image's own group, so group and rest replicates share patients.

Everything is vectorised as per-patient sums times the draw counts (R x P @ P x K), and each AUC
as the sparse per-patient design of :func:`cxr_core.compare.paired._auc_design`, so the real test
split (25,596 images of 2,797 patients) takes seconds for 1000 replicates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cxr_core.compare.paired import _auc_design, _design_aucs
from cxr_core.data.adjudicated import ADJUDICATED_MAP, NOT_SCORED, nih_columns
from cxr_core.evaluate.metrics import (
    _check_ci,
    _check_scores,
    _json_float,
    _patient_counts,
    _percentile_interval,
)
from cxr_core.labels import LABELS

#: Replicates per sparse product (a P x 64 block of draw counts stays in cache).
_CHUNK_REPLICATES = 64
#: Name of a group for a missing or unrecognised value.
UNKNOWN = "unknown"
#: Proposed default age-band edges (years): 0-20, 20-40, 40-60, 60-80, 80+.
AGE_EDGES: tuple[int, ...] = (0, 20, 40, 60, 80)
SEXES: tuple[str, ...] = ("M", "F")
VIEWS: tuple[str, ...] = ("PA", "AP")
#: Group name for a view other than PA / AP.
OTHER_VIEW = "other"

# --------------------------------------------------------------------------------------------
# attributes


def age_band_names(edges: Sequence[int]) -> list[str]:
    """Band names of integer edges: ``[0, 20, 80]`` -> ``["0-20", "20-80", "80+"]``.

    Integer edges only, so a name never holds a dot (JSON keys of ``dvc metrics`` must not).
    """
    e = list(edges)
    if not e or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in e):
        raise ValueError(f"age edges must be a non-empty list of integers, got {edges!r}")
    if any(b <= a for a, b in zip(e, e[1:], strict=False)):
        raise ValueError(f"age edges must increase strictly, got {e}")
    return [f"{a}-{b}" for a, b in zip(e, e[1:], strict=False)] + [f"{e[-1]}+"]


def age_bands(ages: Any, edges: Sequence[int] = AGE_EDGES) -> np.ndarray:
    """Each age's band ``[lo, hi)`` (the last open-ended); below the first edge or NaN -> ``unknown``."""
    names = np.array(age_band_names(edges) + [UNKNOWN], dtype=object)
    a = np.asarray(ages, dtype=np.float64)
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), a, side="right") - 1
    index[~np.isfinite(a) | (index < 0)] = len(names) - 1
    return names[index]


def _categories(values: Any, known: Sequence[str], other: str) -> np.ndarray:
    text = pd.Series(np.asarray(values, dtype=object)).fillna("").astype(str).str.strip().str.upper()
    out = np.full(text.shape[0], other, dtype=object)
    for name in known:
        out[(text == name.upper()).to_numpy()] = name
    return out


def subgroup_attributes(
    table: pd.DataFrame, images: Sequence[str], *, age_edges: Sequence[int] = AGE_EDGES
) -> dict[str, np.ndarray]:
    """The audit's attributes of ``images`` (in that order) from the label table.

    ``table`` is :func:`cxr_core.data.metadata.read_data_entry`'s (columns ``image``, ``age``,
    ``sex``, ``view``). ``sex``: M / F (else ``unknown``); ``age``: :func:`age_bands`; ``view``:
    PA / AP, anything else ``other``. All are per image: NIH records them per study.
    """
    absent = [c for c in ("image", "age", "sex", "view") if c not in table.columns]
    if absent:
        raise ValueError(f"label table lacks column(s) {absent}")
    indexed = table.set_index("image")
    names = list(images)
    unknown = [n for n in names if n not in indexed.index]
    if unknown:
        raise ValueError(f"{len(unknown)} image(s) not in the label table, e.g. {unknown[:3]}")
    rows = indexed.loc[names]
    return {
        "sex": _categories(rows["sex"], SEXES, UNKNOWN),
        "age": age_bands(pd.to_numeric(rows["age"], errors="coerce"), age_edges),
        "view": _categories(rows["view"], VIEWS, OTHER_VIEW),
    }


def _natural_key(name: str) -> list[Any]:
    """ "5-10" before "10+": digits compare as numbers."""
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part
    ]


# --------------------------------------------------------------------------------------------
# bootstrap machinery


class _Draws:
    """The metrics module's patient draws, as contiguous P x r chunks for sparse products."""

    def __init__(self, patients: Any, n: int, n_boot: int, seed: int) -> None:
        if isinstance(n_boot, (int, np.integer)) and not isinstance(n_boot, bool) and n_boot == 0:
            # n_boot = 0, as test.bootstrap: 0, means "no intervals" (they come out None)
            self.codes, counts = _patient_counts(patients, n, 1, seed)
            counts = counts[:0]
        else:
            self.codes, counts = _patient_counts(patients, n, n_boot, seed)
        self.counts = counts.astype(np.float64)
        self.n_boot = n_boot
        self.n_patients = counts.shape[1]
        # float32 sums of counts are exact below 2**24; a replicate holds at most P x (largest patient)
        exact32 = self.n_patients * int(np.bincount(self.codes).max()) < 2**24
        self.dtype = np.float32 if exact32 else np.float64
        self.chunks = [
            np.ascontiguousarray(self.counts[lo : lo + _CHUNK_REPLICATES].T, dtype=self.dtype)
            for lo in range(0, n_boot, _CHUNK_REPLICATES)
        ]
        self.ones = np.ones((self.n_patients, 1), dtype=self.dtype)
        self._auc_cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def aucs(self, target: np.ndarray, score: np.ndarray, mask: np.ndarray) -> tuple[float, np.ndarray]:
        """AUC of the images in ``mask`` and its replicates (n_boot,), weighted by their patients' draws.

        The point value is the same design weighted by one per patient (each image once): the exact
        Mann-Whitney AUC, equal to sklearn's ``roc_auc_score`` up to rounding (it is tested).
        """
        design = _auc_design(target[mask], score[mask], self.codes[mask], self.n_patients, self.dtype)
        point = _design_aucs(design, [self.ones], 1)[0]
        return float(point), _design_aucs(design, self.chunks, self.n_boot)

    def auc_table(self, t: np.ndarray, p: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-class AUC (C,) and replicates (n_boot x C) of the images in ``mask``, cached per mask
        (a two-group attribute's rest of one group is the other group)."""
        key = np.packbits(mask).tobytes()
        if key not in self._auc_cache:
            point = np.full(t.shape[1], np.nan)
            reps = np.full((self.n_boot, t.shape[1]), np.nan)
            if mask.any():
                for c in range(t.shape[1]):
                    point[c], reps[:, c] = self.aucs(t[:, c], p[:, c], mask)
            self._auc_cache[key] = (point, reps)
        return self._auc_cache[key]

    def sums(self, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Replicate sums (n_boot x K) of per-image ``values`` (N x K) over the images in ``mask``."""
        rows = self.codes[mask]
        member = sp.csr_matrix(
            (np.ones(rows.shape[0]), (rows, np.arange(rows.shape[0]))), shape=(self.n_patients, rows.shape[0])
        )
        return self.counts @ (member @ values[mask])


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _mean_over(values: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Mean over ``classes`` (last axis); NaN where one of them is NaN, or if there are none."""
    if not classes.any():
        return np.full(values.shape[:-1], np.nan)
    return values[..., classes].mean(axis=-1)


def _interval(replicates: np.ndarray, ci: float) -> list[float | None]:
    return [_json_float(v) for v in _percentile_interval(replicates, ci)]


def _check_thresholds(thresholds: Any, labels: Sequence[str]) -> np.ndarray:
    if isinstance(thresholds, Mapping):
        absent = [name for name in labels if name not in thresholds]
        if absent:
            raise ValueError(f"thresholds lack class(es) {absent}")
        thresholds = [thresholds[name] for name in labels]
    thr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if thr.shape[0] != len(labels) or np.isinf(thr).any():
        raise ValueError(
            f"thresholds must be {len(labels)} finite values (NaN: none chosen), got {np.asarray(thresholds)}"
        )
    return thr


# --------------------------------------------------------------------------------------------
# subgroup audit


def _rate_columns(t: np.ndarray, p: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """Per-image 0/1 counts, N x (4C + 2): TP, positives, FP, negatives per class; then images with
    a finding, and those of them with no predicted finding (underdiagnosed).

    A class without a threshold (NaN: validation had no positives or negatives) is never predicted
    and gets no TPR / FPR (its positive and negative counts are zeroed, so its rates are NaN).
    """
    positive = t.astype(bool)
    chosen = np.isfinite(thr)
    predicted = (p >= np.where(chosen, thr, np.inf)) & chosen
    has_finding = positive.any(axis=1)
    missed = has_finding & ~predicted.any(axis=1)
    return np.concatenate(
        [
            positive & predicted,
            positive & chosen,
            ~positive & predicted,
            ~positive & chosen,
            has_finding[:, None],
            missed[:, None],
        ],
        axis=1,
    ).astype(np.float64)


def _rates(sums: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """TPR and FPR per class and the underdiagnosis rate from (..., 4C + 2) sums."""
    c = n_classes
    return {
        "tpr": _ratio(sums[..., :c], sums[..., c : 2 * c]),
        "fpr": _ratio(sums[..., 2 * c : 3 * c], sums[..., 3 * c : 4 * c]),
        "underdiagnosis": _ratio(sums[..., 4 * c + 1], sums[..., 4 * c]),
    }


def _gap(
    group: float, rest: float, group_reps: np.ndarray, rest_reps: np.ndarray, ci: float
) -> dict[str, Any]:
    return {
        "group": _json_float(group),
        "rest": _json_float(rest),
        "diff": _json_float(group - rest),
        "ci": _interval(group_reps - rest_reps, ci),
    }


def _audit_group(
    mask: np.ndarray,
    t: np.ndarray,
    p: np.ndarray,
    columns: np.ndarray,
    draws: _Draws,
    labels: Sequence[str],
    ci: float,
) -> dict[str, Any]:
    """One group against the rest of the images (see :func:`subgroup_audit`)."""
    rest = ~mask
    n_classes = t.shape[1]
    point_g = _rates(columns[mask].sum(axis=0), n_classes)
    point_r = _rates(columns[rest].sum(axis=0), n_classes)
    reps_g = _rates(draws.sums(columns, mask), n_classes)
    reps_r = _rates(draws.sums(columns, rest), n_classes)
    has_rest = bool(rest.any())
    auc_g, boot_auc_g = draws.auc_table(t, p, mask)
    auc_r, boot_auc_r = draws.auc_table(t, p, rest)

    def classes(values_g: np.ndarray, values_r: np.ndarray) -> np.ndarray:
        return np.isfinite(values_g) & (np.isfinite(values_r) if has_rest else True)

    auc_classes = classes(auc_g, auc_r)
    out: dict[str, Any] = {
        "n_images": int(mask.sum()),
        "n_patients": int(np.unique(draws.codes[mask]).shape[0]),
        "n_with_finding": int(columns[mask, 4 * n_classes].sum()),
        "auc": {name: _json_float(auc_g[c]) for c, name in enumerate(labels)},
        "tpr": {name: _json_float(point_g["tpr"][c]) for c, name in enumerate(labels)},
        "fpr": {name: _json_float(point_g["fpr"][c]) for c, name in enumerate(labels)},
    }
    gaps: dict[str, Any] = {}
    summaries = (
        ("macro_auc", auc_g, auc_r, boot_auc_g, boot_auc_r, auc_classes),
        ("mean_tpr", point_g["tpr"], point_r["tpr"], reps_g["tpr"], reps_r["tpr"], None),
        ("mean_fpr", point_g["fpr"], point_r["fpr"], reps_g["fpr"], reps_r["fpr"], None),
    )
    for key, value_g, value_r, boot_g, boot_r, used in summaries:
        used = classes(value_g, value_r) if used is None else used
        mean_g, mean_r = _mean_over(value_g, used), _mean_over(value_r, used)
        boot_mean_g, boot_mean_r = _mean_over(boot_g, used), _mean_over(boot_r, used)
        out[key] = _json_float(mean_g)
        out[f"{key}_ci"] = _interval(boot_mean_g, ci)
        out[f"{key}_classes"] = int(used.sum())
        gaps[key] = _gap(mean_g, mean_r, boot_mean_g, boot_mean_r, ci)
    out["underdiagnosis"] = _json_float(point_g["underdiagnosis"])
    out["underdiagnosis_ci"] = _interval(reps_g["underdiagnosis"], ci)
    gaps["underdiagnosis"] = _gap(
        point_g["underdiagnosis"],
        point_r["underdiagnosis"],
        reps_g["underdiagnosis"],
        reps_r["underdiagnosis"],
        ci,
    )
    out["gap"] = gaps
    return out


def subgroup_audit(
    targets: Any,
    probs: Any,
    thresholds: Any,
    patients: Any,
    attributes: Mapping[str, Any],
    *,
    n_boot: int,
    ci: float,
    seed: int,
    labels: Sequence[str] = LABELS,
) -> dict[str, Any]:
    """Per attribute and group: counts, per-class AUC / TPR / FPR, and gaps to the rest, with CIs.

    ``thresholds`` (C values, or label -> value) must come from the validation split
    (:func:`cxr_core.evaluate.operating.choose_thresholds`); an image is called positive for a
    class when its probability is >= the threshold; a NaN threshold (none chosen) never calls it. ``attributes`` maps an
    attribute name to N group names (one per image, e.g. :func:`subgroup_attributes`). Per group:

    * ``n_images``, ``n_patients``, ``n_with_finding``; ``auc``, ``tpr``, ``fpr`` per class (None where
      undefined in the group);
    * ``macro_auc``, ``mean_tpr``, ``mean_fpr``: means over the classes defined in the group *and*
      in the rest (counted in ``*_classes``), so group and rest average the same classes; their
      intervals; a replicate lacking one of those classes is left out;
    * ``underdiagnosis``: the share of the group's images with at least one finding in which every
      probability is below its threshold (the model says "no finding"), with its interval;
    * ``gap``: for each of the four, ``group``, ``rest``, ``diff`` = group - rest and the interval
      of the paired difference (one draw scores both sides).

    JSON-ready (NaN -> None); groups in natural order ("5-10" before "10+").
    """
    ci = _check_ci(ci)
    t, p = _check_scores(targets, probs)
    if len(labels) != t.shape[1]:
        raise ValueError(f"labels has {len(labels)} names for {t.shape[1]} classes")
    thr = _check_thresholds(thresholds, labels)
    n = t.shape[0]
    if not isinstance(attributes, Mapping) or not attributes:
        raise ValueError("attributes must map at least one attribute name to N group names")
    draws = _Draws(patients, n, n_boot, seed)
    columns = _rate_columns(t, p, thr)
    out: dict[str, Any] = {}
    for name, values in attributes.items():
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"attribute names must be non-empty and hold no dot, got {name!r}")
        g = np.asarray(values, dtype=object)
        if g.shape != (n,):
            raise ValueError(f"attribute {name!r} must give {n} group names, got shape {g.shape}")
        groups = sorted({str(v) for v in g}, key=_natural_key)
        bad = [v for v in groups if not v or "." in v]
        if bad:
            raise ValueError(f"attribute {name!r}: group names must be non-empty and hold no dot, got {bad}")
        as_text = g.astype(str)
        out[name] = {v: _audit_group(as_text == v, t, p, columns, draws, labels, ci) for v in groups}
    return {
        "n_boot": int(n_boot),
        "ci": ci,
        "seed": int(seed),
        "thresholds": {name: _json_float(thr[c]) for c, name in enumerate(labels)},
        "attributes": out,
    }


# --------------------------------------------------------------------------------------------
# adjudicated labels


def _kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa of two 0/1 vectors; NaN when chance agreement is 1 (both constant and equal)."""
    observed = float(np.mean(a == b))
    pa, pb = float(a.mean()), float(b.mean())
    chance = pa * pb + (1 - pa) * (1 - pb)
    return float("nan") if chance >= 1.0 else (observed - chance) / (1.0 - chance)


def adjudicated_scores(
    test_images: Sequence[str],
    targets: Any,
    probs: Any,
    adjudicated: pd.DataFrame,
    patients: Any,
    *,
    n_boot: int,
    ci: float,
    seed: int,
    labels: Sequence[str] = LABELS,
) -> dict[str, Any]:
    """AUC against Google's adjudicated labels and against NIH's on the same images, paired.

    ``adjudicated`` is :func:`cxr_core.data.adjudicated.read_adjudicated`'s table; only its
    ``set == "test"`` rows among ``test_images`` are scored (rows of the test set that are not in
    the split are counted in ``n_test_rows_not_in_split``), and per finding only rows whose value
    is YES / NO. Per mapped finding (:data:`~cxr_core.data.adjudicated.ADJUDICATED_MAP`): the model's
    score is the max of its mapped probabilities and the NIH label the max of the mapped labels;
    ``auc_adjudicated``, ``auc_nih`` and ``diff`` = adjudicated - NIH with percentile intervals
    of the patient bootstrap (the test stage's draws over all test patients, one draw scores both);
    the label agreement: Cohen's ``kappa`` (NIH vs adjudicated) and ``nih_confirmed``, the share of
    NIH positives the radiologists confirmed. Proxy findings say so (``proxy: true``).
    """
    ci = _check_ci(ci)
    t, p = _check_scores(targets, probs)
    if list(labels) != list(LABELS):
        raise ValueError("adjudicated_scores needs the 14 ChestX-ray14 classes in LABELS order")
    images = np.asarray(list(test_images), dtype=object)
    if images.shape != (t.shape[0],):
        raise ValueError(f"test_images has {images.shape[0]} names for {t.shape[0]} rows of targets")
    absent = [c for c in ("image", "set", *ADJUDICATED_MAP) if c not in adjudicated.columns]
    if absent:
        raise ValueError(f"adjudicated table lacks column(s) {absent}")
    draws = _Draws(patients, t.shape[0], n_boot, seed)
    position = pd.Series(np.arange(images.shape[0]), index=pd.Index(images))
    if position.index.duplicated().any():
        raise ValueError("test_images lists an image twice")
    test_rows = adjudicated[adjudicated["set"] == "test"]
    in_split = test_rows["image"].isin(position.index).to_numpy()
    findings: dict[str, Any] = {}
    for name, mapping in ADJUDICATED_MAP.items():
        rows = test_rows[in_split & np.isfinite(test_rows[name].to_numpy(dtype=np.float64))]
        mask = np.zeros(t.shape[0], dtype=bool)
        mask[position.loc[rows["image"]].to_numpy()] = True
        y_adj = np.zeros(t.shape[0], dtype=np.uint8)
        y_adj[position.loc[rows["image"]].to_numpy()] = rows[name].to_numpy().astype(np.uint8)
        cols = nih_columns(mapping)
        y_nih = t[:, cols].max(axis=1)
        score = p[:, cols].max(axis=1)
        auc_adj, reps_adj = draws.aucs(y_adj, score, mask)
        auc_nih, reps_nih = draws.aucs(y_nih, score, mask)
        a, b = y_nih[mask], y_adj[mask]
        findings[name] = {
            "nih_classes": list(mapping.classes),
            "proxy": mapping.proxy,
            "n_images": int(mask.sum()),
            "n_patients": int(np.unique(draws.codes[mask]).shape[0]),
            "positives_adjudicated": int(b.sum()),
            "positives_nih": int(a.sum()),
            "auc_adjudicated": _json_float(auc_adj),
            "auc_adjudicated_ci": _interval(reps_adj, ci),
            "auc_nih": _json_float(auc_nih),
            "auc_nih_ci": _interval(reps_nih, ci),
            "diff": _json_float(auc_adj - auc_nih),
            "diff_ci": _interval(reps_adj - reps_nih, ci),
            "kappa": _json_float(_kappa(a, b) if a.size else float("nan")),
            "nih_confirmed": _json_float(float(b[a == 1].mean()) if a.any() else float("nan")),
        }
    return {
        "n_boot": int(n_boot),
        "ci": ci,
        "seed": int(seed),
        "n_test_rows": int(len(test_rows)),
        "n_test_rows_not_in_split": int((~in_split).sum()),
        "findings": findings,
        "not_scored": dict(NOT_SCORED),
    }
