"""The base of every native method: post-processing, the per-batch maps, and the class interface.

pytorch-grad-cam's ``base_cam.py`` (and its ``scale_cam_image``, batched): a method implements
:meth:`BaseCAM.cam` (raw maps from the batch's features); ReLU, min-max at the feature resolution,
bilinear upsampling and min-max again are shared here, with pytorch-grad-cam's constants.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxr_core.explain.cams.features import FeatureExtractor, LayerFeatures, ReshapeTransform

if TYPE_CHECKING:
    from cxr_core.explain.cams.settings import CamSettings
    from cxr_core.runtime import Runtime

# pytorch-grad-cam's constant, kept so maps agree with it numerically.
_MINMAX_EPS = 1e-7


def _minmax(maps: Tensor) -> Tensor:
    flat = maps.flatten(1)
    flat = flat - flat.amin(dim=1, keepdim=True)
    flat = flat / (_MINMAX_EPS + flat.amax(dim=1, keepdim=True))
    return flat.view_as(maps)


def relu_maps(cams: Tensor) -> Tensor:
    """The CAM's ReLU in float32; NaN stays visible (so a broken map cannot be scored silently)."""
    cams = cams.float()
    return torch.where(torch.isnan(cams), cams, cams.clamp_min(0))


def normalise_maps(cams: Tensor, size: tuple[int, int]) -> Tensor:
    """Raw maps (B, h, w) -> (B, H, W) in [0, 1]: ReLU, min-max, bilinear resize, min-max."""
    cams = _minmax(relu_maps(cams))
    if tuple(cams.shape[-2:]) != tuple(size):
        cams = F.interpolate(cams[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return _minmax(cams)


@dataclass(frozen=True)
class CamMaps:
    """One method's maps for a batch: ``maps`` float32 (B, H, W) in [0, 1], the paper's min-max
    normalised maps; ``raw`` float32 (B, h, w), the map after the ReLU and before any normalisation,
    at the target layer's resolution, so magnitudes (and energy inside a box) stay comparable."""

    maps: np.ndarray
    raw: np.ndarray


class CamMethod(Protocol):
    """What the batch loop asks of a method, native or adapted: what it needs from the batch's shared
    forward, and its maps for a batch (from those features, or from its own pass over ``images``)."""

    uses_activations: bool
    uses_gradients: bool

    def explain(self, images: Tensor, class_indices: Tensor, features: LayerFeatures) -> CamMaps: ...


class BaseCAM:
    """One CAM method. Subclasses implement :meth:`cam` (raw maps before ReLU and normalisation).

    ``with GradCAM(model, target_layer, reshape_transform) as cam: maps = cam(images, classes)``
    returns float32 numpy ``(B, H, W)`` in [0, 1]. Hooks and frozen parameters live only for the
    duration of each call; the context manager exists for pytorch-grad-cam's idiom.
    """

    uses_activations: ClassVar[bool] = True
    uses_gradients: ClassVar[bool] = True
    class_agnostic: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | Sequence[nn.Module],
        reshape_transform: ReshapeTransform | None = None,
        *,
        seed: int = 0,
        autocast_dtype: torch.dtype | None = None,
        check_layout: bool = True,
    ) -> None:
        if isinstance(target_layer, (list, tuple)):
            if len(target_layer) != 1:
                raise ValueError("exactly one target layer is supported")
            target_layer = target_layer[0]
        self.model = model
        self.target_layer = target_layer
        self.reshape_transform = reshape_transform
        self.seed = int(seed)
        self.extractor = FeatureExtractor(
            model, target_layer, reshape_transform, autocast_dtype=autocast_dtype, check_layout=check_layout
        )

    @classmethod
    def from_settings(
        cls,
        model: nn.Module,
        target_layer: nn.Module,
        reshape_transform: ReshapeTransform | None,
        settings: CamSettings,
        runtime: Runtime,
    ) -> BaseCAM:
        """The method as the batch loop runs it: the seed and the autocast from the settings objects.
        A method with a knob of its own in the ``cam`` section overrides this to read it."""
        return cls(
            model, target_layer, reshape_transform, seed=settings.seed, autocast_dtype=runtime.autocast_dtype
        )

    @property
    def name(self) -> str:
        return type(self).__name__

    def cam(self, features: LayerFeatures) -> Tensor:
        """Raw maps (B, h, w) from the batch's features."""
        raise NotImplementedError

    def maps(self, features: LayerFeatures) -> Tensor:
        """Normalised maps (B, H, W) in [0, 1] from the batch's features (a tensor)."""
        return normalise_maps(self.cam(features), features.image_size)

    def maps_and_raw(self, features: LayerFeatures) -> CamMaps:
        """The normalised maps and the un-normalised ones after the ReLU (feature resolution)."""
        raw = self.cam(features)
        return CamMaps(normalise_maps(raw, features.image_size).cpu().numpy(), relu_maps(raw).cpu().numpy())

    def explain(self, images: Tensor, class_indices: Tensor, features: LayerFeatures) -> CamMaps:
        """The batch loop's call: the maps from the batch's shared features (``images`` unused)."""
        return self.maps_and_raw(features)

    def __call__(
        self,
        images: Tensor,
        class_indices: Tensor | Sequence[int] | None = None,
        *,
        positions: Tensor | None = None,
    ) -> np.ndarray:
        if self.uses_gradients and class_indices is None:
            raise ValueError(f"{self.name} needs one class index per image")
        features = self.extractor(
            images,
            class_indices,
            need_activations=self.uses_activations,
            need_gradients=self.uses_gradients,
            positions=positions,
        )
        return self.maps(features).cpu().numpy().astype(np.float32, copy=False)

    def __enter__(self) -> BaseCAM:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """Channel weights (B, C) times the activations (B, C, h, w), summed over channels: (B, h, w)."""
    return torch.einsum("bc,bchw->bhw", weights, activations)
