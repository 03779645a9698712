"""Names to CAM methods: the native classes by pytorch-grad-cam's spelling, any other pytorch-grad-cam
method through the adapter (``library_cam``), and the params lookups of the stages that compute CAMs.

The registry imports the methods, never the other way round, so the package has no import cycle.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from cxr_core.explain.cams import library_cam as library
from cxr_core.explain.cams.base_cam import BaseCAM, CamMethod
from cxr_core.explain.cams.eigen_cam import EigenCAM, check_eigen_sign
from cxr_core.explain.cams.features import ReshapeTransform
from cxr_core.explain.cams.grad_cam import GradCAM
from cxr_core.explain.cams.grad_cam_plusplus import GradCAMPlusPlus
from cxr_core.explain.cams.hirescam import HiResCAM
from cxr_core.explain.cams.layer_cam import LayerCAM
from cxr_core.explain.cams.random_cam import RandomCAM
from cxr_core.explain.cams.settings import CamSettings
from cxr_core.explain.cams.xgrad_cam import XGradCAM
from cxr_core.runtime import Runtime, check_amp, check_device

CAM_METHODS: dict[str, type[BaseCAM]] = {
    cls.__name__: cls for cls in (GradCAM, GradCAMPlusPlus, XGradCAM, HiResCAM, LayerCAM, EigenCAM, RandomCAM)
}


def get_cam_method(name: str) -> Callable[..., Any]:
    """The CAM method called ``name``: a native class (pytorch-grad-cam's spelling, e.g.
    ``GradCAMPlusPlus``), or any other pytorch-grad-cam method through the adapter
    (:class:`cxr_core.explain.cams.library_cam.LibraryCAM`; ``pgc:GradCAM`` forces the library's own version)."""
    if isinstance(name, str) and name in CAM_METHODS:
        return CAM_METHODS[name]
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


def check_methods(methods: Sequence[str]) -> list[str]:
    """The method names once each, in order; an unknown one raises, naming the available ones."""
    if isinstance(methods, str):
        methods = [methods]
    names = list(dict.fromkeys(methods))
    if not names:
        raise ValueError(f"no CAM method given; available: {', '.join(sorted(CAM_METHODS))}")
    for name in names:
        get_cam_method(name)
    return names


def build_cam(
    name: str,
    model: nn.Module,
    target_layer: nn.Module,
    reshape_transform: ReshapeTransform | None,
    settings: CamSettings,
    runtime: Runtime,
) -> CamMethod:
    """Method ``name`` as the batch loop runs it, configured from the settings objects by its class."""
    if name in CAM_METHODS:
        return CAM_METHODS[name].from_settings(model, target_layer, reshape_transform, settings, runtime)
    return library.LibraryCAM.from_settings(name, model, target_layer, reshape_transform, settings, runtime)


#: The registries a stage that computes CAMs checks its params against.
CAM_LOOKUPS = {
    "cam method": get_cam_method,
    "eigen sign": check_eigen_sign,
    "device": check_device,
    "amp": check_amp,
}
