"""External readers (CheXpert, VinDr-CXR, PadChest) on real metadata rows, and DICOM decoding.

The label files are real rows of the metadata torchxrayvision ships (read as data, never imported),
written in each data set's exact layout with tiny synthetic images at the exact paths; expectations
come from pandas on the same rows.
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_core.data.decode import ImageDecodeError
from cxr_core.data.external import chexpert, padchest, vindr
from cxr_core.data.external.base import BOX_COLUMNS, ExternalDataError
from cxr_core.data.external.dicom import decode_dicom, image_size, is_dicom
from cxr_core.labels import LABEL_INDEX, LABELS

_SPEC = importlib.util.find_spec("torchxrayvision")
TXRV_DATA = Path(_SPEC.submodule_search_locations[0]) / "data" if _SPEC else None
needs_txrv = pytest.mark.skipif(
    TXRV_DATA is None,
    reason="torchxrayvision is not installed (pip install torchxrayvision): it ships the real metadata",
)


def _real(name: str) -> pd.DataFrame:
    return pd.read_csv(TXRV_DATA / name, dtype=str, keep_default_na=False)


def _write_dicom(
    path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", syntax=None, **attrs
) -> None:
    """An uncompressed 16-bit DICOM (or an encapsulated one with garbage data for ``syntax``)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    if syntax is not None:
        ds.PixelData = encapsulate([b"\x00" * 64])
    else:
        ds.PixelData = pixels.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# --------------------------------------------------------------------------------------------
# CheXpert

CX_CFG = {"csv": "train.csv", "uncertain": "missing", "frontal_only": True}
CX_VALUES = {"1.0": 1.0, "0.0": 0.0, "": np.nan}


