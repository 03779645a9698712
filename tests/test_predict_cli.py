"""``Predictor`` and ``cxr predict``: the pipeline's probabilities for user files, CSV, overlays, exit codes."""

from __future__ import annotations

import csv
import io
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

pytest.importorskip("pydicom", reason="DICOM support needs pydicom (pip install -e '.[demo]')")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("models") / MODEL / "best.pt")


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
    assert result.exit_code == 1 and "data/models/densenet121/best.pt: checkpoint not found" in result.output
    result = runner.invoke(
        main,
        ["predict", "--checkpoint", str(checkpoint), "--heatmaps", "h", "--finding", "Efusion", str(png)],
    )
    assert result.exit_code == 2 and "unknown finding 'Efusion'" in result.output
    result = runner.invoke(
        main, ["predict", "--model", "densenet169", "--checkpoint", str(checkpoint), str(png)]
    )
    assert result.exit_code == 1 and "not 'densenet169'" in result.output
