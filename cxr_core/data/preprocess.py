"""The preprocess stage: decode every chest X-ray once, in parallel, into the uint8 cache.

Why: decoding a 1024 x 1024 PNG costs ~6-10 ms per core, and every public CheXNet
re-implementation pays it again each epoch. Here each file is decoded exactly once (with the rules
of :mod:`cxr_core.data.decode`), straight into a memory-mapped ``N x S x S`` uint8 array
(:mod:`cxr_core.data.cache`) that later stages read in microseconds.

Bad input: missing or empty files are found by a cheap ``stat`` pass before any decoding; files
that fail to decode are collected during the pass. ``on_error="fail"`` raises :class:`CacheError`
naming every bad file after the pass and leaves the previous cache's ``images.npy`` / ``index.csv``
untouched (everything is written under temporary names and renamed at the end);
``on_error="skip"`` leaves them out (rows compacted, order kept), lists them in ``report.json``
and logs a warning.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from PIL import ImageFile
from tqdm import tqdm

from cxr_core.data.cache import IMAGES_FILE, INDEX_FILE, REPORT_FILE, CacheError
from cxr_core.data.decode import ImageDecodeError, decode_image
from cxr_core.data.metadata import DATA_ENTRY, read_data_entry
from cxr_core.data.pool import chunk_bounds, pool_context
from cxr_core.data.rawdata import locate_images
from cxr_core.files import write_json

logger = logging.getLogger(__name__)

#: How many bad files a :class:`CacheError` message / warning spells out (all go to report.json).
MAX_LISTED = 20
#: Rows copied per step when compacting the array after late decode failures.
COMPACT_ROWS = 1024

OnError = Literal["fail", "skip"]


@dataclass(frozen=True)
class SkippedImage:
    """A bad input file: its image name, the path tried and why it failed."""

    image: str
    path: str
    error: str


@dataclass
class CacheReport:
    """What :func:`build_cache` did; ``to_json()`` is the ``report.json`` contract."""

    image_size: int
    decoded: int
    skipped: list[SkippedImage] = field(default_factory=list)
    out_dir: Path = Path(".")
    seconds: float = 0.0

    @property
    def images_path(self) -> Path:
        return self.out_dir / IMAGES_FILE

    @property
    def index_path(self) -> Path:
        return self.out_dir / INDEX_FILE

    @property
    def report_path(self) -> Path:
        return self.out_dir / REPORT_FILE

    def to_json(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "decoded": self.decoded,
            "skipped": [asdict(s) for s in self.skipped],
        }


# --------------------------------------------------------------------------------------------
# parallel decode pass

_WORKER: dict[str, Any] = {}


def _init_worker(array_path: str, size: int) -> None:
    """Open the output memmap once per worker ("r+"): workers write rows, nothing is pickled back."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    _WORKER["out"] = np.load(array_path, mmap_mode="r+")
    _WORKER["size"] = size


def _decode_chunk(task: tuple[int, list[str]]) -> tuple[int, list[tuple[int, str]]]:
    """Decode ``paths`` into rows ``start...``; return the chunk length and ``(row, reason)`` failures."""
    start, paths = task
    out: np.ndarray = _WORKER["out"]
    size: int = _WORKER["size"]
    failures: list[tuple[int, str]] = []
    for offset, path in enumerate(paths):
        try:
            out[start + offset] = decode_image(Path(path), size)
        except ImageDecodeError as exc:
            out[start + offset] = 0
            failures.append((start + offset, exc.reason))
    return len(paths), failures


def _decode_all(
    paths: Sequence[str], array_path: Path, size: int, workers: int, chunk_size: int, progress: bool
) -> list[tuple[int, str]]:
    """Decode ``paths`` into the existing memmap at ``array_path``; return the failures."""
    tasks = [(a, list(paths[a:b])) for a, b in chunk_bounds(len(paths), workers, chunk_size)]
    failures: list[tuple[int, str]] = []
    if workers <= 1 or len(tasks) <= 1:
        _init_worker(str(array_path), size)
        try:
            with tqdm(total=len(paths), unit="img", desc="decode", disable=not progress) as bar:
                for task in tasks:
                    done, bad = _decode_chunk(task)
                    failures.extend(bad)
                    bar.update(done)
        finally:
            _WORKER.clear()
        return failures
    # Pool before the bar: tqdm may start a monitor thread, and threads do not mix with fork.
    pool = pool_context().Pool(min(workers, len(tasks)), _init_worker, (str(array_path), size))
    with pool, tqdm(total=len(paths), unit="img", desc="decode", disable=not progress) as bar:
        for done, bad in pool.imap_unordered(_decode_chunk, tasks):
            failures.extend(bad)
            bar.update(done)
    return failures


