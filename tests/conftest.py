"""Shared test fixtures: a tiny phantom ChestX-ray14 built once per session, and params files.

``phantom_data`` runs the real pipeline code (phantom -> cache -> splits, as the download,
preprocess and split stages do) at toy size: 160 images drawn at 256 px, cached at 64 px. Tests
must treat its folders as read-only; write into their own ``tmp_path``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO_ROOT / "params.yaml"

PHANTOM_IMAGES = 160
PHANTOM_PX = 256
CACHE_PX = 64
VAL_FRACTION = 0.2


def phantom_config(**overrides: Any) -> Any:
    """``PhantomConfig`` of the shipped ``data.phantom`` section with some keys overridden."""
    from cxr_core.data.sources.phantom import PhantomConfig

    shipped = yaml.safe_load(PARAMS_FILE.read_text())["data"]["phantom"]
    return PhantomConfig(**{**shipped, **overrides})


@dataclass(frozen=True)
class PhantomData:
    """Folders of the session's tiny data set, in the pipeline's layout."""

    root: Path
    raw: Path  # data/raw: official layout
    cache: Path  # data/cache: images.npy (N x 64 x 64 uint8) + index.csv
    splits: Path  # data/splits: train.csv, val.csv, test.csv, loc.csv
    image_size: int


@pytest.fixture(scope="session")
def phantom_data(tmp_path_factory: pytest.TempPathFactory) -> PhantomData:
    """A tiny phantom set (160 images; ~90 train / ~20 val / ~50 test) through cache and splits."""
    from cxr_core.data import metadata as md
    from cxr_core.data.cache import load_cache
    from cxr_core.data.preprocess import build_cache
    from cxr_core.data.rawdata import write_manifest
    from cxr_core.data.sources.phantom import LABEL_FILE, generate
    from cxr_core.data.splits import splits_from_raw, write_splits

    root = tmp_path_factory.mktemp("phantom")
    raw, cache, splits_dir = root / "raw", root / "cache", root / "splits"
    generate(phantom_config(images=PHANTOM_IMAGES, image_px=PHANTOM_PX, workers=1), raw, progress=False)
    write_manifest(raw, "synthetic", raw, label_file=LABEL_FILE)  # as the download stage does
    names = md.read_data_entry(raw / md.DATA_ENTRY)["image"].tolist()
    build_cache(
        names,
        [raw / "images" / n for n in names],
        cache,
        size=CACHE_PX,
        workers=1,
        on_error="fail",
        progress=False,
    )
    images, index = load_cache(cache)
    splits = splits_from_raw(
        raw,
        index,
        val_fraction=VAL_FRACTION,
        group_by="patient",
        seed=0,
        image_size=int(images.shape[1]),
        loc_tune_fraction=0.5,
    )
    write_splits(splits, splits_dir)
    return PhantomData(root=root, raw=raw, cache=cache, splits=splits_dir, image_size=CACHE_PX)


@pytest.fixture(scope="module")
def single_thread():
    """torch on one thread for a module's tests, restored afterwards.

    The test machine's 2 cores are shared with other jobs; two OpenMP threads then spin-wait on
    each other and a tiny model's step gets ~40x slower than on one thread.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def set_dotted(mapping: dict[str, Any], dotted: str, value: Any) -> None:
    """``set_dotted(p, "train.epochs", 2)``: the ``dvc exp run -S`` spelling; the key must exist."""
    *parents, last = dotted.split(".")
    node = mapping
    for part in parents:
        node = node[part]
    if last not in node:
        raise KeyError(f"{dotted}: no such key in params.yaml")
    node[last] = value


@pytest.fixture
def write_params(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a copy of the project's params.yaml with dotted-key overrides, written into tmp_path.

    ``write_params({"models": ["test_resnet"], "train.epochs": 2})`` -> path of the new file.
    """
    base = yaml.safe_load(PARAMS_FILE.read_text())

    def make(overrides: dict[str, Any] | None = None, name: str = "params.yaml") -> Path:
        params = copy.deepcopy(base)
        for key, value in (overrides or {}).items():
            set_dotted(params, key, value)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        return path

    return make
