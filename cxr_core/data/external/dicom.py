"""Decode a DICOM radiograph to ``S x S`` uint8 grey with the same resize rules as ``decode.py``.

VinDr-CXR ships DICOM only, with 12- to 16-bit pixels, some MONOCHROME1 (white = air) and most
with a window (VOI LUT or WindowCenter / WindowWidth) chosen by the modality for display.

Steps, in the order DICOM PS3.4 defines for display:

1. Modality LUT (RescaleSlope / RescaleIntercept), then the VOI LUT or window when the file has one
   (``pydicom.pixels.apply_voi_lut``): the model then sees what a radiologist was shown.
2. Per-image min-max to 0..255: DICOM has no common grey scale across vendors and bit depths (the
   linear ``v * 255 / 65535`` of ``decode.py`` would leave a 12-bit image nearly black). A constant
   image becomes all 0.
3. MONOCHROME1 is inverted (``255 - v``) so that air is black, as in the NIH PNGs.
4. Resize in float (Pillow mode ``F``) with ``decode.RESAMPLE`` / ``decode.REDUCING_GAP``, then
   round to nearest, as ``decode.to_grey`` does for 16-bit files.

Compressed transfer syntaxes need a decoder plugin (pylibjpeg or gdcm) that pydicom does not bring;
the error says which to install.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_core.data.decode import ALLOWED_FORMATS, DECODE_ERRORS, REDUCING_GAP, RESAMPLE, ImageDecodeError

#: File name endings taken as DICOM without looking at the content.
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")

# What pydicom raises on a broken file: InvalidDicomError is an Exception, short pixel data a
# ValueError, a failed or unavailable decoder a RuntimeError / NotImplementedError.
_DICOM_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    RuntimeError,
    NotImplementedError,
    AttributeError,
    KeyError,
    TypeError,
    EOFError,
    struct.error,
    zlib.error,
)


def is_dicom(path: Path) -> bool:
    """True for a ``.dcm`` / ``.dicom`` name or a file with the ``DICM`` marker at byte 128."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _read(path: Path, stop_before_pixels: bool):  # -> pydicom.Dataset
    import pydicom  # imported here: only the external data sets need it
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except FileNotFoundError as exc:
        raise ImageDecodeError(path, "file not found") from exc
    except (InvalidDicomError, *_DICOM_ERRORS) as exc:
        raise ImageDecodeError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc


def _pixels(ds, path: Path) -> np.ndarray:
    """The stored pixel values, with a plugin hint when a compressed syntax cannot be decoded."""
    from pydicom.pixels import get_decoder

    if "PixelData" not in ds:
        raise ImageDecodeError(path, "DICOM file has no pixel data")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is not None and syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError as exc:
            raise ImageDecodeError(path, f"pydicom has no decoder for transfer syntax {syntax.name}") from exc
        if not decoder.is_available:
            raise ImageDecodeError(
                path,
                f"compressed DICOM ({syntax.name}) needs a decoder plugin: "
                "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or pip install python-gdcm "
                f"(pydicom: {'; '.join(decoder.missing_dependencies)})",
            )
    try:
        return ds.pixel_array
    except _DICOM_ERRORS as exc:
        hint = ""
        if syntax is not None and syntax.is_compressed:
            hint = f" [{syntax.name}; installing pylibjpeg or python-gdcm may decode it]"
        raise ImageDecodeError(path, f"cannot decode pixel data ({type(exc).__name__}: {exc}){hint}") from exc


def decode_dicom(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode one DICOM file to ``size x size`` uint8 grey and its original ``(width, height)``.

    Raises :class:`~cxr_core.data.decode.ImageDecodeError` (naming the file) for anything unreadable.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = Path(path)
    ds = _read(path, stop_before_pixels=False)
    arr = _pixels(ds, path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ImageDecodeError(path, f"not a greyscale radiograph (PhotometricInterpretation {photometric})")
    if arr.ndim == 3:  # multi-frame: a radiograph has one frame; take the first
        arr = arr[0]
    if arr.ndim != 2 or arr.size == 0:
        raise ImageDecodeError(path, f"unexpected pixel array shape {arr.shape}")
    height, width = arr.shape
    try:
        values = apply_voi_lut(apply_modality_lut(arr, ds), ds)
    except _DICOM_ERRORS as exc:
        raise ImageDecodeError(path, f"cannot apply the DICOM LUTs ({type(exc).__name__}: {exc})") from exc
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ImageDecodeError(path, "pixel values are not finite after the DICOM LUTs")
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    if photometric == "MONOCHROME1":
        scaled = 255.0 - scaled
    grey = Image.fromarray(scaled.astype(np.float32))  # float32 -> mode "F"
    if grey.size != (size, size):
        grey = grey.resize((size, size), RESAMPLE, reducing_gap=REDUCING_GAP)
    return np.clip(np.rint(np.asarray(grey)), 0, 255).astype(np.uint8), (int(width), int(height))


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of a PNG / JPEG (Pillow header) or DICOM (header only, no pixels)."""
    path = Path(path)
    if is_dicom(path):
        ds = _read(path, stop_before_pixels=True)
        try:
            return int(ds.Columns), int(ds.Rows)
        except (AttributeError, TypeError, ValueError) as exc:
            raise ImageDecodeError(path, "DICOM header has no Rows / Columns") from exc
    try:
        with Image.open(path, formats=ALLOWED_FORMATS) as im:
            return im.size
    except FileNotFoundError as exc:
        raise ImageDecodeError(path, "file not found") from exc
    except DECODE_ERRORS as exc:
        raise ImageDecodeError(path, f"cannot read the image header ({type(exc).__name__}: {exc})") from exc
