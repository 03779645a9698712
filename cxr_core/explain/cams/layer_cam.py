"""LayerCAM (Jiang et al. 2021), as pytorch-grad-cam's ``layer_cam.py``."""

from __future__ import annotations

from torch import Tensor

from cxr_core.explain.cams.base_cam import BaseCAM
from cxr_core.explain.cams.features import LayerFeatures


class LayerCAM(BaseCAM):
    """Jiang et al.: positive gradients x activation, summed over channels."""

    def cam(self, features: LayerFeatures) -> Tensor:
        return (features.gradients.clamp_min(0) * features.activations).sum(dim=1)
