"""``python -m benchmarks scale``: a dry run of every post-image step at the real data set's size.

No images are decoded: a synthetic ``Data_Entry_2017_v2020.csv`` with NIH's patient structure
(112,120 images of 30,805 patients; the official test list holds 25,596 images of 2,797 patients;
984 boxes on 880 test images) or NIH's real metadata (``--meta``), and a synthetic ``N x 224 x 224``
uint8 cache written straight into a memory-mapped ``images.npy`` (5.6 GB at full size). Then each
step runs the pipeline's own library functions, as its stage calls them:

* ``cache``: write the memmap cache and index (setup; stands in for ``build_cache``'s write side);
* ``split``: ``cxr_core.data.splits.splits_from_raw`` + ``write_splits`` + ``SplitStats``;
* ``epoch``: one training epoch of the input pipeline without a model (``CacheBatches`` +
  ``prepare_batch(train=True)`` at the paper's batch), then validation and test inputs;
* ``summarise``: ``cxr_core.evaluate.metrics.summarise`` with the patient bootstrap (test stage);
* ``paired``: ``cxr_core.compare.paired.paired_auc_bootstrap`` of six models (compare stage);
* ``score``: ``cxr_core.explain.scoring.score_heatmaps`` of four methods x five thresholds (localise);
* ``compare``: ``cxr_core.compare.study.compare_study``, the whole compare stage (paired AUC
  bootstrap, DeLong, the localisation comparisons) of six models, one seed each;
* ``report``: ``cxr_core.report.make_report`` on synthetic metrics files of six models.

Every step runs in a fresh subprocess, so its peak memory is its own: the child resets the kernel's
RSS high-water mark (``/proc/self/clear_refs``) once its inputs are loaded, and samples its
anonymous RSS (heap, not page cache) while the step runs. Wall time and memory at each fraction
are compared with the size ratio: growth faster than the size (time or anonymous memory) is
flagged. Memmap pages the step touched count in RSS but are file-backed and reclaimable, which is
why anonymous memory is the number that says whether a peak is bounded.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_core.errors import CxrError

#: The real set: images, patients, official test images / patients, boxes and box images (NIH 2017).
FULL = {
    "images": 112_120,
    "patients": 30_805,
    "test_images": 25_596,
    "test_patients": 2_797,
    "boxes": 984,
    "box_images": 880,
}
#: Boxes per finding in ``BBox_List_2017.csv`` (984 in all).
REAL_BOXES = {
    "Atelectasis": 180,
    "Cardiomegaly": 146,
    "Effusion": 153,
    "Infiltration": 123,
    "Mass": 85,
    "Nodule": 79,
    "Pneumonia": 120,
    "Pneumothorax": 98,
}
SIZE = 224
#: The paper's six models (compare and report steps).
MODELS = ("densenet121", "densenet169", "efficientnet_b0", "efficientnet_b1", "swin_small", "swin_base")
#: Steps in run order; each runs in its own process.
STEPS = ("cache", "split", "epoch", "summarise", "paired", "score", "compare", "clinical", "report")
#: What each step's work grows with (the size its time is compared against).
STEP_UNITS = {
    "cache": "images",
    "split": "images",
    "epoch": "images",
    "summarise": "test_images",
    "paired": "test_images",
    "score": "boxes",
    "compare": "test_images",
    "clinical": "test_images",
    "report": "images",
}
#: The pipeline settings the steps use (configs/paper.yaml's values).
SETTINGS = {
    "batch_size": 32,
    "eval_batch_size": 64,
    "val_fraction": 0.1,
    "loc_tune_fraction": 0.5,
    "bootstrap": 1000,
    "ci": 0.95,
    "roc_points": 100,
    "methods": ("GradCAM", "EigenCAM", "GradCAMPlusPlus", "HiResCAM", "RandomCAM"),
    "sweep_step": 0.02,
    "maxboxacc_iou": (0.3, 0.5, 0.7),
    "thresholds": (0.1, 0.15, 0.25, 0.35, 0.45),
    "box_thresholds": (0.1, 0.25, 0.5),
    "positive_threshold": 0.5,
    "epochs_logged": 30,
}
#: Flag growth when time or memory grows faster than size**SUPERLINEAR between the smallest and
#: the largest fraction (fixed start-up costs make small runs look sub-linear, never super-linear).
SUPERLINEAR = 1.15
#: Below these, a ratio is noise (a step of a few tens of milliseconds, a few MB of heap).
MIN_SECONDS = 0.5
MIN_EXTRA_MB = 256.0
#: Anonymous memory a step may take beyond its inputs before its peak counts as unbounded.
PEAK_BUDGET_MB = 4096.0
#: Rows of the base noise images the synthetic cache repeats (content does not matter here).
POOL = 64


class ScaleError(CxrError, RuntimeError):
    """A step failed or ``--meta`` lacks a file; the message names the step / file and what to do."""


# --------------------------------------------------------------------------------------------
# sizes and synthetic metadata


def sizes(fraction: float) -> dict[str, int]:
    """The real counts scaled by ``fraction`` (at least 2 patients per side and one box)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction!r} must be in (0, 1]")
    s = {k: max(1, round(v * fraction)) for k, v in FULL.items()}
    s["test_patients"] = max(2, s["test_patients"])
    s["patients"] = max(s["test_patients"] + 2, s["patients"])
    s["test_images"] = max(s["test_patients"], s["test_images"])
    s["images"] = max(s["test_images"] + s["patients"] - s["test_patients"], s["images"])
    s["box_images"] = min(s["box_images"], s["test_images"])
    s["boxes"] = min(max(s["boxes"], s["box_images"]), s["box_images"] * len(REAL_BOXES))
    return s


