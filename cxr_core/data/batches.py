"""uint8 cache rows -> model input, as whole batches on the device.

The cache (``data/cache/images.npy``, ``N x S x S`` uint8) is read by fancy-indexing the memmap, a
batch at a time; the uint8 batch (a quarter of the float bytes) crosses to the device, and flip,
rotation, grey -> 3 channels and ImageNet normalisation run there on the whole batch: no PNG
decoding, no per-image Python, no DataLoader workers.

Augmentation is the paper's: random horizontal flip and random rotation in ``[-15, 15]`` degrees,
each with p = 0.5, zero fill outside the rotated image (torchvision ``RandomRotation``'s default;
bilinear sampling instead of its nearest-neighbour). Draws come from a ``torch.Generator``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def to_device(
    batch: np.ndarray | torch.Tensor, device: str | torch.device, non_blocking: bool = True
) -> torch.Tensor:
    """Move a uint8 batch to ``device``; via pinned memory on CUDA so the copy overlaps compute."""
    tensor = torch.from_numpy(np.ascontiguousarray(batch)) if isinstance(batch, np.ndarray) else batch
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        if not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=non_blocking)
    return tensor.to(device)


def _as_nchw(x: torch.Tensor) -> torch.Tensor:
    """(B,S,S) -> (B,1,S,S); (B,C,H,W) unchanged."""
    if x.ndim == 3:
        return x.unsqueeze(1)
    if x.ndim != 4:
        raise ValueError(f"expected a batch of shape (B,S,S) or (B,C,S,S), got {tuple(x.shape)}")
    return x


def flip_rotate(
    x: torch.Tensor, flips: torch.Tensor, angles: torch.Tensor, *, mode: str = "bilinear"
) -> torch.Tensor:
    """Flip (where ``flips``) then rotate by ``angles`` degrees (counter-clockwise on screen) about the centre.

    Deterministic core of :func:`augment`. The per-image decisions are read on the host (they come
    from a CPU generator, so no device sync), and only the images drawn for a flip or a rotation
    are touched: one ``grid_sample`` for the rotated subset. Images with angle 0 come back
    bit-exact, and so does a flip alone. Returns float32 ``B x C x H x W`` in the input's value
    range; outside the image is 0.
    """
    x = _as_nchw(x)
    b, c, h, w = x.shape
    flips = flips.detach().to("cpu", torch.bool).reshape(b)
    angles = angles.detach().to("cpu", torch.float32).reshape(b)
    out = x.to(torch.float32, copy=True)
    flipped = flips.nonzero().flatten()
    if len(flipped):
        index = flipped.to(x.device)
        out[index] = out[index].flip(-1)
    rotated = (angles != 0).nonzero().flatten()
    if len(rotated):
        rad = torch.deg2rad(angles[rotated])
        cos, sin, zero = rad.cos(), rad.sin(), torch.zeros_like(rad)
        # output -> input sampling in normalised coordinates (y down), aspect-corrected for h != w
        theta = torch.stack(
            (torch.stack((cos, -sin * (h / w), zero), dim=1), torch.stack((sin * (w / h), cos, zero), dim=1)),
            dim=1,
        ).to(x.device)
        index = rotated.to(x.device)
        grid = F.affine_grid(theta, [len(rotated), c, h, w], align_corners=False)
        out[index] = F.grid_sample(out[index], grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out


def _check_probability(key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"train.augment.{key} = {value!r} is not allowed; expected a probability in [0, 1]")


def augment(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    hflip_p: float = 0.5,
    rotate_p: float = 0.5,
    max_degrees: float = 15.0,
) -> torch.Tensor:
    """Per image: flip with ``hflip_p``, rotate by U(-max_degrees, max_degrees) with ``rotate_p``.

    Three uniforms per image are drawn from ``generator`` (on its own device; a CPU generator gives
    the same augmentations on CPU and GPU) whatever the probabilities, so the stream does not
    depend on them. ``generator=None`` uses torch's global RNG.
    """
    _check_probability("hflip_p", hflip_p)
    _check_probability("rotate_p", rotate_p)
    if not (math.isfinite(max_degrees) and max_degrees >= 0):
        raise ValueError(
            f"train.augment.max_degrees = {max_degrees!r} is not allowed; expected a number >= 0"
        )
    x = _as_nchw(x)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(3, x.shape[0], generator=generator, device=gen_device).cpu()  # decisions stay on the host
    flips = u[0] < hflip_p
    angles = torch.where(u[1] < rotate_p, (2.0 * u[2] - 1.0) * max_degrees, torch.zeros_like(u[2]))
    return flip_rotate(x, flips, angles)


@functools.lru_cache(maxsize=8)
def _normalise_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with value/255 -> (value/255 - mean) / std == value * scale + shift, in float64 then float32."""
    scale = [1.0 / (255.0 * s) for s in IMAGENET_STD]
    shift = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    as_tensor = functools.partial(torch.tensor, dtype=torch.float32, device=device)
    return as_tensor(scale).view(1, 3, 1, 1), as_tensor(shift).view(1, 3, 1, 1)