# --------------------------------------------------------------------------------------------
# build steps


def _check_arguments(
    images: Sequence[str], paths: Sequence[Path], size: int, workers: int, chunk_size: int, on_error: str
) -> None:
    if len(images) != len(paths):
        raise ValueError(f"build_cache: {len(images)} image names but {len(paths)} paths")
    if not images:
        raise ValueError("build_cache: no images given")
    if size < 1 or workers < 1 or chunk_size < 1:
        raise ValueError(
            f"build_cache: size, workers and chunk_size must be >= 1 (got {size}, {workers}, {chunk_size})"
        )
    if on_error not in ("fail", "skip"):
        raise ValueError(f"build_cache: on_error must be 'fail' or 'skip', got {on_error!r}")
    names = pd.Series(images)
    if names.duplicated().any():
        raise ValueError(
            f"build_cache: image name(s) listed twice: {sorted(set(names[names.duplicated()]))[:10]}"
        )
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        logger.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES was True; setting it to False to detect truncated files"
        )
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def _stat_problem(path: Path) -> str | None:
    """Cheap pre-check: why ``path`` cannot be an image file, or None."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"cannot stat ({exc.strerror or exc})"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    return None


def _stat_pass(images: Sequence[str], paths: Sequence[Path], on_error: OnError) -> dict[int, str]:
    """``{input index: reason}`` for missing / empty files, before any time goes into decoding."""
    problems = {i: why for i, p in enumerate(paths) if (why := _stat_problem(Path(p))) is not None}
    if problems:
        first = [f"{images[i]} ({paths[i]}): {problems[i]}" for i in list(problems)[:5]]
        logger.warning(
            "%d of %d image file(s) are missing or empty, e.g. %s%s",
            len(problems),
            len(paths),
            "; ".join(first),
            " -- the run will fail after checking the rest (on_error='fail')" if on_error == "fail" else "",
        )
    return problems


def _tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.tmp")


def _describe(bad: Sequence[SkippedImage], total: int) -> str:
    lines = [f"  {s.image} ({s.path}): {s.error}" for s in bad[:MAX_LISTED]]
    if len(bad) > MAX_LISTED:
        lines.append(f"  ... and {len(bad) - MAX_LISTED} more")
    return f"{len(bad)} of {total} image file(s) could not be read:\n" + "\n".join(lines)


def _fail(report: CacheReport, total: int) -> None:
    """Record the failed run in report.json and raise; the previous cache files stay as they were."""
    write_json(report.report_path, report.to_json() | {"status": "failed"})
    state = (
        "the previous images.npy / index.csv are unchanged"
        if report.images_path.exists()
        else "no cache written"
    )
    decoded = report.decoded > 0
    fix = "Fix or re-download these files" + (
        ", or use on_error='skip' to leave them out (they are then listed in report.json)."
        if decoded
        else "."
    )
    raise CacheError(
        f"{_describe(report.skipped, total)}\n"
        f"{'' if decoded else 'No image could be decoded; '}all bad files are listed in {report.report_path}; "
        f"{state}. {fix}"
    )


def _compact(src_path: Path, dst_path: Path, rows: Sequence[int], size: int) -> Path:
    """Copy ``rows`` of the array at ``src_path`` into a new one at ``dst_path``; delete the source."""
    src = np.load(src_path, mmap_mode="r")
    dst = np.lib.format.open_memmap(dst_path, mode="w+", dtype=np.uint8, shape=(len(rows), size, size))
    for a in range(0, len(rows), COMPACT_ROWS):
        dst[a : a + COMPACT_ROWS] = src[rows[a : a + COMPACT_ROWS]]
    dst.flush()
    del src, dst
    src_path.unlink()
    return dst_path


def _commit(report: CacheReport, array_path: Path, kept: Sequence[str], tmp_index: Path) -> None:
    """Write the index, then rename array and index into place and write report.json."""
    pd.DataFrame({"row": np.arange(len(kept)), "image": kept}).to_csv(tmp_index, index=False)
    os.replace(array_path, report.images_path)
    os.replace(tmp_index, report.index_path)
    write_json(report.report_path, report.to_json())


def _log_done(report: CacheReport, total: int) -> None:
    if report.skipped:
        logger.warning(
            "%s\nThey were left out of the cache (on_error='skip') and are listed in %s",
            _describe(report.skipped, total),
            report.report_path,
        )
    logger.info(
        "cached %d images at %dx%d in %.1f s (%.0f images/s) -> %s",
        report.decoded,
        report.image_size,
        report.image_size,
        report.seconds,
        report.decoded / max(report.seconds, 1e-9),
        report.images_path,
    )


# --------------------------------------------------------------------------------------------
# build


def build_cache(
    images: list[str],
    paths: list[Path],
    out_dir: Path,
    *,
    size: int,
    workers: int,
    on_error: OnError,
    chunk_size: int = 64,
    progress: bool = True,
) -> CacheReport:
    """Decode every image once into ``out_dir/images.npy`` + ``index.csv`` + ``report.json``.

    ``images[i]`` is the name recorded in ``index.csv`` for the file ``paths[i]``; rows keep the
    input order. See the module docstring for the bad-input rules.
    """
    _check_arguments(images, paths, size, workers, chunk_size, on_error)
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    problems = _stat_pass(images, paths, on_error)
    candidates = [i for i in range(len(paths)) if i not in problems]

    # Decode into a temporary memmap, one row per candidate; rename into place only at the end.
    tmp_images = _tmp_name(out_dir / IMAGES_FILE)
    tmp_compact = tmp_images.with_name(tmp_images.name + ".compact")
    tmp_index = _tmp_name(out_dir / INDEX_FILE)
    try:
        failures: list[tuple[int, str]] = []
        if candidates:
            np.lib.format.open_memmap(
                tmp_images, mode="w+", dtype=np.uint8, shape=(len(candidates), size, size)
            )
            todo = [str(paths[i]) for i in candidates]
            failures = _decode_all(todo, tmp_images, size, workers, chunk_size, progress)
        problems.update((candidates[row], reason) for row, reason in failures)
        failed_rows = {row for row, _ in failures}
        good_rows = [r for r in range(len(candidates)) if r not in failed_rows]
        skipped = [SkippedImage(images[i], str(paths[i]), problems[i]) for i in sorted(problems)]
        report = CacheReport(size, len(good_rows), skipped, out_dir)
        if not good_rows or (skipped and on_error == "fail"):
            _fail(report, len(paths))
        # skip mode with late decode failures: compact the rows that did decode
        array_path = tmp_images if not failed_rows else _compact(tmp_images, tmp_compact, good_rows, size)
        _commit(report, array_path, [images[candidates[r]] for r in good_rows], tmp_index)
    finally:
        for tmp in (tmp_images, tmp_compact, tmp_index):
            tmp.unlink(missing_ok=True)
    report.seconds = time.perf_counter() - t0
    _log_done(report, len(paths))
    return report


def build_cache_from_raw(
    raw_dir: Path, out_dir: Path, *, size: int, workers: int, on_error: OnError
) -> CacheReport:
    """:func:`build_cache` over every image ``Data_Entry`` names, found in the raw folder's layout.

    An image the manifest could not locate keeps its official path, so the stat pass names it.
    """
    names = read_data_entry(Path(raw_dir) / DATA_ENTRY)["image"].tolist()
    found = locate_images(raw_dir, names)
    paths = [p if p is not None else Path(raw_dir) / "images" / n for n, p in zip(names, found, strict=True)]
    return build_cache(names, paths, out_dir, size=size, workers=workers, on_error=on_error)
