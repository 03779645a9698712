"""Local copies in the official and Kaggle layouts, used in place, with either NIH label file."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_core.data import metadata as md
from cxr_core.data import sources
from cxr_core.data.rawdata import (
    RawDataError,
    detect_layout,
    link_local_copy,
    locate_images,
    read_manifest,
)
from cxr_core.errors import ArtifactError

FIXTURE = Path(__file__).parent / "fixtures" / "nih"
#: Kaggle's ``Data_Entry_2017.csv`` of the same rows (trailing commas; see tests/test_metadata.py).
KAGGLE = Path(__file__).parent / "fixtures" / "kaggle"
OTHERS = (md.BBOX_LIST, md.TRAIN_VAL_LIST, md.TEST_LIST)
LABEL_SOURCES = {md.DATA_ENTRY_V2020: FIXTURE, md.DATA_ENTRY_2017: KAGGLE}


def _png(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), value, np.uint8)).save(path)


def _copy(
    tmp_path: Path, layout: str, skip: int = 0, labels: tuple[str, ...] = (md.DATA_ENTRY_V2020,)
) -> tuple[Path, list[str]]:
    """A copy in ``layout`` holding the label file(s) ``labels`` and PNGs of all but ``skip`` images."""
    root = tmp_path / f"nih_{layout}"
    root.mkdir(parents=True)
    for name in OTHERS:
        shutil.copy(FIXTURE / name, root / name)
    for name in labels:
        shutil.copy(LABEL_SOURCES[name] / name, root / name)
    names = md.read_data_entry(FIXTURE / md.DATA_ENTRY_V2020)["image"].tolist()
    for i, name in enumerate(names[skip:]):
        folder = root / "images" if layout == "official" else root / f"images_{1 + i % 3:03d}" / "images"
        _png(folder / name)
    return root, names


@pytest.mark.parametrize(
    ("layout", "label_file"),
    [("official", md.DATA_ENTRY_V2020), ("kaggle", md.DATA_ENTRY_2017), ("kaggle", md.DATA_ENTRY_V2020)],
)
def test_local_copy_is_used_in_place(tmp_path, layout, label_file):
    root, names = _copy(tmp_path, layout, labels=(label_file,))
    raw = tmp_path / "raw"
    manifest = link_local_copy(root, raw)
    assert manifest.layout == layout and manifest.images == len(names) and manifest.missing == []
    assert manifest.label_file == label_file
    assert Path(manifest.image_root) == root.resolve()
    assert not (raw / "images").exists()  # nothing copied but the metadata
    assert sorted(p.name for p in raw.iterdir()) == sorted([*md.METADATA_FILES, "manifest.json"])
    # either file comes out as NIH's v2020 cut, byte for byte (Kaggle's trailing commas gone)
    assert (raw / md.DATA_ENTRY).read_bytes() == (FIXTURE / md.DATA_ENTRY_V2020).read_bytes()
    for name in OTHERS:
        assert (raw / name).read_bytes() == (FIXTURE / name).read_bytes()
    paths = locate_images(raw, names)
    assert all(p is not None and p.name == n and root in p.parents for p, n in zip(paths, names, strict=True))
    assert read_manifest(raw) == manifest
    assert json.loads((raw / "manifest.json").read_text())["label_file"] == label_file


def _relabel_first_row(path: Path) -> None:
    """Give 00000001_000.png (Cardiomegaly in both real files) another label: a marker for this copy."""
    lines = path.read_text().splitlines()
    assert lines[1].startswith("00000001_000.png,Cardiomegaly,")
    lines[1] = lines[1].replace(",Cardiomegaly,", ",Hernia,", 1)
    path.write_text("\n".join(lines) + "\n")


def test_v2020_wins_when_a_copy_holds_both(tmp_path, caplog):
    root, _ = _copy(tmp_path, "kaggle", labels=(md.DATA_ENTRY_2017, md.DATA_ENTRY_V2020))
    _relabel_first_row(root / md.DATA_ENTRY_2017)
    with caplog.at_level(logging.INFO, logger="cxr_core.data.rawdata"):
        manifest = link_local_copy(root, tmp_path / "raw")
    assert manifest.label_file == md.DATA_ENTRY_V2020
    table = md.read_data_entry(tmp_path / "raw" / md.DATA_ENTRY).set_index("image")
    assert table.loc["00000001_000.png", "labels"] == "Cardiomegaly"
    message = " ".join(r.getMessage() for r in caplog.records)
    assert f"labels from {md.DATA_ENTRY_V2020}, not {md.DATA_ENTRY_2017}" in message and "2020" in message

    # the same copy without the v2020 file: the 2017 file's (marked) labels are the ones used
    (root / md.DATA_ENTRY_V2020).unlink()
    manifest = link_local_copy(root, tmp_path / "raw")
    assert manifest.label_file == md.DATA_ENTRY_2017
    table = md.read_data_entry(tmp_path / "raw" / md.DATA_ENTRY).set_index("image")
    assert table.loc["00000001_000.png", "labels"] == "Hernia"


def test_a_copy_without_a_label_file_names_both_accepted_names(tmp_path):
    root, _ = _copy(tmp_path, "kaggle", labels=())
    with pytest.raises(RawDataError) as info:
        link_local_copy(root, tmp_path / "raw")
    message = str(info.value)
    assert "missing metadata file(s) ['Data_Entry_2017_v2020.csv or Data_Entry_2017.csv']" in message
    assert str(root.resolve()) in message
    assert not (tmp_path / "raw").exists()  # nothing written


def test_missing_images_are_listed_by_name(tmp_path):
    root, names = _copy(tmp_path, "kaggle", skip=3, labels=(md.DATA_ENTRY_2017,))
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


def test_a_manifest_without_label_file_is_refused(tmp_path):
    """Manifests from before ``label_file`` existed must be rebuilt, not read as "unknown" labels."""
    root, _ = _copy(tmp_path, "official")
    raw = tmp_path / "raw"
    link_local_copy(root, raw)
    doc = json.loads((raw / "manifest.json").read_text())
    del doc["label_file"]
    (raw / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match=r"lacks key\(s\) \['label_file'\].*download stage"):
        read_manifest(raw)


def test_the_nih_source_records_the_v2020_file(tmp_path, monkeypatch):
    """``data.source: nih`` names NIH's current file (the download itself: tests/test_download.py)."""

    def fake_download(raw_dir: Path, **_: object) -> None:
        for name in OTHERS:
            shutil.copy(FIXTURE / name, raw_dir / name)
        md.normalise_data_entry(FIXTURE / md.DATA_ENTRY_V2020, raw_dir / md.DATA_ENTRY)
        _png(raw_dir / "images" / "00000001_000.png")

    monkeypatch.setattr(sources.nih, "download_nih", fake_download)
    nih = {"archives": [1], "bbox_url": "", "timeout_s": 1, "retries": 0, "keep_archives": False}
    manifest = sources.fill_raw({"source": "nih", "nih": nih}, tmp_path / "raw")
    assert manifest.source == "nih" and manifest.label_file == md.DATA_ENTRY_V2020
    assert read_manifest(tmp_path / "raw").label_file == md.DATA_ENTRY_V2020
