"""download -> preprocess -> split stages on a folder of real NIH metadata (official or Kaggle layout)."""

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from conftest import set_dotted
from PIL import Image

from cxr_core.data import metadata as md
from stages import download, preprocess, split

ROOT = Path(__file__).parents[1]
#: A folder with NIH's four real metadata files, gzipped (``Data_Entry_2017_v2020.csv.gz``, ...).
REAL_META = Path(os.environ.get("CXR_NIH_META", "/nonexistent"))


def _params(tmp_path: Path, **overrides) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in overrides.items():
        set_dotted(params, dotted, value)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _run(command, *args: str) -> None:
    result = CliRunner().invoke(command, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output


def _stages(tmp_path: Path, params: Path) -> Path:
    raw, cache, splits = tmp_path / "raw", tmp_path / "cache", tmp_path / "splits"
    _run(download.main, "--params", str(params), "--out", str(raw))
    _run(preprocess.main, "--params", str(params), "--raw", str(raw), "--out", str(cache))
    _run(
        split.main,
        "--params",
        str(params),
        "--raw",
        str(raw),
        "--cache",
        str(cache),
        "--out",
        str(splits),
        "--metrics",
        str(tmp_path / "split.json"),
    )
    return tmp_path


@pytest.mark.skipif(
    not REAL_META.is_dir(), reason="set CXR_NIH_META to a folder of the real NIH metadata files (.gz)"
)
@pytest.mark.parametrize("layout", ["official", "kaggle"])
def test_real_metadata_with_the_880_box_images(tmp_path, layout):
    """Real metadata files + PNGs for the 880 box images only: 880 images and 984 boxes in the loc set."""
    root = tmp_path / "nih"
    root.mkdir()
    for name in md.METADATA_FILES:
        (root / name).write_bytes(gzip.decompress((REAL_META / f"{name}.gz").read_bytes()))
    box_images = sorted(set(md.read_bbox_list(root / md.BBOX_LIST)["image"]))
    pixels = Image.fromarray(np.full((32, 32), 90, np.uint8))
    for i, name in enumerate(box_images):
        folder = root / "images" if layout == "official" else root / f"images_{1 + i % 12:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        pixels.save(folder / name)
    params = _params(
        tmp_path, **{"data.source": str(root), "preprocess.on_error": "skip", "preprocess.image_size": 32}
    )
    _stages(tmp_path, params)

    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert manifest["layout"] == layout and manifest["images"] == 880
    assert len(manifest["missing"]) == 112120 - 880
    report = json.loads((tmp_path / "cache" / "report.json").read_text())
    assert report["decoded"] == 880 and len(report["skipped"]) == 112120 - 880
    loc = pd.read_csv(tmp_path / "splits" / "loc.csv")
    assert loc["image"].nunique() == 880 and len(loc) == 984
    stats = json.loads((tmp_path / "split.json").read_text())
    assert stats["test"]["images"] == 880 and stats["train"]["images"] == 0


def test_phantom_through_the_data_stages(tmp_path):
    params = _params(
        tmp_path, **{"data.phantom.images": 60, "data.phantom.image_px": 256, "preprocess.image_size": 64}
    )
    _stages(tmp_path, params)
    images = np.load(tmp_path / "cache" / "images.npy", mmap_mode="r")
    assert images.shape == (60, 64, 64) and images.dtype == np.uint8
    stats = json.loads((tmp_path / "split.json").read_text())
    assert stats["train"]["images"] + stats["val"]["images"] + stats["test"]["images"] == 60
    assert stats["shared_patients"] == {"train_val": 0, "train_test": 0, "val_test": 0}
    loc = pd.read_csv(tmp_path / "splits" / "loc.csv")
    assert len(loc) > 0 and (loc[["x", "y"]].to_numpy() >= 0).all()
    assert ((loc["x"] + loc["w"]) <= 64 + 1e-6).all() and ((loc["y"] + loc["h"]) <= 64 + 1e-6).all()


def test_preprocess_names_a_missing_image(tmp_path):
    params = _params(
        tmp_path, **{"data.phantom.images": 40, "data.phantom.image_px": 128, "preprocess.image_size": 32}
    )
    raw = tmp_path / "raw"
    _run(download.main, "--params", str(params), "--out", str(raw))
    victim = sorted((raw / "images").iterdir())[5]
    victim.unlink()
    result = CliRunner().invoke(
        preprocess.main, ["--params", str(params), "--raw", str(raw), "--out", str(tmp_path / "c")]
    )
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # a message, not a traceback
    assert victim.name in result.output
