"""Decode a DICOM radiograph to ``S x S`` uint8 grey, exactly as ``cxr predict`` reads one.

VinDr-CXR ships DICOM only, with 12- to 16-bit pixels, some MONOCHROME1 (white = air) and most
with a window chosen by the modality for display. The display rules are ``cxr_core.data.dicom``'s
(modality LUT, then the VOI LUT or window, else the image's own min..max, to 0..1), MONOCHROME1 is
inverted, and the 0..1 values take the cache's 16-bit resize path (``decode.to_grey``): a DICOM
gives the model the same pixels through the external cache and through ``cxr predict``.

Compressed transfer syntaxes need a decoder plugin (pylibjpeg or gdcm) that pydicom does not bring;
the error says which to install.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_core.data.decode import ALLOWED_FORMATS, DECODE_ERRORS, ImageDecodeError, to_grey
from cxr_core.data.dicom import DICOM_GREY, dicom_to_unit, has_dicom_magic

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
    IndexError,
    TypeError,
    EOFError,
    struct.error,
    zlib.error,
)


def is_dicom(path: Path) -> bool:
    """True for a ``.dcm`` / ``.dicom`` name or a file with the ``DICM`` marker at byte 128."""
    return Path(path).suffix.lower() in DICOM_SUFFIXES or has_dicom_magic(path)


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
    path = Path(path)
    ds = _read(path, stop_before_pixels=False)
    arr = _pixels(ds, path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in DICOM_GREY or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ImageDecodeError(path, f"not a greyscale radiograph (PhotometricInterpretation {photometric})")
    if arr.ndim == 3:  # multi-frame: a radiograph has one frame; take the first
        arr = arr[0]
    if arr.ndim != 2 or arr.size == 0:
        raise ImageDecodeError(path, f"unexpected pixel array shape {arr.shape}")
    height, width = arr.shape
    try:
        values = dicom_to_unit(arr, ds)
    except _DICOM_ERRORS as exc:
        raise ImageDecodeError(path, f"cannot apply the DICOM LUTs ({type(exc).__name__}: {exc})") from exc
    if not np.isfinite(values).all():
        raise ImageDecodeError(path, "pixel values are not finite after the DICOM LUTs")
    if photometric == "MONOCHROME1":
        values = 1.0 - values
    sixteen = Image.fromarray(np.ascontiguousarray(np.rint(values * 65535.0).astype("<u2")))
    return to_grey(sixteen, size), (int(width), int(height))


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
