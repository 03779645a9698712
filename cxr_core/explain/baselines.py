"""Maps that know no image: what anatomy alone scores, beside every CAM method's number.

* ``BoxPrior``: for each finding, the mean of its **tune**-half box masks (where that finding's boxes
  usually are), the same map for every image of that finding. A method that does not beat it says
  nothing beyond "cardiomegaly is in the middle".
* ``UniformMap``: a constant map. Its energy share is the box's share of the image, its paper IoU
  the box area over the image area; it is flat, so it is a miss in the pointing game by rule.
* ``CentreMap``: a Gaussian peaked at the image centre (sigma a quarter of the side), the same map
  for every image. It points at the middle, where the heart of a frontal film sits, so "beats
  chance" is never confused with "points at the middle" (Cardiomegaly boxes surround the centre).

The random-map control (``RandomCAM``) is a CAM method (``cam.methods``) and comes from the cams
stage; the baselines need only the boxes, so the localise stage makes them. The prior is built from the
tune boxes, so its own tune-half and all-box numbers are in-sample: only its report-half numbers
(the held-out tables) are a fair baseline.
"""

from __future__ import annotations

import numpy as np

from cxr_core.explain.geometry import box_masks, to_uint8

BASELINES: tuple[str, ...] = ("BoxPrior", "UniformMap", "CentreMap")
#: CentreMap's Gaussian width as a fraction of the image side.
CENTRE_SIGMA = 0.25


def box_prior(masks: np.ndarray, labels: np.ndarray, tune: np.ndarray) -> dict[str, np.ndarray]:
    """Per finding with tune boxes: the mean tune mask, min-max scaled to [0, 1] (float32 S x S)."""
    priors = {}
    for label in dict.fromkeys(labels[tune].tolist()):
        mean = masks[tune & (labels == label)].mean(axis=0)
        span = mean.max() - mean.min()
        priors[label] = ((mean - mean.min()) / span if span > 0 else mean).astype(np.float32)
    return priors


def centre_map(size: int) -> np.ndarray:
    """``S x S`` float32 Gaussian centred on the image centre ``(S / 2, S / 2)``, min-max scaled to
    [0, 1] like every other map.

    At an even size the four central pixels tie; the pointing game takes the first of them
    (``S / 2 - 1``, half a pixel from the centre).
    """
    centres = np.arange(size) + 0.5 - size / 2.0
    g = np.exp(-0.5 * (centres / (CENTRE_SIGMA * size)) ** 2)
    m = np.outer(g, g)
    span = m.max() - m.min()
    return ((m - m.min()) / span if span > 0 else m).astype(np.float32)


def baseline_maps(
    boxes: np.ndarray, labels: np.ndarray, tune: np.ndarray, size: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (uint8 K x S x S maps, float32 K x S x S raw maps)}`` for every baseline, one per box.

    A finding without tune boxes gets the uniform map as its prior (nothing was learnt about it).
    """
    k = len(boxes)
    masks = box_masks(boxes, size).astype(np.float32)
    priors = box_prior(masks, labels, tune)
    uniform = np.ones((size, size), np.float32)
    prior = np.stack([priors.get(label, uniform) for label in labels]) if k else np.zeros((0, size, size))
    flat = np.broadcast_to(uniform, (k, size, size))
    centre = np.broadcast_to(centre_map(size), (k, size, size))
    return {
        "BoxPrior": (to_uint8(prior), prior.astype(np.float32)),
        "UniformMap": (to_uint8(flat), np.ascontiguousarray(flat)),
        "CentreMap": (to_uint8(centre), np.ascontiguousarray(centre)),
    }