def _images_per_patient(rng: np.random.Generator, patients: int, images: int) -> np.ndarray:
    """Heavy-tailed image counts (>= 1 each) summing to ``images``, as NIH's follow-up series."""
    weights = rng.lognormal(0.0, 1.3, patients)
    return 1 + rng.multinomial(images - patients, weights / weights.sum())


def synthetic_metadata(fraction: float, seed: int = 0) -> dict[str, Any]:
    """Data_Entry rows, both official lists and the box list, with NIH's structure at ``fraction``.

    Test patients are a disjoint set with more images each (as in NIH's split: 9.2 vs 3.1 images
    per patient); labels are drawn at the real per-finding prevalences; every box's image has the
    box's finding among its labels.
    """
    from cxr_core.labels import LABELS, REAL_COUNTS, REAL_IMAGES

    s = sizes(fraction)
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.arange(1, s["patients"] + 1))
    test_ids, tv_ids = np.sort(ids[: s["test_patients"]]), np.sort(ids[s["test_patients"] :])
    counts = np.concatenate(
        [
            _images_per_patient(rng, len(test_ids), s["test_images"]),
            _images_per_patient(rng, len(tv_ids), s["images"] - s["test_images"]),
        ]
    )
    patient = np.repeat(np.concatenate([test_ids, tv_ids]), counts)
    follow = np.concatenate([np.arange(c) for c in counts])
    names = np.array([f"{p:08d}_{k:03d}.png" for p, k in zip(patient, follow, strict=True)])
    is_test = np.repeat(np.r_[np.ones(len(test_ids), bool), np.zeros(len(tv_ids), bool)], counts)
    prevalence = np.array([REAL_COUNTS[lab] / REAL_IMAGES for lab in LABELS])
    onehot = rng.random((len(names), len(LABELS))) < prevalence

    test_rows = np.flatnonzero(is_test)
    box_rows = rng.choice(test_rows, s["box_images"], replace=False)
    box_pool = np.repeat(list(REAL_BOXES), list(REAL_BOXES.values()))
    box_labels = rng.choice(box_pool, s["boxes"], replace=False)
    # every box image gets one box, the rest go to random box images (one box per (image, label))
    owners = np.r_[box_rows, rng.choice(box_rows, s["boxes"] - s["box_images"])]
    boxes, seen = [], set()
    for row, label in zip(owners, box_labels, strict=True):
        lab = str(label)
        while (row, lab) in seen:
            lab = str(rng.choice(list(REAL_BOXES)))
        seen.add((row, lab))
        onehot[row, LABELS.index(lab)] = True
        w, h = rng.uniform(30, 400, 2)
        x, y = rng.uniform(0, 1024 - w), rng.uniform(0, 1024 - h)
        boxes.append((names[row], "Infiltrate" if lab == "Infiltration" else lab, x, y, w, h))
    findings = ["|".join(LABELS[j] for j in np.flatnonzero(r)) or "No Finding" for r in onehot]
    entry = pd.DataFrame(
        {
            "Image Index": names,
            "Finding Labels": findings,
            "Follow-up #": follow,
            "Patient ID": patient,
            "Patient Age": rng.integers(1, 95, len(names)),
            "Patient Gender": rng.choice(["M", "F"], len(names)),  # the v2020 header
            "View Position": rng.choice(["PA", "AP"], len(names)),
            "OriginalImage[Width": 2500,
            "Height]": 2048,
            "OriginalImagePixelSpacing[x": 0.143,
            "y]": 0.143,
        }
    )
    order = rng.permutation(len(entry))  # NIH's file is not sorted
    return {
        "entry": entry.iloc[order].reset_index(drop=True),
        "train_val": sorted(names[~is_test]),
        "test": sorted(names[is_test]),
        "boxes": boxes,
    }


def write_metadata(raw: Path, meta: dict[str, Any]) -> None:
    """The four metadata files in NIH's formats (split bracketed headers, 9-field box header)."""
    from cxr_core.data import metadata as md

    raw.mkdir(parents=True, exist_ok=True)
    meta["entry"].to_csv(raw / md.DATA_ENTRY, index=False)
    lines = ["Image Index,Finding Label,Bbox [x,y,w,h],,,"]
    lines += [f"{n},{lab},{x:.4f},{y:.4f},{w:.4f},{h:.4f}" for n, lab, x, y, w, h in meta["boxes"]]
    (raw / md.BBOX_LIST).write_text("\n".join(lines) + "\n")
    md.write_image_list(raw / md.TRAIN_VAL_LIST, meta["train_val"])
    md.write_image_list(raw / md.TEST_LIST, meta["test"])


