"""Metadata readers against real rows cut from NIH's files (tests/fixtures/nih).

``tests/fixtures/kaggle/Data_Entry_2017.csv`` is the same rows as Kaggle's ``nih-chest-xrays/data``
writes them: every line of the v2020 cut with a trailing comma (the test below checks exactly that).
"""

import shutil
from pathlib import Path

import numpy as np
import pytest

from cxr_core.data import metadata as md
from cxr_core.labels import LABELS

FIXTURE = Path(__file__).parent / "fixtures" / "nih"
KAGGLE = Path(__file__).parent / "fixtures" / "kaggle"


def test_data_entry_real_rows():
    table = md.read_data_entry(FIXTURE / md.DATA_ENTRY_V2020)
    assert len(table) == 46
    assert list(table.columns[:7]) == ["image", "patient", "follow_up", "age", "sex", "view", "labels"]
    assert list(table.columns[7:]) == list(LABELS)
    row = table.set_index("image").loc["00000001_001.png"]
    assert row["patient"] == 1 and row["sex"] == "M" and row["view"] == "PA"
    assert [lab for lab in LABELS if row[lab]] == ["Cardiomegaly", "Emphysema"]
    assert table["image"].is_monotonic_increasing


def _rewrite(tmp_path: Path, transform) -> Path:
    lines = (FIXTURE / md.DATA_ENTRY_V2020).read_text().splitlines()
    out = tmp_path / md.DATA_ENTRY_V2020
    out.write_text("\n".join(transform(lines)) + "\n")
    return out


def test_patient_sex_and_gender_headers_and_unsorted_rows(tmp_path):
    reference = md.read_data_entry(FIXTURE / md.DATA_ENTRY_V2020)
    path = _rewrite(tmp_path, lambda ls: [ls[0].replace("Patient Gender", "Patient Sex"), *reversed(ls[1:])])
    table = md.read_data_entry(path)
    assert table["image"].tolist() == reference["image"].tolist()
    np.testing.assert_array_equal(md.labels_matrix(table), md.labels_matrix(reference))
    assert (table["sex"] == reference["sex"]).all()


@pytest.mark.parametrize("header_comma", [False, True])
def test_kaggle_trailing_comma(tmp_path, header_comma):
    """Kaggle's 2017 copy ends rows with a comma; without index_col=False pandas shifts every column."""
    reference = md.read_data_entry(FIXTURE / md.DATA_ENTRY_V2020)
    path = _rewrite(tmp_path, lambda ls: [ls[0] + ("," if header_comma else "")] + [r + "," for r in ls[1:]])
    table = md.read_data_entry(path)
    assert table["image"].tolist() == reference["image"].tolist()
    assert (table["patient"] == reference["patient"]).all()
    np.testing.assert_array_equal(md.labels_matrix(table), md.labels_matrix(reference))


def test_bbox_list_real_rows():
    boxes = md.read_bbox_list(FIXTURE / md.BBOX_LIST)
    assert len(boxes) == 18
    assert "Infiltrate" not in set(boxes["label"]) and "Infiltration" in set(boxes["label"])
    first = boxes.iloc[0]
    raw = (FIXTURE / md.BBOX_LIST).read_text().splitlines()[1].split(",")
    assert first["image"] == raw[0]
    assert first[["x", "y", "w", "h"]].tolist() == [float(v) for v in raw[2:6]]
    assert (FIXTURE / md.BBOX_LIST).read_text().splitlines()[0].count(",") == 8  # 9 header fields


def test_lists_without_final_newline():
    text = (FIXTURE / md.TEST_LIST).read_text()
    assert not text.endswith("\n")
    names = md.read_image_list(FIXTURE / md.TEST_LIST)
    assert len(names) == 15 and names[-1] == text.split("\n")[-1]
    assert not set(names) & set(md.read_image_list(FIXTURE / md.TRAIN_VAL_LIST))


def test_html_page_instead_of_csv_is_named(tmp_path):
    path = tmp_path / md.DATA_ENTRY_V2020
    path.write_text("<!DOCTYPE html>\n<html><body>Box: sign in</body></html>")
    with pytest.raises(md.MetadataError, match=r"Data_Entry_2017_v2020\.csv is an HTML page"):
        md.read_data_entry(path)


