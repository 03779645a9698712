"""Decode a DICOM radiograph to ``S x S`` uint8 grey, exactly as ``cxr predict`` reads one.

VinDr-CXR ships DICOM only, with 12- to 16-bit pixels, some MONOCHROME1 (white = air) and most
with a window chosen by the modality for display. The display rules are ``cxr_core.data.dicom``'s
(modality LUT, then the VOI LUT or window, else the image's own min..max, to 0..1), MONOCHROME1 is
inverted, and the 0..1 values take the cache's 16-bit resize path (``decode.to_grey``): a DICOM
gives the model the same pixels through the external cache and through ``cxr predict``.

The reader and its rules (one frame, greyscale, decoder hints) are ``cxr_core.data.dicom``'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cxr_core.data.decode import ALLOWED_FORMATS, DECODE_ERRORS, ImageDecodeError, to_grey
from cxr_core.data.dicom import has_dicom_magic, read_dicom, read_header

#: File name endings taken as DICOM without looking at the content.
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")


def is_dicom(path: Path) -> bool:
    """True for a ``.dcm`` / ``.dicom`` name or a file with the ``DICM`` marker at byte 128."""
    return Path(path).suffix.lower() in DICOM_SUFFIXES or has_dicom_magic(path)


def decode_dicom(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode one DICOM file to ``size x size`` uint8 grey and its original ``(width, height)``.

    Raises :class:`~cxr_core.data.decode.ImageDecodeError` (naming the file) for anything unreadable.
    """
    values = read_dicom(path)
    height, width = values.shape
    sixteen = Image.fromarray(np.ascontiguousarray(np.rint(values * 65535.0).astype("<u2")))
    return to_grey(sixteen, size), (int(width), int(height))


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of a PNG / JPEG (Pillow header) or DICOM (header only, no pixels)."""
    path = Path(path)
    if is_dicom(path):
        ds = read_header(path)
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
