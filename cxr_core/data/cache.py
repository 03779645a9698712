"""Decode every chest X-ray once into one uint8 greyscale cache (``images.npy`` + ``index.csv``).

Why: decoding a 1024 x 1024 PNG costs ~6-10 ms per core, and every public CheXNet
re-implementation pays it again each epoch. Here each file is decoded exactly once, in parallel,
straight into a memory-mapped ``N x S x S`` uint8 array that later stages read in microseconds.

Decisions (measured with Pillow 13 on this machine, 1024 -> 224):

* Resize: ``Image.Resampling.BILINEAR`` with ``reducing_gap=2.0``. Pillow's bilinear is
  antialiased when shrinking (it is what ``torchvision.transforms.Resize`` does on PIL images);
  ``reducing_gap=2.0`` first box-reduces by 2, which halves the cost (2.4 ms -> 1.1 ms per image,
  vs ~9 ms to decode the PNG) and stays within 2 grey levels (mean 0.3) of the exact bilinear result.
  Non-square images are stretched to ``S x S`` (NIH images are all square).
* Colour: RGB / RGBA / palette / LA / 1-bit go through Pillow's ``convert("L")`` (ITU-R 601 luma,
  alpha ignored), so an RGBA file with R = G = B gives exactly the grey values.
* 16-bit (``I;16*`` / ``I``): linear ``0..65535 -> 0..255`` (``v * 255 / 65535``, resized in float,
  rounded to nearest; 65535 -> 255, 32896 -> 128). Pillow's own ``convert("L")`` clips instead,
  which would turn most of a 16-bit radiograph white. ``I`` values outside 0..65535 are clipped.
* JPEG: ``Image.draft("L", (S, S))`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale and in grey.
* Truncation: Pillow's ``LOAD_TRUNCATED_IMAGES`` must be False (checked), ``.load()`` runs inside
  the error handling, and a PNG must end with its ``IEND`` chunk (Pillow accepts a PNG cut inside
  its last IDAT checksum or IEND chunk).

Bad input: missing or empty files are found by a cheap ``stat`` pass before any decoding; files
that fail to decode are collected during the pass. ``on_error="fail"`` raises :class:`CacheError`
naming every bad file after the pass and leaves the previous cache's ``images.npy`` / ``index.csv``
untouched (everything is written under temporary names and renamed at the end);
``on_error="skip"`` leaves them out (rows compacted, order kept), lists them in ``report.json``
and logs a warning.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import stat
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from PIL import Image, ImageFile
from tqdm import tqdm

logger = logging.getLogger(__name__)

IMAGES_FILE = "images.npy"
INDEX_FILE = "index.csv"
REPORT_FILE = "report.json"

#: Resampling filter and reducing gap used for every resize (see the module docstring).
RESAMPLE = Image.Resampling.BILINEAR
REDUCING_GAP = 2.0

#: Formats we open; anything else is refused rather than handed to an arbitrary Pillow plugin.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "TIFF", "BMP")

#: How many bad files a :class:`CacheError` message / warning spells out (all go to report.json).
MAX_LISTED = 20

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_PNG_IEND = b"IEND\xaeB`\x82"
# Everything Pillow raises on a broken file (UnidentifiedImageError is an OSError; some plugins
# raise SyntaxError, struct.error or EOFError on garbage headers).
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)


class ImageDecodeError(Exception):
    """One image file could not be read; the message names the file so the user can fix it."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self.path), self.reason))


class CacheError(RuntimeError):
    """The cache could not be built or read; the message says which files and what to do."""


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
# decoding one file


def decode_image(path: Path, size: int) -> np.ndarray:
    """Decode one image file to a ``size x size`` uint8 greyscale array.

    Raises :class:`ImageDecodeError` (naming the file) for a missing, truncated or non-image file.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True somewhere in this process; truncated X-rays "
            "would be cached as half-grey images. Remove that setting before building the cache."
        )
    path = Path(path)
    try:
        with Image.open(path, formats=ALLOWED_FORMATS) as im:
            if im.format == "JPEG":
                im.draft("L", (size, size))
            if im.format == "PNG":
                _check_png_end(path)
            im.load()
            return to_grey(im, size)
    except ImageDecodeError:
        raise
    except FileNotFoundError as exc:
        raise ImageDecodeError(path, "file not found") from exc
    except DECODE_ERRORS as exc:
        raise ImageDecodeError(path, f"cannot decode ({type(exc).__name__}: {exc})") from exc


def _check_png_end(path: Path) -> None:
    """Refuse a PNG without its final IEND chunk: Pillow loads one cut inside its last chunks."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 1024))
        if _PNG_IEND not in fh.read():
            raise ImageDecodeError(path, "truncated PNG (no IEND chunk at the end of the file)")


