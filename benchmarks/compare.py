"""Paired model comparison: ``paired_auc_bootstrap`` vs a per-replicate scikit-learn loop.

    python -m benchmarks.compare [--quick] [--json out.json]

A synthetic test set of ChestX-ray14's size (25,596 images of 2,797 patients, heavy-tailed images
per patient, 14 classes from 0.3% to 24% positive, labels correlated within a patient) scored by 6
correlated models; 1,000 patient-bootstrap replicates of all 15 pairs x 14 classes + macro.

Baselines, in the same process, interleaved with ours:

* naive: what one writes first. Per replicate, draw the patients, build the resampled image index
  and call ``roc_auc_score`` for every model and class (84 calls). It is timed on the first few
  replicates only (the same draws as ours) and extrapolated linearly to all of them: its cost per
  replicate does not depend on which replicate it is. Its AUCs are checked against ours.
* metrics path: ``metrics.bootstrap_auc_replicates`` (re-weighting every image of every replicate)
  once per model, on a subset of replicates, extrapolated the same way.

The pair statistics after the replicate AUCs cost milliseconds; the time is the AUCs'.
"""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Any

import numpy as np
import torch
from scipy.special import ndtri
from sklearn.metrics import roc_auc_score

from benchmarks.timing import ratio, timed_call
from cxr_core.compare.paired import paired_auc_bootstrap
from cxr_core.evaluate.metrics import bootstrap_auc_replicates
from cxr_core.files import write_json
from cxr_core.labels import LABELS

N_IMAGES = 25_596
N_PATIENTS = 2_797
#: Share of positive images per class, in label order (Infiltration-like 24% to Hernia-like 0.3%).
PREVALENCE = (0.13, 0.04, 0.18, 0.24, 0.07, 0.06, 0.02, 0.10, 0.07, 0.04, 0.04, 0.02, 0.045, 0.003)
CPU = torch.device("cpu")


