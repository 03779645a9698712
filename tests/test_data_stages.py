"""download -> preprocess -> split stages on local copies with real NIH metadata (official or Kaggle layout)."""

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from conftest import set_dotted
from PIL import Image

from cxr_core.data import metadata as md
from cxr_core.data.sources import phantom
from stages import download, preprocess, split

ROOT = Path(__file__).parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "nih"
#: Kaggle's ``Data_Entry_2017.csv`` of the fixture's rows (trailing commas; see tests/test_metadata.py).
KAGGLE = ROOT / "tests" / "fixtures" / "kaggle"
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


def _kaggle_copy(root: Path, names: list[str], image_px: int = 16) -> None:
    """PNGs of ``names`` spread over Kaggle's ``images_NNN/images/`` folders."""
    pixels = Image.fromarray(np.full((image_px, image_px), 90, np.uint8))
    for i, name in enumerate(names):
        folder = root / f"images_{1 + i % 12:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        pixels.save(folder / name)


def test_a_kaggle_copy_with_kaggle_labels_through_the_data_stages(tmp_path):
    """Kaggle's layout and its ``Data_Entry_2017.csv`` (trailing commas): every image, box and list row used."""
    root = tmp_path / "nih-chest-xrays"
    root.mkdir()
    for name in (md.BBOX_LIST, md.TRAIN_VAL_LIST, md.TEST_LIST):
        (root / name).write_bytes((FIXTURE / name).read_bytes())
    (root / md.DATA_ENTRY_2017).write_bytes((KAGGLE / md.DATA_ENTRY_2017).read_bytes())
    names = md.read_data_entry(FIXTURE / md.DATA_ENTRY_V2020)["image"].tolist()
    _kaggle_copy(root, names)
    params = _params(tmp_path, **{"data.source": str(root), "preprocess.image_size": 32})
    _stages(tmp_path, params)

    raw = tmp_path / "raw"
    manifest = json.loads((raw / "manifest.json").read_text())
    assert manifest["label_file"] == md.DATA_ENTRY_2017 and manifest["layout"] == "kaggle"
    assert manifest["images"] == len(names) == 46 and manifest["missing"] == []
    assert (raw / md.DATA_ENTRY).read_bytes() == (FIXTURE / md.DATA_ENTRY_V2020).read_bytes()
    assert not (raw / md.DATA_ENTRY_2017).exists()
    assert json.loads((tmp_path / "cache" / "report.json").read_text())["decoded"] == 46
    test_names = md.read_image_list(FIXTURE / md.TEST_LIST)
    assert sorted(pd.read_csv(tmp_path / "splits" / "test.csv")["image"]) == sorted(test_names)
    stats = json.loads((tmp_path / "split.json").read_text())
    assert stats["test"]["images"] == 15 and stats["train"]["images"] + stats["val"]["images"] == 31
    assert stats["shared_patients"] == {"train_val": 0, "train_test": 0, "val_test": 0}
    assert len(pd.read_csv(tmp_path / "splits" / "loc.csv")) == 18


