"""Scoring heatmaps against radiologist boxes: the paper's IoU, boxes from heatmaps, pointing game.

Conventions (one place, so every number in the localisation report means the same thing):

* Heatmaps are float arrays in [0, 1], one ``S x S`` map per (image, box label), batched ``K x S x S``.
  Row index i is y, column index j is x.
* Boxes are ``(x, y, w, h)`` floats in the pixel space of the map (``loc.csv``'s ``x, y, w, h``:
  the 1024-pixel boxes of ``BBox_List_2017.csv`` scaled to S); pixel (i, j) covers ``[j, j+1) x [i, i+1)``.
* **Box mask rule** (:func:`box_mask`): pixel (i, j) belongs to the box iff its centre
  ``(j + 0.5, i + 0.5)`` lies in ``[x, x + w) x [y, y + h)``. The mask's area is then within one
  row/column of ``w * h`` and unbiased under rescaling. A side shorter than a pixel that covers no
  centre falls back to the single row/column containing that side's midpoint, so no real box has an
  empty mask.
* **uint8 scaling** (:func:`to_uint8`): ``H = np.uint8(255 * h)``, i.e. truncation, exactly what
  pytorch-grad-cam's ``show_cam_on_image`` does before colouring a map (the paper's maps are its
  visualisations). The paper's rule is then ``A = H > a * 255``, strictly greater.
* **Connectivity** (:func:`heatmap_boxes`): 8-connected components (``scipy.ndimage.label`` with a
  3 x 3 structure), so diagonally touching pixels form one region, as a blob in a smooth map should.
* **Pointing game** (:func:`pointing_hit`): the maximum of the float map (the CAM at its own
  resolution, upsampled bilinearly to S), never of the 0..255 map, where hundreds of pixels tie at
  the top level; of genuine float ties the one nearest their centroid; a flat map is always a miss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

#: Values this far outside [0, 1] are float noise of a normalisation and are clipped, not refused.
_RANGE_TOLERANCE = 1e-6
#: Images per vectorised chunk in :func:`paper_iou` (bounds the int64 work array to ~64 MB at S=224).
_IOU_CHUNK_PIXELS = 8_000_000


def _as_box(box: Any, name: str = "box") -> np.ndarray:
    """One ``(x, y, w, h)`` as float64, finite, with positive width and height."""
    b = np.asarray(box, dtype=np.float64)
    if b.shape != (4,):
        raise ValueError(f"{name} must be (x, y, w, h), got shape {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError(f"{name} holds NaN or infinite values: {b.tolist()}")
    if b[2] <= 0 or b[3] <= 0:
        raise ValueError(f"{name} must have positive width and height, got (x, y, w, h) = {b.tolist()}")
    return b


def _as_size(size: Any, name: str = "size") -> int:
    """A map side in pixels; a float size would silently misplace every mask."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"{name} must be a positive integer, got {size!r}")
    return int(size)


def _check_range(h: np.ndarray, name: str) -> None:
    if not np.isfinite(h).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    if h.size and (h.min() < -_RANGE_TOLERANCE or h.max() > 1 + _RANGE_TOLERANCE):
        raise ValueError(f"{name} must lie in [0, 1], got range [{h.min():.6g}, {h.max():.6g}]")


def _check_heatmaps(heatmaps: Any, name: str = "heatmaps") -> np.ndarray:
    """``K x S x S`` float map in [0, 1], kept in its own float dtype (no copy of a big batch)."""
    h = np.asarray(heatmaps)
    if not np.issubdtype(h.dtype, np.floating):
        h = h.astype(np.float64)
    if h.ndim != 3 or h.shape[1] != h.shape[2]:
        raise ValueError(f"{name} must be K x S x S, got shape {h.shape}")
    _check_range(h, name)
    return h


