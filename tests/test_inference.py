"""Inference on user files: PNG / JPEG / DICOM reading rules, bad-file errors, ``cxr predict``, demo backend."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cxr_core.app.cli import main
from cxr_core.app.predictor import (
    ImageLimits,
    ImageTooLargeError,
    Predictor,
    UnsupportedImageError,
    collect_files,
    overlay,
    read_dicom,
    read_image,
    window,
)
from cxr_core.data.batches import normalise
from cxr_core.data.cache import ImageDecodeError, decode_image
from cxr_core.labels import LABELS
from cxr_core.models.checkpoints import load_model, save_checkpoint
from cxr_core.models.registry import create_model, get_spec

pydicom = pytest.importorskip("pydicom", reason="DICOM support needs pydicom (pip install -e '.[demo]')")

MODEL = "test_efficientnet"  # timm's ~100k-parameter test net: builds and runs in milliseconds
SIZE = 64


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def anatomy(rows: int = 80, cols: int = 96, max_value: int = 4095) -> np.ndarray:
    """A 12-bit 'chest': bright body, two dark lung fields, a dense spot; non-square on purpose."""
    y, x = np.mgrid[0:rows, 0:cols]
    img = np.full((rows, cols), 0.15)
    img[(x - cols / 2) ** 2 / (0.45 * cols) ** 2 + (y - rows / 2) ** 2 / (0.48 * rows) ** 2 < 1] = 0.7
    for cx in (0.3 * cols, 0.7 * cols):
        img[(x - cx) ** 2 / (0.15 * cols) ** 2 + (y - rows / 2) ** 2 / (0.3 * rows) ** 2 < 1] = 0.3
    img[(x - 0.35 * cols) ** 2 + (y - 0.4 * rows) ** 2 < 9] = 0.95
    img += 0.05 * np.sin(x / 3.0) * np.cos(y / 5.0)
    return np.clip(np.rint(img * max_value), 0, max_value).astype(np.uint16)


def write_dicom(
    path: Path, pixels: np.ndarray | None, photometric: str, bits: int = 12, **attrs: object
) -> Path:
    """A DICOM Part 10 file (preamble + DICM) as a modality would write it; ``pixels=None``: no pixel data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientID = "TEST"
    if pixels is not None:
        ds.set_pixel_data(pixels, photometric, bits)
    else:
        ds.PhotometricInterpretation = photometric
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path)
    return path


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A checkpoint in the train stage's format (tensors + plain metadata) for a tiny timm model."""
    torch.manual_seed(seed)
    model = create_model(MODEL, image_size=SIZE)
    save_checkpoint(
        path,
        {
            "format": 1,
            "model_name": MODEL,
            "timm_name": get_spec(MODEL).timm_name,
            "image_size": SIZE,
            "labels": list(LABELS),
            "num_classes": len(LABELS),
            "model": model.state_dict(),
            "epoch": 1,
        },
    )
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("models") / MODEL / "best.pt")


# --------------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------------


def test_monochrome1_is_inverted_to_the_same_grey_image_as_monochrome2(tmp_path: Path) -> None:
    body = anatomy()
    mono2 = write_dicom(tmp_path / "mono2.dcm", body, "MONOCHROME2")
    mono1 = write_dicom(tmp_path / "mono1.dcm", (4095 - body).astype(np.uint16), "MONOCHROME1")
    grey2, grey1 = read_image(mono2), read_image(mono1)
    assert grey2.shape == body.shape and grey2.dtype == np.uint8
    np.testing.assert_array_equal(grey1, grey2)
    np.testing.assert_array_equal(read_image(mono1, 32), read_image(mono2, 32))
    # bright body and dense spot, dark lungs: MONOCHROME2 orientation, stretched to the full range
    assert grey2.min() == 0 and grey2.max() == 255
    assert grey2[40, 48] > grey2[40, int(0.3 * 96)]


def test_monochrome1_with_a_window_is_inverted_after_windowing(tmp_path: Path) -> None:
    body = anatomy()
    win = {"WindowCenter": 2000, "WindowWidth": 1800, "VOILUTFunction": "LINEAR_EXACT"}
    mono2 = write_dicom(tmp_path / "mono2.dcm", body, "MONOCHROME2", **win)
    # the same anatomy stored inverted: the window moves with it (centre 4095 - 2000)
    mono1 = write_dicom(
        tmp_path / "mono1.dcm",
        (4095 - body).astype(np.uint16),
        "MONOCHROME1",
        **{**win, "WindowCenter": 2095},
    )
    np.testing.assert_allclose(read_dicom(mono1), read_dicom(mono2), atol=1e-12)


