"""Decode one X-ray file to ``S x S`` uint8 grey: the rules the cache and the app share.

The preprocess stage caches every image through :func:`decode_image`, and the app reads a user's
file through it too, so a file gives the model the same pixels either way.

Decisions (measured with Pillow 13 on this machine, 1024 -> 224):

* Resize: ``Image.Resampling.BILINEAR`` with ``reducing_gap=2.0``. Pillow's bilinear is
  antialiased when shrinking (it is what ``torchvision.transforms.Resize`` does on PIL images);
  ``reducing_gap=2.0`` first box-reduces by 2, which halves the cost (2.4 ms -> 1.1 ms per image,
  vs ~9 ms to decode the PNG) and stays within 2 grey levels (mean 0.3) of the exact bilinear result.
  Non-square images are stretched to ``S x S`` (NIH images are all square).
* Colour: RGB / RGBA / palette / LA / 1-bit go through Pillow's ``convert("L")`` (ITU-R 601 luma,
  alpha ignored), so an RGBA file with R = G = B gives exactly the grey values.
* 16-bit (``I;16*`` / ``I``): linear ``0..65535 -> 0..255`` (``v * 255 / 65535``, resized in float,
  rounded to nearest; 65535 -> 255, 32896 -> 128). Pillow's own ``convert("L")`` clips instead,
  which would turn most of a 16-bit radiograph white. ``I`` values outside 0..65535 are clipped.
* JPEG: ``Image.draft("L", (S, S))`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale and in grey.
* Truncation: Pillow's ``LOAD_TRUNCATED_IMAGES`` must be False (checked), ``.load()`` runs inside
  the error handling, and a PNG must end with its ``IEND`` chunk (Pillow accepts a PNG cut inside
  its last IDAT checksum or IEND chunk).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile

from cxr_core.errors import CxrError

#: Resampling filter and reducing gap used for every resize (see the module docstring).
RESAMPLE = Image.Resampling.BILINEAR
REDUCING_GAP = 2.0

#: Formats we open; anything else is refused rather than handed to an arbitrary Pillow plugin.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "TIFF", "BMP")

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_PNG_IEND = b"IEND\xaeB`\x82"
# Everything Pillow raises on a broken file (UnidentifiedImageError is an OSError; some plugins
# raise SyntaxError, struct.error or EOFError on garbage headers).
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)


class ImageDecodeError(CxrError):
    """One image file could not be read; the message names the file so the user can fix it."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self.path), self.reason))


def decode_image(path: Path, size: int) -> np.ndarray:
    """Decode one image file to a ``size x size`` uint8 greyscale array.

    Raises :class:`ImageDecodeError` (naming the file) for a missing, truncated or non-image file.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True somewhere in this process; truncated X-rays "
            "would be cached as half-grey images. Remove that setting before building the cache."
        )
    path = Path(path)
    try:
        with Image.open(path, formats=ALLOWED_FORMATS) as im:
            if im.format == "JPEG":
                im.draft("L", (size, size))
            if im.format == "PNG":
                _check_png_end(path)
            im.load()
            return to_grey(im, size)
    except ImageDecodeError:
        raise
    except FileNotFoundError as exc:
        raise ImageDecodeError(path, "file not found") from exc
    except DECODE_ERRORS as exc:
        raise ImageDecodeError(path, f"cannot decode ({type(exc).__name__}: {exc})") from exc


def _check_png_end(path: Path) -> None:
    """Refuse a PNG without its final IEND chunk: Pillow loads one cut inside its last chunks."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 1024))
        if _PNG_IEND not in fh.read():
            raise ImageDecodeError(path, "truncated PNG (no IEND chunk at the end of the file)")


def to_grey(im: Image.Image, size: int) -> np.ndarray:
    """Greyscale + resize with the module's rules (see the module docstring)."""
    if im.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(im).astype(np.float32)
        np.clip(values, 0.0, 65535.0, out=values)
        values *= np.float32(255.0 / 65535.0)
        grey = Image.fromarray(values, mode="F")
        if grey.size != (size, size):
            grey = grey.resize((size, size), RESAMPLE, reducing_gap=REDUCING_GAP)
        return np.clip(np.rint(np.asarray(grey)), 0, 255).astype(np.uint8)
    if im.mode != "L":
        if im.mode == "F":
            raise ImageDecodeError(im.filename, "unsupported pixel mode F (floating point); save as 8/16-bit")
        im = im.convert("L")
    if im.size != (size, size):
        im = im.resize((size, size), RESAMPLE, reducing_gap=REDUCING_GAP)
    return np.asarray(im, dtype=np.uint8)