def normalise(
    x: torch.Tensor, channels_last: bool = False, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """0..255 grey (B,1,S,S) -> ImageNet-normalised (B,3,S,S) in one broadcast op.

    The grey channel is broadcast against the per-channel constants, so no repeated 3-channel copy
    is ever made; the result is written straight into a ``channels_last`` buffer when asked.
    """
    x = _as_nchw(x)
    if x.shape[1] not in (1, 3):
        raise ValueError(f"normalise: expected 1 (grey) or 3 channels, got shape {tuple(x.shape)}")
    scale, shift = _normalise_constants(x.device)
    b, _, h, w = x.shape
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((b, 3, h, w), dtype=dtype, device=x.device, memory_format=memory_format)
    return torch.addcmul(shift, x.float(), scale, out=out)


def prepare_batch(
    images: np.ndarray | torch.Tensor,
    device: str | torch.device,
    *,
    train: bool,
    generator: torch.Generator | None = None,
    hflip_p: float = 0.5,
    rotate_p: float = 0.5,
    max_degrees: float = 15.0,
    channels_last: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 (B,S,S) cache rows -> model input (B,3,S,S) on ``device``; augmented only when ``train``.

    The augmentation keywords match ``train.augment`` in params.yaml (``**params["train"]["augment"]``).
    """
    x = _as_nchw(to_device(images, device))
    if train:
        x = augment(x, generator, hflip_p=hflip_p, rotate_p=rotate_p, max_degrees=max_degrees)
    return normalise(x, channels_last=channels_last, dtype=dtype)


class CacheBatches:
    """(uint8 images, float32 labels) batches read straight from the cache memmap.

    ``rows`` index the memmap and ``labels[i]`` belongs to ``rows[i]``. Each batch is read with one
    fancy index over its rows in sorted order (sequential disk access), then put back in batch
    order. With ``shuffle`` the order is a permutation drawn from ``(seed, epoch)``; call
    :meth:`set_epoch` each epoch. With ``world_size > 1`` each rank gets every
    ``world_size``-th item of that order, padded like ``DistributedSampler`` so every rank sees
    the same number of batches (the pad repeats at most ``world_size - 1`` items).
    """

    def __init__(
        self,
        images: np.ndarray,
        rows: Sequence[int] | np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        self.images = images
        self.rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        self.labels = np.asarray(labels, dtype=np.float32)
        if images.ndim != 3:
            raise ValueError(f"images: expected the N x S x S cache, got shape {images.shape}")
        if len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= len(images)):
            raise ValueError(
                f"rows must lie in [0, {len(images)}): got min {self.rows.min()}, max {self.rows.max()}"
            )
        if len(self.labels) != len(self.rows):
            raise ValueError(
                f"labels has {len(self.labels)} rows but rows has {len(self.rows)}; they must match"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size = {batch_size!r}; expected an integer >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank = {rank!r}, world_size = {world_size!r}; expected 0 <= rank < world_size")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (same seed and epoch -> same order on every rank)."""
        self.epoch = epoch

    def positions(self) -> np.ndarray:
        """This rank's positions into ``rows`` for the current epoch, in iteration order."""
        n = len(self.rows)
        order = (
            np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        )
        if self.world_size > 1 and n:
            total = -(-n // self.world_size) * self.world_size
            order = np.resize(order, total)  # pads by repeating from the start, like DistributedSampler
            order = order[self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        n = len(self.positions())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        positions = self.positions()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            pos = positions[start : start + self.batch_size]
            rows = self.rows[pos]
            order = np.argsort(rows, kind="stable")
            batch = np.empty((len(rows), *self.images.shape[1:]), dtype=self.images.dtype)
            batch[order] = self.images[rows[order]]
            yield torch.from_numpy(batch), torch.from_numpy(self.labels[pos])
