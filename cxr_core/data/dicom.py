"""The one DICOM reader (``cxr predict``, the demo and the external sets) and its display rules.

:func:`read_dicom` accepts a single-frame greyscale radiograph and refuses anything else (colour,
multi-frame, no pixel data) with a message naming the file. Stored values -> Modality LUT (Rescale
Slope / Intercept, or a Modality LUT Sequence) -> VOI (a VOI LUT Sequence if present, else Window
Center / Width with the LINEAR, LINEAR_EXACT or SIGMOID function of DICOM PS3.3 C.11.2.1.2, else
the image's own min..max) -> 0..1, the order DICOM defines for display, so the model sees what a
radiologist was shown; MONOCHROME1 is inverted last.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cxr_core.data.decode import ImageDecodeError

#: Photometric interpretations read as greyscale; anything else is refused.
DICOM_GREY = ("MONOCHROME1", "MONOCHROME2")
_DICOM_MAGIC_OFFSET = 128

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


def has_dicom_magic(path: str | os.PathLike) -> bool:
    """True when the file carries the DICOM Part 10 magic (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(_DICOM_MAGIC_OFFSET)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def dicom_to_unit(stored: np.ndarray, ds: Any) -> np.ndarray:
    """Stored values -> Modality LUT -> VOI -> float64 in [0, 1] (before any MONOCHROME1 inversion)."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    values = apply_modality_lut(stored, ds)
    if ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        lut_in = np.rint(values).astype(np.int64) if values.dtype.kind == "f" else values
        return np.clip(apply_voi(lut_in, ds).astype(np.float64) / (2**bits - 1), 0.0, 1.0)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        return window(np.asarray(values, dtype=np.float64), center, width, function)
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros_like(values)
    return (values - lo) / (hi - lo)


def _first(value: Any) -> float:
    """Window Center / Width may be multi-valued (alternative views): the first one is the default."""
    from pydicom.multival import MultiValue

    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0]
    return float(value)


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM VOI windowing (PS3.3 C.11.2.1.2/3) straight to [0, 1]."""
    if function == "LINEAR":
        if width < 1:
            raise ValueError(f"Window Width {width} < 1 is not valid for a LINEAR window")
        c, w = center - 0.5, width - 1.0
    elif function == "LINEAR_EXACT":
        c, w = center, width
    elif function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"Window Width {width} <= 0 is not valid for a SIGMOID window")
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    else:
        raise ValueError(
            f"unsupported VOI LUT Function {function!r}; expected LINEAR, LINEAR_EXACT or SIGMOID"
        )
    if w <= 0:
        return (values > c).astype(np.float64)
    return np.clip((values - c) / w + 0.5, 0.0, 1.0)


def read_header(path: Path, stop_before_pixels: bool = True) -> Any:  # -> pydicom.Dataset
    """The file's data set (pixels left unread by default); unreadable files name themselves."""
    import pydicom  # imported here: only DICOM users need it
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except FileNotFoundError as exc:
        raise ImageDecodeError(path, "file not found") from exc
    except (InvalidDicomError, *_DICOM_ERRORS) as exc:
        raise ImageDecodeError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc


def _check_radiograph(ds: Any, path: Path) -> str:
    """The photometric interpretation of a single-frame greyscale image with pixel data, else refuse."""
    if "PixelData" not in ds:
        kind = (
            "float pixel data"
            if ("FloatPixelData" in ds or "DoubleFloatPixelData" in ds)
            else "no pixel data"
        )
        raise ImageDecodeError(
            path, f"DICOM has {kind} (e.g. a structured report or a presentation state): nothing to show"
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in DICOM_GREY:
        raise ImageDecodeError(
            path,
            f"DICOM photometric interpretation {photometric or '(missing)'!r} is not supported: only greyscale "
            f"{' / '.join(DICOM_GREY)} radiographs are; export the image as greyscale",
        )
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise ImageDecodeError(path, f"DICOM has {ds.SamplesPerPixel} samples per pixel; expected 1 (grey)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ImageDecodeError(
            path, f"DICOM has {frames} frames; only single-frame radiographs are supported (export one frame)"
        )
    return photometric


def _pixels(ds: Any, path: Path) -> np.ndarray:
    """The stored pixel values, with a plugin hint when a compressed syntax cannot be decoded."""
    from pydicom.pixels import get_decoder

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


def read_dicom(path: str | os.PathLike, check_size: Callable[[int, int], None] | None = None) -> np.ndarray:
    """A greyscale radiograph -> float64 ``H x W`` in [0, 1], bright = dense (MONOCHROME1 inverted).

    ``check_size(width, height)`` runs on the header before any pixel is decoded (upload limits).
    Raises :class:`~cxr_core.data.decode.ImageDecodeError`, naming the file, for anything else.
    """
    path = Path(path)
    ds = read_header(path, stop_before_pixels=False)
    photometric = _check_radiograph(ds, path)
    if check_size is not None:
        check_size(int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0))
    stored = _pixels(ds, path)
    if stored.ndim != 2 or stored.size == 0:
        raise ImageDecodeError(path, f"DICOM pixel array has shape {stored.shape}; expected rows x columns")
    try:
        values = dicom_to_unit(stored, ds)
    except _DICOM_ERRORS as exc:
        raise ImageDecodeError(path, f"cannot apply the DICOM LUTs ({type(exc).__name__}: {exc})") from exc
    if not np.isfinite(values).all():
        raise ImageDecodeError(path, "pixel values are not finite after the DICOM LUTs")
    return 1.0 - values if photometric == "MONOCHROME1" else values
