"""Files passed between stages: atomic, byte-reproducible writers and readers that name the problem.

Every file one stage writes and another reads has one type with its reader and writer (a
*contract*, registered with :func:`contract` and listed in ``docs/architecture.md``). The helpers
here are what those types share:

* writes go to a temporary file renamed over the target, so a killed stage never leaves half a
  file;
* the bytes depend only on the content: JSON is indented with sorted-as-given keys, and ``.npz``
  archives carry a fixed member date (numpy's own ``savez`` stamps the wall-clock time, so the
  same arrays would hash differently in ``dvc.lock`` on every run);
* a missing or malformed file raises :class:`~cxr_core.errors.ArtifactError` naming the file, what
  is wrong and the stage that writes it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cxr_core.errors import ArtifactError

#: Member date of every ``.npz`` this project writes (the earliest a zip file can hold).
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Contract:
    """A file passed between stages: where it lives, who writes it, and what it holds."""

    path: str  # as in dvc.yaml, with <model> for a matrix stage
    writer: str  # the stage that writes it
    fields: tuple[str, ...]  # columns, keys or arrays (``*`` marks a family, e.g. ``maps_<method>``)
    type_name: str = ""  # module.Class of the type that reads and writes it

    def run_file(self, folder: str | os.PathLike, model: str, seed: int) -> Path:
        """One run's file under ``folder``, laid out as the registered path's ``<model>/seed<k>...`` tail.

        ``folder`` is what a stage gets on its command line (``--predictions data/predictions``), so
        the ``<model>/seed<k>`` layout is spelled once, in the contract, for every reader.
        """
        if "<model>" not in self.path:
            raise ValueError(f"{self.path}: not a per-run file (no <model> in its path)")
        tail = (
            self.path[self.path.index("<model>") :].replace("<model>", model).replace("<k>", str(int(seed)))
        )
        return Path(folder) / tail.rstrip("/")

    def run_file_under(self, root: str | os.PathLike, model: str, seed: int) -> Path:
        """As :meth:`run_file`, with ``root`` in place of the path's top folder (``metrics/``, ``plots/``)."""
        top, _, rest = self.path.partition("/")
        below = rest[: rest.index("<model>")] if "<model>" in rest else rest
        return self.run_file(Path(root) / below, model, seed)


#: Every registered contract, by path.
CONTRACTS: dict[str, Contract] = {}

T = TypeVar("T")


def contract(path: str, writer: str, fields: Sequence[str]) -> Callable[[type[T]], type[T]]:
    """Class decorator: register the type as the one reader and writer of ``path``."""

    def register(cls: type[T]) -> type[T]:
        CONTRACTS[path] = Contract(path, writer, tuple(fields), f"{cls.__module__}.{cls.__qualname__}")
        cls.CONTRACT = CONTRACTS[path]  # type: ignore[attr-defined]
        return cls

    return register


def missing(path: str | os.PathLike, producer: str) -> ArtifactError:
    return ArtifactError(f"{path}: not found; it is written by {producer} (run `dvc repro`)")


def malformed(path: str | os.PathLike, what: str, producer: str) -> ArtifactError:
    return ArtifactError(f"{path}: {what}; rebuild it with {producer} (`dvc repro`)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path``, renamed over it when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _clean(obj: Any) -> Any:
    """NaN / inf -> None and numpy scalars -> Python, so the JSON is valid and diffable."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str | bytes):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (a killed stage never leaves half a metrics file)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_clean(obj), indent=2) + "\n")


def read_json(path: str | os.PathLike, producer: str, keys: Iterable[str] = ()) -> Any:
    """A JSON file another stage wrote; missing, invalid or lacking a top-level key -> ArtifactError."""
    path = Path(path)
    if not path.is_file():
        raise missing(path, producer)
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise malformed(path, f"not valid JSON ({exc})", producer) from None
    absent = [k for k in keys if not isinstance(doc, dict) or k not in doc]
    if absent:
        raise malformed(path, f"lacks key(s) {absent}", producer)
    return doc


def write_npz(path: str | os.PathLike, arrays: Mapping[str, Any], *, compress: bool = True) -> None:
    """``np.savez_compressed`` with fixed member dates, atomically: same arrays, same bytes."""
    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with atomic_path(path, ".npz") as tmp, zipfile.ZipFile(tmp, "w", compression, allowZip64=True) as zf:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = compression
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)


def read_npz(path: str | os.PathLike, producer: str, keys: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (``allow_pickle=False``); missing file or arrays -> ArtifactError."""
    path = Path(path)
    if not path.is_file():
        raise missing(path, producer)
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise malformed(path, f"not a readable .npz archive ({exc})", producer) from None
    absent = [k for k in keys if k not in arrays]
    if absent:
        raise malformed(path, f"lacks array(s) {absent}", producer)
    return arrays


def read_csv(
    path: str | os.PathLike,
    producer: str,
    columns: Iterable[str] = (),
    dtype: Mapping[str, Any] | None = None,
    sep: str = ",",
) -> Any:
    """A CSV (a TSV with ``sep="\\t"``) another stage wrote, as a DataFrame; missing file or columns -> ArtifactError."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise missing(path, producer)
    try:
        table = pd.read_csv(path, dtype=dtype, sep=sep)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise malformed(path, f"not a readable CSV table ({exc})", producer) from None
    absent = [c for c in columns if c not in table.columns]
    if absent:
        raise malformed(path, f"lacks column(s) {absent}", producer)
    return table


def write_csv(path: str | os.PathLike, table: Any, float_format: str | None = "%.6g") -> None:
    """A DataFrame as CSV without its index, atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format=float_format)
