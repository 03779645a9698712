"""Synthetic radiograph-like PNGs for the loader and preprocess benchmarks.

Noisy on purpose, so they compress like real NIH files (~0.6 MB at 1024 px) and the decode cost
is realistic. Written to a temporary folder, they sit in the page cache: the benchmarks measure
CPU work, not the disk.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_core.data.pool import pool_context

logger = logging.getLogger(__name__)

#: Side of NIH's images, and of the synthetic ones by default.
SIDE = 1024


def chest_like(seed: int) -> np.ndarray:
    """A 1024 x 1024 uint8 radiograph-like image: body, two dark lungs, ribs, mediastinum, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) / SIDE
    cx = 0.5 + rng.uniform(-0.03, 0.03)
    img = 40 + 140 * (((x - cx) / 0.42) ** 2 + ((y - 0.55) / 0.55) ** 2 < 1)
    for side in (-1, 1):
        lung = ((x - cx - side * 0.17) / 0.13) ** 2 + ((y - 0.45) / 0.3) ** 2 < 1
        img = np.where(lung, img - 90 + 15 * np.sin(y * 70 + side * x * 8), img)
    img += 50 * np.exp(-(((x - cx) / 0.06) ** 2))  # mediastinum
    img += 25 * (y - 0.5)  # exposure gradient
    img += rng.normal(0, 6, img.shape).astype(np.float32)  # quantum noise: what makes PNGs big
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_png(job: tuple[int, str, int]) -> int:
    seed, path, side = job
    image = Image.fromarray(chest_like(seed))
    if side != SIDE:
        image = image.resize((side, side), Image.Resampling.BILINEAR)
    image.save(path, "PNG")  # default zlib level, like most writers
    return Path(path).stat().st_size


def write_pngs(folder: Path, n: int, side: int = SIDE, workers: int = 2) -> list[Path]:
    """``n`` synthetic ``side`` x ``side`` 8-bit PNGs named like NIH's (``00000000_000.png``)."""
    paths = [folder / f"{k:08d}_000.png" for k in range(n)]
    jobs = [(k, str(p), side) for k, p in enumerate(paths)]
    if workers <= 1 or n < 4:
        sizes = [_write_png(job) for job in jobs]
    else:
        with pool_context().Pool(workers) as pool:
            sizes = pool.map(_write_png, jobs, chunksize=4)
    logger.info("wrote %d PNGs, mean %.0f KB", n, np.mean(sizes) / 1024)
    return paths