def _check_masks(masks: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean masks of exactly the heatmaps' shape (a 0/1 array is accepted and converted)."""
    m = np.asarray(masks)
    if m.shape != shape:
        raise ValueError(f"masks shape {m.shape} does not match heatmaps shape {shape}")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError("masks must be boolean or 0/1")
        m = m.astype(bool)
    return m


def _check_thresholds(thresholds: Any, name: str = "thresholds") -> np.ndarray:
    """Fractions a of the 0..255 scale, in [0, 1]."""
    a = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got {thresholds!r}")
    if not np.isfinite(a).all() or (a < 0).any() or (a > 1).any():
        raise ValueError(f"{name} must lie in [0, 1], got {a.tolist()}")
    return a


def _axis_cover(start: float, length: float, size: int) -> np.ndarray:
    """Pixels along one axis whose centre k + 0.5 lies in [start, start + length); see the module doc."""
    centres = np.arange(size) + 0.5
    inside = (centres >= start) & (centres < start + length)
    if not inside.any():
        k = int(np.floor(start + length / 2.0))
        first_centre = np.ceil(start - 0.5) + 0.5  # smallest centre >= start
        if 0 <= k < size and first_centre >= start + length:  # covers no centre at all: sub-pixel side
            inside[k] = True
    return inside


def box_mask(box: Sequence[float] | np.ndarray, size: int) -> np.ndarray:
    """Boolean ``size x size`` mask of the pixels whose centres the box covers (module doc: mask rule)."""
    b = _as_box(box)
    s = _as_size(size)
    cols = _axis_cover(b[0], b[2], s)
    rows = _axis_cover(b[1], b[3], s)
    return rows[:, None] & cols[None, :]


def box_masks(boxes: Any, size: int) -> np.ndarray:
    """Stack of :func:`box_mask` for ``K x 4`` boxes -> ``K x size x size``."""
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be K x 4 (x, y, w, h), got shape {b.shape}")
    s = _as_size(size)
    if b.shape[0] == 0:
        return np.zeros((0, s, s), dtype=bool)
    return np.stack([box_mask(row, s) for row in b])


def to_uint8(heatmaps: Any) -> np.ndarray:
    """The paper's 0..255 heatmap: ``np.uint8(255 * h)`` (truncation, as pytorch-grad-cam's visualisation).

    The product is taken in float64 whatever the map's dtype, so a level never depends on how a
    map was stored; values within 1e-6 outside [0, 1] (normalisation noise) are clipped first.
    """
    h = np.asarray(heatmaps, dtype=np.float64)
    _check_range(h, "heatmaps")
    return np.uint8(255.0 * np.clip(h, 0.0, 1.0))


def _first_level_above(thresholds: np.ndarray) -> np.ndarray:
    """Smallest uint8 level v with v > a * 255 (strict), per threshold a.

    ``a * 255`` is rounded to 9 decimals first, so float dust cannot move an integer threshold
    (0.2 * 255 must mean 51, excluding 51) to one side or the other.
    """
    t = np.round(thresholds * 255.0, 9)
    return (np.floor(t) + 1).astype(np.int64)


def binarise(heatmaps: Any, threshold: float) -> np.ndarray:
    """The paper's localisation map ``A = to_uint8(h) > threshold * 255`` (same shape as ``heatmaps``)."""
    a = _check_thresholds(threshold, "threshold")
    if a.size != 1:
        raise ValueError(f"threshold must be one number, got {threshold!r}")
    return to_uint8(heatmaps) >= _first_level_above(a)[0]


def paper_iou(heatmaps: Any, masks: Any, thresholds: Sequence[float]) -> np.ndarray:
    """The paper's IoU (section 3.4) for every heatmap and threshold: ``K x T``.

    ``A = to_uint8(H) > a * 255``, ``B`` = box mask, IoU = sum(A * B) / sum(max(A, B)); 0 where the
    union is empty. Each heatmap is read once: a 256-bin histogram of its levels inside and outside
    the box gives the intersection and union of every threshold at once.
    """
    h = _check_heatmaps(heatmaps)
    m = _check_masks(masks, h.shape)
    a = _check_thresholds(thresholds)
    k, s, _ = h.shape
    hist = np.zeros((k, 2, 256), dtype=np.int64)  # [image, outside/inside box, level]
    chunk = max(1, _IOU_CHUNK_PIXELS // max(1, s * s))
    for lo in range(0, k, chunk):  # chunks of many images, each one vectorised bincount
        hi = min(k, lo + chunk)
        offsets = (np.arange(hi - lo) * 512)[:, None, None]
        index = offsets + m[lo:hi].astype(np.int64) * 256 + to_uint8(h[lo:hi])
        hist[lo:hi] = np.bincount(index.ravel(), minlength=(hi - lo) * 512).reshape(hi - lo, 2, 256)
    # at_least[..., v] = pixels with level >= v; column 256 is 0 (nothing exceeds a = 1).
    at_least = np.zeros((k, 2, 257), dtype=np.int64)
    at_least[..., :256] = np.cumsum(hist[..., ::-1], axis=-1)[..., ::-1]
    level = _first_level_above(a)
    inter = at_least[:, 1, level]  # K x T: predicted pixels inside the box
    union = m.reshape(k, -1).sum(axis=1)[:, None] + at_least[:, 0, level]  # box + predicted outside
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def heatmap_boxes(heatmap: Any, threshold: float) -> list[tuple[float, float, float, float]]:
    """Bounding boxes ``(x, y, w, h)`` of the 8-connected regions of ``to_uint8(h) > threshold * 255``.

    Wang et al. (2017) style. Boxes follow pixel edges, so ``box_mask`` of a returned box is exactly
    the component's bounding rectangle. Order: scipy's label order (raster order of first pixel).
    """
    h = np.asarray(heatmap)
    if h.ndim != 2:
        raise ValueError(f"heatmap must be S x S, got shape {h.shape}")
    return [tuple(float(v) for v in box) for box in _component_boxes(binarise(h, threshold))]


_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _component_boxes(binary: np.ndarray) -> np.ndarray:
    """``N x 4`` float ``(x, y, w, h)`` of the 8-connected regions of a 2-D boolean map, label order."""
    labelled, _ = ndimage.label(binary, structure=_EIGHT_CONNECTED)
    found = ndimage.find_objects(labelled)
    boxes = np.empty((len(found), 4))
    for i, (rows, cols) in enumerate(found):
        boxes[i] = (cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
    return boxes


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Continuous overlap area of ``(x, y, w, h)`` boxes, broadcasting over leading axes."""
    w = np.clip(
        np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None
    )
    h = np.clip(
        np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None
    )
    return w * h


def _overlaps(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and IoBB (over ``pred``'s area) of checked ``(x, y, w, h)`` boxes; 0 for an empty denominator."""
    inter = _intersection(pred, truth)
    area = pred[..., 2] * pred[..., 3]
    union = area + truth[..., 2] * truth[..., 3] - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou, np.where(area > 0, inter / np.where(area > 0, area, 1.0), 0.0)


def _as_boxes(boxes: Any, name: str) -> np.ndarray:
    """``... x 4`` boxes; zero-size boxes are allowed here (they score 0), negative ones are not."""
    b = np.asarray(boxes, dtype=np.float64)
    if b.shape[-1:] != (4,):
        raise ValueError(f"{name} must be (x, y, w, h) or ... x 4, got shape {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    if (b[..., 2:] < 0).any():
        raise ValueError(f"{name} has a negative width or height")
    return b


def box_iou(a: Any, b: Any) -> np.ndarray | float:
    """Geometric IoU of ``(x, y, w, h)`` boxes (broadcasts over leading axes); 0 for an empty union."""
    out = _overlaps(_as_boxes(a, "a"), _as_boxes(b, "b"))[0]
    return float(out) if out.ndim == 0 else out


def box_iobb(pred: Any, truth: Any) -> np.ndarray | float:
    """IoBB (Wang et al. 2017): area(pred ∩ truth) / area(pred); 0 for an empty predicted box.

    Note it rewards small predictions: any box inside the truth scores 1, so report it beside IoU.
    """
    out = _overlaps(_as_boxes(pred, "pred"), _as_boxes(truth, "truth"))[1]
    return float(out) if out.ndim == 0 else out


def best_box_scores(
    heatmap: Any, truth_box: Any, thresholds: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Per threshold, the best IoU and the best IoBB of any box from :func:`heatmap_boxes` (0 if none).

    The two maxima are taken independently (the best-IoBB box need not be the best-IoU one), the
    usual reading of "a hit if any predicted box overlaps enough". The map is checked and turned
    into levels once for the whole sweep (what :func:`heatmap_boxes` does per threshold); the
    localise stage calls this for every box and method, so that is most of its time.
    """
    t = _as_box(truth_box, "truth_box")
    a = _check_thresholds(thresholds)
    h = np.asarray(heatmap)
    if h.ndim != 2:
        raise ValueError(f"heatmap must be S x S, got shape {h.shape}")
    levels = to_uint8(h)
    top = int(levels.max()) if levels.size else -1
    best_iou = np.zeros(a.size)
    best_iobb = np.zeros(a.size)
    for n, level in enumerate(_first_level_above(a)):
        if level > top:  # nothing above this level, nor above any higher one
            break
        iou, iobb = _overlaps(_component_boxes(levels >= level), t)
        best_iou[n], best_iobb[n] = np.max(iou), np.max(iobb)
    return best_iou, best_iobb


#: Pointing game: pixels within this fraction of a map's maximum tie with it (float noise of
#: upsampling, far below the float32 resolution of a CAM).
PEAK_TOLERANCE = 1e-9
#: Maps per chunk in :func:`pointing_hit` (bounds the float64 upsampled maps to ~100 MB at S=224).
_POINTING_CHUNK = 256


def peak_pixels(maps: np.ndarray) -> np.ndarray:
    """Flat index of the pixel each ``K x S x S`` map points at: its maximum, and of tied maxima the
    one nearest their centroid (the first in row-major order among equally near ones).

    Values within :data:`PEAK_TOLERANCE` (relative) of the maximum tie. -1 for a flat map (every
    pixel tied): it points nowhere.
    """
    k, s = maps.shape[0], maps.shape[-1]
    flat = maps.reshape(k, -1)
    peak = flat.max(axis=1, keepdims=True)
    tied = flat >= peak - PEAK_TOLERANCE * np.abs(peak)
    rows, cols = np.divmod(np.arange(s * s), s)
    count = tied.sum(axis=1)
    centre_r = (tied * rows).sum(axis=1) / count
    centre_c = (tied * cols).sum(axis=1) / count
    dist = (rows[None, :] - centre_r[:, None]) ** 2 + (cols[None, :] - centre_c[:, None]) ** 2
    pointed = np.where(tied, dist, np.inf).argmin(axis=1)
    return np.where(count == s * s, -1, pointed)


def pointing_hit(maps: Any, masks: Any) -> np.ndarray:
    """Pointing game per map (``K`` bools): is the pixel the map points at inside the box?

    ``maps``: ``K x h x w`` non-negative float maps at any resolution (a CAM at its layer's
    resolution), upsampled bilinearly to the masks' ``S x S`` (:func:`upsample_bilinear`, as the
    normalised maps and :func:`energy_in_boxes` are); the min-max normalisation cannot move the
    maximum, so the raw map is scored. ``masks``: ``K x S x S`` boxes (or unions of boxes).

    The map points at its maximum (:func:`peak_pixels`). Ties: a plateau points at its tied pixel
    nearest the plateau's centroid. TorchRay's pointing game takes the first maximum
    (``np.argmax``) and Quantus counts a hit if *any* tied pixel is inside; the two agree with ours
    on a unique maximum, but on a plateau the first one lies on its top-left edge and "any" credits a
    plateau that straddles the box edge. Upsampling makes plateaus (2 x 2 at an interior peak, up to
    16 x 16 in a corner at 7 -> 224), and a box prior's maximum is a plateau tens of pixels wide. A
    flat map is a miss by rule: it points nowhere, and counting it would reward a method that failed.
    """
    r = np.asarray(maps)
    if r.ndim != 3:
        raise ValueError(f"maps must be K x h x w, got shape {r.shape}")
    m = np.asarray(masks)
    if m.ndim != 3 or m.shape[0] != r.shape[0] or m.shape[1] != m.shape[2]:
        raise ValueError(f"masks must be {r.shape[0]} x S x S, got shape {m.shape}")
    m = _check_masks(m, m.shape)
    k, s = r.shape[0], m.shape[1]
    hits = np.zeros(k, dtype=bool)
    for lo in range(0, k, _POINTING_CHUNK):
        hi = min(k, lo + _POINTING_CHUNK)
        chunk = np.asarray(r[lo:hi], dtype=np.float64)
        if not np.isfinite(chunk).all():
            raise ValueError("maps hold NaN or infinite values")
        up = chunk if chunk.shape[1:] == (s, s) else upsample_bilinear(chunk, s)
        pointed = peak_pixels(up)
        inside = m[lo:hi].reshape(hi - lo, -1)[np.arange(hi - lo), np.maximum(pointed, 0)]
        hits[lo:hi] = inside & (pointed >= 0)
    return hits


def _interp_matrix(size: int, source: int) -> np.ndarray:
    """``size x source`` weights of 1-D linear upsampling with half-pixel centres.

    The convention of ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``
    (and ``cv2.resize``): output pixel i samples the source at ``(i + 0.5) * source / size - 0.5``,
    clamped to the first and last source pixel.
    """
    pos = np.clip((np.arange(size) + 0.5) * source / size - 0.5, 0.0, source - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, source - 1)
    frac = pos - lo
    weights = np.zeros((size, source))
    np.add.at(weights, (np.arange(size), lo), 1.0 - frac)
    np.add.at(weights, (np.arange(size), hi), frac)
    return weights


def upsample_bilinear(maps: Any, size: int) -> np.ndarray:
    """``K x h x w`` maps -> ``K x size x size`` (float64), bilinear with half-pixel centres."""
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim != 3:
        raise ValueError(f"maps must be K x h x w, got shape {m.shape}")
    s = _as_size(size)
    return np.einsum("ih,khw,jw->kij", _interp_matrix(s, m.shape[1]), m, _interp_matrix(s, m.shape[2]))


def energy_in_boxes(raw: Any, boxes: Any, size: int) -> np.ndarray:
    """Energy-based pointing game (Wang et al. 2020, Score-CAM): the share of each map's mass in its box.

    ``raw``: ``K x h x w`` non-negative maps at any resolution, upsampled bilinearly to ``size`` (as
    the normalised maps are); ``boxes``: ``K x 4`` ``(x, y, w, h)`` in the ``size`` pixel space, masked
    by the mask rule of :func:`box_mask`. Upsampling is linear and a box mask is a product of a row
    and a column set, so each share is two small vector-matrix products: no ``size x size`` map is
    built. A map with no mass scores 0 (it points nowhere).
    """
    r = np.asarray(raw, dtype=np.float64)
    if r.ndim != 3:
        raise ValueError(f"raw maps must be K x h x w, got shape {r.shape}")
    if not np.isfinite(r).all() or (r < 0).any():
        raise ValueError("raw maps must be finite and >= 0 (after the ReLU)")
    b = np.asarray(boxes, dtype=np.float64)
    if b.shape != (r.shape[0], 4):
        raise ValueError(f"boxes must be {r.shape[0]} x 4 (x, y, w, h), got shape {b.shape}")
    s = _as_size(size)
    rows_w, cols_w = _interp_matrix(s, r.shape[1]), _interp_matrix(s, r.shape[2])
    out = np.zeros(r.shape[0])
    for k in range(r.shape[0]):
        box = _as_box(b[k])
        rows = _axis_cover(box[1], box[3], s).astype(np.float64)
        cols = _axis_cover(box[0], box[2], s).astype(np.float64)
        total = rows_w.sum(axis=0) @ r[k] @ cols_w.sum(axis=0)
        if total > 0:
            out[k] = (rows @ rows_w) @ r[k] @ (cols @ cols_w) / total
    return out
