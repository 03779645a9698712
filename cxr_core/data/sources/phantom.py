"""A phantom ChestX-ray14: synthetic chest radiographs in exactly the official layout.

The embedded default data source. It is written as NIH ships the real set (1024 x 1024 PNGs in
``images/``, a few RGBA; the label table in the format of ``Data_Entry_2017_v2020.csv``, unsorted,
with split bracketed headers and a few ``Follow-up #`` values that disagree with the file name,
written straight under the raw folder's name ``Data_Entry.csv``; ``BBox_List_2017.csv`` with its 9-field
header, float boxes and ``Infiltrate``; patient-disjoint ``train_val_list.txt`` / ``test_list.txt``
without a final newline), so every stage after ``download`` runs the same code on phantom and real
data.

Because the truth is known, it is also the project's known-answer test. Each finding has its own
sign: the 8 box findings a *localised* one at a plausible place (enlarged heart, small dense nodule,
larger mass, basal effusion with a meniscus, apical pneumothorax with a pleural line, plate-like
atelectasis, patchy infiltrates, a fuzzy pneumonic opacity), whose box is the bounding box of the
pixels the sign changed; the other 6 diffuse or non-boxed signs (consolidated lung, perihilar
oedema, dark hyperlucent lungs, reticular fibrosis, pleural rim, retrocardiac hernia). A model that
learned the signs scores a high AUC and its heatmaps hit the boxes far more often than chance.

Every image is a pure function of ``(config, image number)``: generation is deterministic and
parallel workers need no shared state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from cxr_core.data.metadata import (
    BBOX_LIST,
    BOX_SPACE,
    DATA_ENTRY,
    TEST_LIST,
    TRAIN_VAL_LIST,
    write_image_list,
)
from cxr_core.data.pool import pool_context
from cxr_core.labels import BOX_LABELS, LABELS, REAL_COUNTS, REAL_IMAGES, decode

log = logging.getLogger(__name__)

#: Low-resolution canvas for the smooth anatomy, upsampled to the PNG size (signs are drawn at full size).
_BASE_PX = 256
#: A pixel counts as part of a sign when the sign changed it by at least this many grey levels.
SIGN_SUPPORT = 1.0
#: The header of NIH's ``Data_Entry_2017_v2020.csv`` (the raw folder's normalised format).
DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
#: What the manifest's ``label_file`` says for the phantom: its own labels, in the v2020 file's format.
LABEL_FILE = "Data_Entry_2017_v2020.csv (phantom)"


@dataclass(frozen=True)
class PhantomConfig:
    """Size and shape of the phantom set: the ``data.phantom`` section of params.yaml, key for key."""

    images: int
    image_px: int
    seed: int
    test_patient_fraction: float
    prevalence_floor: float
    rgba_fraction: float
    box_fraction: float
    workers: int


def prevalences(floor: float) -> np.ndarray:
    """Per-finding prevalence: the real one, raised to ``floor`` so rare findings have test positives."""
    real = np.array([REAL_COUNTS[name] / REAL_IMAGES for name in LABELS])
    return np.maximum(real, floor)


# --------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class Ellipse:
    """An axis-aligned ellipse in normalised image coordinates (0..1)."""

    cx: float
    cy: float
    rx: float
    ry: float

    def bounds(self, px: int, pad: float = 0.0) -> tuple[int, int, int, int]:
        """Integer pixel bounds ``(y0, y1, x0, x1)`` of the ellipse plus ``pad`` (normalised), clipped."""
        y0 = max(0, math.floor((self.cy - self.ry - pad) * px))
        y1 = min(px, math.ceil((self.cy + self.ry + pad) * px))
        x0 = max(0, math.floor((self.cx - self.rx - pad) * px))
        x1 = min(px, math.ceil((self.cx + self.rx + pad) * px))
        return y0, y1, x0, x1


@dataclass(frozen=True)
class Anatomy:
    """The normal chest of one image: body, two lung fields, heart, ribs, exposure."""

    body: Ellipse
    lungs: tuple[Ellipse, Ellipse]  # (patient's right = image left, patient's left = image right)
    heart: Ellipse
    rib_phase: float
    rib_spacing: float
    exposure: float  # brightness offset in grey levels
    noise_sigma: float


def _grid(y0: int, y1: int, x0: int, x1: int, px: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates of a crop, as broadcastable (column, row) arrays."""
    yy = ((np.arange(y0, y1, dtype=np.float32) + 0.5) / px)[:, None]
    xx = ((np.arange(x0, x1, dtype=np.float32) + 0.5) / px)[None, :]
    return yy, xx


