"""HiResCAM (Draelos & Carin 2020), as pytorch-grad-cam's ``hirescam.py``."""

from __future__ import annotations

from torch import Tensor

from cxr_core.explain.cams.base_cam import BaseCAM
from cxr_core.explain.cams.features import LayerFeatures


class HiResCAM(BaseCAM):
    """Draelos & Carin: element-wise gradient x activation, summed over channels."""

    def cam(self, features: LayerFeatures) -> Tensor:
        return (features.gradients * features.activations).sum(dim=1)
