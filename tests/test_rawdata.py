"""Local copies in the official and Kaggle layouts, used in place."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_core.data import metadata as md
from cxr_core.data.rawdata import RawDataError, detect_layout, link_local_copy, locate_images, read_manifest
from cxr_core.errors import ArtifactError

FIXTURE = Path(__file__).parent / "fixtures" / "nih"


def _png(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), value, np.uint8)).save(path)


def _copy(tmp_path: Path, layout: str, skip: int = 0) -> tuple[Path, list[str]]:
    root = tmp_path / f"nih_{layout}"
    for name in md.METADATA_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURE / name, root / name)
    names = md.read_data_entry(FIXTURE / md.DATA_ENTRY)["image"].tolist()
    for i, name in enumerate(names[skip:]):
        folder = root / "images" if layout == "official" else root / f"images_{1 + i % 3:03d}" / "images"
        _png(folder / name)
    return root, names


@pytest.mark.parametrize("layout", ["official", "kaggle"])
def test_local_copy_is_used_in_place(tmp_path, layout):
    root, names = _copy(tmp_path, layout)
    raw = tmp_path / "raw"
    manifest = link_local_copy(root, raw)
    assert manifest.layout == layout and manifest.images == len(names) and manifest.missing == []
    assert Path(manifest.image_root) == root.resolve()
    assert not (raw / "images").exists()  # nothing copied but the metadata
    for name in md.METADATA_FILES:
        assert (raw / name).read_bytes() == (FIXTURE / name).read_bytes()
    paths = locate_images(raw, names)
    assert all(p is not None and p.name == n and root in p.parents for p, n in zip(paths, names, strict=True))
    assert read_manifest(raw) == manifest


def test_missing_images_are_listed_by_name(tmp_path):
    root, names = _copy(tmp_path, "kaggle", skip=3)
    manifest = link_local_copy(root, tmp_path / "raw")
    assert manifest.missing == names[:3]
    assert json.loads((tmp_path / "raw" / "manifest.json").read_text())["missing"] == names[:3]
    assert locate_images(tmp_path / "raw", names[:4])[:3] == [None, None, None]


def test_fingerprint_changes_when_an_image_changes(tmp_path):
    root, names = _copy(tmp_path, "official")
    before = link_local_copy(root, tmp_path / "raw").fingerprint
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(
        root / "images" / names[0]
    )
    assert link_local_copy(root, tmp_path / "raw").fingerprint != before


def test_bad_folders_say_what_is_expected(tmp_path):
    with pytest.raises(RawDataError, match="official layout.*Kaggle layout"):
        detect_layout(tmp_path)
    root, _ = _copy(tmp_path, "official")
    (root / md.TEST_LIST).unlink()
    with pytest.raises(RawDataError, match=r"missing metadata file\(s\) \['test_list.txt'\]"):
        link_local_copy(root, tmp_path / "raw")
    (root / md.TEST_LIST).write_text("<html><body>Sign in to Box</body></html>")
    with pytest.raises(md.MetadataError, match="HTML page"):
        link_local_copy(root, tmp_path / "raw")
    with pytest.raises(ArtifactError, match="manifest.json: not found; it is written by the download stage"):
        read_manifest(tmp_path / "nowhere")