def test_a_copy_without_labels_is_one_clear_message(tmp_path):
    root = tmp_path / "copy"
    root.mkdir()
    for name in (md.BBOX_LIST, md.TRAIN_VAL_LIST, md.TEST_LIST):
        (root / name).write_bytes((FIXTURE / name).read_bytes())
    _kaggle_copy(root, ["00000001_000.png"])
    params = _params(tmp_path, **{"data.source": str(root)})
    result = CliRunner().invoke(download.main, ["--params", str(params), "--out", str(tmp_path / "raw")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"['{md.DATA_ENTRY_V2020} or {md.DATA_ENTRY_2017}']" in result.output


@pytest.mark.skipif(
    not REAL_META.is_dir(), reason="set CXR_NIH_META to a folder of the real NIH metadata files (.gz)"
)
@pytest.mark.parametrize(
    ("layout", "label_file"), [("official", md.DATA_ENTRY_V2020), ("kaggle", md.DATA_ENTRY_2017)]
)
def test_real_metadata_with_the_880_box_images(tmp_path, layout, label_file):
    """Real metadata files + PNGs for the 880 box images only: 880 images and 984 boxes in the loc set.

    The Kaggle case writes the real v2020 table as Kaggle writes its file (a comma ending every line).
    """
    root = tmp_path / "nih"
    root.mkdir()
    for name in md.NIH_METADATA_FILES:
        (root / name).write_bytes(gzip.decompress((REAL_META / f"{name}.gz").read_bytes()))
    if label_file == md.DATA_ENTRY_2017:
        v2020 = (root / md.DATA_ENTRY_V2020).read_text().splitlines()
        (root / md.DATA_ENTRY_2017).write_text("".join(line + ",\n" for line in v2020))
        (root / md.DATA_ENTRY_V2020).unlink()
    box_images = sorted(set(md.read_bbox_list(root / md.BBOX_LIST)["image"]))
    if layout == "official":
        pixels = Image.fromarray(np.full((32, 32), 90, np.uint8))
        (root / "images").mkdir()
        for name in box_images:
            pixels.save(root / "images" / name)
    else:
        _kaggle_copy(root, box_images, image_px=32)
    params = _params(
        tmp_path, **{"data.source": str(root), "preprocess.on_error": "skip", "preprocess.image_size": 32}
    )
    _stages(tmp_path, params)

    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert manifest["layout"] == layout and manifest["images"] == 880
    assert manifest["label_file"] == label_file
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
    stale = tmp_path / "raw" / md.DATA_ENTRY_V2020  # as older versions left it: NIH's name, phantom labels
    stale.parent.mkdir()
    stale.write_text("Image Index,Finding Labels,Follow-up #,Patient ID\n00000001_000.png,Hernia,0,1\n")
    _stages(tmp_path, params)
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert manifest["source"] == "synthetic" and manifest["label_file"] == phantom.LABEL_FILE
    assert not stale.exists()  # gone: the nih source would have taken it for NIH's file
    images = np.load(tmp_path / "cache" / "images.npy", mmap_mode="r")
    assert images.shape == (60, 64, 64) and images.dtype == np.uint8
    stats = json.loads((tmp_path / "split.json").read_text())
    assert stats["train"]["images"] + stats["val"]["images"] + stats["test"]["images"] == 60
    assert stats["shared_patients"] == {"train_val": 0, "train_test": 0, "val_test": 0}
    loc = pd.read_csv(tmp_path / "splits" / "loc.csv")
    assert len(loc) > 0 and (loc[["x", "y"]].to_numpy() >= 0).all()
    assert ((loc["x"] + loc["w"]) <= 64 + 1e-6).all() and ((loc["y"] + loc["h"]) <= 64 + 1e-6).all()


def _preprocess(params: Path, raw: Path, out: Path):
    return CliRunner().invoke(
        preprocess.main, ["--params", str(params), "--raw", str(raw), "--out", str(out)]
    )


SMALL = {"data.phantom.images": 40, "data.phantom.image_px": 128, "preprocess.image_size": 32}


def test_preprocess_redraws_the_phantom_where_a_workspace_lacks_it(tmp_path):
    """A DVC temporary workspace or a fresh clone has the manifest but not the (untracked) PNGs."""
    params = _params(tmp_path, **SMALL)
    raw = tmp_path / "raw"
    _run(download.main, "--params", str(params), "--out", str(raw))
    originals = {p.name: p.read_bytes() for p in (raw / "images").iterdir()}
    _run(preprocess.main, "--params", str(params), "--raw", str(raw), "--out", str(tmp_path / "before"))

    names = sorted(originals)
    (raw / "images" / names[5]).unlink()  # one lost
    (raw / "images" / names[6]).write_bytes(originals[names[7]])  # one replaced by another's bytes
    assert _preprocess(params, raw, tmp_path / "one").exit_code == 0
    assert {p.name: p.read_bytes() for p in (raw / "images").iterdir()} == originals

    for path in (raw / "images").iterdir():  # all gone, as in `dvc exp run --queue`
        path.unlink()
    (raw / "images").rmdir()
    assert _preprocess(params, raw, tmp_path / "all").exit_code == 0
    assert {p.name: p.read_bytes() for p in (raw / "images").iterdir()} == originals
    for out in ("one", "all"):
        assert (tmp_path / out / "images.npy").read_bytes() == (
            tmp_path / "before" / "images.npy"
        ).read_bytes()


def test_preprocess_refuses_a_phantom_other_params_describe(tmp_path):
    params = _params(tmp_path, **SMALL)
    raw = tmp_path / "raw"
    _run(download.main, "--params", str(params), "--out", str(raw))
    shutil.rmtree(raw / "images")
    (tmp_path / "other").mkdir()
    other = _params(tmp_path / "other", **SMALL, **{"data.phantom.seed": 1})
    result = _preprocess(other, raw, tmp_path / "c")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # a message, not a traceback
    assert "does not match" in result.output and "dvc repro download" in result.output


def _local_copy(tmp_path: Path) -> tuple[Path, Path]:
    """A phantom written as a user's own copy, linked in place by ``data.source: <folder>``."""
    copy = tmp_path / "copy"
    params = _params(tmp_path, **SMALL, **{"data.source": str(copy)})
    phantom.generate(
        phantom.PhantomConfig(**yaml.safe_load(params.read_text())["data"]["phantom"]), copy, progress=False
    )
    (copy / md.DATA_ENTRY).rename(copy / md.DATA_ENTRY_V2020)  # as NIH names it
    _run(download.main, "--params", str(params), "--out", str(tmp_path / "raw"))
    return copy, params


def test_preprocess_names_a_missing_image_of_a_local_copy(tmp_path):
    copy, params = _local_copy(tmp_path)
    victim = sorted((copy / "images").iterdir())[5]
    victim.unlink()  # a local copy is never redrawn: the missing file is named
    result = _preprocess(params, tmp_path / "raw", tmp_path / "c")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # a message, not a traceback
    assert victim.name in result.output


def test_preprocess_names_a_local_copy_that_is_gone(tmp_path):
    copy, params = _local_copy(tmp_path)
    shutil.rmtree(copy / "images")
    result = _preprocess(params, tmp_path / "raw", tmp_path / "c")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert str(copy) in result.output and "no images there" in result.output