def meta_files(meta_dir: Path) -> dict[str, Path]:
    """The gzipped NIH metadata file in ``meta_dir`` for each name the pipeline reads, or ScaleError."""
    from cxr_core.data import metadata as md

    candidates = {
        md.DATA_ENTRY: [f"{n}.gz" for n in (md.DATA_ENTRY, *md.DATA_ENTRY_NAMES)],
        **{n: [f"{n}.gz"] for n in md.METADATA_FILES if n != md.DATA_ENTRY},
    }
    out: dict[str, Path] = {}
    for name, names in candidates.items():
        found = [Path(meta_dir) / c for c in names if (Path(meta_dir) / c).is_file()]
        if not found:
            raise ScaleError(f"--meta {meta_dir}: none of {names} found (NIH's four metadata files, gzipped)")
        out[name] = found[0]
    return out


def real_metadata(meta_dir: Path, raw: Path, fraction: float, seed: int = 0) -> None:
    """NIH's four gzipped metadata files from ``meta_dir``, cut to ``fraction`` of each side's patients."""
    from cxr_core.data import metadata as md

    raw.mkdir(parents=True, exist_ok=True)
    for name, found in meta_files(meta_dir).items():
        with gzip.open(found, "rb") as fin, open(raw / name, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    if fraction >= 1:
        return
    rng = np.random.default_rng(seed)
    test = md.read_image_list(raw / md.TEST_LIST)
    train_val = md.read_image_list(raw / md.TRAIN_VAL_LIST)
    keep: set[str] = set()
    for names in (test, train_val):
        patients = np.unique([int(n[:8]) for n in names])
        chosen = set(rng.choice(patients, max(2, round(fraction * len(patients))), replace=False).tolist())
        keep |= {n for n in names if int(n[:8]) in chosen}
    entry = pd.read_csv(raw / md.DATA_ENTRY, dtype=str, keep_default_na=False, index_col=False)
    entry[entry["Image Index"].isin(keep)].to_csv(raw / md.DATA_ENTRY, index=False)
    md.write_image_list(raw / md.TEST_LIST, [n for n in test if n in keep])
    md.write_image_list(raw / md.TRAIN_VAL_LIST, [n for n in train_val if n in keep])
    box_lines = (raw / md.BBOX_LIST).read_text().splitlines()
    kept = [line for line in box_lines[1:] if line.split(",", 1)[0].strip() in keep]
    (raw / md.BBOX_LIST).write_text("\n".join([box_lines[0], *kept]) + "\n")


# --------------------------------------------------------------------------------------------
# the child: one step, its time and its memory


def _status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in kB (0 where the kernel has no such file)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class _AnonSampler:
    """Peak anonymous RSS while a step runs, polled every ``interval`` s in a daemon thread."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_kb = _status_kb("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_kb = max(self.peak_kb, _status_kb("RssAnon"))

    def __enter__(self) -> _AnonSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, _status_kb("RssAnon"))


def measure(prepare: Callable[[], Any], work: Callable[[Any], dict[str, Any] | None]) -> dict[str, Any]:
    """Run ``prepare`` (untimed), then ``work(prepared)`` timed, with its RSS peaks (MB)."""
    prepared = prepare()
    reset = _reset_peak()
    base_rss, base_anon = _status_kb("VmRSS"), _status_kb("RssAnon")
    with _AnonSampler() as sampler:
        t0 = time.perf_counter()
        extra = work(prepared) or {}
        seconds = time.perf_counter() - t0
    peak_rss = _status_kb("VmHWM") if reset else max(_status_kb("VmHWM"), _status_kb("VmRSS"))
    return {
        "seconds": seconds,
        "base_rss_mb": base_rss / 1024,
        "peak_rss_mb": max(peak_rss, base_rss) / 1024,
        "base_anon_mb": base_anon / 1024,
        "peak_anon_mb": max(sampler.peak_kb, base_anon) / 1024,
        "extra_anon_mb": max(sampler.peak_kb - base_anon, 0) / 1024,
        "peak_reset": reset,
        **extra,
    }


@dataclasses.dataclass(frozen=True)
class Job:
    """What a child needs: its step, the fraction's folder, the source of metadata, threads."""

    step: str
    workdir: str
    fraction: float
    meta: str | None = None
    threads: int = 1
    seed: int = 0

    @property
    def root(self) -> Path:
        return Path(self.workdir)

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def splits(self) -> Path:
        return self.root / "splits"


def _test_table(job: Job) -> Any:
    from cxr_core.data.tables import SplitTable

    return SplitTable.read(job.splits, "test")


def synthetic_probs(targets: np.ndarray, seed: int, signal: float = 1.0) -> np.ndarray:
    """Scores that rank positives higher (AUC ~0.75 at ``signal`` 1), float32 like the test stage's."""
    rng = np.random.default_rng(seed)
    logits = signal * targets + rng.normal(0.0, 1.0, targets.shape)
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def synthetic_heatmaps(loc: pd.DataFrame, seed: int, size: int = SIZE) -> np.ndarray:
    """uint8 maps (K x S x S) like CAMs: a blob near each box plus 7 x 7 low-frequency noise."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    k = len(loc)
    coarse = torch.from_numpy(rng.random((k, 1, 7, 7), dtype=np.float32))
    noise = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    maps = np.empty((k, size, size), dtype=np.uint8)
    box = loc[["x", "y", "w", "h"]].to_numpy(dtype=np.float32)
    shift = rng.normal(0.0, 0.5, (k, 2)).astype(np.float32)
    for i in range(k):
        x, y, w, h = box[i]
        cx, cy = x + w * (0.5 + shift[i, 0]), y + h * (0.5 + shift[i, 1])
        blob = np.exp(-(((xx - cx) / max(w, 8)) ** 2 + ((yy - cy) / max(h, 8)) ** 2))
        m = 0.6 * blob + 0.4 * noise[i]
        m = (m - m.min()) / max(float(m.max() - m.min()), 1e-6)
        maps[i] = np.uint8(255 * m)
    return maps


def _step_cache(job: Job) -> dict[str, Any]:
    from cxr_core.data import metadata as md

    def prepare() -> Any:
        if job.meta:
            real_metadata(Path(job.meta), job.raw, job.fraction, job.seed)
        else:
            write_metadata(job.raw, synthetic_metadata(job.fraction, job.seed))
        return sorted(
            md.read_image_list(job.raw / md.TRAIN_VAL_LIST) + md.read_image_list(job.raw / md.TEST_LIST)
        )

    def work(names: list[str]) -> dict[str, Any]:
        job.cache.mkdir(parents=True, exist_ok=True)
        n = len(names)
        images = np.lib.format.open_memmap(
            job.cache / "images.npy", mode="w+", dtype=np.uint8, shape=(n, SIZE, SIZE)
        )
        pool = np.random.default_rng(job.seed).integers(0, 256, (POOL, SIZE, SIZE), dtype=np.uint8)
        chunk = 2048
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            images[lo:hi] = pool[np.arange(lo, hi) % POOL]
            images.flush()  # write back as we go: the dirty pages of a 5.6 GB map never pile up
        del images
        pd.DataFrame({"row": np.arange(n), "image": names}).to_csv(job.cache / "index.csv", index=False)
        return {"units": n, "cache_bytes": (job.cache / "images.npy").stat().st_size}

    return measure(prepare, work)


def _step_split(job: Job) -> dict[str, Any]:
    from cxr_core.data.cache import load_cache
    from cxr_core.data.splits import SplitStats, splits_from_raw, write_splits

    def prepare() -> Any:
        return load_cache(job.cache, expected_size=SIZE)[1]

    def work(index: pd.DataFrame) -> dict[str, Any]:
        splits = splits_from_raw(
            job.raw,
            index,
            val_fraction=SETTINGS["val_fraction"],
            group_by="patient",
            seed=job.seed,
            image_size=SIZE,
            loc_tune_fraction=SETTINGS["loc_tune_fraction"],
        )
        write_splits(splits, job.splits)
        SplitStats.write(job.root / "metrics" / "split.json", splits)
        return {
            "units": len(index),
            "train": len(splits.train),
            "val": len(splits.val),
            "test": len(splits.test),
            "loc": len(splits.loc),
            "test_patients": int(splits.test["patient"].nunique()),
        }

    return measure(prepare, work)


def _step_epoch(job: Job) -> dict[str, Any]:
    import torch

    from cxr_core.data.batches import CacheBatches, prepare_batch
    from cxr_core.data.cache import load_cache
    from cxr_core.data.tables import SplitTable

    def prepare() -> Any:
        images, _ = load_cache(job.cache, expected_size=SIZE)
        return images, {n: SplitTable.read(job.splits, n) for n in ("train", "val", "test")}

    def work(inputs: Any) -> dict[str, Any]:
        images, tables = inputs
        train = CacheBatches(
            images, tables["train"].rows, tables["train"].targets, SETTINGS["batch_size"], shuffle=True,
            seed=job.seed, epoch=1, drop_last=True,
        )  # fmt: skip
        generator = torch.Generator().manual_seed(job.seed)
        checksum = 0.0
        t0 = time.perf_counter()
        for x_u8, _y in train:
            x = prepare_batch(x_u8, "cpu", train=True, generator=generator, channels_last=True)
            checksum += float(x[:, 0, 0, 0].sum())  # touch the result, as a model would
        train_seconds = time.perf_counter() - t0
        seen = len(train) * SETTINGS["batch_size"]
        for name in ("val", "test"):
            table = tables[name]
            evals = CacheBatches(images, table.rows, table.targets, SETTINGS["eval_batch_size"])
            for x_u8, _y in evals:
                checksum += float(
                    prepare_batch(x_u8, "cpu", train=False, channels_last=True)[:, 0, 0, 0].sum()
                )
            seen += len(table.rows)
        return {
            "units": len(images),
            "images_seen": seen,
            "train_images_per_s": len(train) * SETTINGS["batch_size"] / train_seconds,
            "checksum_finite": math.isfinite(checksum),
        }

    threads = torch.get_num_threads()
    torch.set_num_threads(job.threads)
    try:
        return measure(prepare, work)
    finally:
        torch.set_num_threads(threads)  # in-process runs (tests) leave the caller's setting alone


def _step_summarise(job: Job) -> dict[str, Any]:
    from cxr_core.evaluate.metrics import RocTable, TestMetrics, roc_points, summarise

    def prepare() -> Any:
        test = _test_table(job)
        targets = test.targets.astype(np.uint8)
        return targets, synthetic_probs(targets, job.seed), test.patients

    def work(inputs: Any) -> dict[str, Any]:
        targets, probs, patients = inputs
        summary = summarise(
            targets, probs, patients, n_boot=SETTINGS["bootstrap"], ci=SETTINGS["ci"], seed=job.seed
        )
        TestMetrics.write(job.root / "timed" / "test.json", summary)
        RocTable.write(
            job.root / "timed" / "roc.csv",
            RocTable.from_curves(roc_points(targets, probs, SETTINGS["roc_points"])),
        )
        return {"units": len(targets), "patients": summary["n_patients"], "macro_auc": summary["macro_auc"]}

    return measure(prepare, work)


def _model_probs(targets: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Six models' scores on the same test images, of different strength, so the pairs differ."""
    return {m: synthetic_probs(targets, seed + 1 + i, signal=1.2 - 0.1 * i) for i, m in enumerate(MODELS)}


def _step_paired(job: Job) -> dict[str, Any]:
    from cxr_core.compare.paired import comparison_summary, paired_auc_bootstrap
    from cxr_core.files import write_json

    def prepare() -> Any:
        test = _test_table(job)
        targets = test.targets.astype(np.uint8)
        return targets, _model_probs(targets, job.seed), test.patients

    def work(inputs: Any) -> dict[str, Any]:
        targets, probs, patients = inputs
        result = paired_auc_bootstrap(
            targets, probs, patients, n_boot=SETTINGS["bootstrap"], ci=SETTINGS["ci"], seed=job.seed
        )
        write_json(job.root / "timed" / "compare.json", comparison_summary(result))
        return {"units": len(targets), "models": len(probs), "pairs": len(result["pairs"])}

    return measure(prepare, work)


def _step_score(job: Job) -> dict[str, Any]:
    from cxr_core.data.tables import LocTable
    from cxr_core.explain.heatmaps import SavedHeatmaps
    from cxr_core.explain.heldout import HeldoutSettings, sweep_thresholds
    from cxr_core.explain.scoring import BoxRecords, LocaliseMetrics, score_heatmaps

    methods = SETTINGS["methods"]

    def prepare() -> Any:
        loc = LocTable.read(job.splits).table
        maps = {m: synthetic_heatmaps(loc, job.seed + i) for i, m in enumerate(methods)}
        degenerate = {m: np.zeros(len(loc), dtype=bool) for m in methods}
        probs = synthetic_probs(np.zeros((len(loc), 14)), job.seed)
        raw = {m: (v[:, ::32, ::32] / 255.0).astype(np.float32) for m, v in maps.items()}  # a 7 x 7 grid
        SavedHeatmaps(maps, degenerate, probs, raw).save(job.root / "heatmaps" / "maps.npz")  # for the report
        return loc, maps, raw, degenerate, probs

    def work(inputs: Any) -> dict[str, Any]:
        loc, maps, raw, degenerate, probs = inputs
        heldout = HeldoutSettings(
            tuple(sweep_thresholds(SETTINGS["sweep_step"]).tolist()), SETTINGS["maxboxacc_iou"]
        )
        table, summary = score_heatmaps(
            maps, raw, degenerate, loc, probs, thresholds=SETTINGS["thresholds"],
            box_thresholds=SETTINGS["box_thresholds"], positive_threshold=SETTINGS["positive_threshold"],
            heldout=heldout,
        )  # fmt: skip
        BoxRecords.write(job.root / "timed" / "boxes.csv", table)
        LocaliseMetrics.write(job.root / "timed" / "localise.json", "synthetic", summary)
        return {"units": len(loc), "records": len(table), "methods": len(maps)}

    return measure(prepare, work)


def _predictions(job: Job) -> dict[str, Any]:
    """Six models' test predictions (one seed each), as the test stage saves them."""
    from cxr_core.evaluate.predictions import Predictions

    test = _test_table(job)
    targets = test.targets.astype(np.uint8)
    return {
        m: Predictions(test.images, test.rows, test.patients, probs, targets, np.log(probs))
        for m, probs in _model_probs(targets, job.seed).items()
    }


def _step_compare(job: Job) -> dict[str, Any]:
    from cxr_core.compare.study import CompareSettings, ComparisonMetrics, compare_study
    from cxr_core.data.tables import LocTable
    from cxr_core.explain.scoring import BoxRecords

    def prepare() -> Any:
        records = BoxRecords.read(job.root / "timed" / "boxes.csv")
        settings = CompareSettings(
            n_boot=SETTINGS["bootstrap"], ci=SETTINGS["ci"], seed=job.seed, alpha=0.05,
            min_auc_difference=0.05, min_rate_difference=0.05, box_threshold=0.25, box_cutoff=0.1,
        )  # fmt: skip
        return _predictions(job), records, LocTable.read(job.splits).table, settings

    def work(inputs: Any) -> dict[str, Any]:
        predictions, records, loc, settings = inputs
        doc = compare_study(
            {m: [p] for m, p in predictions.items()}, {m: [records] for m in predictions}, loc, [0], settings
        )
        ComparisonMetrics.write(job.root / "metrics" / "compare.json", doc)
        return {"units": len(next(iter(predictions.values())).rows), "models": len(predictions)}

    return measure(prepare, work)


def _step_clinical(job: Job) -> dict[str, Any]:
    """The clinical audit of the six models (operating points, calibration, subgroups, adjudicated
    labels) on the synthetic test split, validation-chosen thresholds, as clinical@ writes it."""
    import yaml

    from cxr_core.compare.clinical import (
        ClinicalMetrics,
        ClinicalSettings,
        ReliabilityTable,
        Split,
        clinical_audit,
    )
    from cxr_core.data import metadata as md
    from cxr_core.data.adjudicated import read_adjudicated, write_phantom_adjudicated
    from cxr_core.data.tables import SplitTable

    def prepare() -> Any:
        params = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "paper.yaml").read_text())
        params["test"]["bootstrap"] = SETTINGS["bootstrap"]
        settings = ClinicalSettings.from_params(params)
        val, test = SplitTable.read(job.splits, "val"), _test_table(job)
        adjudicated = job.root / "timed" / "adjudicated.csv.gz"
        write_phantom_adjudicated(
            adjudicated, job.raw / md.DATA_ENTRY, test.images, flip_rate=0.05, seed=job.seed, fraction=0.08
        )
        splits = {}
        for m, i in zip(MODELS, range(len(MODELS)), strict=True):
            parts = []
            for k, table in enumerate((val, test)):
                targets = table.targets.astype(np.uint8)
                probs = synthetic_probs(targets, job.seed + 10 * (i + 1) + k, signal=1.2 - 0.1 * i)
                logits = np.log(probs.astype(np.float64)) - np.log1p(-probs.astype(np.float64))
                parts.append(Split(table.images, table.patients, targets, logits, probs))
            splits[m] = parts
        return splits, md.read_data_entry(job.raw / md.DATA_ENTRY), read_adjudicated(adjudicated), settings

    def work(inputs: Any) -> dict[str, Any]:
        splits, label_table, adjudicated, settings = inputs
        for m, (val, test) in splits.items():
            doc, _, curves = clinical_audit(val, test, label_table, adjudicated, settings)
            ClinicalMetrics.write(
                job.root / "metrics" / "clinical" / m / "seed0.json", {"model": m, "seed": 0, **doc}
            )
            ReliabilityTable.write(job.root / "plots" / "reliability" / m / "seed0.csv", curves)
        return {"units": len(next(iter(splits.values()))[1].images), "models": len(splits)}

    return measure(prepare, work)


