"""The batch loop: every requested method on every batch, from one shared forward per batch.

``compute_cams`` takes normalised float images; ``cams_in_batches`` takes the uint8 cache and the
rows to explain (the localisation set, an external set). The random control is seeded by the image's
position in the caller's whole sequence, so no map depends on the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from cxr_core.data.batches import normalise, to_device
from cxr_core.explain.cams.base_cam import BaseCAM, CamMaps
from cxr_core.explain.cams.eigen_cam import EigenCAM
from cxr_core.explain.cams.features import FeatureExtractor
from cxr_core.explain.cams.random_cam import RandomCAM
from cxr_core.explain.cams.registry import _check_methods, get_cam_method
from cxr_core.explain.cams.settings import CamSettings
from cxr_core.runtime import Runtime

if TYPE_CHECKING:
    from cxr_core.models.registry import ModelSpec


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


def cams_in_batches(
    model: nn.Module,
    spec: ModelSpec,
    images: np.ndarray,
    rows: np.ndarray,
    classes: np.ndarray,
    settings: CamSettings,
    runtime: Runtime,
) -> Iterator[tuple[int, int, dict[str, CamMaps]]]:
    """``(start, stop, {method: CamMaps})`` for ``images[rows[start:stop]]`` explained for
    ``classes[start:stop]``, ``cam.batch_size`` at a time; the random control is seeded by position."""
    runtime.prepare(model).eval()
    step = settings.batch_size
    for start in range(0, len(rows), step):
        stop = min(start + step, len(rows))
        x = normalise(
            to_device(images[rows[start:stop]], runtime.device), channels_last=runtime.channels_last
        )
        yield (
            start,
            stop,
            compute_cams(
                model,
                spec,
                x,
                classes[start:stop],
                settings.methods,
                batch_size=step,
                seed=settings.seed,
                first_position=start,
                autocast_dtype=runtime.autocast_dtype,
                channels_last=runtime.channels_last,
                eigen_sign=settings.eigen_sign,
                random_stride=settings.random_stride,
            ),
        )
