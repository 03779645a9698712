"""EigenCAM (Muhammad & Yeasin 2020): the first principal component of the activations, batched.

One batched thin SVD (numpy, float32: pytorch-grad-cam's exact numbers and sign) instead of a full
SVD per image, whose ``C x C`` right-singular basis pytorch-grad-cam computes and throws away; or,
for the other sign conventions, the first component from the small Gram matrix (``hw x hw`` or
``C x C``, whichever is smaller) with a batched float64 ``eigh``.

Sign of EigenCAM: a principal component's sign is arbitrary (``v`` and ``-v`` are both valid), and
the ReLU that follows keeps only one side, so the sign decides the map. pytorch-grad-cam's
``EigenCAM`` does *not* correct it: it keeps whatever sign LAPACK's SVD returns. The default here,
``sign="pytorch-grad-cam"``, reproduces that exactly (numpy's batched thin SVD on the CPU, which gives
the same first singular vector as its full SVD), so the paper's EigenCAM numbers are re-run as they
were. Alternatives: ``"peak"`` flips each map so its largest magnitude is positive (Eq. 13 of
Seg-Eigen-CAM; pytorch-grad-cam's ``get_2d_projection_with_sign_correction``), ``"activation"``
makes the projection correlate positively with the mean activation (meaningful for post-ReLU
features such as DenseNet's ``features[-1]``), ``"none"`` keeps the batched ``eigh``'s own sign.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from cxr_core.explain.cams.base_cam import BaseCAM
from cxr_core.explain.cams.features import LayerFeatures, ReshapeTransform

if TYPE_CHECKING:
    from cxr_core.explain.cams.settings import CamSettings
    from cxr_core.runtime import Runtime


def _single_threaded_blas() -> AbstractContextManager[object]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


EIGEN_SIGNS = ("pytorch-grad-cam", "peak", "activation", "none")


def check_eigen_sign(sign: str) -> str:
    """``cam.eigen_sign``: one of :data:`EIGEN_SIGNS` (see the module docstring)."""
    if sign not in EIGEN_SIGNS:
        raise ValueError(f"EigenCAM sign must be one of {list(EIGEN_SIGNS)}, got {sign!r}")
    return sign


def first_principal_projection(activations: Tensor, *, sign: str = "pytorch-grad-cam") -> Tensor:
    """Projection of each position's (centred) channel vector on the first principal component.

    activations (B, C, h, w) -> (B, h, w) float32, batched. Non-finite activations are zeroed first
    (pytorch-grad-cam zeroes NaN). ``sign="pytorch-grad-cam"``: ``X @ Vt[0]`` from numpy's thin SVD in
    float32, exactly what pytorch-grad-cam's ``get_2d_projection`` returns (it runs the full SVD, one
    image at a time: the same ``Vt[0]``, at the cost of a ``C x C`` basis per image). Other signs: the
    component comes from the Gram matrix of the smaller side in float64 with a batched ``eigh``,
    then ``"peak"`` / ``"activation"`` / ``"none"`` fix the sign (see the module docstring).
    """
    check_eigen_sign(sign)
    b, c, h, w = activations.shape
    x = activations.detach().reshape(b, c, h * w).transpose(1, 2)  # (B, N, C)
    x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    if sign == "pytorch-grad-cam":
        xn = x.float().cpu().numpy()
        xn = xn - xn.mean(axis=1, keepdims=True)
        with _single_threaded_blas():  # OpenBLAS threads fighting torch's for the cores: 10-100x slower
            _, _, vt = np.linalg.svd(xn, full_matrices=False)
        proj = np.einsum("bnc,bc->bn", xn, vt[:, 0, :])
        return torch.from_numpy(proj.reshape(b, h, w).astype(np.float32)).to(activations.device)
    x = x.double()
    x = x - x.mean(dim=1, keepdim=True)
    n = h * w
    if n <= c:
        gram = x @ x.transpose(1, 2)  # (B, N, N)
        evals, evecs = torch.linalg.eigh(gram)
        proj = evecs[..., -1] * evals[..., -1].clamp_min(0).sqrt()[:, None]
    else:
        gram = x.transpose(1, 2) @ x  # (B, C, C)
        _, evecs = torch.linalg.eigh(gram)
        proj = (x @ evecs[..., -1:])[..., 0]
    if sign == "peak":
        flip = proj.amin(dim=1).abs() > proj.amax(dim=1).abs()
    elif sign == "activation":
        flip = (proj * x.sum(dim=2)).sum(dim=1) < 0
    else:
        flip = torch.zeros(b, dtype=torch.bool, device=proj.device)
    proj = torch.where(flip[:, None], -proj, proj)
    return proj.reshape(b, h, w).float()


class EigenCAM(BaseCAM):
    """Muhammad & Yeasin: the first principal component of the activations (class-agnostic).

    ``sign``: ``"pytorch-grad-cam"`` (default, its exact maps), ``"peak"``, ``"activation"`` or
    ``"none"``; see the module docstring.
    """

    uses_gradients = False
    class_agnostic = True

    def __init__(self, *args: object, sign: str = "pytorch-grad-cam", **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.sign = check_eigen_sign(sign)

    @classmethod
    def from_settings(
        cls,
        model: nn.Module,
        target_layer: nn.Module,
        reshape_transform: ReshapeTransform | None,
        settings: CamSettings,
        runtime: Runtime,
    ) -> EigenCAM:
        """As the base's, with ``cam.eigen_sign``."""
        return cls(
            model,
            target_layer,
            reshape_transform,
            seed=settings.seed,
            autocast_dtype=runtime.autocast_dtype,
            sign=settings.eigen_sign,
        )

    def cam(self, features: LayerFeatures) -> Tensor:
        return first_principal_projection(features.activations, sign=self.sign)