def test_rescale_slope_intercept_then_window_match_pydicom(tmp_path: Path) -> None:
    from pydicom.pixels import apply_modality_lut, apply_windowing

    stored = anatomy()
    attrs = {"RescaleSlope": 2, "RescaleIntercept": -1024, "WindowCenter": 3000, "WindowWidth": 4000}
    path = write_dicom(tmp_path / "ct_like.dcm", stored, "MONOCHROME2", **attrs)
    got = read_dicom(path)

    hu = stored.astype(np.float64) * 2 - 1024  # the modality LUT by hand
    expected = np.clip((hu - (3000 - 0.5)) / (4000 - 1) + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1, LINEAR
    np.testing.assert_allclose(got, expected, atol=1e-12)
    # and pydicom's own pipeline, scaled by its output range (0..4095 rescaled)
    ds = pydicom.dcmread(path)
    y_min, y_max = 0 * 2 - 1024, 4095 * 2 - 1024
    ref = (apply_windowing(apply_modality_lut(ds.pixel_array, ds), ds) - y_min) / (y_max - y_min)
    np.testing.assert_allclose(got, ref, atol=1e-9)
    # without the rescale the same window would cut another range: the rescale really was applied
    plain = write_dicom(tmp_path / "plain.dcm", stored, "MONOCHROME2", WindowCenter=3000, WindowWidth=4000)
    assert np.abs(read_dicom(plain) - got).max() > 0.1


def test_voi_lut_sequence_is_preferred_to_the_window(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stored = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 60).astype(np.uint16)
    lut = Dataset()
    lut.add_new("LUTDescriptor", "US", [4096, 0, 16])
    lut.add_new("LUTData", "US", [int(v) for v in (65535 - np.arange(4096) * 16)])  # an inverting LUT
    path = write_dicom(
        tmp_path / "lut.dcm",
        stored,
        "MONOCHROME2",
        VOILUTSequence=Sequence([lut]),
        WindowCenter=10,
        WindowWidth=2,
    )
    np.testing.assert_allclose(read_dicom(path), (65535 - stored.astype(np.float64) * 16) / 65535)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_functions_match_pydicom(function: str) -> None:
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_windowing

    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored, ds.PixelRepresentation = 12, 0
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 1000, 501, function
    values = np.linspace(-100.0, 4195.0, 997)
    expected = apply_windowing(values.copy(), ds) / 4095.0  # pydicom's output range is 0..4095 here
    np.testing.assert_allclose(window(values, 1000, 501, function), expected, atol=1e-12)


def test_unknown_window_function_is_refused() -> None:
    with pytest.raises(ValueError, match="VOI LUT Function 'LOG'"):
        window(np.zeros(3), 100, 100, "LOG")


def test_dicom_model_input_matches_the_cache_rule_for_16_bit(tmp_path: Path) -> None:
    """A DICOM goes through the cache's 16-bit resize: the same as a 16-bit PNG of its 0..1 values."""
    body = anatomy()
    dcm = write_dicom(tmp_path / "x.dcm", body, "MONOCHROME2")
    unit = (body - body.min()) / (body.max() - body.min())
    png = write_png(tmp_path / "x16.png", np.rint(unit * 65535).astype(np.uint16))
    np.testing.assert_array_equal(read_image(dcm, 32), decode_image(png, 32))


@pytest.mark.parametrize(
    ("photometric", "pixels", "match"),
    [
        ("RGB", np.zeros((8, 8, 3), np.uint8), "'RGB' is not supported"),
        ("YBR_FULL", np.zeros((8, 8, 3), np.uint8), "'YBR_FULL' is not supported"),
        ("MONOCHROME2", None, "no pixel data"),
        ("MONOCHROME2", np.zeros((3, 8, 8), np.uint16), "3 frames"),
    ],
)
def test_unsupported_dicoms_give_a_clear_error(
    tmp_path: Path, photometric: str, pixels: np.ndarray | None, match: str
) -> None:
    bits = 8 if pixels is not None and pixels.dtype == np.uint8 else 12
    path = write_dicom(tmp_path / "bad.dcm", pixels, photometric, bits)
    with pytest.raises(UnsupportedImageError, match=match) as info:
        read_image(path)
    assert str(path) in str(info.value) and isinstance(info.value, ImageDecodeError)


def test_dicom_without_extension_is_found_in_a_folder(tmp_path: Path) -> None:
    write_dicom(tmp_path / "IM0001", anatomy(), "MONOCHROME2")
    (tmp_path / "notes").write_text("not an image")
    (tmp_path / "readme.txt").write_text("not an image")
    write_png(tmp_path / "b.png", np.zeros((8, 8), np.uint8))
    assert [p.name for p in collect_files([tmp_path])] == ["IM0001", "b.png"]


# --------------------------------------------------------------------------------------------------
# PNG / JPEG and bad files
# --------------------------------------------------------------------------------------------------


def test_png_and_jpeg_give_the_cache_decoding(tmp_path: Path) -> None:
    grey = (anatomy(100, 100) // 16).astype(np.uint8)
    png = write_png(tmp_path / "a.png", grey)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 255)])).save(rgba)
    jpg = tmp_path / "a.jpg"
    Image.fromarray(grey).save(jpg, quality=95)
    png16 = write_png(tmp_path / "a16.png", anatomy(100, 100) * 16)

    np.testing.assert_array_equal(read_image(png), grey)
    np.testing.assert_array_equal(read_image(rgba), grey)
    assert read_image(jpg).shape == (100, 100) and np.abs(read_image(jpg).astype(int) - grey).mean() < 2
    assert read_image(png16).dtype == np.uint8 and read_image(png16).max() > 200  # linear, not clipped
    for path in (png, rgba, jpg, png16):
        np.testing.assert_array_equal(read_image(path, 32), decode_image(path, 32))


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("notes.txt", b"patient 1: effusion\n", "not an image file"),
        ("fake.png", b"<html>not a png</html>", "not an image file"),
        ("fake.dcm", b"\x00" * 128 + b"DICM" + b"\x02\x00garbage", "DICOM"),
        ("empty.png", b"", "empty file"),
    ],
)
@pytest.mark.filterwarnings("ignore:.*VR:UserWarning")  # pydicom's comments on the garbage DICOM
def test_non_images_give_an_error_naming_the_file(
    tmp_path: Path, name: str, content: bytes, match: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UnsupportedImageError, match=match) as info:
        read_image(path)
    assert name in str(info.value)


