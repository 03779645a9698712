"""The random-map control: a smooth random map per image, seeded by its position, scored like every method."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from cxr_core.explain.cams.base_cam import BaseCAM
from cxr_core.explain.cams.features import LayerFeatures, ReshapeTransform

if TYPE_CHECKING:
    from cxr_core.explain.cams.settings import CamSettings
    from cxr_core.runtime import Runtime


def random_grid(image_size: tuple[int, int], stride: int = 32) -> tuple[int, int]:
    """The noise grid: one cell per ``stride`` pixels (at least one), 7 x 7 at 224 and stride 32."""
    return max(1, math.ceil(image_size[0] / stride)), max(1, math.ceil(image_size[1] / stride))


class RandomCAM(BaseCAM):
    """The chance-level control: a smooth random map per image, scored like every other method.

    Uniform noise on a coarse grid (the stride-32 grid, i.e. the table models' 7 x 7 at 224), then
    the same ReLU / min-max / bilinear / min-max pipeline as the real maps. It needs no forward pass
    and is class-agnostic. Each map depends only on ``(seed, position)``, where position is the
    image's index in the caller's sequence, so results do not depend on the batch size.
    (pytorch-grad-cam's ``RandomCAM`` is different: random channel weights on real activations.)
    """

    uses_activations = False
    uses_gradients = False
    class_agnostic = True

    def __init__(self, *args: object, stride: int = 32, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.stride = int(stride)

    @classmethod
    def from_settings(
        cls,
        model: nn.Module,
        target_layer: nn.Module,
        reshape_transform: ReshapeTransform | None,
        settings: CamSettings,
        runtime: Runtime,
    ) -> RandomCAM:
        """As the base's, with ``cam.random_stride``."""
        return cls(
            model,
            target_layer,
            reshape_transform,
            seed=settings.seed,
            autocast_dtype=runtime.autocast_dtype,
            stride=settings.random_stride,
        )

    def cam(self, features: LayerFeatures) -> Tensor:
        h, w = random_grid(features.image_size, self.stride)
        maps = [
            np.random.default_rng([self.seed, int(p)]).random((h, w), dtype=np.float32)
            for p in features.positions.tolist()
        ]
        if not maps:
            return torch.zeros((0, h, w))
        return torch.from_numpy(np.stack(maps))
