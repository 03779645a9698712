"""Reading user files: PNG / JPEG / DICOM rules, bad-file errors and limits, and the heatmap overlay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from app_files import anatomy, write_dicom, write_png
from PIL import Image

from cxr_core.app.imaging import (
    ImageLimits,
    ImageTooLargeError,
    UnsupportedImageError,
    collect_files,
    read_dicom,
    read_image,
)
from cxr_core.app.overlay import overlay
from cxr_core.data.decode import ImageDecodeError, decode_image
from cxr_core.data.dicom import window

pydicom = pytest.importorskip("pydicom", reason="DICOM support needs pydicom (pip install -e '.[demo]')")


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


@pytest.mark.parametrize(
    ("photometric", "pixels"),
    [
        ("MONOCHROME2", np.zeros((3, 8, 8), np.uint16)),
        ("RGB", np.zeros((8, 8, 3), np.uint8)),
        ("MONOCHROME2", None),
    ],
)
def test_predict_and_the_external_sets_refuse_the_same_dicoms(
    tmp_path: Path, photometric: str, pixels: np.ndarray | None
) -> None:
    """One DICOM reader: a file `cxr predict` refuses (e.g. multi-frame) is refused by the external
    sets' decoder for the same reason, not silently cut to its first frame."""
    from cxr_core.data.external.dicom import decode_dicom

    bits = 8 if pixels is not None and pixels.dtype == np.uint8 else 12
    path = write_dicom(tmp_path / "bad.dcm", pixels, photometric, bits)
    with pytest.raises(ImageDecodeError) as external:
        decode_dicom(path, 32)
    with pytest.raises(UnsupportedImageError) as predict:
        read_image(path, 32)
    assert external.value.reason == predict.value.reason and str(path) in str(external.value)


def test_predict_and_the_external_sets_decode_a_dicom_to_the_same_pixels(tmp_path: Path) -> None:
    from cxr_core.data.external.dicom import decode_dicom

    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        path = write_dicom(tmp_path / f"{photometric}.dcm", anatomy(), photometric)
        pixels, (width, height) = decode_dicom(path, 32)
        np.testing.assert_array_equal(pixels, read_image(path, 32))
        assert (height, width) == anatomy().shape


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


# --------------------------------------------------------------------------------------------------
# Overlays
# --------------------------------------------------------------------------------------------------


def test_overlay_blends_the_heatmap_and_draws_boxes() -> None:
    grey = np.full((40, 40), 100, np.uint8)
    heat = np.zeros((10, 10), np.float32)
    heat[:5, :5] = 1.0
    rgb = overlay(grey, heat, boxes=[(20, 20, 10, 10, "Mass")], box_scale=1.0)
    assert rgb.shape == (40, 40, 3) and rgb.dtype == np.uint8
    assert rgb[5, 5, 0] > rgb[5, 5, 2]  # hot corner: red (jet) over grey
    assert tuple(rgb[25, 20]) == (0, 255, 0)  # the box's left edge
    np.testing.assert_array_equal(overlay(grey, None), np.dstack([grey] * 3))
