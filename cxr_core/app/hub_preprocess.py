"""The pipeline's model input for an exported model: file -> S x S grey -> ImageNet-normalised tensor.

``cxr export`` copies this file, byte for byte, into every export folder as ``preprocess.py``, and
the model card's recipe imports it from there. So it must stay self-contained: numpy, Pillow and
torch only, nothing from ``cxr_core`` (a test runs the card's recipe with ``cxr_core`` blocked).

Why not timm's ``create_transform``: it resizes with Pillow's exact bilinear filter, while the
pipeline (``cxr_core.data.decode``) resizes with ``reducing_gap=2.0``, decodes JPEGs at reduced
scale and maps 16-bit files linearly. On 1024 px images with a radiograph's fine texture that
moves pixels by 10 or more grey levels and a trained model's probabilities by 0.1 or more. The
rules below are the pipeline's, and a test checks they give the same uint8 pixels and float32
tensors:

* PNG / JPEG / TIFF / BMP only (DICOM: use ``cxr predict``, which applies the DICOM display rules).
* 16-bit (``I;16*`` / ``I``): ``v * 255 / 65535`` in float32, resized in float, rounded, clipped.
* Other modes: Pillow's ``convert("L")`` (an RGBA file with R = G = B gives exactly its grey).
* Resize: ``BILINEAR`` with ``reducing_gap=2.0`` to ``S x S`` (non-square images are stretched);
  a JPEG is first decoded at 1/2, 1/4 or 1/8 scale (``Image.draft``).
* Normalise: grey repeated to 3 channels, ``value * (1 / (255 std)) - mean / std`` in float32.

Usage: ``x = load_batch(["xray.png"], size)`` with ``size = model.pretrained_cfg["input_size"][-1]``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

#: ImageNet mean / std, the normalisation the model was trained with.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
#: Resampling filter and reducing gap of every resize.
RESAMPLE = Image.Resampling.BILINEAR
REDUCING_GAP = 2.0
#: Formats opened; anything else is refused rather than handed to an arbitrary Pillow plugin.
FORMATS = ("PNG", "JPEG", "TIFF", "BMP")
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class PreprocessError(ValueError):
    """A file this module cannot turn into model input; the message names the file."""


def load(path: str | os.PathLike, size: int) -> np.ndarray:
    """One image file -> ``size x size`` uint8 grey, exactly as ``cxr predict`` reads it."""
    path = os.fspath(path)
    with open(path, "rb") as fh:
        if fh.read(132)[128:] == b"DICM":
            raise PreprocessError(f"{path}: DICOM is not read here; use `cxr predict`, or save it as PNG")
    try:
        with Image.open(path, formats=FORMATS) as im:
            if im.format == "JPEG":
                im.draft("L", (size, size))  # libjpeg decodes at 1/2, 1/4 or 1/8 scale, in grey
            im.load()
            return _to_grey(im, size, path)
    except (OSError, SyntaxError) as exc:
        raise PreprocessError(f"{path}: cannot decode ({type(exc).__name__}: {exc})") from exc


def _to_grey(im: Image.Image, size: int, path: str) -> np.ndarray:
    """Greyscale + resize (16-bit linearly in float, everything else through 8-bit ``L``)."""
    if im.mode in SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(im).astype(np.float32), 0.0, 65535.0)
        values *= np.float32(255.0 / 65535.0)
        grey = Image.fromarray(values)  # float32 -> mode F
        if grey.size != (size, size):
            grey = grey.resize((size, size), RESAMPLE, reducing_gap=REDUCING_GAP)
        return np.clip(np.rint(np.asarray(grey)), 0, 255).astype(np.uint8)
    if im.mode == "F":
        raise PreprocessError(f"{path}: floating-point pixels (mode F) are not supported; save as 8/16-bit")
    if im.mode != "L":
        im = im.convert("L")
    if im.size != (size, size):
        im = im.resize((size, size), RESAMPLE, reducing_gap=REDUCING_GAP)
    return np.asarray(im, dtype=np.uint8)


def normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(B, S, S)`` (or one ``S x S``) -> float32 ``(B, 3, S, S)``, the pipeline's arithmetic.

    ``(v / 255 - mean) / std`` is computed as ``v * scale + shift`` with the constants rounded to
    float32 once, as the pipeline does, so the tensor is bit-identical to its model input.
    """
    batch = np.asarray(images, dtype=np.uint8)
    x = torch.from_numpy(np.ascontiguousarray(batch.reshape(-1, 1, *batch.shape[-2:]))).float()
    scale = torch.tensor([1.0 / (255.0 * s) for s in STD], dtype=torch.float32).view(1, 3, 1, 1)
    shift = torch.tensor([-MEAN[c] / STD[c] for c in range(3)], dtype=torch.float32).view(1, 3, 1, 1)
    return torch.addcmul(shift, x, scale)


def load_batch(paths: Sequence[str | os.PathLike], size: int) -> torch.Tensor:
    """Files -> the model's float32 ``(B, 3, size, size)`` input batch."""
    return normalise(np.stack([load(p, size) for p in paths]))