def _synthetic_sanity(model: str, rng: np.random.Generator) -> dict[str, Any]:
    """A sanity@ file: the report's randomisation and faithfulness columns (the stage needs a model; not timed)."""
    steps = ["head", "head+stage"]
    methods = {}
    for method in SETTINGS["methods"]:
        rho = 1.0 if method == "RandomCAM" else float(rng.uniform(0.0, 0.4))
        methods[method] = {
            "spearman": {"head": float(rng.uniform(0.5, 1.0)), steps[-1]: rho},
            "final_spearman": rho,
            "passes": rho < 0.5,
            "faithfulness": float(rng.uniform(0.0, 0.1)),
        }
    return {
        "model": model, "n_images": 24, "subset": "report", "steps": steps,
        "modules": {"head": ["head"], steps[-1]: ["head", "stage"]},
        "max_rank_correlation": 0.5, "faithfulness": "road", "road_percentiles": [20, 40, 60, 80],
        "methods": methods,
    }  # fmt: skip


def _report_inputs(job: Job) -> tuple[dict[str, Any], Any]:
    """Six models' metrics files (seed 0), as their stages write them, from the synthetic test set."""
    import yaml

    from cxr_core.evaluate.metrics import RocTable, TestMetrics, roc_points, summarise
    from cxr_core.explain.sanity_metrics import SanityMetrics
    from cxr_core.files import write_json
    from cxr_core.report import ReportPaths
    from cxr_core.train.live import EpochLog

    root, seed = job.root, 0
    paths = ReportPaths(
        metrics=root / "metrics", plots=root / "plots", splits=job.splits, cache=job.cache,
        heatmaps=root / "heatmaps", raw=job.raw, out=root / "reports",
    )  # fmt: skip
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "paper.yaml").read_text())
    params["models"], params["seeds"] = list(MODELS), [seed]
    localise = json.loads((root / "timed" / "localise.json").read_text())
    rng = np.random.default_rng(job.seed)
    for m, pred in _predictions(job).items():
        summary = summarise(pred.targets, pred.probs, pred.patients, n_boot=20, seed=job.seed)  # CIs unused
        TestMetrics.write(paths.test_json(m, seed), summary)
        curves = roc_points(pred.targets, pred.probs, SETTINGS["roc_points"])
        RocTable.write(paths.roc_csv(m, seed), RocTable.from_curves(curves))
        write_json(paths.localise_json(m, seed), {**localise, "model": m})
        log = EpochLog(paths.train_dir(m, seed))
        history = []
        for epoch in range(1, SETTINGS["epochs_logged"] + 1):
            row = {
                "epoch": epoch,
                "train_loss": float(1.0 / epoch + rng.uniform(0, 0.05)),
                "val_loss": float(1.1 / epoch + rng.uniform(0, 0.05)),
                "val_macro_auc": float(0.8 - 0.2 / epoch),
                "lr": 5e-4,
            }
            history.append(row)
            log.epoch(row, 1.0, 1.0)
        best = min(history, key=lambda r: r["val_loss"])
        log.finish(
            {"best_epoch": best["epoch"], "best_val_loss": best["val_loss"], "epochs_trained": len(history)}
        )
        paths.heatmaps_npz(m, seed).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / "heatmaps" / "maps.npz", paths.heatmaps_npz(m, seed))
        SanityMetrics.write(paths.sanity_json(m, seed), _synthetic_sanity(m, rng))
    manifest = {
        "source": "synthetic",
        "label_file": "Data_Entry_2017_v2020.csv (synthetic, scale benchmark)",
        "layout": "official",
        "image_root": "images",
        "images": int(len(pd.read_csv(job.cache / "index.csv"))),
        "missing": [],
        "fingerprint": "0" * 64,
    }
    write_json(paths.manifest, manifest)
    return params, paths


