"""User files -> uint8 grey: PNG / JPEG / DICOM, refused with a message naming the file when bad.

The pipeline only ever reads the uint8 cache, but ``cxr predict`` and the demo take files a user
brings, so they must (1) refuse bad files with a message naming the file instead of a stack trace,
and (2) turn a file into *exactly* the model input the cache would have produced, or the
probabilities would drift from the test-stage ones.

Reading rules:

* PNG / JPEG (and the cache's other formats): the model input is
  :func:`cxr_core.data.decode.decode_image` itself, so an image gives the same ``S x S`` uint8 as
  its cache row.
* DICOM (detected by the ``DICM`` magic, whatever the file name): pixel data -> Modality LUT
  (Rescale Slope / Intercept, or a Modality LUT Sequence) -> VOI (a VOI LUT Sequence if present,
  else Window Center / Width with the LINEAR, LINEAR_EXACT or SIGMOID function, else the image's own
  min..max) -> 0..1 -> MONOCHROME1 inverted (so bone is always bright, as in the NIH PNGs). The
  0..1 values go through the cache's 16-bit resize path (:func:`resize_grey`). Colour or multi-frame
  DICOMs, files without pixel data, and compressed pixel data without a decoder are refused with
  :class:`UnsupportedImageError`.
* Limits (:class:`ImageLimits`, :data:`DEFAULT_LIMITS`) are checked from the file size and the
  header before any pixel is decoded: :class:`ImageTooLargeError`.

All errors are :class:`cxr_core.data.decode.ImageDecodeError` subclasses (``.path``, ``.reason``),
so one ``except ImageDecodeError`` catches every bad file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_core.data import dicom
from cxr_core.data.decode import (
    ALLOWED_FORMATS,
    DECODE_ERRORS,
    SIXTEEN_BIT_MODES,
    ImageDecodeError,
    decode_image,
    to_grey,
)
from cxr_core.data.dicom import has_dicom_magic

logger = logging.getLogger(__name__)

#: Suffixes taken from a folder (files named explicitly are always tried, whatever their name).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
_MB = 2**20


class UnsupportedImageError(ImageDecodeError):
    """The file is not an image we can read (not an image, or a DICOM we do not support)."""


class ImageTooLargeError(ImageDecodeError):
    """The file or its pixel grid exceeds :class:`ImageLimits`."""


@dataclass(frozen=True)
class ImageLimits:
    """Upload limits: refuse huge files before decoding (a 10k x 10k image is 100 MP)."""

    max_bytes: int = 50 * _MB
    max_side: int = 10_000

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_side < 1:
            raise ValueError(f"image limits must be >= 1, got {self}")

    @classmethod
    def from_mb(cls, max_mb: float, max_side: int) -> ImageLimits:
        """From the CLI's ``--max-mb`` / ``--max-px``."""
        return cls(max_bytes=int(max_mb * _MB), max_side=max_side)

    @property
    def max_mb(self) -> float:
        return self.max_bytes / _MB


DEFAULT_LIMITS = ImageLimits()


