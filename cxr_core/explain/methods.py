"""Batched class activation maps: Grad-CAM, Grad-CAM++, EigenCAM, a random-map control and friends.

The classes follow pytorch-grad-cam (one class per method over a small shared base, usable as a
context manager, same names, same arithmetic), but they are built for scoring thousands of maps:

- **Batched, one target per image.** ``cam(images, class_indices)`` explains image ``b`` for class
  ``class_indices[b]``. (pytorch-grad-cam needs one ``ClassifierOutputTarget`` per image; a single
  target silently explains only the first image and leaves the others all-zero.)
- **No parameter gradients, no backward through the trunk.** A forward hook on the target layer
  swaps its output for a detached leaf that requires grad; the parameters are frozen for the call
  (``requires_grad`` restored afterwards, nothing accumulates in ``.grad``), so autograd records only
  the few layers *after* the target layer and ``torch.autograd.grad`` differentiates just those.
  pytorch-grad-cam runs a full backward with every parameter gradient, image by image.
- **Shared features.** :func:`compute_heatmaps` runs one forward (and the head-only backward) per
  batch and feeds every requested method from the same activations and gradients.
- **Batched EigenCAM.** One batched thin SVD (numpy, float32: pytorch-grad-cam's exact numbers and
  sign) instead of a full SVD per image, whose ``C x C`` right-singular basis pytorch-grad-cam
  computes and throws away; or, for the other sign conventions, the first component from the small
  Gram matrix (``hw x hw`` or ``C x C``, whichever is smaller) with a batched float64 ``eigh``.

Post-processing is pytorch-grad-cam's: ReLU, per-map min-max (``(x - min) / (1e-7 + max)``) at the
feature resolution, bilinear upsampling (half-pixel centres, as ``cv2.resize``) to the image size,
then min-max again. Maps come back as float32 in [0, 1]; a map whose raw values are non-finite stays
NaN so that it cannot be scored silently: use :func:`degenerate_maps` / :func:`degeneracy_summary`
to report flat, all-zero and NaN maps.

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

import functools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from cxr_core.models.registry import ModelSpec

log = logging.getLogger(__name__)

# pytorch-grad-cam's constants, kept so maps agree with it numerically.
_MINMAX_EPS = 1e-7
_GRADCAM_PP_EPS = 1e-6
_XGRADCAM_EPS = 1e-7

ReshapeTransform = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------------------------------
# Features: one forward (and a head-only backward) per batch
# --------------------------------------------------------------------------------------------------


@dataclass
class LayerFeatures:
    """What every CAM method is computed from, for one batch.

    ``activations`` and ``gradients`` are float32 NCHW (after the reshape transform). ``gradients``
    is ``d logit[b, class_indices[b]] / d activations[b]`` (None when no method needed them).
    ``positions`` are the images' positions in the caller's sequence (seeds the random control).
    """

    activations: Tensor | None
    gradients: Tensor | None
    positions: Tensor
    image_size: tuple[int, int]
    logits: Tensor | None = None


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (the CPU for a model without any)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module, *, requires_grad: bool = False) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad`` set on every parameter for the block; both restored."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(requires_grad)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def frozen_eval(model: nn.Module) -> AbstractContextManager[nn.Module]:
    """Eval mode and frozen parameters for the block (no parameter gradient is ever computed)."""
    return eval_mode(model, requires_grad=False)


def _looks_nhwc(shape: Sequence[int]) -> bool:
    """(B, h, w, C) from a transformer block: h == w and a channel axis much longer than both."""
    return len(shape) == 4 and shape[1] == shape[2] and shape[3] > 4 * shape[1]


def _to_nchw(t: Tensor, reshape_transform: ReshapeTransform | None, check_layout: bool = True) -> Tensor:
    if reshape_transform is not None:
        t = reshape_transform(t)
    elif check_layout and _looks_nhwc(t.shape):
        raise ValueError(
            f"CAM target layer output {tuple(t.shape)} looks channels-last (B, h, w, C), as timm's Swin "
            "blocks give: pass reshape_transform=cxr_core.explain.layers.swin_reshape_transform (without it the "
            "maps would be computed over (h, C) instead of (h, w)), or check_layout=False if it is NCHW"
        )
    if t.ndim != 4:
        raise ValueError(
            f"CAM target layer gave a {t.ndim}-D tensor {tuple(t.shape)} after the reshape transform; "
            "expected NCHW (B, C, h, w). A transformer block needs a reshape transform (NHWC -> NCHW)."
        )
    return t.float()


class FeatureExtractor:
    """Hooks ``target_layer`` for one call: activations, and gradients of one target per image.

    Each call freezes the parameters (restored afterwards), puts the model in eval mode (restored),
    registers the hook and removes it again, so nothing leaks between calls. With gradients, the
    hook returns a copy of a detached leaf that requires grad: autograd records only the layers after
    the target layer and the gradient is taken with ``torch.autograd.grad`` (no ``.grad`` anywhere).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module,
        reshape_transform: ReshapeTransform | None = None,
        *,
        autocast_dtype: torch.dtype | None = None,
        check_layout: bool = True,
    ) -> None:
        self.model = model
        self.target_layer = target_layer
        self.reshape_transform = reshape_transform
        self.autocast_dtype = autocast_dtype
        self.check_layout = check_layout

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def __call__(
        self,
        images: Tensor,
        class_indices: Tensor | Sequence[int] | None = None,
        *,
        need_activations: bool = True,
        need_gradients: bool = True,
        positions: Tensor | None = None,
    ) -> LayerFeatures:
        images = torch.as_tensor(images)
        if images.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        n = images.shape[0]
        if positions is None:
            positions = torch.arange(n)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        if not (need_activations or need_gradients):
            return LayerFeatures(None, None, positions, size)
        if need_gradients:
            if class_indices is None:
                raise ValueError("gradient-based CAMs need one class index per image")
            _class_index_tensor(class_indices, n, None, torch.device("cpu"))  # fail before the forward

        device = self.device
        x = images.to(device=device, dtype=torch.float32, non_blocking=True)
        captured: list[Tensor] = []

        def hook(module: nn.Module, inputs: object, output: Tensor) -> Tensor:
            if not isinstance(output, Tensor):
                raise TypeError(f"CAM target layer returned {type(output).__name__}, not a tensor")
            leaf = output.detach()
            if need_gradients:
                leaf.requires_grad_(True)
            captured.append(leaf)
            # A copy goes on, so in-place layers downstream cannot touch the captured activations.
            return leaf.clone()

        amp = (
            torch.autocast(device_type=device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else nullcontext()
        )
        with frozen_eval(self.model), amp:
            handle = self.target_layer.register_forward_hook(hook)
            try:
                with torch.set_grad_enabled(need_gradients):
                    logits = self.model(x)
            finally:
                handle.remove()
            if len(captured) != 1:
                raise RuntimeError(
                    f"CAM target layer ran {len(captured)} times in one forward; expected exactly once"
                )
            raw = captured[0]
            grads = None
            if need_gradients:
                idx = _class_index_tensor(class_indices, n, logits.shape[-1], logits.device)
                target = logits.float().gather(1, idx[:, None]).sum()
                grad_raw = None
                if target.requires_grad:
                    (grad_raw,) = torch.autograd.grad(target, raw, allow_unused=True)
                if grad_raw is None:  # the logits do not depend on the target layer
                    grad_raw = torch.zeros_like(raw)
                grads = _to_nchw(grad_raw.detach(), self.reshape_transform, self.check_layout)
            acts = _to_nchw(raw.detach(), self.reshape_transform, self.check_layout)
        return LayerFeatures(acts, grads, positions, size, logits.detach())


def _class_index_tensor(
    class_indices: Tensor | Sequence[int] | None, n: int, num_classes: int | None, device: torch.device
) -> Tensor:
    idx = torch.as_tensor(
        np.asarray(class_indices) if not isinstance(class_indices, Tensor) else class_indices
    )
    if idx.ndim == 0:
        raise ValueError(
            "class_indices must hold one class index per image (a single target would explain only "
            f"the first image); got a scalar for {n} images"
        )
    idx = idx.reshape(-1)
    if idx.numel() != n:
        raise ValueError(f"class_indices must hold one class index per image: got {idx.numel()} for {n}")
    if idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise ValueError(f"class_indices must be integers, got {idx.dtype}")
    idx = idx.to(torch.int64)
    if n and int(idx.min()) < 0:
        raise ValueError(f"class_indices must be >= 0, got {idx.min().item()}")
    if n and num_classes is not None and int(idx.max()) >= num_classes:
        raise ValueError(
            f"class_indices must lie in [0, {num_classes}) (the model has {num_classes} outputs); "
            f"got {idx.min().item()}..{idx.max().item()}"
        )
    return idx.to(device)


# --------------------------------------------------------------------------------------------------
# Post-processing (pytorch-grad-cam's scale_cam_image, batched)
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------

CAM_METHODS: dict[str, type[BaseCAM]] = {}


@dataclass(frozen=True)
class CamMaps:
    """One method's maps for a batch: ``maps`` float32 (B, H, W) in [0, 1], the paper's min-max
    normalised maps; ``raw`` float32 (B, h, w), the map after the ReLU and before any normalisation,
    at the target layer's resolution, so magnitudes (and energy inside a box) stay comparable."""

    maps: np.ndarray
    raw: np.ndarray


def register_cam(cls: type[BaseCAM]) -> type[BaseCAM]:
    CAM_METHODS[cls.__name__] = cls
    return cls


def get_cam_method(name: str) -> Callable[..., Any]:
    """The CAM method called ``name``: a native class (pytorch-grad-cam's spelling, e.g.
    ``GradCAMPlusPlus``), or any other pytorch-grad-cam method through the adapter
    (:class:`cxr_core.explain.library.LibraryCAM`; ``pgc:GradCAM`` forces the library's own version)."""
    if isinstance(name, str) and name in CAM_METHODS:
        return CAM_METHODS[name]
    from cxr_core.explain import library

    library_name = library.resolve_library_method(name) if isinstance(name, str) else None
    if library_name is not None:
        return functools.partial(library.LibraryCAM, name)
    try:
        others = library.library_method_names()
    except ValueError:  # pytorch-grad-cam is not installed: name the native methods only
        others = []
    raise ValueError(
        f"unknown CAM method {name!r}; available: {', '.join(sorted(CAM_METHODS))} (native), "
        + (
            f"{', '.join(n for n in others if n not in CAM_METHODS)} or {library.LIBRARY_PREFIX}<Name> "
            "(pytorch-grad-cam, through the adapter)"
            if others
            else "and pytorch-grad-cam's methods once the grad-cam package is installed"
        )
    )


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


def _weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    return torch.einsum("bc,bchw->bhw", weights, activations)


@register_cam
class GradCAM(BaseCAM):
    """Selvaraju et al.: channel weights = spatial mean of the gradients."""

    def cam(self, features: LayerFeatures) -> Tensor:
        a, g = features.activations, features.gradients
        return _weighted_sum(g.mean(dim=(2, 3)), a)


@register_cam
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
        return _weighted_sum(weights, a)


@register_cam
class XGradCAM(BaseCAM):
    """Fu et al.: gradients weighted by normalised activations."""

    def cam(self, features: LayerFeatures) -> Tensor:
        a, g = features.activations, features.gradients
        sum_a = a.sum(dim=(2, 3), keepdim=True)
        weights = (g * a / (sum_a + _XGRADCAM_EPS)).sum(dim=(2, 3))
        return _weighted_sum(weights, a)


@register_cam
class HiResCAM(BaseCAM):
    """Draelos & Carin: element-wise gradient x activation, summed over channels."""

    def cam(self, features: LayerFeatures) -> Tensor:
        return (features.gradients * features.activations).sum(dim=1)


@register_cam
class LayerCAM(BaseCAM):
    """Jiang et al.: positive gradients x activation, summed over channels."""

    def cam(self, features: LayerFeatures) -> Tensor:
        return (features.gradients.clamp_min(0) * features.activations).sum(dim=1)


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


@register_cam
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

    def cam(self, features: LayerFeatures) -> Tensor:
        return first_principal_projection(features.activations, sign=self.sign)


def random_grid(image_size: tuple[int, int], stride: int = 32) -> tuple[int, int]:
    return max(1, math.ceil(image_size[0] / stride)), max(1, math.ceil(image_size[1] / stride))


@register_cam
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

    def cam(self, features: LayerFeatures) -> Tensor:
        h, w = random_grid(features.image_size, self.stride)
        maps = [
            np.random.default_rng([self.seed, int(p)]).random((h, w), dtype=np.float32)
            for p in features.positions.tolist()
        ]
        if not maps:
            return torch.zeros((0, h, w))
        return torch.from_numpy(np.stack(maps))


# --------------------------------------------------------------------------------------------------
# Degenerate maps
# --------------------------------------------------------------------------------------------------


def degenerate_maps(maps: np.ndarray | Tensor, atol: float = 1e-6) -> np.ndarray:
    """Per map: True when it is non-finite anywhere or constant (all-zero included). (B,) bool."""
    m = maps.detach().cpu().numpy() if isinstance(maps, Tensor) else np.asarray(maps)
    if m.ndim < 2:
        raise ValueError(f"maps must be (B, H, W) or (H, W), got shape {m.shape}")
    if m.ndim == 2:
        m = m[None]
    flat = m.reshape(m.shape[0], -1)
    if flat.shape[1] == 0:
        return np.ones(flat.shape[0], dtype=bool)
    finite = np.isfinite(flat).all(axis=1)
    with np.errstate(invalid="ignore"):
        spread = np.where(finite, np.ptp(np.where(np.isfinite(flat), flat, 0), axis=1), np.inf)
    return ~finite | (spread <= atol)


def degeneracy_summary(
    heatmaps: dict[str, np.ndarray], model: str | None = None, atol: float = 1e-6
) -> dict[str, dict[str, object]]:
    """Per method: how many maps are degenerate and why (for the model's metrics / logs)."""
    out: dict[str, dict[str, object]] = {}
    for method, maps in heatmaps.items():
        m = np.asarray(maps)
        if m.ndim == 2:
            m = m[None]
        flat = m.reshape(m.shape[0], -1)
        nonfinite = ~np.isfinite(flat).all(axis=1) if flat.size else np.zeros(len(flat), bool)
        degenerate = degenerate_maps(m, atol) if len(m) else np.zeros(0, bool)
        all_zero = ~nonfinite & (np.abs(np.where(np.isfinite(flat), flat, 0)).max(axis=1, initial=0) <= atol)
        n = int(m.shape[0])
        out[method] = {
            "model": model,
            "method": method,
            "maps": n,
            "degenerate": int(degenerate.sum()),
            "degenerate_fraction": float(degenerate.mean()) if n else 0.0,
            "nonfinite": int(nonfinite.sum()),
            "all_zero": int(all_zero.sum()),
            "constant_nonzero": int((degenerate & ~nonfinite & ~all_zero).sum()),
        }
    return out


# --------------------------------------------------------------------------------------------------
# The pipeline entry point
# --------------------------------------------------------------------------------------------------


def _check_methods(methods: Sequence[str]) -> list[str]:
    if isinstance(methods, str):
        methods = [methods]
    names = list(dict.fromkeys(methods))
    if not names:
        raise ValueError(f"no CAM method given; available: {', '.join(sorted(CAM_METHODS))}")
    for name in names:
        get_cam_method(name)
    return names


def compute_cams(
    model: nn.Module,
    spec: ModelSpec,
    images: Tensor | np.ndarray,
    class_indices: Tensor | np.ndarray | Sequence[int],
    methods: Sequence[str],
    batch_size: int = 32,
    seed: int = 0,
    *,
    first_position: int = 0,
    target_layer: nn.Module | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    eigen_sign: str = "pytorch-grad-cam",
    random_stride: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, CamMaps]:
    """Heatmaps for ``images`` (B, 3, S, S float, normalised), image b explained for class_indices[b].

    One forward (plus the head-only backward when a gradient method is asked for) per batch feeds
    every native method; a pytorch-grad-cam method runs through its adapter on the same batch.
    Returns ``{method: CamMaps}``: normalised maps (NaN maps stay NaN: see
    :func:`degeneracy_summary`) and the raw post-ReLU maps. ``spec`` picks the target layer and the
    NHWC -> NCHW transform (``cxr_core.explain.layers``); ``target_layer`` overrides the layer.
    Image b is at position ``first_position + b`` of the caller's whole sequence: the random control
    is seeded by ``(seed, position)``, so a caller that passes chunks gets the maps of one call.
    """
    from cxr_core.explain.layers import cam_target_layer, reshape_transform

    names = _check_methods(methods)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images_t = torch.as_tensor(images)
    if images_t.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images_t.shape)}")
    if not images_t.dtype.is_floating_point:
        raise ValueError(f"images must be float (already normalised), got {images_t.dtype}")
    n = images_t.shape[0]
    idx = torch.as_tensor(np.array(class_indices) if not isinstance(class_indices, Tensor) else class_indices)
    if idx.ndim != 1 or idx.numel() != n:
        raise ValueError(
            f"class_indices must be 1-D with one class index per image: got shape {tuple(idx.shape)} for {n} images"
        )

    layer = target_layer if target_layer is not None else cam_target_layer(model, spec)
    reshape = reshape_transform(spec)
    native: dict[str, BaseCAM] = {}
    adapted: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {}
    for name in names:
        cls = get_cam_method(name)
        if not (isinstance(cls, type) and issubclass(cls, BaseCAM)):
            adapted[name] = cls(model, layer, reshape, seed=seed)
            continue
        kwargs: dict[str, object] = {"seed": seed, "autocast_dtype": autocast_dtype}
        if cls is EigenCAM:
            kwargs["sign"] = eigen_sign
        if cls is RandomCAM:
            kwargs["stride"] = random_stride
        native[name] = cls(model, layer, reshape, **kwargs)
    extractor = FeatureExtractor(model, layer, reshape, autocast_dtype=autocast_dtype)
    need_grads = any(c.uses_gradients for c in native.values())
    need_acts = need_grads or any(c.uses_activations for c in native.values())

    size = (int(images_t.shape[-2]), int(images_t.shape[-1]))
    maps = {name: np.empty((n, *size), dtype=np.float32) for name in names}
    raw: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        batch = images_t[start:stop]
        if channels_last:
            batch = batch.to(extractor.device).contiguous(memory_format=torch.channels_last)
        if native:
            features = extractor(
                batch,
                idx[start:stop],
                need_activations=need_acts,
                need_gradients=need_grads,
                positions=torch.arange(first_position + start, first_position + stop),
            )
            for name, cam in native.items():
                out = cam.maps_and_raw(features)
                maps[name][start:stop] = out.maps
                raw[name].append(out.raw)
        for name, cam in adapted.items():
            m, r = cam(batch, idx[start:stop])
            maps[name][start:stop] = m
            raw[name].append(r)
        if progress is not None:
            progress(stop, n)
    return {
        name: CamMaps(maps[name], np.concatenate(raw[name]) if raw[name] else np.zeros((0, 1, 1), np.float32))
        for name in names
    }


