"""The batch loop: every requested method on every batch, from one shared forward per batch.

It takes the ``cam`` settings (:class:`~cxr_core.explain.cams.settings.CamSettings`: which maps) and
the :class:`~cxr_core.runtime.Runtime` (how to run them) and treats every method alike: each says
what it needs from the shared forward and explains the batch itself (:class:`CamRunner`).
``compute_cams`` takes normalised float images; ``cams_in_batches`` takes the uint8 cache and the
rows to explain (the localisation set, an external set), one ``compute_cams`` batch at a time. The random control is seeded by the image's
position in the caller's whole sequence, so no map depends on the batch size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from cxr_core.data.batches import normalise, to_device
from cxr_core.explain.cams.base_cam import CamMaps
from cxr_core.explain.cams.features import FeatureExtractor, model_device
from cxr_core.explain.cams.registry import build_cam, check_methods
from cxr_core.explain.cams.settings import CamSettings
from cxr_core.explain.layers import cam_target_layer, reshape_transform
from cxr_core.runtime import Runtime

if TYPE_CHECKING:
    from cxr_core.models.registry import ModelSpec


class CamRunner:
    """Every method of ``settings`` on one batch: one shared forward (and the head-only backward when
    a method reads gradients), then each method's maps, native or through the library adapter.

    ``spec`` picks the target layer and the NHWC -> NCHW transform (``cxr_core.explain.layers``);
    ``target_layer`` overrides the layer. The model runs where it is (the runtime gives the autocast
    and the memory format).
    """

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        settings: CamSettings,
        runtime: Runtime,
        *,
        target_layer: nn.Module | None = None,
    ) -> None:
        layer = target_layer if target_layer is not None else cam_target_layer(model, spec)
        reshape = reshape_transform(spec)
        self.methods = {
            name: build_cam(name, model, layer, reshape, settings, runtime)
            for name in check_methods(settings.methods)
        }
        self.extractor = FeatureExtractor(model, layer, reshape, autocast_dtype=runtime.autocast_dtype)
        self.channels_last = runtime.channels_last
        self.need_gradients = any(m.uses_gradients for m in self.methods.values())
        self.need_activations = self.need_gradients or any(m.uses_activations for m in self.methods.values())

    def __call__(self, batch: Tensor, class_indices: Tensor, first_position: int) -> dict[str, CamMaps]:
        """``{method: CamMaps}`` of ``batch``, image b at ``first_position + b`` of the whole sequence."""
        if self.channels_last:
            batch = batch.to(self.extractor.device).contiguous(memory_format=torch.channels_last)
        features = self.extractor(
            batch,
            class_indices,
            need_activations=self.need_activations,
            need_gradients=self.need_gradients,
            positions=torch.arange(first_position, first_position + len(batch)),
        )
        return {name: method.explain(batch, class_indices, features) for name, method in self.methods.items()}


def _class_index_column(class_indices: Tensor | np.ndarray | Sequence[int], n: int) -> Tensor:
    idx = torch.as_tensor(np.array(class_indices) if not isinstance(class_indices, Tensor) else class_indices)
    if idx.ndim != 1 or idx.numel() != n:
        raise ValueError(
            f"class_indices must be 1-D with one class index per image: got shape {tuple(idx.shape)} for {n} images"
        )
    return idx


def compute_cams(
    model: nn.Module,
    spec: ModelSpec,
    images: Tensor | np.ndarray,
    class_indices: Tensor | np.ndarray | Sequence[int],
    settings: CamSettings,
    runtime: Runtime,
    *,
    first_position: int = 0,
    target_layer: nn.Module | None = None,
) -> dict[str, CamMaps]:
    """Heatmaps for ``images`` (B, 3, S, S float, normalised), image b explained for class_indices[b],
    ``settings.batch_size`` images per shared forward.

    Returns ``{method: CamMaps}``: normalised maps (NaN maps stay NaN: see
    :func:`cxr_core.explain.degenerate.degeneracy_summary`) and the raw post-ReLU maps. Image b is at
    position ``first_position + b`` of the caller's whole sequence: the random control is seeded by
    ``(seed, position)``, so a caller that passes chunks gets the maps of one call.
    """
    runner = CamRunner(model, spec, settings, runtime, target_layer=target_layer)
    images_t = torch.as_tensor(images)
    if images_t.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images_t.shape)}")
    if not images_t.dtype.is_floating_point:
        raise ValueError(f"images must be float (already normalised), got {images_t.dtype}")
    n = images_t.shape[0]
    idx = _class_index_column(class_indices, n)
    size = (int(images_t.shape[-2]), int(images_t.shape[-1]))
    maps = {name: np.empty((n, *size), dtype=np.float32) for name in runner.methods}
    raw: dict[str, list[np.ndarray]] = {name: [] for name in runner.methods}
    for start in range(0, n, settings.batch_size):
        stop = min(start + settings.batch_size, n)
        for name, cam in runner(images_t[start:stop], idx[start:stop], first_position + start).items():
            maps[name][start:stop] = cam.maps
            raw[name].append(cam.raw)
    return {
        name: CamMaps(maps[name], np.concatenate(raw[name]) if raw[name] else np.zeros((0, 1, 1), np.float32))
        for name in runner.methods
    }


def compute_heatmaps(
    model: nn.Module,
    spec: ModelSpec,
    images: Tensor | np.ndarray,
    class_indices: Tensor | np.ndarray | Sequence[int],
    methods: Sequence[str],
    batch_size: int = 32,
    seed: int = 0,
    *,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    eigen_sign: str = "pytorch-grad-cam",
    random_stride: int = 32,
    target_layer: nn.Module | None = None,
) -> dict[str, np.ndarray]:
    """:func:`compute_cams` for a caller without settings objects (the demo, the randomisation
    check, the benchmark): the settings from keywords, normalised maps only,
    ``{method: float32 (B, S, S) in [0, 1]}``. The model runs where it is."""
    if autocast_dtype not in (None, torch.bfloat16):
        raise ValueError(
            f"autocast_dtype must be None or torch.bfloat16 (the runtime's), got {autocast_dtype}"
        )
    names = (methods,) if isinstance(methods, str) else tuple(methods)
    settings = CamSettings(names, batch_size, seed, eigen_sign, random_stride)
    runtime = Runtime(model_device(model), amp=autocast_dtype is not None, channels_last=channels_last)
    cams = compute_cams(model, spec, images, class_indices, settings, runtime, target_layer=target_layer)
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
    """``(start, stop, {method: CamMaps})`` for ``images[rows[start:stop]]`` (the uint8 cache) explained
    for ``classes[start:stop]``: one :func:`compute_cams` batch of ``cam.batch_size`` at a time, so
    only one batch of float images is on the runtime's device at once."""
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
                model, spec, x, classes[start:stop], settings, runtime=runtime, first_position=start
            ),
        )
