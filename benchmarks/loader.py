"""Training batches per second: the uint8 cache path vs the paper-style per-image PNG loader.

Both loaders serve the same images with the same training augmentations (flip p = 0.5, rotation in
[-15, 15] degrees with p = 0.5) as normalised 3-channel batches on the device:

* ``paper``: what CheXNet re-implementations do every epoch: a torch ``Dataset`` that opens each
  PNG with PIL, ``convert("RGB")``, torchvision ``Resize`` / ``RandomHorizontalFlip`` /
  ``RandomApply([RandomRotation(15)])`` / ``ToTensor`` / ``Normalize``, in a ``DataLoader`` with
  ``workers`` processes. Workers are persistent and warmed up, which favours this side (by default
  a DataLoader restarts its workers every epoch).
* ``cache``: ``CacheBatches`` over the uint8 memmap that ``build_cache`` made from the same
  PNGs, then ``prepare_batch(train=True)`` (augment + normalise on the device, channels_last as
  the CNNs train); ``cache_nchw`` is the same without channels_last, ``cache_read`` only reads the
  uint8 batches (the floor of the cache path).

The PNGs are :mod:`benchmarks.synthetic` images in a temporary folder (so they sit in the page
cache: this measures CPU work, not the disk).
"""

from __future__ import annotations

import functools
import itertools
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from tqdm import tqdm

from benchmarks.synthetic import SIDE, write_pngs
from benchmarks.timing import pick_device, rates, ratio, timed
from cxr_core.data.batches import IMAGENET_MEAN, IMAGENET_STD, CacheBatches, prepare_batch, to_device
from cxr_core.data.cache import load_cache
from cxr_core.data.preprocess import build_cache
from cxr_core.labels import NUM_CLASSES

#: The cache loader must beat the paper-style loader by this factor (the project's speed target).
TARGET_SPEEDUP = 20.0
#: Contenders, in the order they are timed within a repeat.
LOADERS: tuple[str, ...] = ("paper", "cache", "cache_nchw", "cache_read")


@dataclass(frozen=True)
class LoaderSettings:
    """Sizes of one loader benchmark; ``source_side`` is the PNG side (NIH: 1024)."""

    images: int = 256
    size: int = 224
    source_side: int = SIDE
    batch_size: int = 16
    workers: int = 2
    repeats: int = 3
    seed: int = 0


def paper_transform(size: int) -> transforms.Compose:
    """The per-image torchvision pipeline of the public CheXNet re-implementations."""
    return transforms.Compose(
        [
            transforms.Resize(size),
            transforms.RandomHorizontalFlip(0.5),
            transforms.RandomApply([transforms.RandomRotation(15)], p=0.5),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class PaperDataset(Dataset):
    """Opens and transforms one PNG per item, every epoch (the cost the cache removes)."""

    def __init__(self, paths: Sequence[Path], labels: np.ndarray, size: int) -> None:
        self.paths = [str(p) for p in paths]
        self.labels = torch.as_tensor(labels, dtype=torch.float32)
        self.transform = paper_transform(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        with Image.open(self.paths[i]) as im:
            image = im.convert("RGB")
        return self.transform(image), self.labels[i]


def paper_loader(
    paths: Sequence[Path], labels: np.ndarray, s: LoaderSettings, device: torch.device
) -> DataLoader:
    """``DataLoader(shuffle=True, num_workers=workers)``, pinned memory on CUDA, persistent workers."""
    return DataLoader(
        PaperDataset(paths, labels, s.size),
        batch_size=s.batch_size,
        shuffle=True,
        num_workers=s.workers,
        persistent_workers=s.workers > 0,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(s.seed),
    )


def _paper_epoch(loader: DataLoader, device: torch.device) -> int:
    n = 0
    for x, y in loader:
        x.to(device, non_blocking=True)
        y.to(device, non_blocking=True)
        n += len(x)
    return n


def _cache_epoch(
    batches: CacheBatches,
    epochs: Iterator[int],
    device: torch.device,
    channels_last: bool | None,
    seed: int,
) -> int:
    """One shuffled epoch of the cache path; ``channels_last=None`` stops after reading uint8 batches."""
    epoch = next(epochs)
    batches.set_epoch(epoch)
    generator = torch.Generator().manual_seed(seed + epoch)
    n = 0
    for x_u8, y in batches:
        if channels_last is not None:
            prepare_batch(x_u8, device, train=True, generator=generator, channels_last=channels_last)
            to_device(y, device)
        n += len(x_u8)
    return n


def run(
    settings: LoaderSettings | None = None, device: str | torch.device = "auto", progress: bool = False
) -> dict[str, Any]:
    """Time every loader in ``LOADERS`` over the same images; images/s and ratios to ``paper``."""
    s = settings or LoaderSettings()
    dev = pick_device(device)
    labels = (np.random.default_rng(s.seed).random((s.images, NUM_CLASSES)) < 0.2).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="cxr-bench-loader-") as tmp:
        folder = Path(tmp)
        paths = write_pngs(folder, s.images, s.source_side, s.workers)
        png_kb = float(np.mean([p.stat().st_size for p in paths])) / 1024
        build_cache(
            [p.name for p in paths],
            paths,
            folder / "cache",
            size=s.size,
            workers=s.workers,
            on_error="fail",
            progress=False,
        )
        images, _ = load_cache(folder / "cache", s.size)
        batches = CacheBatches(images, np.arange(s.images), labels, s.batch_size, shuffle=True, seed=s.seed)
        paper = paper_loader(paths, labels, s, dev)
        counter = itertools.count(1)  # every cache epoch gets its own shuffle and augmentation draws
        epoch_fns: dict[str, Callable[[], int]] = {
            "paper": functools.partial(_paper_epoch, paper, dev),
            **{
                name: functools.partial(_cache_epoch, batches, counter, dev, channels_last, s.seed)
                for name, channels_last in (("cache", True), ("cache_nchw", False), ("cache_read", None))
            },
        }
        for fn in epoch_fns.values():  # warm-up: workers started, allocator and kernels ready
            if fn() != s.images:
                raise RuntimeError("a loader did not serve every image once per epoch")
        seconds: dict[str, list[float]] = {name: [] for name in LOADERS}
        for repeat in tqdm(range(s.repeats), desc="loader repeats", unit="repeat", disable=not progress):
            # interleaved (machine load hits every loader alike), every other repeat in reverse order
            for name in LOADERS if repeat % 2 == 0 else LOADERS[::-1]:
                seconds[name].append(timed(epoch_fns[name], dev))
        epoch_fns.clear()
        del paper, batches, images  # stop the persistent workers, close the memmap before cleanup

    result: dict[str, Any] = {
        "settings": asdict(s),
        "device": str(dev),
        "mean_png_kb": png_kb,
        "cache_torch_threads": torch.get_num_threads(),  # the cache path runs in this process
    }
    result["loaders"] = {name: rates(s.images, seconds[name]) for name in LOADERS}
    base = result["loaders"]["paper"]
    for name in LOADERS[1:]:
        r = result["loaders"][name]
        for stat in ("best", "median"):
            r[f"speedup_vs_paper_{stat}"] = ratio(r[f"images_per_s_{stat}"], base[f"images_per_s_{stat}"])
    result["target_speedup"] = TARGET_SPEEDUP
    result["meets_target"] = bool(result["loaders"]["cache"]["speedup_vs_paper_best"] >= TARGET_SPEEDUP)
    return result
