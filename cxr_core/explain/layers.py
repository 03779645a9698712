"""Where a CAM hooks each architecture, and how its features become N x C x H x W.

Kept out of the model table on purpose: the table is a dependency of training, so a CAM-layer
change here re-runs only the CAM stage, never training. Layers are chosen per family (the
literature's choices: DenseNet ``features[-1]``, EfficientNet ``conv_head``, Swin
``layers[-1].blocks[-1].norm1``); any other timm model gets the last module of timm's
``feature_info`` as a best guess.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import timm
import torch
from torch import nn

from cxr_core.models.registry import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CamLayer:
    """A family's CAM target layer: a dotted module path (negative ints index) and its layout."""

    path: str  # "" = take the last module of timm's feature_info
    nhwc: bool  # features there are N,H,W,C (timm Swin): CAMs need swin_reshape_transform
    note: str


FAMILY_CAM_LAYERS: dict[str, CamLayer] = {
    "densenet": CamLayer("features.-1", False, "last norm (norm5 + ReLU) of the dense features"),
    "efficientnet": CamLayer("conv_head", False, "the 1x1 head conv before pooling"),
    "swin": CamLayer(
        "layers.-1.blocks.-1.norm1", True, "first norm of the last block; timm gives NHWC there"
    ),
    "other": CamLayer(
        "",
        False,
        "best guess: the last module of timm's feature_info (the stride-32 stage of a CNN, e.g. resnet "
        "'layer4', convnext 'stages.3'); token-shaped outputs (ViT) are not spatial maps",
    ),
}


@functools.lru_cache(maxsize=64)
def _feature_info_layer(timm_name: str) -> str:
    """Last feature module of a timm model, built on the meta device (no memory, no weights)."""
    try:
        with torch.device("meta"):
            model = timm.create_model(timm_name, pretrained=False)
        return str(model.feature_info[-1]["module"])
    except Exception as exc:  # any failure only means "no guess": cam_target_layer explains
        log.debug("no feature_info CAM layer for %s: %s", timm_name, exc)
        return ""


def cam_layer(spec: ModelSpec) -> CamLayer:
    """The CAM layer of ``spec``'s family, with the feature_info guess filled in for other models."""
    layer = FAMILY_CAM_LAYERS[spec.family]
    if layer.path:
        return layer
    return CamLayer(_feature_info_layer(spec.timm_name), layer.nhwc, layer.note)


def get_module(model: nn.Module, dotted_path: str) -> nn.Module:
    """Submodule at ``dotted_path``; integer parts index (``-1`` = last), so paths survive depth changes."""
    module = model
    for i, part in enumerate(dotted_path.split(".")):
        try:
            if part.lstrip("-").isdigit() and hasattr(module, "__getitem__"):
                module = module[int(part)]
            else:
                module = getattr(module, part)
        except (AttributeError, IndexError, TypeError, KeyError) as exc:
            where = ".".join(dotted_path.split(".")[:i]) or "the model"
            children = [name for name, _ in module.named_children()]
            raise ValueError(
                f"module path {dotted_path!r}: {where} has no {part!r}; its children are {children}"
            ) from exc
        if not isinstance(module, nn.Module):
            raise ValueError(
                f"module path {dotted_path!r}: {part!r} is a {type(module).__name__}, not a module"
            )
    return module


def cam_target_layer(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """The layer CAMs hook for this architecture."""
    path = cam_layer(spec).path
    if not path:
        raise ValueError(
            f"no CAM target layer is known for {spec.timm_name!r} (family {spec.family!r}, timm gives no "
            f"feature_info); add its family to FAMILY_CAM_LAYERS, e.g. with one of "
            f"{[n for n, _ in model.named_children()]}"
        )
    return get_module(model, path)


def swin_reshape_transform(t: torch.Tensor) -> torch.Tensor:
    """N,H,W,C (timm Swin) or N,L,C tokens with square L -> N,C,H,W, as CAM code expects."""
    if t.ndim == 4:
        return t.permute(0, 3, 1, 2)
    if t.ndim == 3:
        n, length, c = t.shape
        side = int(round(length**0.5))
        if side * side != length:
            raise ValueError(
                f"swin_reshape_transform: {length} tokens is not a square grid (tensor {tuple(t.shape)}); "
                "models with a class token need their own transform"
            )
        return t.reshape(n, side, side, c).permute(0, 3, 1, 2)
    raise ValueError(
        f"swin_reshape_transform: expected a 4-d NHWC or 3-d NLC tensor, got shape {tuple(t.shape)}"
    )


def reshape_transform(spec: ModelSpec) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The NHWC -> NCHW transform ``spec``'s CAM layer needs (None: the layer gives N,C,H,W)."""
    return swin_reshape_transform if cam_layer(spec).nhwc else None
