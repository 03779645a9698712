"""The demo's page logic without Gradio (the browser test drives the real page) and ``cxr demo``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from app_files import MODEL, anatomy, tiny_checkpoint, write_dicom, write_png
from click.testing import CliRunner

from cxr_core.app.cli import main
from cxr_core.app.imaging import ImageLimits
from cxr_core.labels import LABELS

pytest.importorskip("pydicom", reason="DICOM support needs pydicom (pip install -e '.[demo]')")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("models") / MODEL / "best.pt")


def test_demo_backend_messages_and_boxes(checkpoint: Path, tmp_path: Path, single_thread: None) -> None:
    from cxr_core.app.demo import TOP_FINDING, DemoBackend

    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "loc.csv").write_text(
        "row,image,patient,label,label_index,x,y,w,h,x1024,y1024,w1024,h1024\n"
        "0,00000001_000.png,1,Effusion,2,1,1,1,1,512.0,600.0,256.0,200.0\n"
    )
    backend = DemoBackend(checkpoint.parent.parent, splits, display_px=128)
    assert backend.models == [MODEL]
    png = write_png(tmp_path / "00000001_000.png", (anatomy(256, 256) // 16).astype(np.uint8))

    result = backend.analyse(str(png), MODEL, TOP_FINDING, "GradCAM")
    assert (
        not result.error and result.probabilities is not None and list(result.probabilities) == list(LABELS)
    )
    assert result.finding == max(result.probabilities, key=result.probabilities.get)
    assert result.heatmap_image.shape == (128, 128, 3) and result.boxes == [
        (512.0, 600.0, 256.0, 200.0, "Effusion")
    ]
    assert tuple(result.input_image[75, 64]) == (0, 255, 0)  # box left edge at 512 / 1024 * 128 = 64
    assert "radiologist box" in result.message

    text = tmp_path / "notes.txt"
    text.write_text("hello")
    refused = backend.analyse(str(text), MODEL, "Effusion", "GradCAM")
    assert refused.error and refused.probabilities is None and "`notes.txt`" in refused.message
    assert "not an image file" in refused.message
    assert "Upload" in backend.analyse(None, MODEL, "Effusion", "GradCAM").message


def test_demo_backend_reads_dicom_and_refuses_large_files(
    checkpoint: Path, tmp_path: Path, single_thread: None
) -> None:
    from cxr_core.app.demo import DemoBackend

    dcm = write_dicom(tmp_path / "scan.dcm", (4095 - anatomy(128, 128)).astype(np.uint16), "MONOCHROME1")
    result = DemoBackend(checkpoint.parent.parent, tmp_path / "no-splits", display_px=96).analyse(
        str(dcm), MODEL, "Cardiomegaly", "GradCAM"
    )
    assert not result.error and result.finding == "Cardiomegaly" and result.boxes == []
    assert result.heatmap_image.shape == (96, 96, 3)

    small = DemoBackend(checkpoint.parent.parent, tmp_path, limits=ImageLimits(max_bytes=1000))
    refused = small.analyse(str(dcm), MODEL, "Cardiomegaly", "GradCAM")
    assert refused.error and "`scan.dcm`" in refused.message and "MB limit" in refused.message
    rgb = write_dicom(tmp_path / "colour.dcm", np.zeros((8, 8, 3), np.uint8), "RGB", 8)
    assert "'RGB' is not supported" in small.analyse(str(rgb), MODEL, "Mass", "GradCAM").message


def test_cxr_demo_without_trained_models_says_how_to_train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["demo", "--models-dir", str(tmp_path / "models")])
    assert result.exit_code == 1 and "no trained model" in result.output and "dvc repro" in result.output