def _step_report(job: Job) -> dict[str, Any]:
    from cxr_core.report import make_report

    def work(inputs: Any) -> dict[str, Any]:
        params, paths = inputs
        report = make_report(params, paths)
        return {"units": int(len(pd.read_csv(job.cache / "index.csv"))), "best": str(report.best)}

    return measure(lambda: _report_inputs(job), work)


RUNNERS: dict[str, Callable[[Job], dict[str, Any]]] = {
    "cache": _step_cache,
    "split": _step_split,
    "epoch": _step_epoch,
    "summarise": _step_summarise,
    "paired": _step_paired,
    "score": _step_score,
    "compare": _step_compare,
    "clinical": _step_clinical,
    "report": _step_report,
}


def child_main(argv: Sequence[str]) -> int:
    """``python -m benchmarks.scale JOB_JSON OUT_JSON``: run one step, write its measurement."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    job = Job(**json.loads(argv[0]))
    try:
        result = RUNNERS[job.step](job)
    except CxrError as exc:  # a fixable problem: its message, no traceback
        print(exc, file=sys.stderr)
        return 1
    Path(argv[1]).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------------------------
# the parent: every step at every fraction, then how each grows


def run_step(job: Job, timeout: float | None = None) -> dict[str, Any]:
    """One step in a fresh interpreter; its measurement plus the child's own wall time."""
    out = Path(job.workdir) / f"result_{job.step}.json"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": str(job.threads)}
    cmd = [sys.executable, "-m", "benchmarks.scale", json.dumps(dataclasses.asdict(job)), str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise ScaleError(
            f"scale step {job.step!r} at fraction {job.fraction} failed (exit {proc.returncode}):\n{tail}"
        )
    result = json.loads(out.read_text())
    result["process_seconds"] = time.perf_counter() - t0
    return result


def _exponent(small: float, large: float, size_ratio: float) -> float:
    """``log(large / small) / log(size_ratio)``: 1 is linear; NaN when undefined."""
    if size_ratio <= 1 or small <= 0 or large <= 0:
        return float("nan")
    return math.log(large / small) / math.log(size_ratio)


def growth(results: dict[str, dict[str, dict[str, Any]]], fractions: Sequence[float]) -> dict[str, Any]:
    """Per step: time and anonymous-memory growth against the size, with exponents and flags.

    Exponents are taken from the smallest to the largest fraction and between the two largest
    (the pair least distorted by fixed start-up costs). A quantity is flagged as super-linear only
    when both exceed ``SUPERLINEAR`` and its largest value is above the noise floor
    (``MIN_SECONDS``, ``MIN_EXTRA_MB``): on a shared machine one loaded run must not raise a flag.
    Memory is the step's anonymous RSS beyond its inputs; a peak above ``PEAK_BUDGET_MB`` at any
    fraction is flagged as unbounded for this machine.
    """
    keys = [f"{f:g}" for f in sorted(fractions)]
    lo, mid, hi = keys[0], keys[-2], keys[-1]
    out: dict[str, Any] = {}
    for step in STEPS:
        small, middle, large = results[lo][step], results[mid][step], results[hi][step]
        size_ratio = large["units"] / max(small["units"], 1)
        last_ratio = large["units"] / max(middle["units"], 1)
        entry: dict[str, Any] = {"from": lo, "to": hi, "size_ratio": size_ratio, "flags": []}
        for key, floor in (("seconds", MIN_SECONDS), ("extra_anon_mb", MIN_EXTRA_MB)):
            a, b = small[key], large[key]
            entry[f"{key}_ratio"] = b / a if a > 0 else float("nan")
            exp = _exponent(a, b, size_ratio)
            exp_last = _exponent(middle[key], b, last_ratio) if mid != lo else exp
            entry[f"{key}_exponent"], entry[f"{key}_exponent_last"] = exp, exp_last
            both = [e for e in (exp, exp_last) if math.isfinite(e)]
            if both and min(both) > SUPERLINEAR and b >= floor:
                entry["flags"].append(f"{key} grows as size^{min(both):.2f}")
        peaks = [results[f][step]["extra_anon_mb"] for f in keys]
        if max(peaks) > PEAK_BUDGET_MB:
            entry["flags"].append(
                f"anonymous memory beyond inputs {max(peaks):.0f} MB > {PEAK_BUDGET_MB:.0f} MB"
            )
        entry["seconds_per_unit"] = large["seconds"] / max(large["units"], 1)
        entry["anon_mb_per_unit"] = large["extra_anon_mb"] / max(large["units"], 1)
        out[step] = entry
    return out


def run(
    fractions: Sequence[float],
    workdir: Path | None = None,
    meta: Path | None = None,
    keep: bool = False,
    threads: int = 1,
    progress: Callable[[str], None] | None = None,
    isolate: bool = True,
) -> dict[str, Any]:
    """Every step at every fraction (smallest first); the JSON-ready result.

    ``isolate=False`` runs the steps in this process (seconds faster per step, for tests): times
    are the same, but a step's memory peak then sits on top of what earlier steps left behind.
    """
    fractions = sorted(set(fractions))
    if meta is not None:
        meta_files(meta)  # a missing file fails here, before any work
    say = progress or (lambda _msg: None)
    base = Path(workdir) if workdir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    top = Path(tempfile.mkdtemp(prefix="cxr-scale-", dir=base))
    results: dict[str, dict[str, dict[str, Any]]] = {}
    t_all = time.perf_counter()
    try:
        for fraction in fractions:
            folder = top / f"f{fraction:g}"
            folder.mkdir()
            key = f"{fraction:g}"
            results[key] = {}
            for step in STEPS:
                job = Job(step, str(folder), fraction, str(meta) if meta else None, threads)
                r = run_step(job) if isolate else RUNNERS[step](job)
                results[key][step] = r
                say(
                    f"fraction {key} {step:9s} {r['units']:>7} {STEP_UNITS[step]:11s} {r['seconds']:8.2f} s  "
                    f"peak RSS {r['peak_rss_mb']:7.0f} MB  anon +{r['extra_anon_mb']:6.0f} MB "
                    f"(peak {r['peak_anon_mb']:.0f})"
                )
            if not keep:
                shutil.rmtree(folder)
    finally:
        if not keep:
            shutil.rmtree(top, ignore_errors=True)
    return {
        "fractions": [f"{f:g}" for f in fractions],
        "full": FULL,
        "sizes": {k: _measured_sizes(steps) for k, steps in results.items()},
        "data": f"NIH metadata from {meta}" if meta else "synthetic metadata with NIH's structure",
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in SETTINGS.items()},
        "threads": threads,
        "isolated": isolate,
        "workdir": str(top) if keep else None,
        "steps": results,
        "growth": growth(results, fractions) if len(fractions) > 1 else {},
        "seconds": time.perf_counter() - t_all,
    }