def check_file(path: Path, limits: ImageLimits = DEFAULT_LIMITS) -> None:
    """Missing / empty / too-large files fail here, before anything is decoded."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UnsupportedImageError(path, "file not found") from None
    except OSError as exc:
        raise UnsupportedImageError(path, f"cannot read ({exc.strerror or exc})") from None
    if not path.is_file():
        raise UnsupportedImageError(path, "not a regular file")
    if size == 0:
        raise UnsupportedImageError(path, "empty file (0 bytes)")
    if size > limits.max_bytes:
        raise ImageTooLargeError(
            path,
            f"file is {size / _MB:.1f} MB, over the {limits.max_mb:.0f} MB limit; "
            "downscale or re-save it (a chest X-ray PNG is usually under 10 MB)",
        )


def _check_side(path: Path, width: int, height: int, limits: ImageLimits) -> None:
    if max(width, height) > limits.max_side:
        raise ImageTooLargeError(
            path,
            f"image is {width} x {height} px, over the {limits.max_side} px limit per side; downscale it first",
        )


def read_image(
    path: str | os.PathLike, size: int | None = None, *, limits: ImageLimits = DEFAULT_LIMITS
) -> np.ndarray:
    """One file -> uint8 greyscale: native resolution, or ``size x size`` exactly as the cache decodes it.

    PNG, JPEG (and the cache's TIFF / BMP) and DICOM; see the module docstring for the rules.
    Raises :class:`UnsupportedImageError` / :class:`ImageTooLargeError` naming the file.
    """
    path = Path(path)
    check_file(path, limits)
    if has_dicom_magic(path):
        values = read_dicom(path, limits=limits)
        if size is None:
            return np.rint(values * 255.0).astype(np.uint8)
        return resize_grey(np.rint(values * 65535.0).astype(np.uint16), size)
    try:
        with Image.open(path, formats=ALLOWED_FORMATS) as im:
            _check_side(path, im.width, im.height, limits)
            if size is not None:
                return decode_image(path, size)
            im.load()
            if im.mode in SIXTEEN_BIT_MODES:  # the cache's linear 0..65535 -> 0..255, not Pillow's clip
                values = np.clip(np.asarray(im, dtype=np.float32), 0.0, 65535.0)
                return np.rint(values * np.float32(255.0 / 65535.0)).astype(np.uint8)
            if im.mode == "F":
                raise UnsupportedImageError(path, "floating-point pixels (mode F) are not supported")
            return np.asarray(im.convert("L"), dtype=np.uint8)
    except ImageDecodeError as exc:
        if type(exc) is ImageDecodeError:  # from decode_image: same file, same reason
            raise UnsupportedImageError(path, exc.reason) from exc
        raise
    except Image.UnidentifiedImageError:
        raise UnsupportedImageError(
            path, f"not an image file (accepted: {', '.join(ALLOWED_FORMATS)} or DICOM)"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(path, str(exc)) from None
    except DECODE_ERRORS as exc:
        raise UnsupportedImageError(path, f"cannot decode ({type(exc).__name__}: {exc})") from exc


def resize_grey(arr: np.ndarray, size: int) -> np.ndarray:
    """uint8 or uint16 2-D array -> ``size x size`` uint8 with the cache's resize rules (16-bit: linear).

    Delegates to the cache's own converter so a DICOM is resized exactly like a 16-bit PNG would be.
    """
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"resize_grey: expected a 2-D uint8 or uint16 array, got {arr.dtype} {arr.shape}")
    im = Image.fromarray(np.ascontiguousarray(arr if arr.dtype == np.uint8 else arr.astype("<u2")))
    return to_grey(im, size)


def read_dicom(path: str | os.PathLike, *, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """A greyscale DICOM -> float64 ``H x W`` in [0, 1], bright = dense: the pipeline's one DICOM
    reader (:func:`cxr_core.data.dicom.read_dicom`) behind the upload limits."""
    path = Path(path)
    check_file(path, limits)
    try:
        return dicom.read_dicom(
            path, check_size=lambda width, height: _check_side(path, width, height, limits)
        )
    except ImageTooLargeError:
        raise
    except ImageDecodeError as exc:
        raise UnsupportedImageError(path, exc.reason) from None


def collect_files(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files named directly (always tried) plus image files found under folders (recursively, sorted).

    In a folder, a file counts when its suffix is an image suffix, or it has no suffix and carries
    the DICOM magic (PACS exports often have no extension).
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and (p.suffix.lower() in IMAGE_SUFFIXES or (not p.suffix and has_dicom_magic(p)))
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                logger.warning(
                    "%s: no image files (%s or DICOM) in this folder", path, ", ".join(IMAGE_SUFFIXES)
                )
            files.extend(found)
        else:
            files.append(path)
    return list(dict.fromkeys(files))
