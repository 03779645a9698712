"""Grad-CAM++ (Chattopadhay et al. 2018), as pytorch-grad-cam's ``grad_cam_plusplus.py``."""

from __future__ import annotations

import torch
from torch import Tensor

from cxr_core.explain.cams.base_cam import BaseCAM, weighted_sum
from cxr_core.explain.cams.features import LayerFeatures

# pytorch-grad-cam's constant, kept so maps agree with it numerically.
_GRADCAM_PP_EPS = 1e-6


class GradCAMPlusPlus(BaseCAM):
    """Chattopadhay et al. (Eq. 19), exactly as pytorch-grad-cam computes it."""

    def cam(self, features: LayerFeatures) -> Tensor:
        a, g = features.activations, features.gradients
        g2 = g * g
        g3 = g2 * g
        sum_a = a.sum(dim=(2, 3), keepdim=True)
        aij = g2 / (2 * g2 + sum_a * g3 + _GRADCAM_PP_EPS)
        aij = torch.where(g != 0, aij, torch.zeros_like(aij))
        weights = (g.clamp_min(0) * aij).sum(dim=(2, 3))
        return weighted_sum(weights, a)