def _measured_sizes(steps: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Images, test images and boxes the steps actually ran on (with ``--meta``, NIH's own counts)."""
    return {
        "images": int(steps["cache"]["units"]),
        "test_images": int(steps["summarise"]["units"]),
        "boxes": int(steps["score"]["units"]),
    }


def to_markdown(result: dict[str, Any], machine: dict[str, Any] | None = None) -> str:
    """The measured table (time and memory per step and fraction) and the growth table."""
    fr = result["fractions"]
    lines = ["# Scale dry run", ""]
    if machine:
        lines += [f"Machine: {machine.get('cpu')}, {machine.get('usable_cores')} cores, torch threads "
                  f"{result['threads']}, load {machine.get('load_average_1m')}.", ""]  # fmt: skip
    lines += [
        f"Data: {result['data']}; sizes per fraction: "
        + "; ".join(
            f"{f}: {s['images']} images, {s['test_images']} test, {s['boxes']} boxes"
            for f, s in result["sizes"].items()
        )
        + ".",
        "",
        "Time in s; memory in MB: peak RSS (incl. memmap pages) / anonymous RSS beyond the step's inputs.",
        "",
        "| step | size | "
        + " | ".join(f"{f}: s" for f in fr)
        + " | "
        + " | ".join(f"{f}: RSS / +anon" for f in fr)
        + " |",
        "|" + "---|" * (2 + 2 * len(fr)),
    ]
    for step in STEPS:
        cells = [f"{result['steps'][f][step]['seconds']:.2f}" for f in fr]
        mem = [
            f"{result['steps'][f][step]['peak_rss_mb']:.0f} / +{result['steps'][f][step]['extra_anon_mb']:.0f}"
            for f in fr
        ]
        lines.append(f"| {step} | {STEP_UNITS[step]} | " + " | ".join(cells + mem) + " |")
    if result["growth"]:
        g0 = next(iter(result["growth"].values()))
        lines += [
            "",
            f"Growth from {g0['from']} to {g0['to']} (exponent 1 = linear in the step's size; in brackets: "
            "between the two largest fractions):",
            "",
            "| step | size ratio | time ratio | time exponent | +anon ratio | +anon exponent | flags |",
            "|---|---|---|---|---|---|---|",
        ]
        for step, g in result["growth"].items():
            lines.append(
                f"| {step} | {g['size_ratio']:.1f} | {g['seconds_ratio']:.2f} | {g['seconds_exponent']:.2f} "
                f"({g['seconds_exponent_last']:.2f}) | {g['extra_anon_mb_ratio']:.2f} | "
                f"{g['extra_anon_mb_exponent']:.2f} ({g['extra_anon_mb_exponent_last']:.2f}) | "
                f"{'; '.join(g['flags']) or 'ok'} |"
            )
    lines += ["", f"Total {result['seconds']:.0f} s (including process start-up and untimed preparation)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
