"""Google's adjudicated labels: the real file (from torchxrayvision), the phantom stand-in, the scores."""

from __future__ import annotations

import gzip
import importlib.util
import re
import sys

import numpy as np
import pandas as pd
import pytest
from oracles import explicit_resamples
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from cxr_core.audit.subgroups import adjudicated_scores
from cxr_core.data import adjudicated as adj
from cxr_core.data.adjudicated import (
    ADJUDICATED_MAP,
    COLUMNS,
    NOT_SCORED,
    AdjudicatedError,
    adjudicated_path,
    read_adjudicated,
    write_phantom_adjudicated,
)
from cxr_core.labels import LABEL_INDEX, LABELS, decode

HAS_TXRV = importlib.util.find_spec("torchxrayvision") is not None
needs_txrv = pytest.mark.skipif(
    not HAS_TXRV,
    reason="torchxrayvision is not installed (pip install torchxrayvision): it ships the real file",
)

# --------------------------------------------------------------------------------------------
# the real file


@needs_txrv
def test_the_real_file_reads_without_importing_torchxrayvision() -> None:
    before = "torchxrayvision" in sys.modules
    table = read_adjudicated(None)
    assert ("torchxrayvision" in sys.modules) == before  # only the data file was touched
    assert list(table.columns) == [
        "image",
        "set",
        "fracture",
        "pneumothorax",
        "airspace_opacity",
        "nodule_or_mass",
    ]
    # Majkowska et al. 2020: 1,962 test images (and 2,414 validation images), 4 findings
    assert len(table) == 4376
    assert table["set"].value_counts().to_dict() == {"val": 2414, "test": 1962}
    assert table["image"].is_unique
    findings = table[["fracture", "pneumothorax", "airspace_opacity", "nodule_or_mass"]]
    assert findings.notna().all().all() and set(np.unique(findings.to_numpy())) == {0.0, 1.0}
    assert findings.sum().astype(int).to_dict() == {
        "fracture": 186,
        "pneumothorax": 238,
        "airspace_opacity": 2166,
        "nodule_or_mass": 605,
    }
    test = table[table["set"] == "test"]
    assert test[["pneumothorax", "nodule_or_mass"]].sum().astype(int).tolist() == [195, 295]


@needs_txrv
def test_the_real_file_is_nih_rows_plus_four_findings() -> None:
    """YES / NO parsing by hand, the header, patients disjoint between the sets, NIH labels kept."""
    path = adjudicated_path(None)
    with gzip.open(path, "rt", newline="") as fh:
        text = fh.read()
    assert text.split("\r\n")[0] == ",".join(COLUMNS)
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    table = read_adjudicated(path)
    assert (table["image"] == raw["Image Index"]).all()
    for column, name in adj.FINDING_COLUMNS.items():
        assert ((raw[column] == "YES") == (table[name] == 1)).all()
    test_patients = set(raw.loc[raw["Set Id"] == "test", "Patient ID"])
    assert len(test_patients) == 860 and not test_patients & set(
        raw.loc[raw["Set Id"] == "val", "Patient ID"]
    )
    # the NIH labels in the file, mapped: NIH positives the radiologists confirmed (a known-noisy source)
    onehot = np.stack([np.isin(LABELS, r.split("|")) for r in raw["Finding Labels"]]).astype(int)
    test = (table["set"] == "test").to_numpy()
    nih_ptx = onehot[test, LABEL_INDEX["Pneumothorax"]]
    confirmed = table["pneumothorax"].to_numpy()[test][nih_ptx == 1]
    assert (nih_ptx.sum(), confirmed.sum()) == (200, 97)  # radiologists confirm 97 of NIH's 200


def test_the_map_is_documented() -> None:
    assert {k: v.classes for k, v in ADJUDICATED_MAP.items()} == {
        "pneumothorax": ("Pneumothorax",),
        "nodule_or_mass": ("Nodule", "Mass"),
        "airspace_opacity": ("Consolidation", "Infiltration", "Pneumonia"),
    }
    assert [k for k, v in ADJUDICATED_MAP.items() if v.proxy] == ["airspace_opacity"]
    assert list(NOT_SCORED) == ["fracture"]
    assert all(c in LABEL_INDEX for v in ADJUDICATED_MAP.values() for c in v.classes)


# --------------------------------------------------------------------------------------------
# reader errors and the package lookup


def write_table(path, rows: list[list[str]], header: tuple[str, ...] = COLUMNS) -> None:
    path.write_text("\r\n".join([",".join(header), *(",".join(r) for r in rows)]))


def row(image: str, findings=("NO", "NO", "NO", "NO"), set_id: str = "test") -> list[str]:
    patient = str(int(image[:8]))
    return [
        image,
        "No Finding",
        "0",
        patient,
        "50",
        "M",
        "PA",
        "2500",
        "2048",
        "0.168",
        "0.168",
        *findings,
        set_id,
    ]


