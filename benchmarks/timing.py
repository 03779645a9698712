"""Shared timing helpers: device choice, device-synchronised wall time, best / median summaries.

Every benchmark times its contenders in interleaved repeats inside one process, so load from other
jobs on a shared machine hits all of them alike; the best run estimates the unloaded speed and the
median says how noisy the machine was.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from cxr_core.runtime import resolve_device

T = TypeVar("T")


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` -> the GPU when CUDA is available, else the CPU (the training stage's rule);
    a ``torch.device`` is taken as it is."""
    return resolve_device(name) if isinstance(name, str) else torch.device(name)


def sync(device: torch.device) -> None:
    """Wait for queued device work, so wall time covers it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(fn: Callable[[], T], device: torch.device) -> tuple[float, T]:
    """Seconds ``fn()`` takes including the device work it queues, and what it returned."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds ``fn()`` takes including the device work it queues."""
    return timed_call(fn, device)[0]


def rates(items: int, seconds: Sequence[float]) -> dict[str, Any]:
    """items/s of the fastest and the median repeat, plus the raw times (for the JSON)."""
    if not seconds:
        raise ValueError("rates: no timings")
    return {
        "images_per_s_best": items / min(seconds),
        "images_per_s_median": items / statistics.median(seconds),
        "seconds": [float(s) for s in seconds],
    }


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is not positive."""
    return numerator / denominator if denominator > 0 else float("nan")