@pytest.fixture(scope="module")
def chexpert_copy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """~230 real train.csv rows in ``CheXpert-v1.0-small/`` with a tiny JPEG per Path."""
    real = _real("chexpert_train.csv.gz")
    picks = [
        real.index[:200],
        real.index[real["Pleural Effusion"] == "-1.0"][:8],
        real.index[real["Lung Lesion"] == "1.0"][:8],
        real.index[real["Lung Lesion"] == "-1.0"][:8],
        real.index[real["Frontal/Lateral"] == "Lateral"][:8],
    ]
    rows = real.loc[sorted(set(np.concatenate([p.to_numpy() for p in picks])))].reset_index(drop=True)
    root = tmp_path_factory.mktemp("chexpert")
    (root / "CheXpert-v1.0-small").mkdir()
    rows.to_csv(root / "CheXpert-v1.0-small" / "train.csv", index=False)
    jpeg = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    for rel in rows["Path"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        jpeg.save(root / rel, format="JPEG")
    return root, rows


@needs_txrv
def test_chexpert_reads_the_real_rows_frontal_only(chexpert_copy) -> None:
    root, rows = chexpert_copy
    table = chexpert.read(root, CX_CFG)
    frontal = rows[rows["Frontal/Lateral"] == "Frontal"]
    assert 0 < len(frontal) < len(rows)
    assert table.images == frontal["Path"].tolist()
    assert table.counts == {"lateral_skipped": int((rows["Frontal/Lateral"] == "Lateral").sum())}
    assert table.patients == [p.split("/")[2] for p in frontal["Path"]]
    assert all(p.startswith("patient") for p in table.patients)
    assert table.files == [root / p for p in frontal["Path"]] and all(f.is_file() for f in table.files)
    assert table.label_file == "CheXpert-v1.0-small/train.csv"
    assert table.class_names == [
        "Atelectasis",
        "Cardiomegaly",
        "Effusion",
        "Lung Lesion",
        "Pneumonia",
        "Pneumothorax",
        "Consolidation",
        "Edema",
    ]
    # the same folder given directly, all views kept
    every = chexpert.read(root / "CheXpert-v1.0-small", {**CX_CFG, "frontal_only": False})
    assert every.images == rows["Path"].tolist() and every.counts == {"lateral_skipped": 0}


@needs_txrv
@pytest.mark.parametrize(("policy", "uncertain"), [("missing", np.nan), ("positive", 1.0), ("negative", 0.0)])
def test_chexpert_uncertain_policies_and_blanks(chexpert_copy, policy: str, uncertain: float) -> None:
    root, rows = chexpert_copy
    table = chexpert.read(root, {**CX_CFG, "uncertain": policy})
    frontal = rows[rows["Frontal/Lateral"] == "Frontal"].reset_index(drop=True)
    for k, cls in enumerate(table.classes):
        expected = frontal[cls.source].map({**CX_VALUES, "-1.0": uncertain}).to_numpy(dtype=np.float64)
        np.testing.assert_array_equal(table.labels[:, k], expected.astype(np.float32), err_msg=cls.name)
    effusion = table.class_names.index("Effusion")
    by_value = {v: frontal.index[frontal["Pleural Effusion"] == v] for v in ("-1.0", "", "1.0", "0.0")}
    assert all(len(i) for i in by_value.values())
    got = table.labels[:, effusion]
    assert np.isnan(got[by_value[""]]).all()  # blank is missing whatever the policy
    assert (got[by_value["1.0"]] == 1).all() and (got[by_value["0.0"]] == 0).all()
    np.testing.assert_array_equal(got[by_value["-1.0"]], uncertain)


@needs_txrv
def test_chexpert_lung_lesion_is_the_mass_nodule_proxy(chexpert_copy) -> None:
    root, rows = chexpert_copy
    table = chexpert.read(root, CX_CFG)
    lesion = chexpert.CLASSES[table.class_names.index("Lung Lesion")]
    assert (lesion.kind, lesion.nih, lesion.source) == ("proxy", ("Mass", "Nodule"), "Lung Lesion")
    positive = rows.loc[(rows["Lung Lesion"] == "1.0") & (rows["Frontal/Lateral"] == "Frontal"), "Path"]
    assert len(positive)
    k = table.class_names.index("Lung Lesion")
    assert all(table.labels[table.images.index(p), k] == 1 for p in positive)
    absent = {"Infiltration", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"}
    assert absent.isdisjoint(n for c in chexpert.CLASSES for n in c.nih)
    firsts = [LABEL_INDEX[c.nih[0]] for c in chexpert.CLASSES]
    assert firsts == sorted(firsts)


@needs_txrv
def test_chexpert_bad_inputs_name_the_file(chexpert_copy, tmp_path: Path) -> None:
    root, rows = chexpert_copy
    folder = root / "CheXpert-v1.0-small"
    with pytest.raises(ExternalDataError, match=r"valid\.csv: label file not found"):
        chexpert.read(root, {**CX_CFG, "csv": "valid.csv"})
    rows.drop(columns=["Pleural Effusion"]).to_csv(folder / "no_column.csv", index=False)
    with pytest.raises(ExternalDataError, match=r"no_column\.csv: missing columns \['Pleural Effusion'\]"):
        chexpert.read(root, {**CX_CFG, "csv": "no_column.csv"})
    bad = rows.copy()
    bad.loc[5, "Edema"] = "2.0"
    bad.to_csv(folder / "bad_value.csv", index=False)
    with pytest.raises(ExternalDataError, match=r"bad_value\.csv line 7: column 'Edema' has '2.0'"):
        chexpert.read(root, {**CX_CFG, "csv": "bad_value.csv", "frontal_only": False})
    gone = rows.copy()
    gone.loc[0, "Path"] = gone.loc[0, "Path"].replace("view1", "view9")
    gone.to_csv(folder / "gone.csv", index=False)
    with pytest.raises(
        ExternalDataError, match=r"1 of \d+ images named in CheXpert-v1.0-small/gone\.csv"
    ) as err:
        chexpert.read(root, {**CX_CFG, "csv": "gone.csv", "frontal_only": False})
    assert "view9" in str(err.value)
    with pytest.raises(ExternalDataError, match=r"no CheXpert-v1\.0\* folder"):
        chexpert.read(tmp_path, CX_CFG)
    with pytest.raises(ExternalDataError, match="uncertain must be one of"):
        chexpert.read(root, {**CX_CFG, "uncertain": "ignore"})


# --------------------------------------------------------------------------------------------
# VinDr-CXR

KAGGLE_COLUMNS = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
#: Columns of PhysioNet's image_labels_test.csv (Nguyen et al. 2022, Table 2 order).
PHYSIONET_COLUMNS = [
    "image_id",
    "rad_ID",
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Clavicle fracture",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Enlarged PA",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Lung cavity",
    "Lung cyst",
    "Mediastinal shift",
    "Nodule/Mass",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "Rib fracture",
    "Other lesion",
    "COPD",
    "Lung tumor",
    "Pneumonia",
    "Tuberculosis",
    "Other diseases",
    "No finding",
]


def _votes(rows: pd.DataFrame) -> pd.Series:
    """Distinct readers per (image, class) among finding rows: the independent count."""
    return rows[rows["class_name"] != "No finding"].groupby(["image_id", "class_name"])["rad_id"].nunique()


@pytest.fixture(scope="module")
def vindr_rows() -> pd.DataFrame:
    """Every real row of 48 images: 12 each whose strongest finding has 1, 2, 3 votes, 12 normal."""
    real = _real("vinbigdata-train.csv.gz")
    best = _votes(real).groupby(level=0).max()
    normal = sorted(set(real["image_id"]) - set(best.index))[:12]
    chosen = [*(sorted(best.index[best == n])[:12] for n in (1, 2, 3)), normal]
    ids = set(np.concatenate(chosen))
    return real[real["image_id"].isin(ids)].reset_index(drop=True)


def _dicoms(folder: Path, ids) -> None:
    for n, image in enumerate(ids):
        pixels = (np.arange(16).reshape(4, 4) * 200 + n).astype(np.uint16)
        _write_dicom(folder / f"{image}.dicom", pixels, "MONOCHROME1" if n == 0 else "MONOCHROME2")


@pytest.fixture(scope="module")
def kaggle_copy(tmp_path_factory: pytest.TempPathFactory, vindr_rows: pd.DataFrame) -> Path:
    root = tmp_path_factory.mktemp("vinbigdata")
    vindr_rows[KAGGLE_COLUMNS].to_csv(root / "train.csv", index=False)
    _dicoms(root / "train", pd.unique(vindr_rows["image_id"]))
    return root


@needs_txrv
@pytest.mark.parametrize("min_readers", [1, 2, 3])
def test_vindr_kaggle_votes_match_an_independent_count(kaggle_copy, vindr_rows, min_readers: int) -> None:
    table = vindr.read(kaggle_copy, {"min_readers": min_readers})
    assert table.images == list(pd.unique(vindr_rows["image_id"])) and len(table.images) == 48
    assert table.patients == table.images  # no patient ids: each image its own group
    assert table.files == [kaggle_copy / "train" / f"{i}.dicom" for i in table.images]
    assert table.class_names == [
        "Atelectasis",
        "Cardiomegaly",
        "Effusion",
        "Infiltration",
        "Nodule/Mass",
        "Pneumothorax",
        "Consolidation",
        "Fibrosis",
        "Pleural_Thickening",
    ]
    assert table.label_file == "train.csv"
    votes = _votes(vindr_rows)
    for k, cls in enumerate(table.classes):
        expected = [float(votes.get((i, cls.source), 0) >= min_readers) for i in table.images]
        np.testing.assert_array_equal(table.labels[:, k], expected, err_msg=cls.name)
    assert np.isfinite(table.labels).all()  # every reader read every image: unmarked = negative
    assert table.labels.sum() > 0


@needs_txrv
def test_vindr_kaggle_boxes_keep_every_reader_of_positive_findings(kaggle_copy, vindr_rows) -> None:
    table = vindr.read(kaggle_copy, {"min_readers": 2})
    boxes = table.boxes
    assert tuple(boxes.columns) == BOX_COLUMNS
    votes = _votes(vindr_rows)
    effusion = vindr_rows[vindr_rows["class_name"] == "Pleural effusion"]
    strong = effusion[[votes[(i, "Pleural effusion")] >= 2 for i in effusion["image_id"]]]
    weak = effusion[[votes[(i, "Pleural effusion")] == 1 for i in effusion["image_id"]]]
    assert len(strong) and len(weak)
    row = strong.iloc[0]
    hits = boxes[(boxes["image"] == row["image_id"]) & (boxes["label"] == "Effusion")]
    corners = [float(row[c]) for c in ("x_min", "y_min", "x_max", "y_max")]
    assert any(np.allclose(h, corners) for h in hits[["x0", "y0", "x1", "y1"]].to_numpy())
    assert len(hits) == len(strong[strong["image_id"] == row["image_id"]])  # every reader's box
    effusion_boxes = boxes.loc[boxes["label"] == "Effusion", "image"]
    assert not effusion_boxes.isin(set(weak["image_id"]) - set(strong["image_id"])).any()
    # one box per row of a mapped finding that passed the vote; No finding / unmapped rows give none
    mapped = {c.source: c.name for c in table.classes}
    expected = vindr_rows[
        [
            name in mapped and votes.get((i, name), 0) >= 2
            for i, name in zip(vindr_rows["image_id"], vindr_rows["class_name"], strict=True)
        ]
    ]
    assert len(boxes) == len(expected)
    normal = set(vindr_rows["image_id"]) - set(
        vindr_rows.loc[vindr_rows["class_name"] != "No finding", "image_id"]
    )
    assert normal and not boxes["image"].isin(normal).any()
    assert set(boxes["label"]) <= set(table.class_names)


@pytest.fixture(scope="module")
def physionet_copy(
    tmp_path_factory: pytest.TempPathFactory, vindr_rows: pd.DataFrame
) -> tuple[Path, pd.DataFrame]:
    """PhysioNet layout built from the real rows (the test files are not public without a DUA):
    boxes = the real rows, image labels = any reader's mark, plus Edema / Emphysema / Pneumonia."""
    root = tmp_path_factory.mktemp("vindr_physionet")
    (root / "annotations").mkdir()
    vindr_rows[["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]].to_csv(
        root / "annotations" / "annotations_test.csv", index=False
    )
    ids = list(pd.unique(vindr_rows["image_id"]))
    labels = pd.DataFrame(0, index=range(len(ids)), columns=PHYSIONET_COLUMNS)
    labels["image_id"], labels["rad_ID"] = ids, "R_consensus"
    for (image, name), _ in _votes(vindr_rows).items():
        labels.loc[ids.index(image), name] = 1
    labels.loc[0, ["Edema", "Pneumonia"]] = 1
    labels.loc[1, "Emphysema"] = 1
    # the consensus overrules one reader's effusion box: that box must go
    first = vindr_rows.loc[vindr_rows["class_name"] == "Pleural effusion", "image_id"].iloc[0]
    labels.loc[ids.index(first), "Pleural effusion"] = 0
    labels.to_csv(root / "annotations" / "image_labels_test.csv", index=False)
    _dicoms(root / "test", ids)
    return root, labels


@needs_txrv
def test_vindr_physionet_reads_consensus_labels_and_boxes(physionet_copy, vindr_rows) -> None:
    root, labels = physionet_copy
    assert vindr.detect_layout(root) == "physionet"
    table = vindr.read(root, {"min_readers": 2})  # min_readers does not apply to the consensus
    assert table.classes == vindr.CLASSES and len(table.classes) == 12
    assert {"Edema", "Emphysema", "Pneumonia"} <= set(table.class_names) - set(vindr.KAGGLE_CLASSES)
    assert table.images == labels["image_id"].tolist()
    assert table.files[0] == root / "test" / f"{table.images[0]}.dicom"
    assert table.label_file == "annotations/image_labels_test.csv"
    for k, cls in enumerate(table.classes):
        np.testing.assert_array_equal(
            table.labels[:, k], labels[cls.source].to_numpy(float), err_msg=cls.name
        )
    assert table.labels[0, table.class_names.index("Pneumonia")] == 1
    # boxes: every row of a mapped finding positive in the consensus; the overruled one is dropped
    positive = {
        (i, c.name)
        for k, c in enumerate(table.classes)
        for i in np.array(table.images)[table.labels[:, k] == 1]
    }
    source = {c.source: c.name for c in table.classes}
    kept = [
        (i, source.get(n)) in positive
        for i, n in zip(vindr_rows["image_id"], vindr_rows["class_name"], strict=True)
    ]
    assert len(table.boxes) == sum(kept)
    first = labels.loc[labels["Pleural effusion"] == 0, "image_id"]
    dropped = vindr_rows[
        (vindr_rows["class_name"] == "Pleural effusion") & vindr_rows["image_id"].isin(first)
    ]
    assert len(dropped) and table.counts["boxes_finding_not_positive"] == len(dropped)
    assert table.counts["boxes_unknown_image"] == 0


@needs_txrv
def test_vindr_column_names_are_matched_loosely_and_missing_ones_listed(
    physionet_copy, tmp_path: Path
) -> None:
    root, labels = physionet_copy
    (tmp_path / "annotations").mkdir()
    (tmp_path / "test").symlink_to(root / "test")
    (tmp_path / "annotations" / "annotations_test.csv").write_bytes(
        (root / "annotations" / "annotations_test.csv").read_bytes()
    )
    loose = labels.rename(columns={"Pleural effusion": " pleural  EFFUSION ", "Nodule/Mass": "nodule/mass"})
    loose.to_csv(tmp_path / "annotations" / "image_labels_test.csv", index=False)
    table = vindr.read(tmp_path, {"min_readers": 1})
    np.testing.assert_array_equal(table.labels[:, 2], labels["Pleural effusion"].to_numpy(float))
    labels.drop(columns=["Edema", "Pulmonary fibrosis"]).to_csv(
        tmp_path / "annotations" / "image_labels_test.csv", index=False
    )
    with pytest.raises(
        ExternalDataError, match=r"image_labels_test\.csv: missing columns \['Edema', 'Pulmonary"
    ):
        vindr.read(tmp_path, {"min_readers": 1})


@needs_txrv
def test_vindr_bad_inputs_name_the_file(kaggle_copy, vindr_rows, tmp_path: Path) -> None:
    with pytest.raises(
        ExternalDataError, match=r"neither annotations/image_labels_test\.csv .* nor train\.csv"
    ):
        vindr.read(tmp_path, {"min_readers": 1})
    (tmp_path / "train").symlink_to(kaggle_copy / "train")
    vindr_rows[KAGGLE_COLUMNS].drop(columns=["rad_id"]).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(ExternalDataError, match=r"train\.csv: missing columns \['rad_id'\]"):
        vindr.read(tmp_path, {"min_readers": 1})
    extra = vindr_rows[KAGGLE_COLUMNS].copy()
    extra.loc[0, "image_id"] = "not_there"
    extra.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(
        ExternalDataError, match=r"1 of 49 images named in train\.csv are missing.*not_there\.dicom"
    ):
        vindr.read(tmp_path, {"min_readers": 1})
    with pytest.raises(ExternalDataError, match="min_readers=4 but no image"):
        vindr.read(kaggle_copy, {"min_readers": 4})
    broken = vindr_rows[KAGGLE_COLUMNS].copy()
    row = int(np.flatnonzero(broken["class_name"] == "Cardiomegaly")[0])
    broken.loc[row, "x_max"] = ""
    broken.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(ExternalDataError, match=rf"train\.csv line {row + 2}: x_max is ''"):
        vindr.read(tmp_path, {"min_readers": 1})


@needs_txrv
def test_vindr_dicoms_of_the_copy_decode_and_a_corrupt_one_is_named(kaggle_copy, tmp_path: Path) -> None:
    table = vindr.read(kaggle_copy, {"min_readers": 1})
    inverted, plain = (decode_dicom(f, 4)[0] for f in table.files[:2])  # the first is MONOCHROME1
    np.testing.assert_array_equal(inverted, 255 - plain)
    assert image_size(table.files[0]) == (4, 4)
    bad = tmp_path / "corrupt.dicom"
    bad.write_bytes(table.files[0].read_bytes()[:200])
    with pytest.raises(ImageDecodeError, match="corrupt.dicom") as err:
        decode_dicom(bad, 4)
    assert err.value.path == bad


# --------------------------------------------------------------------------------------------
# PadChest

PC_CFG = {"projections": ["PA", "AP", "AP_horizontal"]}
KEPT = {"PA", "AP", "AP_HORIZONTAL"}


def _pc_labels(text: str) -> set[str] | None:
    """Independent parse of one Labels cell (None when it says nothing about findings)."""
    try:
        names = {s.strip().lower() for s in ast.literal_eval(text)} - {""}
    except (ValueError, SyntaxError):
        return None
    if not names or "exclude" in names or names == {"unchanged"}:
        return None
    return names


def _png16(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)).save(path)


@pytest.fixture(scope="module")
def padchest_rows() -> pd.DataFrame:
    real = _real("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz")
    labels = real["Labels"]
    picks = [
        real.index[:250],
        real.index[labels == "nan"][:4],  # how the real file writes its 103 unlabelled rows
        real.index[labels == "['']"][:4],
        real.index[labels == "['exclude']"][:3],
        real.index[labels == "['unchanged']"][:3],
        *(
            real.index[labels.str.contains(s, regex=False)][:3]
            for s in ("hiatal hernia", "' pleural effusion'")
        ),
        *(real.index[labels.str.contains(s, regex=False)][:3] for s in ("pseudonodule", "hydropneumothorax")),
        real.index[labels.str.contains("subcutaneous emphysema") & ~labels.str.contains("'emphysema'")][:3],
        real.index[real["Projection"].isin(["COSTAL", "EXCLUDE", "UNK"])][:3],
        real.index[
            real["ImageID"].isin(sorted(padchest.KNOWN_BROKEN)[:1] + sorted(padchest.KNOWN_MISSING)[:1])
        ],
    ]
    rows = real.loc[sorted(set(np.concatenate([p.to_numpy() for p in picks])))].reset_index(drop=True)
    return rows.rename(columns={"Unnamed: 0": ""})


@pytest.fixture(scope="module")
def padchest_copy(tmp_path_factory: pytest.TempPathFactory, padchest_rows: pd.DataFrame) -> Path:
    root = tmp_path_factory.mktemp("padchest")
    padchest_rows.to_csv(root / padchest.CSV_NAME, index=False)
    for folder, image in zip(padchest_rows["ImageDir"], padchest_rows["ImageID"], strict=True):
        if image not in padchest.KNOWN_MISSING:  # as in the release
            _png16(root / folder / image)
    return root


@needs_txrv
def test_padchest_reads_the_real_rows(padchest_copy, padchest_rows) -> None:
    table = padchest.read(padchest_copy, PC_CFG)
    rows = padchest_rows
    in_view = rows["Projection"].str.upper().isin(KEPT)
    parsed = rows["Labels"].map(_pc_labels)
    known = rows["ImageID"].isin(padchest.KNOWN_MISSING | padchest.KNOWN_BROKEN)
    kept = rows[in_view & parsed.notna() & ~known]
    assert table.images == [f"{d}/{i}" for d, i in zip(kept["ImageDir"], kept["ImageID"], strict=True)]
    assert table.patients == kept["PatientID"].tolist()
    assert table.files == [
        padchest_copy / d / i for d, i in zip(kept["ImageDir"], kept["ImageID"], strict=True)
    ]
    assert table.label_file == padchest.CSV_NAME
    c = table.counts
    assert c["projection_skipped"] == int((~in_view).sum()) > 0
    assert c["labels_missing"] == int((in_view & (rows["Labels"] == "nan")).sum()) > 0
    assert c["labels_empty"] == int((in_view & (rows["Labels"] == "['']")).sum()) > 0
    assert c["labels_exclude"] > 0 and c["labels_unchanged_only"] > 0 and c["labels_unparseable"] == 0
    assert c["known_missing_skipped"] + c["known_broken_skipped"] == int(
        (in_view & parsed.notna() & known).sum()
    )
    assert len(table.images) + sum(c.values()) == len(rows)
    assert table.class_names == list(LABELS) and all(k.kind == "direct" for k in table.classes)
    assert not np.isnan(table.labels).any()  # a finding the report does not name is negative
    for k, cls in enumerate(table.classes):
        sources = set(padchest.SOURCES[cls.name])
        expected = [float(bool(parsed[i] & sources)) for i in kept.index]
        np.testing.assert_array_equal(table.labels[:, k], expected, err_msg=cls.name)


@needs_txrv
def test_padchest_label_strings_on_specific_rows(padchest_copy, padchest_rows) -> None:
    table = padchest.read(padchest_copy, PC_CFG)
    index = {image.split("/")[1]: n for n, image in enumerate(table.images)}

    def row_labels(contains: str, absent: str = "\x00") -> dict[str, float]:
        hit = padchest_rows[
            padchest_rows["Labels"].str.contains(contains, regex=False)
            & ~padchest_rows["Labels"].str.contains(absent, regex=False)
            & padchest_rows["ImageID"].isin(index)
        ]
        assert len(hit), contains
        return dict(zip(table.class_names, table.labels[index[hit["ImageID"].iloc[0]]], strict=True))

    assert row_labels("' pleural effusion'")["Effusion"] == 1  # odd whitespace inside the list
    assert row_labels("hiatal hernia")["Hernia"] == 1
    assert row_labels("pseudonodule", absent="'nodule'")["Nodule"] == 0
    assert row_labels("subcutaneous emphysema", absent="'emphysema'")["Emphysema"] == 0
    both = row_labels("hydropneumothorax")
    assert both["Pneumothorax"] == 1 and both["Effusion"] == 1
    assert sum(row_labels("['normal']").values()) == 0


@needs_txrv
def test_padchest_gz_and_bad_inputs(padchest_copy, padchest_rows, tmp_path: Path) -> None:
    small = padchest_rows[padchest_rows["Projection"] == "PA"].head(5)
    gz = tmp_path / "gz"
    gz.mkdir()
    with gzip.open(gz / (padchest.CSV_NAME + ".gz"), "wt", newline="") as fh:
        small.to_csv(fh, index=False)
    for folder, image in zip(small["ImageDir"], small["ImageID"], strict=True):
        _png16(gz / folder / image)
    assert len(padchest.read(gz, PC_CFG).images) == len(small["Labels"].map(_pc_labels).dropna())

    with pytest.raises(ExternalDataError, match=r"label file PADCHEST_.*\.csv \(or \.csv\.gz\) not found"):
        padchest.read(tmp_path, PC_CFG)
    bad = tmp_path / "bad"
    bad.mkdir()
    padchest_rows.drop(columns=["Labels"]).to_csv(bad / padchest.CSV_NAME, index=False)
    with pytest.raises(ExternalDataError, match=r"\.csv: missing columns \['Labels'\]"):
        padchest.read(bad, PC_CFG)
    padchest_rows.assign(Labels="not a list").to_csv(bad / padchest.CSV_NAME, index=False)
    with pytest.raises(ExternalDataError, match="no usable rows"):
        padchest.read(bad, PC_CFG)
    (bad / padchest.CSV_NAME).unlink()
    small.to_csv(bad / (padchest.CSV_NAME + ".gz"), index=False, compression="gzip")
    with pytest.raises(ExternalDataError, match=r"5 of 5 images named in PADCHEST_.*\.csv\.gz are missing"):
        padchest.read(bad, PC_CFG)
    with pytest.raises(ExternalDataError, match="projections must be a non-empty list"):
        padchest.read(padchest_copy, {"projections": "PA"})


def test_padchest_label_parsing() -> None:
    assert padchest.parse_labels("['pleural effusion', ' Cardiomegaly ', '']") == [
        "pleural effusion",
        "cardiomegaly",
    ]
    assert padchest.parse_labels("['COPD signs',  'air  trapping']") == ["copd signs", "air trapping"]
    assert padchest.parse_labels("[]") == []
    for text in ("nan", "['a'", "pleural effusion", "[1, 2]", "{'a': 1}"):
        assert padchest.parse_labels(text) is padchest._UNPARSEABLE, text


def test_label_maps_follow_nih_order() -> None:
    for module in (chexpert, vindr, padchest):
        firsts = [LABEL_INDEX[c.nih[0]] for c in module.CLASSES]
        assert firsts == sorted(firsts) and len(set(c.name for c in module.CLASSES)) == len(module.CLASSES)
        assert module.NAME and module.LAYOUT_HINT
    assert "Hernia" not in {n for c in vindr.CLASSES for n in c.nih}
    assert [c.name for c in vindr.CLASSES if c.kind == "proxy"] == ["Nodule/Mass"]


# --------------------------------------------------------------------------------------------
# DICOM decoding


def test_decode_dicom_known_answer_and_size(tmp_path: Path) -> None:
    ramp = (np.arange(16).reshape(4, 4) * 100).astype(np.uint16)  # 0 .. 1500
    _write_dicom(tmp_path / "ramp.dcm", ramp)
    grey, size = decode_dicom(tmp_path / "ramp.dcm", 4)
    assert size == (4, 4) and grey.dtype == np.uint8
    np.testing.assert_array_equal(grey, np.rint(ramp / 1500 * 255).astype(np.uint8))  # per-image min-max
    _write_dicom(tmp_path / "mono1.dcm", ramp, "MONOCHROME1")
    np.testing.assert_array_equal(decode_dicom(tmp_path / "mono1.dcm", 4)[0], 255 - grey)

    wide = np.tile(np.arange(5, dtype=np.uint16) * 1000, (3, 1))  # 3 rows x 5 columns
    _write_dicom(tmp_path / "wide.dicom", wide)
    grey, size = decode_dicom(tmp_path / "wide.dicom", 8)
    assert size == (5, 3) and grey.shape == (8, 8)
    assert grey[:, 0].max() == 0 and grey[:, -1].min() == 255 and (np.diff(grey[0].astype(int)) >= 0).all()
    assert image_size(tmp_path / "wide.dicom") == (5, 3)


def test_decode_dicom_applies_the_window(tmp_path: Path) -> None:
    values = (np.arange(16).reshape(4, 4) * 250).astype(np.uint16)  # 0 .. 3750 (12 bits)
    center, width = 1000.0, 1000.0
    _write_dicom(tmp_path / "w.dcm", values, WindowCenter=center, WindowWidth=width)
    # DICOM PS3.3 C.11.2.1.2.1 linear window onto 0 .. 2**12 - 1, then min-max to 0 .. 255
    x = values.astype(np.float64)
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 4095
    y = np.where(
        x <= center - 0.5 - (width - 1) / 2, 0, np.where(x > center - 0.5 + (width - 1) / 2, 4095, y)
    )
    expected = np.rint((y - y.min()) / (y.max() - y.min()) * 255)
    np.testing.assert_array_equal(decode_dicom(tmp_path / "w.dcm", 4)[0], expected)


def test_decode_dicom_errors_name_the_file(tmp_path: Path) -> None:
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLossless

    (tmp_path / "junk.dcm").write_bytes(b"not a dicom" * 30)
    with pytest.raises(ImageDecodeError, match=r"junk\.dcm: not a readable DICOM"):
        decode_dicom(tmp_path / "junk.dcm", 4)
    with pytest.raises(ImageDecodeError, match="file not found"):
        decode_dicom(tmp_path / "absent.dcm", 4)
    ramp = np.arange(16, dtype=np.uint16).reshape(4, 4)
    _write_dicom(tmp_path / "ok.dcm", ramp)
    (tmp_path / "short.dcm").write_bytes((tmp_path / "ok.dcm").read_bytes()[:-8])
    with pytest.raises(ImageDecodeError, match=r"short\.dcm: cannot decode pixel data"):
        decode_dicom(tmp_path / "short.dcm", 4)
    if not get_decoder(JPEGLossless).is_available:
        _write_dicom(tmp_path / "jpeg.dcm", ramp, syntax=JPEGLossless)
        with pytest.raises(ImageDecodeError, match=r"jpeg\.dcm: compressed DICOM .*pylibjpeg.*gdcm"):
            decode_dicom(tmp_path / "jpeg.dcm", 4)


def test_image_size_reads_headers_only(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((3, 7), np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(np.zeros((5, 2), np.uint16)).save(tmp_path / "b.png")
    assert image_size(tmp_path / "a.jpg") == (7, 3) and image_size(tmp_path / "b.png") == (2, 5)
    _write_dicom(tmp_path / "noext", np.zeros((6, 9), np.uint16))
    assert is_dicom(tmp_path / "noext") and not is_dicom(tmp_path / "a.jpg")
    assert image_size(tmp_path / "noext") == (9, 6)
    with pytest.raises(ImageDecodeError, match="file not found"):
        image_size(tmp_path / "absent.png")


@pytest.mark.parametrize(
    ("photometric", "attrs"),
    [
        ("MONOCHROME2", {}),
        ("MONOCHROME1", {}),
        ("MONOCHROME2", {"WindowCenter": 1500, "WindowWidth": 2000}),
        (
            "MONOCHROME1",
            {"RescaleSlope": 2, "RescaleIntercept": -100, "WindowCenter": 3000, "WindowWidth": 4000},
        ),
    ],
)
def test_decode_dicom_gives_the_pixels_cxr_predict_reads(
    tmp_path: Path, photometric: str, attrs: dict
) -> None:
    """One rule for DICOM: the external cache and ``cxr predict`` feed the model the same pixels."""
    from cxr_core.app.imaging import read_image

    pixels = (np.add.outer(np.arange(40), np.arange(52)) * 37 % 4096).astype(np.uint16)
    path = tmp_path / "x.dcm"
    _write_dicom(path, pixels, photometric, **attrs)
    grey, size = decode_dicom(path, 32)
    assert size == (52, 40)
    np.testing.assert_array_equal(grey, read_image(path, 32))
