"""Files the app tests feed to ``cxr predict``, the demo and the readers: X-rays and checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cxr_core.data.batches import normalise
from cxr_core.labels import LABELS
from cxr_core.models.checkpoints import load_model, save_checkpoint
from cxr_core.models.registry import create_model, get_spec

MODEL = "test_efficientnet"  # timm's ~100k-parameter test net: builds and runs in milliseconds
SIZE = 64


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


def tiny_checkpoint(path: Path, image_size: int = SIZE, seed: int = 0) -> Path:
    """A checkpoint in the train stage's format (tensors + plain metadata) for a tiny timm model."""
    torch.manual_seed(seed)
    model = create_model(MODEL, image_size=image_size)
    save_checkpoint(
        path,
        {
            "format": 1,
            "model_name": MODEL,
            "timm_name": get_spec(MODEL).timm_name,
            "image_size": image_size,
            "labels": list(LABELS),
            "num_classes": len(LABELS),
            "model": model.state_dict(),
            "epoch": 1,
        },
    )
    return path


def direct_probs(checkpoint: Path, grey: np.ndarray) -> np.ndarray:
    """The model run by hand on an S x S uint8 image: normalise, forward, sigmoid."""
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        x = normalise(torch.from_numpy(np.array(grey))[None, None].float())
        return torch.sigmoid(model(x)).numpy()[0]