def test_missing_file_and_bad_label_are_named(tmp_path):
    with pytest.raises(md.MetadataError, match="missing"):
        md.read_image_list(tmp_path / md.TEST_LIST)
    shutil.copy(FIXTURE / md.DATA_ENTRY_V2020, tmp_path / md.DATA_ENTRY_V2020)
    path = _rewrite(tmp_path, lambda ls: [ls[0], ls[1].replace("Cardiomegaly", "Cardiomegally")])
    with pytest.raises(md.MetadataError, match=r"Data_Entry.*Cardiomegally"):
        md.read_data_entry(path)


# ------------------------------------------------------------------ the raw folder's one label table


def test_normalising_nih_v2020_rows_changes_nothing(tmp_path):
    md.normalise_data_entry(FIXTURE / md.DATA_ENTRY_V2020, tmp_path / md.DATA_ENTRY)
    assert (tmp_path / md.DATA_ENTRY).read_bytes() == (FIXTURE / md.DATA_ENTRY_V2020).read_bytes()


def test_kaggle_fixture_is_the_v2020_cut_with_trailing_commas(tmp_path):
    kaggle = (KAGGLE / md.DATA_ENTRY_2017).read_text().splitlines()
    assert kaggle == [line + "," for line in (FIXTURE / md.DATA_ENTRY_V2020).read_text().splitlines()]
    assert "Patient Gender" in kaggle[0]
    md.normalise_data_entry(KAGGLE / md.DATA_ENTRY_2017, tmp_path / md.DATA_ENTRY)
    assert (tmp_path / md.DATA_ENTRY).read_bytes() == (FIXTURE / md.DATA_ENTRY_V2020).read_bytes()
    np.testing.assert_array_equal(
        md.labels_matrix(md.read_data_entry(tmp_path / md.DATA_ENTRY)),
        md.labels_matrix(md.read_data_entry(FIXTURE / md.DATA_ENTRY_V2020)),
    )


def test_sex_header_bom_crlf_and_blank_lines_are_normalised(tmp_path):
    lines = (KAGGLE / md.DATA_ENTRY_2017).read_text().splitlines()
    lines[0] = lines[0].replace("Patient Gender", "Patient Sex")
    messy = tmp_path / md.DATA_ENTRY_2017
    messy.write_bytes(("\ufeff" + "\r\n".join(lines[:5] + [""] + lines[5:]) + "\r\n\r\n").encode())
    md.normalise_data_entry(messy, tmp_path / md.DATA_ENTRY)
    assert (tmp_path / md.DATA_ENTRY).read_bytes() == (FIXTURE / md.DATA_ENTRY_V2020).read_bytes()


def test_normalising_refuses_rows_that_do_not_fit_the_header(tmp_path):
    lines = (KAGGLE / md.DATA_ENTRY_2017).read_text().splitlines()
    lines[3] += "surprise"  # the "empty" trailing column is not empty on line 4
    path = tmp_path / md.DATA_ENTRY_2017
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        md.MetadataError, match=r"Data_Entry_2017\.csv: line 4 has 12 fields for the header's 11"
    ):
        md.normalise_data_entry(path, tmp_path / md.DATA_ENTRY)
    path.write_text("\n".join([lines[0], lines[1][: lines[1].index(",PA,")]]) + "\n")
    with pytest.raises(md.MetadataError, match=r"line 2 has 6 fields"):
        md.normalise_data_entry(path, tmp_path / md.DATA_ENTRY)
    path.write_text("Image Index,Finding Labels\n00000001_000.png,Cardiomegaly\n")
    with pytest.raises(md.MetadataError, match=r"Data_Entry_2017\.csv: missing column\(s\) \['Follow-up #'"):
        md.normalise_data_entry(path, tmp_path / md.DATA_ENTRY)
    path.write_text("<!DOCTYPE html><html>Box: sign in</html>")
    with pytest.raises(md.MetadataError, match=r"Data_Entry_2017\.csv is an HTML page"):
        md.normalise_data_entry(path, tmp_path / md.DATA_ENTRY)
    assert not (tmp_path / md.DATA_ENTRY).exists()