def _inside(e: Ellipse, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Normalised radius: < 1 inside the ellipse."""
    return np.sqrt(((xx - e.cx) / e.rx) ** 2 + ((yy - e.cy) / e.ry) ** 2)


def _soft(e: Ellipse, yy: np.ndarray, xx: np.ndarray, edge: float) -> np.ndarray:
    """Soft ellipse mask in 0..1 with an edge ``edge`` (in radius units) wide; exactly 0 far outside."""
    r = _inside(e, yy, xx)
    return np.clip((1.0 - r) / edge + 0.5, 0.0, 1.0)


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    jx, jy = rng.uniform(-0.025, 0.025, size=2)
    scale = rng.uniform(0.93, 1.06)
    lung_y = 0.46 + jy
    right = Ellipse(0.5 - 0.168 * scale + jx, lung_y, 0.125 * scale, 0.275 * scale)
    left = Ellipse(0.5 + 0.165 * scale + jx, lung_y + 0.005, 0.118 * scale, 0.265 * scale)
    heart_scale = rng.uniform(0.9, 1.1)
    heart = Ellipse(0.535 + jx, lung_y + 0.19 * scale, 0.1 * heart_scale * scale, 0.08 * heart_scale * scale)
    return Anatomy(
        body=Ellipse(0.5 + jx, 0.56 + jy, 0.43 * scale, 0.5),
        lungs=(right, left),
        heart=heart,
        rib_phase=float(rng.uniform(0, 2 * math.pi)),
        rib_spacing=float(rng.uniform(0.052, 0.062)),
        exposure=float(rng.uniform(-12, 12)),
        noise_sigma=float(rng.uniform(5, 9)),
    )


def render_anatomy(a: Anatomy, px: int, noise_seed: int | list[int]) -> np.ndarray:
    """The normal chest at ``px`` x ``px`` as float32 grey levels, drawn at low resolution.

    Quantum noise is drawn on the low-resolution canvas too: it survives the cache's downscaling
    like real film grain, and keeps the PNGs compressible (~350 KB, as NIH's) and fast to write.
    """
    n = _BASE_PX
    yy, xx = _grid(0, n, 0, n, n)
    img = np.full((n, n), 18.0, dtype=np.float32)
    img += 105.0 * _soft(a.body, yy, xx, 0.06)
    spine = np.exp(-(((xx - a.body.cx) / 0.035) ** 2)) * (yy > 0.08)
    img += 55.0 * spine
    lungs = np.maximum(_soft(a.lungs[0], yy, xx, 0.08), _soft(a.lungs[1], yy, xx, 0.08))
    ribs = 0.5 + 0.5 * np.cos(2 * math.pi * (yy - 0.12 * (xx - 0.5) ** 2 * 4) / a.rib_spacing + a.rib_phase)
    img += lungs * (-70.0 + 22.0 * ribs**4)
    img += 75.0 * _soft(a.heart, yy, xx, 0.12)
    img += a.exposure
    img += a.noise_sigma * np.random.default_rng(noise_seed).standard_normal((n, n), dtype=np.float32)
    if px != n:
        img = np.asarray(Image.fromarray(img, mode="F").resize((px, px), Image.Resampling.BILINEAR))
    return img.astype(np.float32, copy=True)


# --------------------------------------------------------------------------- signs


@dataclass(frozen=True)
class Sign:
    """One finding drawn on one image: an additive intensity change inside a crop."""

    label: str
    draw: Callable[[int], tuple[tuple[int, int, int, int], np.ndarray]]  # px -> (crop, delta)

    def apply(self, img: np.ndarray) -> tuple[int, int, int, int] | None:
        """Add the sign to ``img`` in place; returns the box ``(x0, y0, x1, y1)`` of changed pixels."""
        (y0, y1, x0, x1), delta = self.draw(img.shape[0])
        support = np.abs(delta) >= SIGN_SUPPORT
        img[y0:y1, x0:x1] += np.where(support, delta, 0.0)  # tails below one grey level are cut off
        if not support.any():
            return None
        rows = np.flatnonzero(support.any(axis=1))
        cols = np.flatnonzero(support.any(axis=0))
        return x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1


def _point_in(lung: Ellipse, rng: np.random.Generator, v_range: tuple[float, float], u_max: float = 0.6):
    """A point inside ``lung``: ``v`` runs top (-1) to bottom (+1), ``u`` across (-1..1)."""
    v = rng.uniform(*v_range)
    u = rng.uniform(-u_max, u_max) * math.sqrt(max(0.0, 1 - v * v))
    return lung.cx + u * lung.rx, lung.cy + v * lung.ry


def _blob(cx: float, cy: float, radius: float, amp: float, edge: float | None) -> Callable:
    """A disk with a soft edge ``edge`` radius units wide (``None``: a 2-px edge), or with
    ``edge=inf`` a Gaussian blob; drawn in its own crop."""

    def draw(px: int):
        e = Ellipse(cx, cy, radius, radius)
        gaussian = edge == math.inf
        width = 2.0 / (radius * px) if edge is None else edge
        crop = e.bounds(px, pad=radius * (1.2 if gaussian else 0.6 * width + 0.05))
        yy, xx = _grid(*crop, px)
        r = _inside(e, yy, xx)
        if gaussian:
            prof = np.exp(-2.0 * r**2)
            prof[prof < 0.02] = 0.0
        else:
            prof = np.clip((1.0 - r) / width + 0.5, 0.0, 1.0)
        return crop, (amp * prof).astype(np.float32)

    return draw


def _sign_cardiomegaly(a: Anatomy, rng: np.random.Generator) -> Callable:
    grow_x, grow_y = rng.uniform(1.45, 1.7), rng.uniform(1.15, 1.3)
    big = Ellipse(a.heart.cx + 0.01, a.heart.cy + 0.01, a.heart.rx * grow_x, a.heart.ry * grow_y)

    def draw(px: int):
        crop = big.bounds(px, pad=0.02)
        yy, xx = _grid(*crop, px)
        delta = 75.0 * np.clip(_soft(big, yy, xx, 0.12) - _soft(a.heart, yy, xx, 0.12), 0.0, 1.0)
        return crop, delta.astype(np.float32)

    return draw


def _sign_effusion(a: Anatomy, rng: np.random.Generator) -> Callable:
    lung = a.lungs[rng.integers(2)]
    level = rng.uniform(0.35, 0.6)  # meniscus height in lung radius units below the centre
    curve = rng.uniform(0.15, 0.3)

    def draw(px: int):
        top = lung.cy + (level - curve - 0.05) * lung.ry
        y0, y1, x0, x1 = lung.bounds(px, pad=0.01)
        y0 = max(y0, math.floor(top * px))
        yy, xx = _grid(y0, y1, x0, x1, px)
        u = (xx - lung.cx) / lung.rx
        meniscus = lung.cy + (level - curve * u**2) * lung.ry  # rises towards the chest wall
        fluid = np.clip((yy - meniscus) * px / 6.0 + 0.5, 0.0, 1.0)
        delta = 72.0 * fluid * _soft(lung, yy, xx, 0.05)
        delta[delta < 0.5] = 0.0
        return (y0, y1, x0, x1), delta.astype(np.float32)

    return draw


def _sign_pneumothorax(a: Anatomy, rng: np.random.Generator) -> Callable:
    side = int(rng.integers(2))
    lung = a.lungs[side]
    depth = rng.uniform(0.35, 0.55)  # how far down the apex the air reaches (radius units from the top)
    lateral = -1.0 if side == 0 else 1.0  # towards the chest wall

    def draw(px: int):
        y0, y1, x0, x1 = lung.bounds(px, pad=0.01)
        y1 = min(y1, math.ceil((lung.cy + (-1 + depth) * lung.ry + 0.01) * px))
        yy, xx = _grid(y0, y1, x0, x1, px)
        inside = _soft(lung, yy, xx, 0.05)
        v = (yy - lung.cy) / lung.ry
        u = (xx - lung.cx) / lung.rx * lateral
        # the collapsed lung edge: a curve from the apex down the lateral side
        edge = (v + 1.0) / depth + 0.6 * (1 - u)
        air = np.clip((1.2 - edge) * 4.0, 0.0, 1.0)
        line = np.exp(-(((edge - 1.2) * lung.ry * px / 3.0) ** 2))
        delta = inside * (-45.0 * air + 60.0 * line)
        delta[np.abs(delta) < 0.5] = 0.0
        return (y0, y1, x0, x1), delta.astype(np.float32)

    return draw


def _sign_atelectasis(a: Anatomy, rng: np.random.Generator) -> Callable:
    lung = a.lungs[rng.integers(2)]
    cx, cy = _point_in(lung, rng, (0.2, 0.6), u_max=0.4)
    length = rng.uniform(0.12, 0.17)
    thick = rng.uniform(0.02, 0.03)
    angle = math.radians(rng.uniform(-25, 25))

    def draw(px: int):
        half = 0.5 * length + 0.01
        crop = Ellipse(cx, cy, half, half).bounds(px)
        yy, xx = _grid(*crop, px)
        du, dv = xx - cx, yy - cy
        along = du * math.cos(angle) + dv * math.sin(angle)
        across = -du * math.sin(angle) + dv * math.cos(angle)
        band = np.clip((1 - np.sqrt((along / (0.5 * length)) ** 2 + (across / thick) ** 2)) * 4, 0, 1)
        return crop, (75.0 * band).astype(np.float32)

    return draw


def _sign_infiltration(a: Anatomy, rng: np.random.Generator) -> Callable:
    lung = a.lungs[rng.integers(2)]
    cx, cy = _point_in(lung, rng, (-0.4, 0.5), u_max=0.4)
    blobs = [
        _blob(
            cx + rng.uniform(-0.05, 0.05),
            cy + rng.uniform(-0.06, 0.06),
            rng.uniform(0.02, 0.032),
            55.0,
            math.inf,
        )
        for _ in range(int(rng.integers(5, 9)))
    ]

    def draw(px: int):
        parts = [b(px) for b in blobs]
        y0 = min(c[0] for c, _ in parts)
        y1 = max(c[1] for c, _ in parts)
        x0 = min(c[2] for c, _ in parts)
        x1 = max(c[3] for c, _ in parts)
        delta = np.zeros((y1 - y0, x1 - x0), np.float32)
        for (by0, by1, bx0, bx1), d in parts:
            delta[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] += d
        return (y0, y1, x0, x1), delta

    return draw


def _sign_mass(a: Anatomy, rng: np.random.Generator) -> Callable:
    lung = a.lungs[rng.integers(2)]
    cx, cy = _point_in(lung, rng, (-0.5, 0.4), u_max=0.45)
    return _blob(cx, cy, rng.uniform(0.045, 0.065), 70.0, None)


def _sign_nodule(a: Anatomy, rng: np.random.Generator) -> Callable:
    lung = a.lungs[rng.integers(2)]
    cx, cy = _point_in(lung, rng, (-0.6, 0.5), u_max=0.6)
    return _blob(cx, cy, rng.uniform(0.025, 0.032), 100.0, None)


def _sign_pneumonia(a: Anatomy, rng: np.random.Generator) -> Callable:
    lung = a.lungs[rng.integers(2)]
    cx, cy = _point_in(lung, rng, (-0.1, 0.5), u_max=0.35)
    return _blob(cx, cy, rng.uniform(0.07, 0.09), 60.0, 0.5)  # dense centre, fuzzy edge


def _whole_lungs(a: Anatomy, which: tuple[int, ...], fn: Callable) -> Callable:
    """A diffuse sign over one or both lung fields: ``fn(lung, yy, xx) -> delta``."""

    def draw(px: int):
        es = [a.lungs[i] for i in which]
        bounds = [e.bounds(px, pad=0.02) for e in es]
        crop = (
            min(b[0] for b in bounds),
            max(b[1] for b in bounds),
            min(b[2] for b in bounds),
            max(b[3] for b in bounds),
        )
        yy, xx = _grid(*crop, px)
        delta = sum(fn(e, yy, xx) for e in es)
        return crop, np.asarray(delta, dtype=np.float32)

    return draw


def _sign_consolidation(a: Anatomy, rng: np.random.Generator) -> Callable:
    side = int(rng.integers(2))
    return _whole_lungs(a, (side,), lambda e, yy, xx: 30.0 * _soft(e, yy, xx, 0.1))


def _sign_edema(a: Anatomy, rng: np.random.Generator) -> Callable:
    def hilar(e: Ellipse, yy, xx):
        hx = e.cx + (0.55 * e.rx if e.cx < 0.5 else -0.55 * e.rx)
        r2 = ((xx - hx) / (0.7 * e.rx)) ** 2 + ((yy - e.cy) / (0.45 * e.ry)) ** 2
        return 38.0 * np.exp(-r2) * _soft(e, yy, xx, 0.1)

    return _whole_lungs(a, (0, 1), hilar)


def _sign_emphysema(a: Anatomy, rng: np.random.Generator) -> Callable:
    return _whole_lungs(a, (0, 1), lambda e, yy, xx: -24.0 * _soft(e, yy, xx, 0.1))


def _sign_fibrosis(a: Anatomy, rng: np.random.Generator) -> Callable:
    freq = rng.uniform(55, 70)

    def reticular(e: Ellipse, yy, xx):
        net = np.abs(np.sin(freq * math.pi * xx) * np.sin(freq * math.pi * yy)) ** 0.5
        lower = np.clip((yy - e.cy) / e.ry + 0.6, 0, 1)
        return 26.0 * net * lower * _soft(e, yy, xx, 0.1)

    return _whole_lungs(a, (0, 1), reticular)


def _sign_pleural_thickening(a: Anatomy, rng: np.random.Generator) -> Callable:
    side = int(rng.integers(2))

    def rim(e: Ellipse, yy, xx):
        r = _inside(e, yy, xx)
        return 60.0 * np.exp(-(((r - 0.94) / 0.05) ** 2))

    return _whole_lungs(a, (side,), rim)


def _sign_hernia(a: Anatomy, rng: np.random.Generator) -> Callable:
    cx, cy, rad = a.heart.cx - 0.02, a.heart.cy + 0.02, rng.uniform(0.045, 0.06)

    def draw(px: int):
        e = Ellipse(cx, cy, rad, rad)
        crop = e.bounds(px, pad=0.005)
        yy, xx = _grid(*crop, px)
        inside = _soft(e, yy, xx, 0.1)
        gas = np.clip((cy - 0.2 * rad - yy) * px / 3.0 + 0.5, 0, 1)  # air-fluid level: dark gas cap
        return crop, (inside * (45.0 - 95.0 * gas)).astype(np.float32)

    return draw


#: How each finding is drawn. A table, not an if-chain: add a finding here.
SIGN_MAKERS: dict[str, Callable[[Anatomy, np.random.Generator], Callable]] = {
    "Atelectasis": _sign_atelectasis,
    "Cardiomegaly": _sign_cardiomegaly,
    "Effusion": _sign_effusion,
    "Infiltration": _sign_infiltration,
    "Mass": _sign_mass,
    "Nodule": _sign_nodule,
    "Pneumonia": _sign_pneumonia,
    "Pneumothorax": _sign_pneumothorax,
    "Consolidation": _sign_consolidation,
    "Edema": _sign_edema,
    "Emphysema": _sign_emphysema,
    "Fibrosis": _sign_fibrosis,
    "Pleural_Thickening": _sign_pleural_thickening,
    "Hernia": _sign_hernia,
}
assert tuple(SIGN_MAKERS) == LABELS


# --------------------------------------------------------------------------- one image


@dataclass(frozen=True)
class ImageSpec:
    """Everything needed to draw one phantom image (a pure function of it)."""

    name: str
    labels: np.ndarray  # (14,) uint8
    seed: int
    rgba: bool = False


@dataclass
class Rendered:
    pixels: np.ndarray  # uint8 px x px
    boxes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # label -> (x0, y0, x1, y1)


def render(spec: ImageSpec, px: int, omit: str | None = None) -> Rendered:
    """Draw one image; ``omit`` leaves one sign out (to test that its box covers what it drew)."""
    rng = np.random.default_rng(spec.seed)
    anatomy = sample_anatomy(rng)
    img = render_anatomy(anatomy, px, noise_seed=[spec.seed, 99])
    boxes: dict[str, tuple[int, int, int, int]] = {}
    for k, name in enumerate(LABELS):
        # Every maker is called (and draws its random numbers) whether or not the finding is
        # present, so omitting one sign leaves the others exactly as they were.
        sign_rng = np.random.default_rng([spec.seed, k])
        sign = Sign(name, SIGN_MAKERS[name](anatomy, sign_rng))
        if spec.labels[k] and name != omit:
            box = sign.apply(img)
            if box is not None:
                boxes[name] = box
    return Rendered(np.clip(np.rint(img), 0, 255).astype(np.uint8), boxes)


def save_png(pixels: np.ndarray, path: Path, rgba: bool) -> None:
    """Save as 8-bit greyscale, or as RGBA with R = G = B and opaque alpha (0.5% of the real files)."""
    if rgba:
        image = Image.fromarray(np.dstack([pixels, pixels, pixels, np.full_like(pixels, 255)]), mode="RGBA")
    else:
        image = Image.fromarray(pixels, mode="L")
    image.save(path, compress_level=1)


# --------------------------------------------------------------------------- the set


@dataclass(frozen=True)
class PhantomPlan:
    """Who is who in the phantom set: images, labels, patients and the test patients."""

    specs: list[ImageSpec]
    table: pd.DataFrame  # Data_Entry rows (unsorted, as NIH ships them)
    test_images: list[str]
    train_val_images: list[str]


def plan(cfg: PhantomConfig) -> PhantomPlan:
    """Draw patients, follow-ups and labels (no pixels): cheap, deterministic from ``cfg.seed``."""
    rng = np.random.default_rng([cfg.seed, 1])
    prev = prevalences(cfg.prevalence_floor)
    rows, specs = [], []
    patient = 0
    while len(specs) < cfg.images:
        patient += 1
        n_follow = min(int(rng.geometric(0.4)), 8, cfg.images - len(specs))
        chronic = rng.random(len(LABELS)) < prev  # findings that persist across a patient's visits
        age0 = int(rng.integers(18, 85))
        sex = "M" if rng.random() < 0.56 else "F"
        for k in range(n_follow):
            labels = (chronic & (rng.random(len(LABELS)) < 0.8)) | (rng.random(len(LABELS)) < 0.2 * prev)
            labels = labels.astype(np.uint8)
            name = f"{patient:08d}_{k:03d}.png"
            follow_up = (
                k + 1 if rng.random() < 0.02 else k
            )  # the real file disagrees with the name now and then
            rows.append(
                {
                    "Image Index": name,
                    "Finding Labels": decode(labels),
                    "Follow-up #": follow_up,
                    "Patient ID": patient,
                    "Patient Age": age0 + k // 3,
                    "Patient Gender": sex,
                    "View Position": "PA" if rng.random() < 0.6 else "AP",
                    "OriginalImage[Width": int(rng.integers(2000, 3000)),
                    "Height]": int(rng.integers(2000, 3000)),
                    "OriginalImagePixelSpacing[x": 0.143,
                    "y]": 0.143,
                }
            )
            specs.append(
                ImageSpec(
                    name=name,
                    labels=labels,
                    seed=int(rng.integers(2**31)),
                    rgba=bool(rng.random() < cfg.rgba_fraction),
                )
            )
    patients = np.arange(1, patient + 1)
    n_test = max(1, round(cfg.test_patient_fraction * len(patients)))
    test_patients = set(rng.choice(patients, size=n_test, replace=False).tolist())
    names = [s.name for s in specs]
    is_test = [int(n[:8]) in test_patients for n in names]
    table = pd.DataFrame(rows).sample(frac=1.0, random_state=cfg.seed).reset_index(drop=True)
    return PhantomPlan(
        specs=specs,
        table=table,
        test_images=[n for n, t in zip(names, is_test, strict=True) if t],
        train_val_images=[n for n, t in zip(names, is_test, strict=True) if not t],
    )


def _render_one(args: tuple[ImageSpec, int, str]) -> tuple[str, dict[str, tuple[int, int, int, int]]]:
    spec, px, out_dir = args
    result = render(spec, px)
    save_png(result.pixels, Path(out_dir) / spec.name, spec.rgba)
    return spec.name, result.boxes


def write_bbox_list(path: Path, boxes: list[tuple[str, str, float, float, float, float]]) -> None:
    """Write ``BBox_List_2017.csv`` as NIH does: 9 header fields, 6 per row, ``Infiltrate``."""
    lines = [BBOX_HEADER]
    for image, label, x, y, w, h in boxes:
        label = "Infiltrate" if label == "Infiltration" else label
        lines.append(f"{image},{label},{float(x)!r},{float(y)!r},{float(w)!r},{float(h)!r}")
    Path(path).write_text("\n".join(lines) + "\n")


def draw_images(
    cfg: PhantomConfig, the_plan: PhantomPlan, images_dir: Path, progress: bool = True
) -> dict[str, dict[str, tuple[int, int, int, int]]]:
    """Write the plan's PNGs into ``images_dir``; returns each image's sign boxes (pixel space).

    Also how a workspace without the images (a DVC temporary workspace, a fresh clone) gets them
    back: every image is a pure function of ``(config, image number)``.
    """
    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(s, cfg.image_px, str(images_dir)) for s in the_plan.specs]
    bar = tqdm(total=len(jobs), desc="phantom images", unit="img", disable=not progress)
    drawn: dict[str, dict[str, tuple[int, int, int, int]]] = {}
    if cfg.workers > 1:
        with pool_context().Pool(cfg.workers) as pool:
            for name, boxes in pool.imap_unordered(_render_one, jobs, chunksize=8):
                drawn[name] = boxes
                bar.update()
    else:
        for job in jobs:
            name, boxes = _render_one(job)
            drawn[name] = boxes
            bar.update()
    bar.close()
    return drawn


def generate(cfg: PhantomConfig, raw_dir: Path, progress: bool = True) -> PhantomPlan:
    """Write the phantom set into ``raw_dir`` in the official layout; returns its plan."""
    raw_dir = Path(raw_dir)
    the_plan = plan(cfg)
    drawn = draw_images(cfg, the_plan, raw_dir / "images", progress)

    # Boxes only for test images (all 984 real boxes are in the test list), as floats in 1024 space.
    rng = np.random.default_rng([cfg.seed, 2])
    scale = BOX_SPACE / cfg.image_px
    box_rows = []
    for name in sorted(the_plan.test_images):
        for label in BOX_LABELS:
            if label in drawn[name] and rng.random() < cfg.box_fraction:
                x0, y0, x1, y1 = drawn[name][label]
                pad = rng.uniform(0.0, 3.0, size=4)  # radiologists draw loosely; never tighter than the sign
                bx0, by0 = max(0.0, x0 - pad[0]) * scale, max(0.0, y0 - pad[1]) * scale
                bx1 = min(float(cfg.image_px), x1 + pad[2]) * scale
                by1 = min(float(cfg.image_px), y1 + pad[3]) * scale
                box_rows.append((name, label, bx0, by0, bx1 - bx0, by1 - by0))
    order = rng.permutation(len(box_rows))
    write_bbox_list(raw_dir / BBOX_LIST, [box_rows[i] for i in order])

    table = the_plan.table
    lines = [DATA_ENTRY_HEADER] + [",".join(str(v) for v in row) for row in table.itertuples(index=False)]
    (raw_dir / DATA_ENTRY).write_text("\n".join(lines) + "\n")
    write_image_list(raw_dir / TRAIN_VAL_LIST, sorted(the_plan.train_val_images))
    write_image_list(raw_dir / TEST_LIST, sorted(the_plan.test_images))
    log.info(
        "phantom: %d images, %d patients, %d test images, %d boxes",
        len(the_plan.specs),
        table["Patient ID"].nunique(),
        len(the_plan.test_images),
        len(box_rows),
    )
    return the_plan
