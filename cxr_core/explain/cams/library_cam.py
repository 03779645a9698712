"""Any pytorch-grad-cam method by name, through one adapter with the native methods' calling convention.

``LibraryCAM("pgc:ScoreCAM", model, layer)(images, class_indices)`` runs the library's own class on
the whole batch and returns ``(maps, raw)`` like the native pipeline needs them: the library's maps
(its ReLU, min-max and ``cv2`` resize, untouched) and its un-normalised map at the target layer's
resolution, captured from its ``get_cam_image`` (not recomputed). The adapter adds what using the
library by hand gets wrong or leaves behind:

- **One target per image.** One ``ClassifierOutputTarget`` per image, checked against the batch and
  the model's outputs before anything runs (a single target silently explains only the first image;
  an out-of-range class would raise an ``IndexError`` that the library's ``with`` block swallows).
- **No parameter gradients.** The library needs gradients w.r.t. the target layer's activations,
  not w.r.t. the weights: the parameters are frozen (:func:`cxr_core.explain.cams.features.frozen_eval`)
  and the input is made a leaf that requires grad, so the backward skips every weight gradient. The
  maps are unchanged (the activation gradients do not depend on ``requires_grad``). ``requires_grad``
  flags, train / eval mode and any ``.grad`` the caller had are restored; none is added.
- **Hooks released.** A fresh library object per call, inside its ``with`` block.
- **Layout.** A channels-last (B, h, w, C) target layer without a reshape transform is refused, as
  by the native methods (the library would silently take (h, C) for the map's plane).

Determinism: the only randomness in the supported methods is numpy's global RNG (``RandomCAM``'s
channel weights; ``KPCA_CAM``'s ARPACK start vector on large maps). Each call seeds it with ``seed``
and restores the caller's state afterwards, so a call is deterministic given ``seed`` and its batch:
``RandomCAM``'s weights are drawn image by image in batch order, so an image's map depends on its
position in the call (chunking a sequence differently changes them; the native ``RandomCAM`` is
seeded per position instead). Not covered: non-deterministic GPU kernels (atomic adds in the
backward), which move the last bits of gradient-based maps between runs on CUDA.

Import cost: ``pytorch_grad_cam`` is imported only when a library method is used, so this module
(and the package) import without it; using one without it raises ``ValueError`` naming ``grad-cam``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cxr_core.explain.cams.base_cam import CamMaps
from cxr_core.explain.cams.features import (
    LayerFeatures,
    ReshapeTransform,
    class_index_tensor,
    eval_mode,
    looks_nhwc,
    model_device,
)
from cxr_core.explain.cams.settings import CamSettings
from cxr_core.runtime import Runtime

LIBRARY_PREFIX = "pgc:"
LIBRARY_PACKAGE = "grad-cam"  # the pip name of pytorch_grad_cam

#: pytorch-grad-cam exports that this adapter does not run, and why.
UNSUPPORTED: dict[str, str] = {
    "FullGrad": (
        "ignores the target layer and hooks every nn.Conv2d / nn.BatchNorm2d with a bias, matched by exact "
        "type: timm's DenseNet (BatchNormAct2d, bias-free convs) has none, so there it silently reduces to "
        "|input x input gradient|, and Swin keeps only the patch embedding; it never calls get_cam_image, "
        "so there is no map at the target layer's resolution to return"
    ),
    "DeepFeatureFactorization": (
        "not a BaseCAM: factorises the activations into concepts and returns concept maps and scores, "
        "not one map per image and target"
    ),
    "FinerCAM": (
        "not a BaseCAM: a meta-method over GradCAM that contrasts the target with similar classes only "
        "when it picks its own targets (targets=None); with one ClassifierOutputTarget per image it is "
        "GradCAM"
    ),
    "RefineCAM": (
        "not a BaseCAM: multiplies one base method's maps over several target layers; with the one "
        "target layer used here it is its base method (GradCAMPlusPlus)"
    ),
    "SESS": (
        "not a BaseCAM: a multi-scale sliding-window meta-method with its own constructor settings; it "
        "has no single map at the target layer's resolution"
    ),
    "GuidedBackpropReLUModel": (
        "not a CAM: pixel-space guided backpropagation with another call signature (image, category)"
    ),
}

#: Supported methods that only work on an NCHW target layer (no reshape transform), and why.
NCHW_ONLY: dict[str, str] = {
    "AblationCAM": (
        "its default AblationLayer zeroes axis 1 of the layer's raw output, which for a channels-last "
        "layer is a row of positions, not a channel (and the IndexError that follows leaves the ablation "
        "layer inside the model)"
    ),
    "ShapleyCAM": (
        "it reshapes its weights but multiplies them with the activations as the layer gave them, which "
        "fails for a channels-last layer"
    ),
}

#: Methods whose pytorch-grad-cam class ignores the targets.
CLASS_AGNOSTIC = frozenset({"EigenCAM", "FEM", "KPCA_CAM", "RandomCAM"})
#: Methods whose pytorch-grad-cam class runs no backward (its ``uses_gradients=False``; ``runs_backward``).
GRADIENT_FREE = frozenset({"AblationCAM", "EigenCAM", "FEM", "KPCA_CAM", "ScoreCAM"})
#: ShapleyCAM differentiates the gradient itself (a Hessian-vector product): with frozen parameters
#: a linear head's gradient is a constant without a graph, and its torch.autograd.grad call fails.
_NEEDS_PARAMETER_GRAPH = frozenset({"ShapleyCAM"})


def _import_library() -> ModuleType:
    try:
        import pytorch_grad_cam
    except ImportError as exc:
        raise ValueError(
            f"pytorch-grad-cam methods need the {LIBRARY_PACKAGE!r} package: pip install {LIBRARY_PACKAGE}"
        ) from exc
    return pytorch_grad_cam


def _constructor_problem(cls: type) -> str | None:
    """Why ``cls(model, target_layers, reshape_transform=...)`` cannot be called, or None."""
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
    except (TypeError, ValueError):
        return "its constructor's signature cannot be read"
    names = [p.name for p in params]
    if names[:3] != ["model", "target_layers", "reshape_transform"]:
        return (
            f"its constructor is {cls.__name__}({', '.join(names)}), "
            "not (model, target_layers, reshape_transform)"
        )
    required = [
        p.name
        for p in params[3:]
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if required:
        return f"its constructor needs extra arguments: {', '.join(required)}"
    return None


@functools.lru_cache(maxsize=4)
def _catalogue(library: ModuleType) -> tuple[dict[str, type], dict[str, str]]:
    """(supported name -> class, unsupported name -> reason) for the installed library."""
    from pytorch_grad_cam.base_cam import BaseCAM as LibraryBaseCAM

    supported: dict[str, type] = {}
    unsupported = {name: why for name, why in UNSUPPORTED.items() if hasattr(library, name)}
    for name in dir(library):
        obj = getattr(library, name)
        if not (isinstance(obj, type) and issubclass(obj, LibraryBaseCAM)) or obj is LibraryBaseCAM:
            continue
        if name in unsupported:
            continue
        problem = _constructor_problem(obj)
        if problem is not None:
            unsupported[name] = problem
        else:
            supported[name] = obj
    return supported, unsupported


def library_method_names() -> list[str]:
    """Sorted names of the pytorch-grad-cam classes this adapter runs (its ``BaseCAM`` subclasses
    that take ``(model, target_layers, reshape_transform=...)``), minus :data:`UNSUPPORTED`."""
    return sorted(_catalogue(_import_library())[0])


def resolve_library_method(name: str) -> str | None:
    """The library class name for ``"pgc:<Name>"`` or a bare supported ``<Name>``; None otherwise.

    A ``pgc:`` name must resolve: an unknown or unsupported one raises ``ValueError`` (listing the
    available methods, or saying why it is not supported). A bare name is only a candidate (it may
    be a native method or a typo), so it gives None when it is not a supported library class, and
    also when pytorch-grad-cam is not installed.
    """
    if not isinstance(name, str):
        return None
    if not name.startswith(LIBRARY_PREFIX):
        try:
            supported = _catalogue(_import_library())[0]
        except ValueError:
            return None
        return name if name in supported else None
    bare = name[len(LIBRARY_PREFIX) :]
    supported, unsupported = _catalogue(_import_library())
    if bare in supported:
        return bare
    available = ", ".join(LIBRARY_PREFIX + n for n in sorted(supported))
    if bare in unsupported:
        raise ValueError(
            f"pytorch-grad-cam method {name!r} is not supported: {unsupported[bare]}; available: {available}"
        )
    close = [LIBRARY_PREFIX + n for n in supported if n.lower() == bare.lower()]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown pytorch-grad-cam method {name!r}{hint}; available: {available}")


# --------------------------------------------------------------------------------------------------
# Call-scoped model state
# --------------------------------------------------------------------------------------------------


@contextmanager
def _kept_parameter_grads(model: nn.Module) -> Iterator[None]:
    """Parameter ``.grad`` as before the block: the library's ``model.zero_grad()`` drops the caller's,
    its full backward (where parameters require grad) adds its own."""
    saved = [(p, p.grad) for p in model.parameters()]
    try:
        yield
    finally:
        for p, grad in saved:
            p.grad = grad


@contextmanager
def _seeded_numpy(seed: int) -> Iterator[None]:
    """numpy's global RNG seeded for the block, the caller's state restored afterwards."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        yield
    finally:
        np.random.set_state(state)


