"""Benchmark the preprocess stage: build_cache vs the decode-only limit vs paper-style loading.

``python -m benchmarks.preprocess --images 200 --workers 2`` writes N synthetic 1024 x 1024 8-bit
chest-like PNGs (:mod:`benchmarks.synthetic`) to a temporary folder and times, on the same files
and cores, in interleaved rounds (best of ``--repeat``):

* ``decode_only``: the same pool and chunking as build_cache, just ``Image.open(p).load()``:
  the floor for any loader that reads these PNGs.
* ``build_cache``: :func:`cxr_core.data.preprocess.build_cache` (stat pass, decode, grey, resize, memmap
  write, index and report, rename), paid once per pipeline run.
* ``paper_single`` / ``paper_pool``: the typical CheXNet per-image pipeline
  ``Image.open(p).convert("RGB").resize((S, S))`` + ``ToTensor`` + ``Normalize`` equivalent
  (float32 CHW), in one process and with the same pool; paid every epoch.

The files were just written, so they are in the page cache: this measures CPU, not the disk.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
from PIL import Image

from benchmarks.synthetic import write_pngs
from cxr_core.data.batches import IMAGENET_MEAN, IMAGENET_STD
from cxr_core.data.pool import chunk_bounds, pool_context
from cxr_core.data.preprocess import build_cache

logger = logging.getLogger(__name__)

#: ``Normalize``'s constants as C x 1 x 1 arrays, for the numpy version of the paper's transform.
_MEAN = np.array(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.array(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)


def _decode_only_chunk(paths: list[str]) -> int:
    for p in paths:
        with Image.open(p) as im:
            im.load()
    return len(paths)


def _paper_chunk(task: tuple[list[str], int]) -> int:
    paths, size = task
    for p in paths:
        img = Image.open(p).convert("RGB").resize((size, size))
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0  # ToTensor
        x = (x - _MEAN) / _STD  # Normalize
    return len(paths)


def _pooled(fn: Callable[[Any], int], tasks: list[Any], workers: int) -> float:
    """Wall time of ``fn`` over ``tasks`` with a fresh pool (pool start included, as in build_cache)."""
    t0 = time.perf_counter()
    if workers <= 1:
        done = sum(fn(t) for t in tasks)
    else:
        with pool_context().Pool(workers) as pool:
            done = sum(pool.imap_unordered(fn, tasks))
    assert done > 0
    return time.perf_counter() - t0


def run(images: int = 200, workers: int = 2, size: int = 224, repeat: int = 3) -> dict[str, Any]:
    """Time the four loaders on the same synthetic files; return images/s and ratios."""
    with tempfile.TemporaryDirectory(prefix="cxr-bench-preprocess-") as tmp:
        folder = Path(tmp)
        paths = write_pngs(folder, images, workers=workers)
        names = [p.name for p in paths]
        strs = [str(p) for p in paths]
        bounds = chunk_bounds(len(strs), workers, 64)
        chunks = [strs[a:b] for a, b in bounds]
        single = chunk_bounds(len(strs), 1, 64)

        def cache_once() -> float:
            t0 = time.perf_counter()
            build_cache(
                names, paths, folder / "cache", size=size, workers=workers, on_error="fail", progress=False
            )
            return time.perf_counter() - t0

        timers: dict[str, Callable[[], float]] = {
            "decode_only": lambda: _pooled(_decode_only_chunk, chunks, workers),
            "build_cache": cache_once,
            "paper_single": lambda: _pooled(_paper_chunk, [(strs[a:b], size) for a, b in single], 1),
            "paper_pool": lambda: _pooled(_paper_chunk, [(c, size) for c in chunks], workers),
        }
        best = {name: float("inf") for name in timers}
        for round_ in range(repeat):  # interleaved rounds, so noise from other jobs hits all alike
            for name, timer in timers.items():
                best[name] = min(best[name], timer())
            logger.info("round %d/%d: %s", round_ + 1, repeat, {k: round(v, 3) for k, v in best.items()})
        png_bytes = float(np.mean([p.stat().st_size for p in paths]))

    ips = {f"{name}_images_per_s": images / t for name, t in best.items()}
    return {
        "images": images,
        "workers": workers,
        "size": size,
        "repeat": repeat,
        "mean_png_kb": png_bytes / 1024,
        "seconds": best,
        **ips,
        "cache_over_decode_only_time": best["build_cache"] / best["decode_only"],
        "cache_speedup_over_paper_single": best["paper_single"] / best["build_cache"],
        "cache_speedup_over_paper_pool": best["paper_pool"] / best["build_cache"],
    }


@click.command()
@click.option("--images", default=200, show_default=True, help="number of synthetic 1024 px PNGs")
@click.option("--workers", default=2, show_default=True, help="worker processes (same for every loader)")
@click.option("--size", default=224, show_default=True, help="output side S")
@click.option("--repeat", default=3, show_default=True, help="interleaved rounds; the best time counts")
def main(images: int, workers: int, size: int, repeat: int) -> None:
    """Benchmark build_cache against decode-only and paper-style per-image loading."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    r = run(images=images, workers=workers, size=size, repeat=repeat)
    click.echo(
        f"\n{images} PNGs of 1024x1024 (mean {r['mean_png_kb']:.0f} KB) -> {size}x{size}, "
        f"{workers} worker(s), best of {repeat}:"
    )
    rows = [
        ("decode-only (pool)", "decode_only"),
        ("build_cache (pool)", "build_cache"),
        ("paper-style (1 process)", "paper_single"),
        (f"paper-style ({workers} workers)", "paper_pool"),
    ]
    for label, key in rows:
        click.echo(f"  {label:<26} {r[key + '_images_per_s']:8.1f} images/s  ({r['seconds'][key]:.2f} s)")
    click.echo(f"  build_cache / decode-only time: {r['cache_over_decode_only_time']:.2f} (target <= 1.5)")
    click.echo(
        f"  build_cache speed-up over paper-style: {r['cache_speedup_over_paper_single']:.2f}x (1 process), "
        f"{r['cache_speedup_over_paper_pool']:.2f}x (same pool), once vs every epoch"
    )


if __name__ == "__main__":
    main()
