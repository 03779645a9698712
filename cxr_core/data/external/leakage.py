"""The leakage guard: an external set must not contain the images the model was trained on.

RSNA Pneumonia, SIIM-ACR Pneumothorax and ChestX-Det are built from NIH ChestX-ray14 images, so an
NIH-trained model has seen part of them. Such a copy is recognised by its files (the report names
it) and, whatever its layout, every external image is compared with the NIH train and validation
images. A byte hash would miss a copy that was re-saved (DICOM, JPEG, another size or window), so
the fingerprint is the image itself, small and stripped of what every chest X-ray shares: a 64 x 64
box-averaged thumbnail minus its Gaussian blur (sigma one thumbnail pixel), scaled to unit length.
Two fingerprints' dot product is their correlation: a re-saved copy stays above 0.97, other
patients' images below 0.93 on the phantom, whose patients look far more alike than real ones
(tests/test_external.py). Exact search: one matrix product per chunk of external images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

#: Thumbnail side of the fingerprint, and the blur (in thumbnail pixels) it is high-passed with.
SIDE = 64
SIGMA = 1.0
#: External images per chunk of the search (bounds the chunk x reference similarity matrix).
_CHUNK = 1024
#: Files that identify a data set built from NIH ChestX-ray14 images (its name, why).
NIH_DERIVED: dict[str, str] = {
    "stage_2_train_labels.csv": "RSNA Pneumonia Detection (its images are NIH ChestX-ray14 images)",
    "stage_1_train_labels.csv": "RSNA Pneumonia Detection (its images are NIH ChestX-ray14 images)",
    "stage_2_detailed_class_info.csv": "RSNA Pneumonia Detection (its images are NIH ChestX-ray14 images)",
    "train-rle.csv": "SIIM-ACR Pneumothorax Segmentation (its images are NIH ChestX-ray14 images)",
    "ChestX_Det_train.json": "ChestX-Det (its images are NIH ChestX-ray14 images)",
    "ChestX_Det_test.json": "ChestX-Det (its images are NIH ChestX-ray14 images)",
}


def nih_derived(root: Path) -> list[str]:
    """Names of NIH-derived data sets whose marker files sit in ``root`` (or one level below)."""
    root = Path(root)
    found = []
    for name, what in NIH_DERIVED.items():
        if (root / name).exists() or any(root.glob(f"*/{name}")):
            found.append(f"{what} [{name}]")
    return sorted(set(found))


def fingerprints(images: np.ndarray) -> np.ndarray:
    """N x SIDE^2 float32 unit-length fingerprints of N x S x S uint8 images (module docstring)."""
    out = np.empty((len(images), SIDE * SIDE), dtype=np.float32)
    for i, img in enumerate(images):
        small = Image.fromarray(np.asarray(img), mode="L").resize((SIDE, SIDE), Image.Resampling.BOX)
        thumb = np.asarray(small, dtype=np.float32)
        detail = (thumb - gaussian_filter(thumb, SIGMA, mode="nearest")).ravel()
        detail -= detail.mean()
        out[i] = detail / max(float(np.linalg.norm(detail)), 1e-6)
    return out


def near_copies(
    query: np.ndarray, reference: np.ndarray, rows: Sequence[int], min_correlation: float
) -> list[tuple[int, int, float]]:
    """``(query row, index into rows, correlation)`` for every query image whose best match among
    ``reference[rows]`` correlates at least ``min_correlation``. Both are uint8 N x S x S stacks (the
    reference may be the NIH cache's memmap: it is read a chunk at a time)."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(query) == 0 or len(rows) == 0:
        return []
    ref = np.concatenate(
        [fingerprints(reference[rows[lo : lo + _CHUNK]]) for lo in range(0, len(rows), _CHUNK)]
    )
    hits = []
    for lo in range(0, len(query), _CHUNK):
        sim = fingerprints(query[lo : lo + _CHUNK]) @ ref.T
        best = sim.argmax(axis=1)
        score = sim[np.arange(len(sim)), best]
        hits += [(lo + i, int(best[i]), float(score[i])) for i in np.flatnonzero(score >= min_correlation)]
    return hits


def describe(hits: Sequence[tuple[int, int, float]], query_ids: Sequence[str], ref_ids: Sequence[str]) -> str:
    """The first few matches, ``external image ~ NIH image (r = 0.998)``."""
    shown = ", ".join(f"{query_ids[i]} ~ {ref_ids[j]} (r = {r:.3f})" for i, j, r in hits[:5])
    return shown + (f" and {len(hits) - 5} more" if len(hits) > 5 else "")