def test_reader_parses_yes_no_and_refuses_bad_files(tmp_path) -> None:
    good = tmp_path / "good.csv"
    write_table(
        good, [row("00000001_000.png", ("YES", " no ", "maybe", "")), row("00000002_000.png", set_id="val")]
    )
    table = read_adjudicated(good)
    assert table.loc[0, ["fracture", "pneumothorax"]].tolist() == [1.0, 0.0]
    assert table.loc[0, ["airspace_opacity", "nodule_or_mass"]].isna().all()
    assert table["set"].tolist() == ["test", "val"]

    cases = {
        re.escape("missing column(s) ['Airspace opacity']"): lambda p: write_table(
            p,
            [row("00000001_000.png")[:13] + ["NO", "test"]],
            tuple(c for c in COLUMNS if c != "Airspace opacity"),
        ),
        "column 'Set Id' holds \\['train'\\]": lambda p: write_table(
            p, [row("00000001_000.png", set_id="train")]
        ),
        "column 'Image Index' lists image\\(s\\) twice": lambda p: write_table(
            p, [row("00000001_000.png"), row("00000001_000.png")]
        ),
        "not a readable CSV": lambda p: p.write_bytes(b""),
    }
    for message, make in cases.items():
        bad = tmp_path / "bad.csv"
        make(bad)
        with pytest.raises(AdjudicatedError, match=message) as info:
            read_adjudicated(bad)
        assert str(bad) in str(info.value)
    with pytest.raises(AdjudicatedError, match="not found"):
        read_adjudicated(tmp_path / "absent.csv.gz")


def test_without_torchxrayvision_the_error_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setattr(adj.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AdjudicatedError, match="pip install torchxrayvision.*clinical.adjudicated"):
        read_adjudicated(None)


# --------------------------------------------------------------------------------------------
# the phantom stand-in


