"""XGrad-CAM (Fu et al. 2020), as pytorch-grad-cam's ``xgrad_cam.py``."""

from __future__ import annotations

from torch import Tensor

from cxr_core.explain.cams.base_cam import BaseCAM, weighted_sum
from cxr_core.explain.cams.features import LayerFeatures

# pytorch-grad-cam's constant, kept so maps agree with it numerically.
_XGRADCAM_EPS = 1e-7


class XGradCAM(BaseCAM):
    """Fu et al.: gradients weighted by normalised activations."""

    def cam(self, features: LayerFeatures) -> Tensor:
        a, g = features.activations, features.gradients
        sum_a = a.sum(dim=(2, 3), keepdim=True)
        weights = (g * a / (sum_a + _XGRADCAM_EPS)).sum(dim=(2, 3))
        return weighted_sum(weights, a)
