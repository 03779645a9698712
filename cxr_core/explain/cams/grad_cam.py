"""Grad-CAM (Selvaraju et al. 2017): the gradient-weighted class activation map, as pytorch-grad-cam's ``grad_cam.py``."""

from __future__ import annotations

from torch import Tensor

from cxr_core.explain.cams.base_cam import BaseCAM, weighted_sum
from cxr_core.explain.cams.features import LayerFeatures


class GradCAM(BaseCAM):
    """Selvaraju et al.: channel weights = spatial mean of the gradients."""

    def cam(self, features: LayerFeatures) -> Tensor:
        a, g = features.activations, features.gradients
        return weighted_sum(g.mean(dim=(2, 3)), a)