def data_entry(n_patients: int = 30, seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """NIH-format label table (strings) and a patient-disjoint test list."""
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(1, n_patients + 1):
        for k in range(int(rng.integers(1, 4))):
            labels = (rng.random(len(LABELS)) < 0.15).astype(int)
            rows.append(
                [f"{patient:08d}_{k:03d}.png", decode(labels), str(k), str(patient), "40", "F", "AP"]
                + ["2500", "2048", "0.168", "0.168"]
            )
    table = pd.DataFrame(rows, columns=list(adj.DATA_ENTRY_COLUMNS))
    test = [name for name in table["Image Index"] if int(name[:8]) % 2 == 0]
    return table.sample(frac=1, random_state=1), test  # unsorted, as NIH's file


def test_phantom_stand_in_round_trips_in_the_real_format(tmp_path) -> None:
    table, test = data_entry()
    out = tmp_path / "google2019_nih-chest-xray-labels.csv.gz"
    written = write_phantom_adjudicated(out, table, test, flip_rate=0.0, seed=3, fraction=0.5)
    raw = gzip.decompress(out.read_bytes())
    assert raw.split(b"\r\n")[0].decode() == ",".join(COLUMNS) and not raw.endswith(b"\n")
    if HAS_TXRV:  # the real file's header, byte for byte
        with gzip.open(adjudicated_path(None), "rb") as fh:
            assert raw.split(b"\r\n")[0] == fh.read().split(b"\r\n")[0]
    back = read_adjudicated(out)
    assert back["image"].tolist() == written["Image Index"].tolist()
    assert back["set"].tolist() == written["Set Id"].tolist()
    assert back["set"].tolist() == sorted(back["set"])  # test rows first, as the real file
    assert set(back.loc[back["set"] == "test", "image"]) <= set(test)
    assert not set(back.loc[back["set"] == "val", "image"]) & set(test)
    n_test_patients = len({n[:8] for n in test})
    assert back.loc[back["set"] == "test", "image"].str[:8].nunique() == round(0.5 * n_test_patients)
    # flip_rate 0: exactly the phantom's own labels through the map
    truth = table.set_index("Image Index").loc[back["image"], "Finding Labels"].str.split("|")
    for name, mapping in ADJUDICATED_MAP.items():
        want = truth.map(lambda cell, m=mapping: int(any(c in cell for c in m.classes))).to_numpy()
        np.testing.assert_array_equal(back[name].to_numpy(), want)
    assert (back["fracture"] == 0).all()
    # bytes depend only on the inputs (gzip without a time stamp)
    again = tmp_path / "again.csv.gz"
    write_phantom_adjudicated(again, table, test, flip_rate=0.0, seed=3, fraction=0.5)
    assert again.read_bytes() == out.read_bytes()


def test_phantom_flips_make_label_noise(tmp_path) -> None:
    table, test = data_entry(n_patients=400)
    clean = read_adjudicated(_write(tmp_path / "clean.csv", table, test, flip_rate=0.0)).set_index("image")
    noisy = read_adjudicated(_write(tmp_path / "noisy.csv", table, test, flip_rate=0.1)).set_index("image")
    assert (clean.index == noisy.index).all()
    flipped = (
        clean[list(adj.FINDING_COLUMNS.values())] != noisy[list(adj.FINDING_COLUMNS.values())]
    ).to_numpy()
    assert 0.07 < flipped.mean() < 0.13
    with pytest.raises(ValueError, match="flip_rate"):
        write_phantom_adjudicated(tmp_path / "x.csv", table, test, flip_rate=0.5, seed=0, fraction=0.5)
    with pytest.raises(ValueError, match="not in data_entry"):
        write_phantom_adjudicated(tmp_path / "x.csv", table, ["zzz.png"], flip_rate=0.0, seed=0, fraction=0.5)


def _write(path, table, test, flip_rate):
    write_phantom_adjudicated(path, table, test, flip_rate=flip_rate, seed=0, fraction=1.0)
    return path


# --------------------------------------------------------------------------------------------
# scores


def test_adjudicated_scores_known_answer() -> None:
    rng = np.random.default_rng(4)
    n = 120
    images = np.array([f"{i:08d}_000.png" for i in range(n)])
    patients = np.arange(n) // 3
    targets = (rng.random((n, len(LABELS))) < 0.3).astype(np.uint8)
    probs = np.clip(0.4 * targets + 0.6 * rng.random((n, len(LABELS))), 0, 1)
    truth = targets.copy()
    truth[rng.random((n, len(LABELS))) < 0.15] ^= 1  # the radiologists disagree on 15%
    cols = {k: [LABEL_INDEX[c] for c in v.classes] for k, v in ADJUDICATED_MAP.items()}
    scored = np.arange(0, 90)  # 90 test rows in the split, 10 not in it, 30 val rows ignored
    table = pd.DataFrame(
        {
            "image": [*images[scored], *(f"9{i:07d}_000.png" for i in range(10)), *images[90:]],
            "set": ["test"] * 100 + ["val"] * 30,
            **{
                k: np.r_[truth[scored][:, c].max(1), np.zeros(10), truth[90:][:, c].max(1)].astype(float)
                for k, c in cols.items()
            },
            "fracture": 0.0,
        }
    )
    table.loc[5, "pneumothorax"] = np.nan  # an unreadable value: left out of that finding only
    result = adjudicated_scores(images, targets, probs, table, patients, n_boot=60, ci=0.9, seed=2)
    assert result["n_test_rows"] == 100 and result["n_test_rows_not_in_split"] == 10
    assert result["not_scored"] == {"fracture": NOT_SCORED["fracture"]}
    resamples = explicit_resamples(patients, 60, 2)
    for name, c in cols.items():
        entry = result["findings"][name]
        keep = scored[scored != 5] if name == "pneumothorax" else scored
        y_adj, y_nih, score = truth[keep][:, c].max(1), targets[keep][:, c].max(1), probs[keep][:, c].max(1)
        assert entry["n_images"] == len(keep) and entry["proxy"] == (name == "airspace_opacity")
        assert entry["auc_adjudicated"] == pytest.approx(roc_auc_score(y_adj, score), abs=1e-12)
        assert entry["auc_nih"] == pytest.approx(roc_auc_score(y_nih, score), abs=1e-12)
        assert entry["kappa"] == pytest.approx(cohen_kappa_score(y_nih, y_adj), abs=1e-12)
        assert entry["nih_confirmed"] == pytest.approx(y_adj[y_nih == 1].mean(), abs=1e-12)
        assert entry["positives_adjudicated"] == y_adj.sum() and entry["positives_nih"] == y_nih.sum()
        in_keep = np.zeros(n, dtype=bool)
        in_keep[keep] = True
        reps = []
        for idx in resamples:
            idx = idx[in_keep[idx]]
            a = roc_auc_score(truth[idx][:, c].max(1), probs[idx][:, c].max(1))
            b = roc_auc_score(targets[idx][:, c].max(1), probs[idx][:, c].max(1))
            reps.append((a, b))
        reps = np.array(reps)
        q = [0.05, 0.95]
        np.testing.assert_allclose(entry["auc_adjudicated_ci"], np.quantile(reps[:, 0], q), atol=1e-12)
        np.testing.assert_allclose(entry["auc_nih_ci"], np.quantile(reps[:, 1], q), atol=1e-12)
        np.testing.assert_allclose(entry["diff_ci"], np.quantile(reps[:, 0] - reps[:, 1], q), atol=1e-12)
        assert entry["diff"] == pytest.approx(entry["auc_adjudicated"] - entry["auc_nih"], abs=1e-15)


def test_perfect_labels_agree() -> None:
    """Adjudicated = NIH: kappa 1, every NIH positive confirmed, and a difference of exactly 0."""
    rng = np.random.default_rng(0)
    n = 60
    images = [f"{i:08d}_000.png" for i in range(n)]
    targets = (rng.random((n, len(LABELS))) < 0.3).astype(np.uint8)
    probs = rng.random((n, len(LABELS)))
    table = pd.DataFrame({"image": images, "set": "test", "fracture": 0.0})
    for name, mapping in ADJUDICATED_MAP.items():
        table[name] = targets[:, [LABEL_INDEX[c] for c in mapping.classes]].max(1).astype(float)
    result = adjudicated_scores(images, targets, probs, table, np.arange(n) // 2, n_boot=30, ci=0.95, seed=0)
    for entry in result["findings"].values():
        assert entry["kappa"] == 1.0 and entry["nih_confirmed"] == 1.0
        assert entry["diff"] == 0.0 and entry["diff_ci"] == [0.0, 0.0]