def to_grey(im: Image.Image, size: int) -> np.ndarray:
    """Greyscale + resize with the module's rules (see the module docstring)."""
    if im.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(im).astype(np.float32)
        np.clip(values, 0.0, 65535.0, out=values)
        values *= np.float32(255.0 / 65535.0)
        grey = Image.fromarray(values, mode="F")
        if grey.size != (size, size):
            grey = grey.resize((size, size), RESAMPLE, reducing_gap=REDUCING_GAP)
        return np.clip(np.rint(np.asarray(grey)), 0, 255).astype(np.uint8)
    if im.mode != "L":
        if im.mode == "F":
            raise ImageDecodeError(im.filename, "unsupported pixel mode F (floating point); save as 8/16-bit")
        im = im.convert("L")
    if im.size != (size, size):
        im = im.resize((size, size), RESAMPLE, reducing_gap=REDUCING_GAP)
    return np.asarray(im, dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# parallel pass


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
# build / load


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


def _tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.tmp")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = _tmp_name(path)
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _describe(bad: Sequence[SkippedImage], total: int) -> str:
    lines = [f"  {s.image} ({s.path}): {s.error}" for s in bad[:MAX_LISTED]]
    if len(bad) > MAX_LISTED:
        lines.append(f"  ... and {len(bad) - MAX_LISTED} more")
    return f"{len(bad)} of {total} image file(s) could not be read:\n" + "\n".join(lines)


def build_cache(
    images: list[str],
    paths: list[Path],
    out_dir: Path,
    *,
    size: int,
    workers: int,
    on_error: Literal["fail", "skip"],
    chunk_size: int = 64,
    progress: bool = True,
) -> CacheReport:
    """Decode every image once into ``out_dir/images.npy`` + ``index.csv`` + ``report.json``.

    ``images[i]`` is the name recorded in ``index.csv`` for the file ``paths[i]``; rows keep the
    input order. See the module docstring for the bad-input rules.
    """
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

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final_images, final_index = out_dir / IMAGES_FILE, out_dir / INDEX_FILE
    report_path = out_dir / REPORT_FILE

    # 1. stat pass: missing / empty files, before spending time on decoding.
    problems: dict[int, str] = {}
    for i, p in enumerate(paths):
        why = _stat_problem(Path(p))
        if why is not None:
            problems[i] = why
    candidates = [i for i in range(len(paths)) if i not in problems]
    if problems:
        first = [f"{images[i]} ({paths[i]}): {problems[i]}" for i in list(problems)[:5]]
        logger.warning(
            "%d of %d image file(s) are missing or empty, e.g. %s%s",
            len(problems),
            len(paths),
            "; ".join(first),
            " -- the run will fail after checking the rest (on_error='fail')" if on_error == "fail" else "",
        )

    # 2. decode pass into a temporary memmap, one row per candidate.
    tmp_images = _tmp_name(final_images)
    tmp_compact = tmp_images.with_name(tmp_images.name + ".compact")
    tmp_index = _tmp_name(final_index)
    try:
        if candidates:
            np.lib.format.open_memmap(
                tmp_images, mode="w+", dtype=np.uint8, shape=(len(candidates), size, size)
            )
            failures = _decode_all(
                [str(paths[i]) for i in candidates], tmp_images, size, workers, chunk_size, progress
            )
        else:
            failures = []
        for row, reason in failures:
            problems[candidates[row]] = reason
        failed_rows = {row for row, _ in failures}
        good_rows = [r for r in range(len(candidates)) if r not in failed_rows]
        skipped = [SkippedImage(images[i], str(paths[i]), problems[i]) for i in sorted(problems)]
        report = CacheReport(size, len(good_rows), skipped, out_dir, 0.0)

        if not good_rows or (skipped and on_error == "fail"):
            _write_json(report_path, report.to_json() | {"status": "failed"})
            state = (
                "the previous images.npy / index.csv are unchanged"
                if final_images.exists()
                else "no cache written"
            )
            fix = "Fix or re-download these files" + (
                ", or use on_error='skip' to leave them out (they are then listed in report.json)."
                if good_rows
                else "."
            )
            raise CacheError(
                f"{_describe(skipped, len(paths))}\n"
                f"{'No image could be decoded; ' if not good_rows else ''}all bad files are listed in {report_path}; "
                f"{state}. {fix}"
            )

        # 3. compact (skip mode, only when a decode failed late), then rename into place.
        if len(good_rows) == len(candidates):
            array_path = tmp_images
        else:
            src = np.load(tmp_images, mmap_mode="r")
            dst = np.lib.format.open_memmap(
                tmp_compact, mode="w+", dtype=np.uint8, shape=(len(good_rows), size, size)
            )
            for a in range(0, len(good_rows), 1024):
                dst[a : a + 1024] = src[good_rows[a : a + 1024]]
            dst.flush()
            del src, dst
            tmp_images.unlink()
            array_path = tmp_compact
        kept = [images[candidates[r]] for r in good_rows]
        pd.DataFrame({"row": np.arange(len(kept)), "image": kept}).to_csv(tmp_index, index=False)
        os.replace(array_path, final_images)
        os.replace(tmp_index, final_index)
        _write_json(report_path, report.to_json())
    finally:
        for tmp in (tmp_images, tmp_compact, tmp_index):
            tmp.unlink(missing_ok=True)

    report.seconds = time.perf_counter() - t0
    if skipped:
        logger.warning(
            "%s\nThey were left out of the cache (on_error='skip') and are listed in %s",
            _describe(skipped, len(paths)),
            report_path,
        )
    logger.info(
        "cached %d images at %dx%d in %.1f s (%.0f images/s) -> %s",
        report.decoded,
        size,
        size,
        report.seconds,
        report.decoded / max(report.seconds, 1e-9),
        final_images,
    )
    return report


def load_cache(cache_dir: Path, expected_size: int | None = None) -> tuple[np.memmap, pd.DataFrame]:
    """Open ``images.npy`` read-only as a memmap plus ``index.csv``, checking they agree."""
    cache_dir = Path(cache_dir)
    images_path, index_path = cache_dir / IMAGES_FILE, cache_dir / INDEX_FILE
    missing = [p.name for p in (images_path, index_path) if not p.is_file()]
    if missing:
        raise CacheError(
            f"{cache_dir}: image cache incomplete ({', '.join(missing)} missing); "
            "build it with the preprocess stage (`dvc repro preprocess`)"
        )
    try:
        images = np.load(images_path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise CacheError(
            f"{images_path}: not a readable .npy file ({exc}); rebuild it with `dvc repro preprocess`"
        ) from exc
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise CacheError(
            f"{images_path}: expected a uint8 N x S x S array, found {images.dtype} {images.shape}; "
            "rebuild it with `dvc repro preprocess`"
        )
    if expected_size is not None and images.shape[1] != expected_size:
        raise CacheError(
            f"{images_path}: images are {images.shape[1]} px but image_size is {expected_size}; "
            "rebuild the cache with `dvc repro preprocess`"
        )
    try:
        index = pd.read_csv(index_path, dtype={"row": "int64", "image": str}, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise CacheError(
            f"{index_path}: cannot read ({exc}); rebuild it with `dvc repro preprocess`"
        ) from exc
    if list(index.columns) != ["row", "image"]:
        raise CacheError(f"{index_path}: expected columns row,image, found {list(index.columns)}")
    if len(index) != images.shape[0] or not np.array_equal(index["row"].to_numpy(), np.arange(len(index))):
        raise CacheError(
            f"{cache_dir}: {INDEX_FILE} ({len(index)} rows) does not match {IMAGES_FILE} "
            f"({images.shape[0]} images); the cache is from different runs: rebuild it with `dvc repro preprocess`"
        )
    return images, index