# --------------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------------


class LibraryCAM:
    """A pytorch-grad-cam method with the native calling convention (see the module docstring).

    ``name``: ``"pgc:<Name>"`` or a bare supported library class name. ``batch_size``: the inner
    batch of the perturbation methods (``ScoreCAM``: masked images per forward, library default 16;
    ``AblationCAM``: ablated copies per forward, default 32); None keeps the library's, other
    methods ignore it (the whole batch is one library call). ``seed``: numpy's global RNG for the
    call (restored afterwards). ``check_layout``: refuse a channels-last target layer without a
    reshape transform. ``ScoreCAM`` and ``AblationCAM`` print tqdm progress bars (the library's).
    In the batch loop it takes nothing from the shared forward (``uses_activations`` and
    ``uses_gradients`` are False): the library runs its own forward, and a backward where
    ``runs_backward``.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        target_layer: nn.Module | Sequence[nn.Module],
        reshape_transform: ReshapeTransform | None = None,
        *,
        seed: int = 0,
        batch_size: int | None = None,
        check_layout: bool = True,
    ) -> None:
        if not isinstance(name, str):
            raise ValueError(f"method name must be a string such as 'pgc:GradCAM', got {name!r}")
        # A bare name is read as a library name here: unknown and unsupported ones raise, saying why.
        library_name = resolve_library_method(
            name if name.startswith(LIBRARY_PREFIX) else LIBRARY_PREFIX + name
        )
        assert library_name is not None  # a pgc: name resolves or raises
        if isinstance(target_layer, (list, tuple)):
            if len(target_layer) != 1:
                raise ValueError("exactly one target layer is supported")
            target_layer = target_layer[0]
        if reshape_transform is not None and library_name in NCHW_ONLY:
            raise ValueError(
                f"pytorch-grad-cam's {library_name} does not work with a reshape transform (a channels-last "
                f"layer such as Swin's): {NCHW_ONLY[library_name]}"
            )
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.name = LIBRARY_PREFIX + library_name
        self.library_name = library_name
        self.model = model
        self.target_layer = target_layer
        self.reshape_transform = reshape_transform
        self.seed = int(seed)
        self.batch_size = batch_size
        self.check_layout = check_layout
        self.class_agnostic = library_name in CLASS_AGNOSTIC
        self.runs_backward = library_name not in GRADIENT_FREE  # the library's own flag is checked per call
        # Nothing from the batch loop's shared forward: the library runs its own on the batch.
        self.uses_activations = False
        self.uses_gradients = False

    @classmethod
    def from_settings(
        cls,
        name: str,
        model: nn.Module,
        target_layer: nn.Module,
        reshape_transform: ReshapeTransform | None,
        settings: CamSettings,
        runtime: Runtime,
    ) -> LibraryCAM:
        """The adapter as the batch loop runs it: the seed of the settings (the library has no autocast)."""
        return cls(name, model, target_layer, reshape_transform, seed=settings.seed)

    def explain(self, images: Tensor, class_indices: Tensor, features: LayerFeatures) -> CamMaps:
        """The batch loop's call: the library's own pass over ``images`` (``features`` unused)."""
        return CamMaps(*self(images, class_indices))

    def __repr__(self) -> str:
        return f"LibraryCAM({self.name!r}, seed={self.seed}, batch_size={self.batch_size})"

    def __enter__(self) -> LibraryCAM:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def _make(self, library: ModuleType, cls: type) -> tuple[Any, nn.Module | None]:
        """A fresh library object (and, for AblationCAM, its own ablation layer, to put back on error)."""
        if self.library_name == "AblationCAM":
            # The library's default AblationLayer() is one instance shared by every AblationCAM (and
            # it keeps the last batch's activations): each call gets its own.
            ablation = library.AblationLayer()
            cam = cls(
                self.model,
                [self.target_layer],
                reshape_transform=self.reshape_transform,
                ablation_layer=ablation,
            )
        else:
            ablation = None
            cam = cls(self.model, [self.target_layer], reshape_transform=self.reshape_transform)
        if self.batch_size is not None:
            cam.batch_size = self.batch_size  # read by ScoreCAM (when set) and AblationCAM
        return cam, ablation

    def __call__(
        self, images: Tensor | np.ndarray, class_indices: Tensor | np.ndarray | Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(maps, raw)`` for image b explained for ``class_indices[b]``.

        ``maps``: float32 (B, H, W) in [0, 1], as the library returns them. ``raw``: float32 (B, h, w),
        the library's ``get_cam_image`` output for the target layer after its ReLU, before scaling.
        """
        library = _import_library()
        from pytorch_grad_cam.utils.find_layers import replace_layer_recursive
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        images_t = torch.as_tensor(images)
        n = _batch_length(images_t)
        idx = class_index_tensor(class_indices, n, None, torch.device("cpu")).tolist()
        targets = [ClassifierOutputTarget(int(c)) for c in idx]
        cls = _catalogue(library)[0][self.library_name]
        captured: list[np.ndarray] = []
        x = images_t.detach().to(device=self.device, dtype=torch.float32).clone()
        trainable = self.library_name in _NEEDS_PARAMETER_GRAPH
        handles = self._checking_hooks(idx, n)
        ablation: nn.Module | None = None
        try:
            with (
                _kept_parameter_grads(self.model),
                eval_mode(self.model, requires_grad=trainable),
                _seeded_numpy(self.seed),
            ):
                cam, ablation = self._make(library, cls)
                with cam:
                    maps = self._run(cam, x, targets, captured)
        finally:
            for handle in handles:
                handle.remove()
            if ablation is not None:  # AblationCAM swaps the layer out; put it back if it failed midway
                replace_layer_recursive(self.model, ablation, self.target_layer)
        return self._checked(maps, captured, n, tuple(images_t.shape[-2:]))

    def _checking_hooks(self, idx: list[int], n: int) -> list[torch.utils.hooks.RemovableHandle]:
        """Hooks that check the class indices against the model's outputs and the target layer's
        layout during the library's forward, before the library can swallow the error."""

        def check_outputs(module: nn.Module, inputs: object, output: object) -> None:
            # Before the targets index the logits: the library's with block swallows IndexError.
            if isinstance(output, Tensor) and output.ndim == 2:
                class_index_tensor(idx, n, int(output.shape[-1]), torch.device("cpu"))

        def check_layer(module: nn.Module, inputs: object, output: object) -> None:
            if isinstance(output, Tensor) and looks_nhwc(output.shape):
                raise ValueError(
                    f"CAM target layer output {tuple(output.shape)} looks channels-last (B, h, w, C), as "
                    "timm's Swin blocks give: pass reshape_transform=cxr_core.explain.layers."
                    "swin_reshape_transform (without it pytorch-grad-cam takes (h, C) for the map's plane), "
                    "or check_layout=False if it is NCHW"
                )

        handles = [self.model.register_forward_hook(check_outputs)]
        if self.check_layout and self.reshape_transform is None:
            handles.append(self.target_layer.register_forward_hook(check_layer))
        return handles

    def _run(self, cam: Any, x: Tensor, targets: list[Any], captured: list[np.ndarray]) -> np.ndarray:
        """The library object's call, its ``get_cam_image`` output captured (after its ReLU)."""
        get_cam_image = cam.get_cam_image

        def capture(*args: object, **kwargs: object) -> np.ndarray:
            out = get_cam_image(*args, **kwargs)
            raw = out.detach().cpu().numpy() if isinstance(out, Tensor) else np.asarray(out)
            captured.append(np.maximum(raw, 0).astype(np.float32, copy=False))
            return out

        cam.get_cam_image = capture
        # Frozen parameters: the input carries the graph, so the backward reaches the target layer's
        # activations without computing a single weight gradient.
        x.requires_grad_(bool(cam.uses_gradients))
        try:
            return cam(x, targets)
        except IndexError as exc:  # the library's __exit__ would print and swallow it
            raise RuntimeError(f"pytorch-grad-cam {self.library_name} failed: {exc!r}") from exc
        finally:
            # capture -> bound method -> cam is a cycle: without breaking it the object, its outputs
            # and the retained autograd graph live until the cyclic GC runs.
            del cam.get_cam_image
            cam.outputs = None

    def _checked(
        self, maps: np.ndarray, captured: list[np.ndarray], n: int, size: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The library's maps and its one captured raw map stack, checked against the batch."""
        if len(captured) != 1:
            raise RuntimeError(
                f"pytorch-grad-cam {self.library_name} called get_cam_image {len(captured)} times, "
                "expected once"
            )
        maps = np.asarray(maps, dtype=np.float32)
        raw = captured[0]
        if maps.shape != (n, *size) or raw.ndim != 3 or raw.shape[0] != n:
            raise RuntimeError(
                f"pytorch-grad-cam {self.library_name} gave maps {maps.shape} and raw maps {raw.shape} "
                f"for {n} images of {size}"
            )
        return maps, raw


def _batch_length(images: Tensor) -> int:
    """The number of images of a float (B, C, H, W) batch; an empty batch is refused."""
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if not images.dtype.is_floating_point:
        raise ValueError(f"images must be float (already normalised), got {images.dtype}")
    n = int(images.shape[0])
    if n == 0:
        raise ValueError("images is an empty batch")
    return n


__all__ = [
    "CLASS_AGNOSTIC",
    "GRADIENT_FREE",
    "LIBRARY_PACKAGE",
    "LIBRARY_PREFIX",
    "NCHW_ONLY",
    "UNSUPPORTED",
    "LibraryCAM",
    "library_method_names",
    "resolve_library_method",
]