def synthetic_test_set(
    n_images: int = N_IMAGES, n_patients: int = N_PATIENTS, n_models: int = 6, seed: int = 0
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """``targets`` (N x 14 uint8), ``probs`` (model -> N x 14 float32), ``groups`` (N patient ids)."""
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, 1.2, n_patients)  # a few patients with dozens of follow-ups
    per_patient = 1 + rng.multinomial(n_images - n_patients, weights / weights.sum())
    groups = np.repeat(np.arange(n_patients), per_patient)
    rng.shuffle(groups)
    classes = len(PREVALENCE)
    patient_effect = rng.standard_normal((n_patients, classes))[groups]
    latent = 0.6 * patient_effect + 0.8 * rng.standard_normal((n_images, classes))
    targets = (latent > ndtri(1.0 - np.array(PREVALENCE))).astype(np.uint8)
    shared = rng.standard_normal((n_images, classes))  # errors the models have in common
    probs = {}
    for m in range(n_models):
        logit = (1.0 + 0.1 * m) * targets + 0.7 * shared + 0.7 * rng.standard_normal((n_images, classes)) - 2
        probs[f"model{m}"] = (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return targets, probs, groups


def _resamples(groups: np.ndarray, n_boot: int, seed: int, first: int) -> list[np.ndarray]:
    """Image indices of the first ``first`` replicates, drawn as ``metrics._patient_counts`` draws."""
    patients, codes = np.unique(groups, return_inverse=True)
    p = patients.shape[0]
    counts = np.random.default_rng(seed).multinomial(p, np.full(p, 1.0 / p), size=n_boot)
    members = [np.flatnonzero(codes == k) for k in range(p)]
    return [np.concatenate([members[k] for k in np.repeat(np.arange(p), counts[r])]) for r in range(first)]


def naive_loop(
    targets: np.ndarray, probs: dict[str, np.ndarray], groups: np.ndarray, n_boot: int, seed: int, first: int
) -> np.ndarray:
    """AUCs (first x models x classes) the plain way: resample, then sklearn per model and class."""
    out = np.full((first, len(probs), targets.shape[1]), np.nan)
    for r, idx in enumerate(_resamples(groups, n_boot, seed, first)):
        t = targets[idx]
        for m, p in enumerate(probs.values()):
            s = p[idx]
            for c in range(t.shape[1]):
                if 0 < t[:, c].sum() < t.shape[0]:
                    out[r, m, c] = roc_auc_score(t[:, c], s[:, c])
    return out


def _summary(seconds: list[float]) -> dict[str, Any]:
    return {"best_s": min(seconds), "median_s": statistics.median(seconds), "seconds": seconds}


def run(
    n_boot: int = 1000,
    n_models: int = 6,
    naive_replicates: int = 10,
    metrics_replicates: int = 100,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Time ours, the naive loop and the metrics path in interleaved repeats; returns the numbers."""
    targets, probs, groups = synthetic_test_set(n_models=n_models, seed=seed)
    naive_replicates = min(naive_replicates, n_boot)
    metrics_replicates = min(metrics_replicates, n_boot)
    ours_s, naive_s, metrics_s = [], [], []
    result: dict[str, Any] = {}
    naive: np.ndarray = np.empty(0)
    for _ in range(repeats):
        seconds, naive = timed_call(
            lambda: naive_loop(targets, probs, groups, n_boot, seed, naive_replicates), CPU
        )
        naive_s.append(seconds * n_boot / naive_replicates)
        seconds, _ = timed_call(
            lambda: [
                bootstrap_auc_replicates(targets, p, groups, n_boot=metrics_replicates, seed=seed)
                for p in probs.values()
            ],
            CPU,
        )
        metrics_s.append(seconds * n_boot / metrics_replicates)
        seconds, result = timed_call(
            lambda: paired_auc_bootstrap(targets, probs, groups, n_boot=n_boot, seed=seed), CPU
        )
        ours_s.append(seconds)
    ours_reps = np.stack([result["replicates"][name][:naive_replicates] for name in probs], axis=1)
    ours, slow, metrics = _summary(ours_s), _summary(naive_s), _summary(metrics_s)
    return {
        "n_images": int(targets.shape[0]),
        "n_patients": int(np.unique(groups).shape[0]),
        "n_models": n_models,
        "n_pairs": len(result["pairs"]),
        "n_classes": int(targets.shape[1]),
        "n_boot": n_boot,
        "repeats": repeats,
        "naive_replicates_timed": naive_replicates,
        "metrics_replicates_timed": metrics_replicates,
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "cpu_count": os.cpu_count(),
        "ours": ours,
        "naive_extrapolated": slow,
        "metrics_path_extrapolated": metrics,
        "speedup_vs_naive_best": ratio(slow["best_s"], ours["best_s"]),
        "speedup_vs_naive_median": ratio(slow["median_s"], ours["median_s"]),
        "speedup_vs_metrics_path_best": ratio(metrics["best_s"], ours["best_s"]),
        "speedup_vs_metrics_path_median": ratio(metrics["median_s"], ours["median_s"]),
        "max_abs_diff_vs_naive": float(np.nanmax(np.abs(ours_reps - naive))),
        "nan_pattern_matches_naive": bool((np.isnan(ours_reps) == np.isnan(naive)).all()),
        "labels": list(LABELS),
    }


def _report(r: dict[str, Any]) -> str:
    load = r["load_average_1m"]
    return "\n".join(
        [
            f"{r['n_models']} models ({r['n_pairs']} pairs) x {r['n_classes']} classes x {r['n_boot']} replicates, "
            f"{r['n_images']} images of {r['n_patients']} patients; best (median) of {r['repeats']} interleaved "
            f"repeats; 1-min load {load:.1f} on {r['cpu_count']} cores at the end",
            f"  paired_auc_bootstrap (all pairs, CIs, p, Holm)  {r['ours']['best_s']:8.2f} s ({r['ours']['median_s']:.2f})",
            f"  naive sklearn loop, extrapolated from {r['naive_replicates_timed']:>3} reps  "
            f"{r['naive_extrapolated']['best_s']:8.1f} s ({r['naive_extrapolated']['median_s']:.1f})"
            f"   ours x{r['speedup_vs_naive_best']:.0f} (x{r['speedup_vs_naive_median']:.0f}) faster",
            f"  metrics.bootstrap_auc_replicates per model, {r['metrics_replicates_timed']:>3} reps  "
            f"{r['metrics_path_extrapolated']['best_s']:8.1f} s ({r['metrics_path_extrapolated']['median_s']:.1f})"
            f"   ours x{r['speedup_vs_metrics_path_best']:.1f} (x{r['speedup_vs_metrics_path_median']:.1f}) faster",
            f"  max |ours - sklearn| on the naive loop's replicates: {r['max_abs_diff_vs_naive']:.1e} "
            f"(NaN pattern {'matches' if r['nan_pattern_matches_naive'] else 'DIFFERS'})",
        ]
    )


def compare_md(r: dict[str, Any]) -> list[str]:
    """The ``results.md`` section (for ``benchmarks.report``): seconds and ratios as a table."""

    def cell(t: dict[str, Any]) -> str:
        return f"{t['best_s']:.2f} ({t['median_s']:.2f})"

    rows = [
        ("paired_auc_bootstrap: all pairs, CIs, p, Holm", r["ours"], "x1 (ours)"),
        (
            f"naive sklearn loop (timed on {r['naive_replicates_timed']} replicates, extrapolated)",
            r["naive_extrapolated"],
            f"x{r['speedup_vs_naive_best']:.0f} (x{r['speedup_vs_naive_median']:.0f})",
        ),
        (
            f"metrics.bootstrap_auc_replicates per model ({r['metrics_replicates_timed']} replicates, extrapolated)",
            r["metrics_path_extrapolated"],
            f"x{r['speedup_vs_metrics_path_best']:.1f} (x{r['speedup_vs_metrics_path_median']:.1f})",
        ),
    ]
    return [
        f"{r['n_models']} models ({r['n_pairs']} pairs) x {r['n_classes']} classes x {r['n_boot']} patient-bootstrap "
        f"replicates on a synthetic {r['n_images']}-image, {r['n_patients']}-patient test set; seconds, best "
        f"(median) of {r['repeats']} interleaved repeats.",
        "",
        "| path | seconds | ours faster by |",
        "|---|---|---|",
        *[f"| {name} | {cell(t)} | {speedup} |" for name, t, speedup in rows],
        "",
        f"max |ours - sklearn| on the naive loop's replicates: {r['max_abs_diff_vs_naive']:.1e}.",
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer baseline replicates and repeats (~20 s on 2 cores; full ~1 min)",
    )
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    sizes = {"naive_replicates": 3, "metrics_replicates": 50, "repeats": 2} if args.quick else {}
    result = run(n_boot=args.n_boot, n_models=args.models, seed=args.seed, **sizes)
    print(_report(result))
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
