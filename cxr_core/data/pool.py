"""Process pools for CPU-bound image work (cache build, phantom generation, benchmarks)."""

from __future__ import annotations

import math
import multiprocessing
from multiprocessing.context import BaseContext


def pool_context() -> BaseContext:
    """``fork`` where available (workers start in ms, no re-import), else ``spawn``."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def chunk_bounds(n: int, workers: int, chunk_size: int) -> list[tuple[int, int]]:
    """Split ``range(n)`` into ``(start, stop)`` chunks: at most ``chunk_size``, and small enough
    that every worker gets ~8 chunks (so a short run does not leave a core idle at the end)."""
    if n <= 0:
        return []
    step = max(1, min(chunk_size, math.ceil(n / (max(1, workers) * 8))))
    return [(i, min(i + step, n)) for i in range(0, n, step)]
