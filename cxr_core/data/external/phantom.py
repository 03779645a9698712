"""A shifted phantom external set, written in CheXpert's layout: the external stages' known answer.

The same signs as the NIH phantom (``cxr_core.data.sources.phantom``) on new patients, under a
controlled shift a real second hospital brings: other contrast, more noise, JPEG compression,
another image size, and CheXpert's label subset (7 direct findings and the Lung Lesion proxy, with
uncertain ``-1.0`` and blank values, and lateral views to skip). A model that learned the signs
scores above chance but below its NIH phantom AUC; one that learned nothing stays at chance.

Unlike the real ``valid.csv`` (radiologist consensus, no uncertain or blank values), the phantom's
has both, so their handling runs in every default ``dvc repro``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from cxr_core.data.sources.phantom import ImageSpec, prevalences, render
from cxr_core.labels import LABEL_INDEX, NUM_CLASSES

#: The folder and label file the phantom writes, as CheXpert-v1.0-small ships them.
FOLDER = "CheXpert-v1.0-small"
CSV = "valid.csv"
#: CheXpert's columns, in its order; the phantom fills the findings it can derive from NIH's.
HEADER: tuple[str, ...] = (
    "Path",
    "Sex",
    "Age",
    "Frontal/Lateral",
    "AP/PA",
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
#: CheXpert column <- the NIH findings whose presence makes it positive.
FROM_NIH: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": ("Cardiomegaly",),
    "Lung Lesion": ("Mass", "Nodule"),
    "Edema": ("Edema",),
    "Consolidation": ("Consolidation",),
    "Pneumonia": ("Pneumonia",),
    "Atelectasis": ("Atelectasis",),
    "Pneumothorax": ("Pneumothorax",),
    "Pleural Effusion": ("Effusion",),
}


@dataclass(frozen=True)
class ExternalPhantomConfig:
    """The ``external.phantom`` section of params.yaml, key for key."""

    images: int
    image_px: int
    seed: int
    contrast: float
    noise: float
    jpeg_quality: int
    uncertain_fraction: float
    blank_fraction: float
    lateral_fraction: float
    prevalence_floor: float

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> ExternalPhantomConfig:
        """From ``external.phantom``; its ``uncertain`` key is how the set is read, not drawn."""
        return cls(**{k: v for k, v in section.items() if k != "uncertain"})


def shift(pixels: np.ndarray, cfg: ExternalPhantomConfig, rng: np.random.Generator) -> np.ndarray:
    """The scanner shift: contrast scaled about the image mean, then Gaussian noise (grey levels)."""
    x = pixels.astype(np.float32)
    x = x.mean() + cfg.contrast * (x - x.mean())
    x += cfg.noise * rng.standard_normal(x.shape, dtype=np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _cell(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.1f}"


def generate(cfg: ExternalPhantomConfig, root: Path) -> pd.DataFrame:
    """Write ``root/CheXpert-v1.0-small/{valid.csv, valid/patient*/study*/view*.jpg}``; returns the
    NIH truth of every frontal image (``Path`` + 14 NIH label columns) for tests."""
    rng = np.random.default_rng([cfg.seed, 15])
    prev = prevalences(cfg.prevalence_floor)
    rows, truth = [], []
    patient = 64540  # CheXpert's validation patients are patient64541 onwards
    written = 0
    while written < cfg.images:
        patient += 1
        for study in range(1, min(int(rng.integers(1, 4)), cfg.images - written) + 1):
            labels = (rng.random(NUM_CLASSES) < prev).astype(np.uint8)
            seed = int(rng.integers(2**31))
            views = ["frontal"] + (["lateral"] if rng.random() < cfg.lateral_fraction else [])
            for k, view in enumerate(views, start=1):
                rel = f"{FOLDER}/valid/patient{patient:05d}/study{study}/view{k}_{view}.jpg"
                pixels = render(ImageSpec(name=rel, labels=labels, seed=seed), cfg.image_px).pixels
                if view == "lateral":  # not a real lateral: mirrored, so frontal_only must drop it
                    pixels = pixels[:, ::-1]
                out = root / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(shift(pixels, cfg, rng), mode="L").save(out, quality=cfg.jpeg_quality)
                row: dict[str, Any] = {
                    "Path": rel,
                    "Sex": "Male" if rng.random() < 0.5 else "Female",
                    "Age": int(rng.integers(18, 90)),
                    "Frontal/Lateral": view.capitalize(),
                    "AP/PA": "AP" if view == "frontal" else "",
                    "No Finding": "1.0" if not labels.any() else "",
                }
                for column in HEADER[6:]:
                    nih = FROM_NIH.get(column)
                    value = float(any(labels[LABEL_INDEX[n]] for n in nih)) if nih else 0.0
                    draw = rng.random()
                    if value == 1.0 and draw < cfg.uncertain_fraction:
                        value = -1.0
                    elif draw > 1.0 - cfg.blank_fraction:
                        value = float("nan")
                    row[column] = _cell(value)
                rows.append(row)
                if view == "frontal":
                    truth.append({"Path": rel, **dict(zip(LABEL_INDEX, labels.tolist(), strict=True))})
            written += 1
    table = pd.DataFrame(rows, columns=list(HEADER))
    (root / FOLDER).mkdir(parents=True, exist_ok=True)
    table.to_csv(root / FOLDER / CSV, index=False)
    return pd.DataFrame(truth)