def compute_heatmaps(
    model: nn.Module,
    spec: ModelSpec,
    images: Tensor | np.ndarray,
    class_indices: Tensor | np.ndarray | Sequence[int],
    methods: Sequence[str],
    batch_size: int = 32,
    seed: int = 0,
    **kwargs: Any,
) -> dict[str, np.ndarray]:
    """:func:`compute_cams`, normalised maps only: ``{method: float32 (B, S, S) in [0, 1]}``."""
    cams = compute_cams(model, spec, images, class_indices, methods, batch_size, seed, **kwargs)
    return {name: out.maps for name, out in cams.items()}


def log_degenerate(heatmaps: dict[str, np.ndarray], model: str | None) -> None:
    """Warn once per method that produced flat, all-zero or non-finite maps."""
    for name, row in degeneracy_summary(heatmaps, model=model).items():
        if row["degenerate"]:
            log.warning(
                "%s on %s: %d of %d maps degenerate (%d non-finite, %d all-zero)",
                name,
                row["model"],
                row["degenerate"],
                row["maps"],
                row["nonfinite"],
                row["all_zero"],
            )


__all__ = [
    "CAM_METHODS",
    "BaseCAM",
    "CamMaps",
    "EIGEN_SIGNS",
    "EigenCAM",
    "FeatureExtractor",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "LayerFeatures",
    "RandomCAM",
    "XGradCAM",
    "compute_cams",
    "compute_heatmaps",
    "eval_mode",
    "degeneracy_summary",
    "degenerate_maps",
    "first_principal_projection",
    "frozen_eval",
    "get_cam_method",
    "log_degenerate",
    "normalise_maps",
    "register_cam",
    "relu_maps",
]
