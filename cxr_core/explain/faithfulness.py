"""Faithfulness of saliency maps: do they point at what the model uses? ROAD and the cam_mult score.

**Faithfulness, ROAD** (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for
Attribution Methods"), through pytorch-grad-cam's ``metrics.road``: pixels are removed in order of
the map (most relevant first, MoRF, and least relevant first, LeRF) and filled by noisy linear
imputation, so removal does not leak the mask's shape; a faithful map makes the class score fall
fast under MoRF and slowly under LeRF.

The cam_mult score (pytorch-grad-cam's ``CamMultImageConfidenceChange``) multiplies the image by
its map in one forward: a faithful map keeps the evidence, so the score falls little.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cxr_core.explain.cams.features import frozen_eval, model_device


class ClassifierOutputSigmoidTarget:
    """pytorch-grad-cam target: the sigmoid probability of one class of a multi-label model."""

    def __init__(self, category: int) -> None:
        self.category = int(category)

    def __call__(self, model_output: Tensor) -> Tensor:
        return torch.sigmoid(model_output[..., self.category].float())


ROAD_TARGETS = ("sigmoid", "logit")


#: Faithfulness metrics of pytorch-grad-cam's ``metrics`` module by name: name -> (what it does, maker).
FAITHFULNESS_METRICS: dict[str, str] = {
    "road": "ROAD (Rong et al. 2022): (LeRF - MoRF) / 2 over the percentiles, noisy linear imputation",
    "cam_mult": "the change in the finding's probability when the image is multiplied by its map "
    "(pytorch-grad-cam's CamMultImageConfidenceChange: only the highlighted evidence is kept)",
}


def check_faithfulness(name: str) -> str:
    """``sanity.faithfulness``: one of :data:`FAITHFULNESS_METRICS`."""
    if name not in FAITHFULNESS_METRICS:
        raise ValueError(f"faithfulness metric must be one of {sorted(FAITHFULNESS_METRICS)}, got {name!r}")
    return name


def faithfulness_scores(
    model: nn.Module,
    images: Tensor | np.ndarray,
    class_indices: Tensor | np.ndarray | Sequence[int],
    maps: np.ndarray | Tensor,
    *,
    metric: str = "road",
    percentiles: Sequence[int] = (20, 40, 60, 80),
    target: str = "sigmoid",
    batch_size: int = 16,
    seed: int = 0,
) -> np.ndarray:
    """Faithfulness per image through pytorch-grad-cam's metrics -> float64 (B,); higher = more faithful.

    Image b (``images``: (B, 3, H, W) float, normalised) is scored for ``class_indices[b]`` with its
    map ``maps[b]`` ((B, H, W)). ``metric="road"``: ``ROADCombined`` (Rong et al. 2022). For each
    percentile p, pytorch-grad-cam keeps the p % of pixels ranked lowest by the map and imputes the
    rest (MoRF: the most relevant go), and keeps the p % ranked highest for LeRF; each gives
    ``score(perturbed) - score(original)``, averaged over the percentiles, and the result is
    ``(LeRF - MoRF) / 2``: positive for a faithful map, about 0 for one unrelated to the model,
    negative for an inverted one. Thresholds are strict (``map < percentile``): a map with a large
    flat region (Grad-CAM's zeros) drops the whole plateau at once; a constant map scores about 0.
    The imputation solves a sparse system of H*W unknowns per image, percentile and order on the CPU,
    which is what makes ROAD slow. ``metric="cam_mult"``: ``CamMultImageConfidenceChange``, one
    forward per image: ``score(image * map) - score(image)`` (a faithful map keeps the evidence, so
    the score falls less than under a random map). Maps with non-finite values score NaN.

    ``target``: what "score" is. pytorch-grad-cam's examples use the softmax probability, which is
    wrong for a multi-label model: softmax couples the 14 independent findings (removing another
    finding's evidence would raise this one's score). The default ``"sigmoid"`` is each finding's
    own probability: bounded, so scores are comparable between images and models. ``"logit"``
    (``ClassifierOutputTarget``) is unbounded and its scale differs between models. ROAD's
    imputation noise comes from torch's CPU generator, reseeded with ``seed`` inside ``fork_rng``:
    deterministic, caller's RNG untouched.
    """
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    check_faithfulness(metric)
    if target not in ROAD_TARGETS:
        raise ValueError(f"target must be one of {list(ROAD_TARGETS)}, got {target!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x = torch.as_tensor(images)
    if x.ndim != 4 or not x.dtype.is_floating_point:
        raise ValueError(f"images must be float (B, C, H, W), got {tuple(x.shape)} {x.dtype}")
    m = np.asarray(maps.detach().cpu() if isinstance(maps, Tensor) else maps, dtype=np.float32)
    if m.shape != (x.shape[0], *x.shape[-2:]):
        raise ValueError(f"maps must be (B, H, W) = {(x.shape[0], *x.shape[-2:])}, got {m.shape}")
    idx = np.asarray(class_indices.cpu() if isinstance(class_indices, Tensor) else class_indices).reshape(-1)
    if len(idx) != len(x) or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"class_indices must hold one integer class per image: got {idx.shape} for {len(x)}")
    finite = np.isfinite(m.reshape(len(m), -1)).all(axis=1)
    m = np.where(finite[:, None, None], m, 0.0).astype(np.float32)

    make = ClassifierOutputSigmoidTarget if target == "sigmoid" else ClassifierOutputTarget
    score = (
        ROADCombined(percentiles=list(percentiles)) if metric == "road" else CamMultImageConfidenceChange()
    )
    device = model_device(model)
    scores = np.empty(len(x), dtype=np.float64)
    with frozen_eval(model), torch.no_grad(), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # pytorch-grad-cam's imputer hands torch tensors to np.argwhere: numpy 2 deprecation noise
        warnings.filterwarnings("ignore", "__array_wrap__ must accept context", DeprecationWarning)
        torch.default_generator.manual_seed(int(seed))
        for start in range(0, len(x), batch_size):
            stop = min(start + batch_size, len(x))
            batch = x[start:stop].to(device=device, dtype=torch.float32)
            targets = [make(int(c)) for c in idx[start:stop]]
            out = score(batch, m[start:stop], targets, model)
            scores[start:stop] = np.asarray(out, dtype=np.float64).reshape(-1)
    scores[~finite] = np.nan
    return scores


def road_scores(*args: Any, **kwargs: Any) -> np.ndarray:
    """:func:`faithfulness_scores` with ROAD (``ROADCombined``)."""
    return faithfulness_scores(*args, metric="road", **kwargs)


__all__ = [
    "FAITHFULNESS_METRICS",
    "ROAD_TARGETS",
    "ClassifierOutputSigmoidTarget",
    "check_faithfulness",
    "faithfulness_scores",
    "road_scores",
]