def test_size_limits(tmp_path: Path) -> None:
    png = write_png(tmp_path / "big.png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    dcm = write_dicom(tmp_path / "big.dcm", anatomy(64, 64), "MONOCHROME2")
    with pytest.raises(ImageTooLargeError, match=r"big.png: file is .* MB limit"):
        read_image(png, limits=ImageLimits(max_bytes=1000))
    with pytest.raises(ImageTooLargeError, match=r"64 x 64 px, over the 32 px limit"):
        read_image(png, limits=ImageLimits(max_side=32))
    with pytest.raises(ImageTooLargeError, match=r"big.dcm: image is 64 x 64 px"):
        read_image(dcm, limits=ImageLimits(max_side=32))
    assert read_image(png, limits=ImageLimits(max_side=64)).shape == (64, 64)


def test_overlay_blends_the_heatmap_and_draws_boxes() -> None:
    grey = np.full((40, 40), 100, np.uint8)
    heat = np.zeros((10, 10), np.float32)
    heat[:5, :5] = 1.0
    rgb = overlay(grey, heat, boxes=[(20, 20, 10, 10, "Mass")], box_scale=1.0)
    assert rgb.shape == (40, 40, 3) and rgb.dtype == np.uint8
    assert rgb[5, 5, 0] > rgb[5, 5, 2]  # hot corner: red (jet) over grey
    assert tuple(rgb[25, 20]) == (0, 255, 0)  # the box's left edge
    np.testing.assert_array_equal(overlay(grey, None), np.dstack([grey] * 3))


# --------------------------------------------------------------------------------------------------
# Predictor and `cxr predict`
# --------------------------------------------------------------------------------------------------


def direct_probs(checkpoint: Path, grey: np.ndarray) -> np.ndarray:
    """The model run by hand on an S x S uint8 image: normalise, forward, sigmoid."""
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        x = normalise(torch.from_numpy(np.array(grey))[None, None].float())
        return torch.sigmoid(model(x)).numpy()[0]


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


# --------------------------------------------------------------------------------------------------
# Demo backend (the page's logic without Gradio; the browser test drives the real page)
# --------------------------------------------------------------------------------------------------


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
