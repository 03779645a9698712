"""DICOM display rules shared by every reader of DICOM files (``cxr predict``, the external sets).

Stored values -> Modality LUT (Rescale Slope / Intercept, or a Modality LUT Sequence) -> VOI (a VOI
LUT Sequence if present, else Window Center / Width with the LINEAR, LINEAR_EXACT or SIGMOID
function of DICOM PS3.3 C.11.2.1.2, else the image's own min..max) -> 0..1, the order DICOM defines
for display, so the model sees what a radiologist was shown. MONOCHROME1 inversion is the caller's
last step.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

#: Photometric interpretations read as greyscale; anything else is refused.
DICOM_GREY = ("MONOCHROME1", "MONOCHROME2")
_DICOM_MAGIC_OFFSET = 128


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
