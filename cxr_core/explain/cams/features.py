"""Shared feature extraction: one forward (and a head-only backward) per batch feeds every method.

pytorch-grad-cam's ``activations_and_gradients.py``, batched: a forward hook on the target layer swaps
its output for a detached leaf that requires grad, so autograd records only the layers after it and
``torch.autograd.grad`` differentiates just those (no parameter gradient is ever computed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

ReshapeTransform = Callable[[Tensor], Tensor]


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


def looks_nhwc(shape: Sequence[int]) -> bool:
    """(B, h, w, C) from a transformer block: h == w and a channel axis much longer than both."""
    return len(shape) == 4 and shape[1] == shape[2] and shape[3] > 4 * shape[1]


def _to_nchw(t: Tensor, reshape_transform: ReshapeTransform | None, check_layout: bool = True) -> Tensor:
    if reshape_transform is not None:
        t = reshape_transform(t)
    elif check_layout and looks_nhwc(t.shape):
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
            class_index_tensor(class_indices, n, None, torch.device("cpu"))  # fail before the forward

        device = self.device
        x = images.to(device=device, dtype=torch.float32, non_blocking=True)
        amp = (
            torch.autocast(device_type=device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else nullcontext()
        )
        with frozen_eval(self.model), amp:
            logits, raw = self._forward(x, need_gradients)
            grads = self._gradients(logits, raw, class_indices, n) if need_gradients else None
            acts = _to_nchw(raw.detach(), self.reshape_transform, self.check_layout)
        return LayerFeatures(acts, grads, positions, size)

    def _forward(self, x: Tensor, need_gradients: bool) -> tuple[Tensor, Tensor]:
        """The logits and the target layer's output, captured as a leaf (that requires grad when
        gradients are needed)."""
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
        return logits, captured[0]

    def _gradients(
        self, logits: Tensor, raw: Tensor, class_indices: Tensor | Sequence[int], n: int
    ) -> Tensor:
        """``d logit[b, class_indices[b]] / d raw[b]``, NCHW: only the layers after the target layer."""
        idx = class_index_tensor(class_indices, n, logits.shape[-1], logits.device)
        target = logits.float().gather(1, idx[:, None]).sum()
        grad_raw = None
        if target.requires_grad:
            (grad_raw,) = torch.autograd.grad(target, raw, allow_unused=True)
        if grad_raw is None:  # the logits do not depend on the target layer
            grad_raw = torch.zeros_like(raw)
        return _to_nchw(grad_raw.detach(), self.reshape_transform, self.check_layout)


def class_index_tensor(
    class_indices: Tensor | Sequence[int] | None, n: int, num_classes: int | None, device: torch.device
) -> Tensor:
    """``class_indices`` as int64 on ``device``: one per image, each in [0, ``num_classes``) when that is known."""
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
