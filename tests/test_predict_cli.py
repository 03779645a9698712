"""``Predictor`` and ``cxr predict``: the pipeline's probabilities for user files, CSV / JSON, overlays,
which model is used (--model / --seed / the last run's best), the phantom warning, exit codes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from app_files import MODEL, SIZE, anatomy, direct_probs, tiny_checkpoint, write_dicom, write_png
from click.testing import CliRunner
from PIL import Image

from cxr_core.app.cli import main
from cxr_core.app.imaging import read_image
from cxr_core.app.predictor import Predictor
from cxr_core.data.decode import decode_image
from cxr_core.labels import LABELS
from cxr_core.models.checkpoints import load_checkpoint, save_checkpoint

pytest.importorskip("pydicom", reason="DICOM support needs pydicom (pip install -e '.[demo]')")


PHANTOM_WARNING = "was trained on the phantom"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("models") / MODEL / "seed0" / "best.pt")


def with_source(path: Path, data_source: str, label_file: str = "Data_Entry_2017_v2020.csv") -> Path:
    """Rewrite a checkpoint's ``data_source`` / ``label_file`` (train@ records the raw manifest's)."""
    state = load_checkpoint(path)
    state.update(data_source=data_source, label_file=label_file)
    save_checkpoint(path, state)
    return path


def trained_project(root: Path, seeds: dict[int, str]) -> Path:
    """``root/data/models/MODEL/seed<k>/best.pt`` for each seed, with the given data sources."""
    for seed, source in seeds.items():
        with_source(
            tiny_checkpoint(root / "data/models" / MODEL / f"seed{seed}" / "best.pt", seed=seed), source
        )
    return root


def test_predictor_probabilities_and_heatmaps(checkpoint: Path, tmp_path: Path, single_thread: None) -> None:
    predictor = Predictor.from_checkpoint(checkpoint, MODEL)
    assert predictor.image_size == SIZE and predictor.name == MODEL
    png = write_png(tmp_path / "a.png", (anatomy(128, 128) // 16).astype(np.uint8))
    grey = predictor.load(png)
    probs = predictor.predict(grey)
    assert probs.shape == (1, 14) and probs.dtype == np.float32
    np.testing.assert_allclose(probs[0], direct_probs(checkpoint, decode_image(png, SIZE)), atol=1e-6)
    maps = predictor.heatmaps(np.stack([grey, grey]), ["Effusion", "Mass"], "EigenCAM")
    assert maps.shape == (2, SIZE, SIZE) and np.nanmax(maps) <= 1.0
    with pytest.raises(ValueError, match="unknown finding 'Efusion'"):
        predictor.heatmaps(grey, "Efusion", "GradCAM")
    with pytest.raises(ValueError, match="model's size"):
        predictor.predict(np.zeros((32, 32), np.uint8))


def test_cli_predict_folder_of_pngs_and_a_dicom(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread: None
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./params.yaml: the defaults apply
    folder = tmp_path / "xrays"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        grey = (anatomy(128, 128) // 16).astype(np.uint8)
        write_png(
            folder / f"0000000{i}_000.png",
            np.clip(grey + rng.integers(0, 40, grey.shape), 0, 255).astype(np.uint8),
        )
    dcm = write_dicom(folder / "scan.dcm", (4095 - anatomy(128, 128)).astype(np.uint16), "MONOCHROME1")
    out = tmp_path / "preds.csv"
    heat_dir = tmp_path / "heat"

    result = CliRunner().invoke(
        main,
        ["predict", "--model", MODEL, "--checkpoint", str(checkpoint), "--device", "cpu", "--out", str(out),
         "--heatmaps", str(heat_dir), "--finding", "Effusion", "--method", "GradCAM", "--overlay-px", "96",
         str(folder)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["file"]).name for r in rows] == [f"0000000{i}_000.png" for i in range(3)] + ["scan.dcm"]
    assert list(rows[0]) == ["file", *LABELS]
    for row in rows:
        probs = np.array([float(row[label]) for label in LABELS])
        assert np.all((probs >= 0) & (probs <= 1))
        path = Path(row["file"])
        grey = read_image(path, SIZE) if path.suffix == ".dcm" else decode_image(path, SIZE)
        np.testing.assert_allclose(probs, direct_probs(checkpoint, grey), atol=2e-6)
    overlays = sorted(p.name for p in heat_dir.iterdir())
    assert overlays == sorted(
        [f"0000000{i}_000.Effusion.GradCAM.png" for i in range(3)] + ["scan.Effusion.GradCAM.png"]
    )
    assert Image.open(heat_dir / overlays[0]).size == (96, 96)
    assert dcm.exists()


def test_cli_predict_reports_bad_files_by_name_and_exits_1(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread: None
) -> None:
    monkeypatch.chdir(tmp_path)
    good = write_png(tmp_path / "good.png", (anatomy(64, 64) // 16).astype(np.uint8))
    bad = tmp_path / "report.txt"
    bad.write_text("not an image")
    rgb = write_dicom(tmp_path / "colour.dcm", np.zeros((8, 8, 3), np.uint8), "RGB", 8)
    result = CliRunner().invoke(
        main, ["predict", "--checkpoint", str(checkpoint), "--device", "cpu", str(good), str(bad), str(rgb)]
    )
    assert result.exit_code == 1
    rows = list(csv.DictReader(io.StringIO(result.stdout)))  # CSV on stdout, messages on stderr
    assert [r["file"] for r in rows] == [str(good)]
    assert "2 of 3 file(s) could not be read" in result.stderr
    assert f"{bad}: not an image file" in result.stderr and "colour.dcm" in result.stderr


def test_cli_predict_usage_errors(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    png = write_png(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    runner = CliRunner()
    result = runner.invoke(main, ["predict", "--model", "densenet121", str(png)])
    assert (
        result.exit_code == 1
        and "data/models/densenet121/seed0/best.pt: checkpoint not found" in result.output
    )
    result = runner.invoke(main, ["predict", "--model", "densenet121", "--seed", "3", str(png)])
    assert (
        result.exit_code == 1
        and "data/models/densenet121/seed3/best.pt: checkpoint not found" in result.output
    )
    result = runner.invoke(main, ["predict", "--seed", "3", str(png)])
    assert result.exit_code == 2 and "--seed needs --model" in result.output
    result = runner.invoke(
        main, ["predict", "--checkpoint", str(checkpoint), "--model-dir", str(tmp_path), str(png)]
    )
    assert result.exit_code == 2 and "not both" in result.output
    result = runner.invoke(
        main,
        ["predict", "--checkpoint", str(checkpoint), "--heatmaps", "h", "--finding", "Efusion", str(png)],
    )
    assert result.exit_code == 2 and "unknown finding 'Efusion'" in result.output
    result = runner.invoke(
        main, ["predict", "--model", "densenet169", "--checkpoint", str(checkpoint), str(png)]
    )
    assert result.exit_code == 1 and "not 'densenet169'" in result.output


def _probs(stdout: str) -> np.ndarray:
    rows = list(csv.DictReader(io.StringIO(stdout)))
    return np.array([[float(r[label]) for label in LABELS] for r in rows])


def test_cli_predict_picks_seed_and_warns_about_phantom_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread: None
) -> None:
    monkeypatch.chdir(trained_project(tmp_path, {0: "synthetic", 1: "nih"}))
    png = write_png(tmp_path / "a.png", (anatomy(64, 64) // 16).astype(np.uint8))
    runner = CliRunner()
    seed0 = runner.invoke(main, ["predict", "--model", MODEL, "--device", "cpu", str(png)])
    seed1 = runner.invoke(main, ["predict", "--model", MODEL, "--seed", "1", "--device", "cpu", str(png)])
    assert seed0.exit_code == 0 and seed1.exit_code == 0, seed0.output + seed1.output
    assert PHANTOM_WARNING in seed0.stderr and "never use them for a patient" in seed0.stderr
    assert PHANTOM_WARNING not in seed1.stderr and "note:" not in seed1.stderr  # trained on NIH's data
    grey = decode_image(png, SIZE)
    for result, seed in ((seed0, 0), (seed1, 1)):
        best = tmp_path / "data/models" / MODEL / f"seed{seed}" / "best.pt"
        np.testing.assert_allclose(_probs(result.stdout)[0], direct_probs(best, grey), atol=2e-6)
    assert not np.allclose(_probs(seed0.stdout), _probs(seed1.stdout), atol=1e-3)  # two different models


def test_cli_predict_without_model_uses_the_headline_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread: None
) -> None:
    monkeypatch.chdir(trained_project(tmp_path, {0: "nih", 1: "synthetic"}))
    png = write_png(tmp_path / "a.png", (anatomy(64, 64) // 16).astype(np.uint8))
    runner = CliRunner()
    missing = runner.invoke(main, ["predict", str(png)])
    assert missing.exit_code == 1 and "Traceback" not in missing.output
    assert "metrics/headline.json not found" in missing.output
    assert "dvc repro" in missing.output and "--model" in missing.output

    (tmp_path / "metrics").mkdir()
    headline = tmp_path / "metrics/headline.json"
    best = {
        "model": MODEL,
        "seed": 1,
        "checkpoint": f"data/models/{MODEL}/seed1/best.pt",
        "macro_auc": 0.8125,
    }
    headline.write_text(json.dumps({"best": best, "models": {}}))
    result = runner.invoke(main, ["predict", "--device", "cpu", str(png)])
    assert result.exit_code == 0, result.output
    assert f"using {MODEL} seed 1 (data/models/{MODEL}/seed1/best.pt, test macro AUC 0.812)" in result.stderr
    assert "metrics/headline.json" in result.stderr and PHANTOM_WARNING in result.stderr
    best_pt = tmp_path / "data/models" / MODEL / "seed1/best.pt"
    np.testing.assert_allclose(
        _probs(result.stdout)[0], direct_probs(best_pt, decode_image(png, SIZE)), atol=2e-6
    )

    headline.write_text(json.dumps({"models": {}}))
    bad = runner.invoke(main, ["predict", str(png)])
    assert bad.exit_code == 1 and "lacks key(s) ['best']" in bad.output
    headline.write_text("{not json")
    bad = runner.invoke(main, ["predict", str(png)])
    assert bad.exit_code == 1 and "not valid JSON" in bad.output


def test_cli_predict_json_format(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread: None
) -> None:
    monkeypatch.chdir(tmp_path)
    phantom = with_source(tiny_checkpoint(tmp_path / "phantom.pt"), "synthetic")
    good = write_png(tmp_path / "good.png", (anatomy(64, 64) // 16).astype(np.uint8))
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    runner = CliRunner()
    as_csv = runner.invoke(main, ["predict", "--checkpoint", str(phantom), "--device", "cpu", str(good)])
    out = tmp_path / "p.json"
    as_json = runner.invoke(
        main,
        ["predict", "--checkpoint", str(phantom), "--device", "cpu", "--format", "json", "--out", str(out),
         str(good), str(bad)],
    )  # fmt: skip
    assert as_json.exit_code == 1 and "1 of 2 file(s) could not be read" in as_json.stderr
    doc = json.loads(out.read_text())
    assert (doc["model"], doc["checkpoint"], doc["phantom"]) == (MODEL, str(phantom), True)
    assert doc["data_source"] == "synthetic" and doc["label_file"] == "Data_Entry_2017_v2020.csv"
    assert PHANTOM_WARNING in doc["warning"] and doc["labels"] == list(LABELS)
    assert [p["file"] for p in doc["predictions"]] == [str(good)]
    assert list(doc["predictions"][0]["probabilities"]) == list(LABELS)
    np.testing.assert_allclose(
        list(doc["predictions"][0]["probabilities"].values()), _probs(as_csv.stdout)[0], atol=1e-6
    )
    assert doc["failed"] == [
        {"file": str(bad), "reason": "not an image file (accepted: PNG, JPEG, TIFF, BMP or DICOM)"}
    ]

    plain = runner.invoke(main, ["predict", "--checkpoint", str(checkpoint), "--format", "json", str(good)])
    assert plain.exit_code == 0 and PHANTOM_WARNING not in plain.stderr
    doc = json.loads(plain.stdout)
    assert doc["phantom"] is False and doc["warning"] is None and doc["data_source"] == "unknown"
    assert "does not record what it was trained on" in plain.stderr
