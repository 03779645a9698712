"""Splits: official test list, stratified patient-disjoint validation, localisation boxes."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_core.data import metadata as md
from cxr_core.data.splits import make_splits, split_stats, stratified_group_split
from cxr_core.labels import LABELS

FIXTURE = Path(__file__).parent / "fixtures" / "nih"
#: A folder with NIH's four real metadata files, gzipped (``Data_Entry_2017_v2020.csv.gz``, ...).
REAL_META = Path(os.environ.get("CXR_NIH_META", "/nonexistent"))


def _fixture_splits(group_by="patient", image_size=224, drop=(), loc_tune_fraction=0.5):
    entry = md.read_data_entry(FIXTURE / md.DATA_ENTRY_V2020)
    kept = [n for n in entry["image"] if n not in drop]
    index = pd.DataFrame({"row": np.arange(len(kept)), "image": kept})
    return make_splits(
        entry,
        index,
        md.read_image_list(FIXTURE / md.TRAIN_VAL_LIST),
        md.read_image_list(FIXTURE / md.TEST_LIST),
        md.read_bbox_list(FIXTURE / md.BBOX_LIST),
        val_fraction=0.2,
        group_by=group_by,
        seed=0,
        image_size=image_size,
        loc_tune_fraction=loc_tune_fraction,
    )


def test_official_test_list_and_patient_disjoint_val():
    splits = _fixture_splits()
    assert sorted(splits.test["image"]) == sorted(md.read_image_list(FIXTURE / md.TEST_LIST))
    train_val = set(md.read_image_list(FIXTURE / md.TRAIN_VAL_LIST))
    assert set(splits.train["image"]) | set(splits.val["image"]) == train_val
    assert not set(splits.train["patient"]) & set(splits.val["patient"])
    assert len(splits.val) > 0
    stats = split_stats(splits)
    assert stats["shared_patients"] == {"train_val": 0, "train_test": 0, "val_test": 0}


def test_rows_point_into_the_cache_index():
    splits = _fixture_splits(drop=("00000001_000.png",))
    entry = md.read_data_entry(FIXTURE / md.DATA_ENTRY_V2020)
    kept = [n for n in entry["image"] if n != "00000001_000.png"]
    for table in (splits.train, splits.val, splits.test, splits.loc):
        assert [kept[r] for r in table["row"]] == table["image"].tolist()
    assert "00000001_000.png" not in set(splits.train["image"]) | set(splits.val["image"])


def test_localisation_boxes_scaled_from_1024():
    splits = _fixture_splits(image_size=224)
    loc = splits.loc
    assert len(loc) == 18 and "Infiltration" in set(loc["label"])
    assert (loc["label_index"] == loc["label"].map(LABELS.index)).all()
    row = loc[loc["image"] == "00013118_008.png"].iloc[0]  # the file's first box: Atelectasis
    np.testing.assert_allclose(
        row[["x", "y", "w", "h"]].to_numpy(float),
        np.array([225.084745762712, 547.019216763771, 86.7796610169491, 79.1864406779661]) * 224 / 1024,
    )
    assert row["x1024"] == 225.084745762712


def test_split_is_deterministic_and_image_mode_differs():
    a, b = _fixture_splits(), _fixture_splits()
    assert a.val["image"].tolist() == b.val["image"].tolist()
    by_image = _fixture_splits(group_by="image")
    assert len(by_image.val) + len(by_image.train) == len(a.val) + len(a.train)


def test_stratified_group_split_keeps_rare_labels_and_groups():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(600), rng.integers(1, 6, size=600))
    labels = (rng.random((len(groups), 3)) < np.array([0.3, 0.05, 0.01])).astype(np.uint8)
    mask = stratified_group_split(groups, labels, 0.1, seed=0)
    assert not set(groups[mask]) & set(groups[~mask])
    assert abs(mask.mean() - 0.1) < 0.02
    for k in range(2):
        assert labels[mask, k].mean() == pytest.approx(labels[:, k].mean(), rel=0.25)
    assert labels[mask, 2].sum() >= 1  # the rarest label is represented in the small fold


@pytest.mark.skipif(
    not REAL_META.is_dir(), reason="set CXR_NIH_META to a folder of the real NIH metadata files (.gz)"
)
def test_real_metadata_split_is_stratified_and_patient_disjoint(tmp_path):
    import gzip

    for name in md.NIH_METADATA_FILES:
        (tmp_path / name).write_bytes(gzip.decompress((REAL_META / f"{name}.gz").read_bytes()))
    entry = md.read_data_entry(tmp_path / md.DATA_ENTRY_V2020)
    index = pd.DataFrame({"row": np.arange(len(entry)), "image": entry["image"]})
    splits = make_splits(
        entry,
        index,
        md.read_image_list(tmp_path / md.TRAIN_VAL_LIST),
        md.read_image_list(tmp_path / md.TEST_LIST),
        md.read_bbox_list(tmp_path / md.BBOX_LIST),
        val_fraction=0.1,
        group_by="patient",
        seed=0,
        image_size=224,
        loc_tune_fraction=0.5,
    )
    stats = split_stats(splits)
    assert stats["test"]["images"] == 25596 and stats["test"]["patients"] == 2797
    assert stats["train"]["images"] + stats["val"]["images"] == 86524
    assert stats["shared_patients"] == {"train_val": 0, "train_test": 0, "val_test": 0}
    assert stats["loc"]["images"] == 880 and stats["loc"]["boxes"] == 984
    assert stats["loc"]["tune"]["boxes"] + stats["loc"]["report"]["boxes"] == 984
    assert stats["loc"]["tune"]["patients"] + stats["loc"]["report"]["patients"] == 726  # disjoint
    for label, n in splits.loc["label"].value_counts().items():  # every finding in both halves, near 50%
        share = (splits.loc[splits.loc["label"] == label]["subset"] == "tune").mean()
        assert abs(share - 0.5) <= 0.1, (label, n, share)
    train_val = pd.concat([splits.train, splits.val])
    for label in LABELS:
        positives = int(train_val[label].sum())
        if positives >= 100:
            rel = splits.val[label].mean() / train_val[label].mean()
            assert abs(rel - 1) <= 0.15, (label, rel)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("patient", "", "'patient' must hold non-negative integers"),
        ("row", "x", "'row' must hold non-negative integers"),
    ],
)
def test_split_table_reader_refuses_bad_ids(phantom_data, tmp_path, column, value, message):
    from cxr_core.data.tables import SplitTable
    from cxr_core.errors import ArtifactError

    table = pd.read_csv(phantom_data.splits / "test.csv", dtype=str)
    table.loc[0, column] = value
    table.to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(ArtifactError, match=f"test.csv: column {message}"):
        SplitTable.read(tmp_path, "test")


@pytest.mark.parametrize("fraction", [0.3, 0.5])
def test_loc_tune_and_report_halves_share_no_patient(fraction):
    loc = _fixture_splits(loc_tune_fraction=fraction).loc
    assert set(loc["subset"]) == {"tune", "report"}
    tune, report = loc[loc["subset"] == "tune"], loc[loc["subset"] == "report"]
    assert not set(tune["patient"]) & set(report["patient"])
