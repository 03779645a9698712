"""Train and inference images/s per model, and what the input pipeline costs the train step.

For each model, every variant below runs in the same process on the same weights, in interleaved
repeats (best and median over repeats), after an untimed warm-up step:

* ``train_nchw`` / ``train_cl``: the training step of ``cxr_core.train.loop`` (forward, the
  class-averaged BCE, backward, Adam) on a batch already on the device, in the default memory
  format / ``channels_last``, float32.
* ``train_bf16``: the same under bf16 autocast, in the model's preferred memory format
  (``ModelSpec.channels_last``); on the CPU only where bf16 autocast runs.
* ``train_loader``: the step as training runs it, fed by the real cache path: ``CacheBatches``
  over a uint8 memmap, ``prepare_batch(train=True)`` (augmentation on the device) and the labels'
  copy, in the dtype and memory format training uses on this device. Its images/s over the
  in-memory step with the same settings is the **input-pipeline efficiency** (1.0: the loader
  costs nothing).
* ``train_compile``: ``torch.compile`` of the preferred-format model (skipped on the CPU unless
  asked for: inductor compiles for minutes per model on a few cores).
* ``infer_nchw`` / ``infer_cl`` / ``infer_bf16`` / ``infer_compile``: eval mode, no grad.

On CUDA the timed blocks are bracketed by ``torch.cuda.synchronize`` and cuDNN autotuning is on,
as in training.
"""

from __future__ import annotations

import copy
import itertools
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from benchmarks.timing import pick_device, rates, ratio, sync, timed
from cxr_core.data.batches import CacheBatches, prepare_batch, to_device
from cxr_core.labels import NUM_CLASSES
from cxr_core.models.registry import MODEL_TABLE, create_model, get_spec
from cxr_core.train.losses import LossFn, get_loss

#: The loader-fed train step must reach this fraction of the in-memory step (the project's speed target).
TARGET_EFFICIENCY = 0.9
COMPILE_CPU_REASON = (
    "CPU: inductor compiles for minutes per model on a few cores (efficientnet_b0 on the 2-core "
    "dev machine: ~1.5 min inference, ~6.5 min train); pass --compile on to measure"
)

Switch = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class ModelSettings:
    """What to time: ``steps`` steps of ``batch_size`` images per repeat, for every model."""

    models: tuple[str, ...] = tuple(MODEL_TABLE)
    size: int = 224
    batch_size: int = 16
    steps: int = 3
    repeats: int = 3
    compile: Switch = "auto"
    bf16: Switch = "auto"
    cache_images: int = 64
    seed: int = 0
    lr: float = 1e-4


@dataclass
class Variant:
    """One timed configuration: ``setup`` before each timed block, then ``steps`` calls of ``step``."""

    name: str
    kind: Literal["train", "infer"]
    memory_format: Literal["nchw", "cl"]
    dtype: Literal["float32", "bf16"]
    input: Literal["memory", "cache loader"]
    setup: Callable[[], None]
    step: Callable[[], None]
    warmup_steps: int = 1
    info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "memory_format": self.memory_format,
            "dtype": self.dtype,
            "input": self.input,
        }


def make_cache(folder: Path, n: int, size: int, seed: int = 0) -> np.ndarray:
    """A ``n x size x size`` uint8 ``.npy`` opened read-only as a memmap, as ``load_cache`` does."""
    path = folder / "images.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size))
    rng = np.random.default_rng(seed)
    for a in range(0, n, 64):
        out[a : a + 64] = rng.integers(0, 256, size=out[a : a + 64].shape, dtype=np.uint8)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def _autocast(device: torch.device, bf16: bool) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _cycle(batches: CacheBatches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled epochs of the cache without end (``set_epoch`` each time, as training does)."""
    for epoch in itertools.count(1):
        batches.set_epoch(epoch)
        yield from batches


class _Bench:
    """The moving parts shared by one model's variants: weights per memory format, data, steps."""

    def __init__(self, name: str, s: ModelSettings, device: torch.device, cache: np.ndarray) -> None:
        self.s, self.device = s, device
        self.spec = get_spec(name)
        self.pref: Literal["nchw", "cl"] = "cl" if self.spec.channels_last else "nchw"
        self.train_bf16 = device.type == "cuda"  # training's amp rule: bf16 autocast on CUDA only
        self.loss_fn: LossFn = get_loss("class_averaged_bce")
        torch.manual_seed(s.seed)
        base = create_model(name, image_size=s.size).to(device)
        # one copy (and Adam state) per memory format, so no step mixes formats
        self.nets: dict[str, nn.Module] = {
            "nchw": base,
            "cl": copy.deepcopy(base).to(memory_format=torch.channels_last),
        }
        self.optimizers = {k: torch.optim.Adam(m.parameters(), lr=s.lr) for k, m in self.nets.items()}
        self.compiled: nn.Module | None = None
        labels = (np.random.default_rng(s.seed).random((len(cache), NUM_CLASSES)) < 0.2).astype(np.float32)
        self.x = {
            fmt: prepare_batch(
                np.array(cache[: s.batch_size]), device, train=False, channels_last=fmt == "cl"
            )
            for fmt in ("nchw", "cl")
        }
        self.y = to_device(labels[: s.batch_size], device)
        self.batches = _cycle(
            CacheBatches(cache, np.arange(len(cache)), labels, s.batch_size, shuffle=True, seed=s.seed)
        )
        self.generator = torch.Generator().manual_seed(s.seed)
        self.loss_sum = torch.zeros((), device=device)

    def train_step(
        self, net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, bf16: bool
    ) -> None:
        """``_Run.train_epoch``'s step: no host sync, the loss summed on the device."""
        with _autocast(self.device, bf16):
            logits = net(x)
        loss = self.loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self.loss_sum += loss.detach()

    @torch.no_grad()
    def infer_step(self, net: nn.Module, x: torch.Tensor, bf16: bool) -> None:
        """``infer_logits``' step."""
        with _autocast(self.device, bf16):
            net(x).float()

    def loader_step(self) -> None:
        """Read a shuffled uint8 batch from the memmap, augment it on the device, train on it."""
        x_u8, y = next(self.batches)
        x = prepare_batch(
            x_u8, self.device, train=True, generator=self.generator, channels_last=self.pref == "cl"
        )
        net, opt = self.nets[self.pref], self.optimizers[self.pref]
        self.train_step(net, opt, x, to_device(y, self.device), self.train_bf16)

    def variant(
        self,
        name: str,
        kind: Literal["train", "infer"],
        fmt: Literal["nchw", "cl"],
        bf16: bool,
        *,
        compiled: bool = False,
    ) -> Variant:
        """A variant on the in-memory batch ``self.x[fmt]``."""
        net, opt, x = self.nets[fmt], self.optimizers[fmt], self.x[fmt]
        model = self._compiled() if compiled else net

        def setup() -> None:
            net.train(kind == "train")

        def step() -> None:
            if kind == "train":
                self.train_step(model, opt, x, self.y, bf16)
            else:
                self.infer_step(model, x, bf16)

        dtype: Literal["float32", "bf16"] = "bf16" if bf16 else "float32"
        # a compiled model's first calls compile (train: forward and backward graphs)
        return Variant(name, kind, fmt, dtype, "memory", setup, step, warmup_steps=2 if compiled else 1)

    def _compiled(self) -> nn.Module:
        if self.compiled is None:
            self.compiled = torch.compile(self.nets[self.pref])
        return self.compiled

    def loader_variant(self) -> Variant:
        dtype: Literal["float32", "bf16"] = "bf16" if self.train_bf16 else "float32"
        return Variant(
            "train_loader",
            "train",
            self.pref,
            dtype,
            "cache loader",
            lambda: self.nets[self.pref].train(),
            self.loader_step,
        )


def bf16_support(device: torch.device, switch: Switch) -> str | None:
    """None when bf16 autocast can be timed on ``device``, else the reason it is skipped."""
    if switch == "off":
        return "--bf16 off"
    if device.type == "cuda":
        return None if torch.cuda.is_bf16_supported() else "this GPU has no bf16 support"
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            conv = nn.Conv2d(3, 4, 3).to(device)
            conv(torch.zeros(1, 3, 8, 8, device=device)).sum()
    except Exception as exc:  # whatever stops autocast here is the reason to report
        return f"bf16 autocast fails on {device.type}: {type(exc).__name__}: {exc}"
    return None


def compile_support(device: torch.device, switch: Switch) -> str | None:
    """None when torch.compile is to be timed, else the reason it is skipped."""
    if switch == "off":
        return "--compile off"
    if switch == "auto" and device.type != "cuda":
        return COMPILE_CPU_REASON
    return None


def _plan(b: _Bench, s: ModelSettings) -> tuple[list[Variant], dict[str, str], dict[str, str]]:
    """Variants in timing order (the loader right after its baseline), skip reasons, baselines."""
    skipped: dict[str, str] = {}
    no_bf16 = bf16_support(b.device, s.bf16)
    if no_bf16 is not None:
        b.train_bf16 = False
        skipped["train_bf16"] = skipped["infer_bf16"] = no_bf16
    amp = b.train_bf16  # the dtype training (and inference) use on this device
    baselines = {
        "train": "train_bf16" if amp else f"train_{b.pref}",
        "infer": "infer_bf16" if amp else f"infer_{b.pref}",
    }
    plan = [b.variant("train_nchw", "train", "nchw", False), b.variant("train_cl", "train", "cl", False)]
    if no_bf16 is None:
        plan.append(b.variant("train_bf16", "train", b.pref, True))
    at = next(i for i, v in enumerate(plan) if v.name == baselines["train"])
    plan.insert(at + 1, b.loader_variant())
    plan += [b.variant("infer_nchw", "infer", "nchw", False), b.variant("infer_cl", "infer", "cl", False)]
    if no_bf16 is None:
        plan.append(b.variant("infer_bf16", "infer", b.pref, True))
    no_compile = compile_support(b.device, s.compile)
    if no_compile is None:
        plan.append(b.variant("train_compile", "train", b.pref, amp, compiled=True))
        plan.append(b.variant("infer_compile", "infer", b.pref, amp, compiled=True))
    else:
        skipped["train_compile"] = skipped["infer_compile"] = no_compile
    return plan, skipped, baselines


def _warm_up(plan: list[Variant], skipped: dict[str, str], device: torch.device) -> list[Variant]:
    """Run each variant's warm-up steps; optional variants (bf16, compile) that fail are skipped."""
    kept = []
    for v in plan:
        v.setup()
        try:
            v.info["warmup_s"] = timed(lambda v=v: [v.step() for _ in range(v.warmup_steps)], device)
        except Exception as exc:
            if v.dtype == "float32" and "compile" not in v.name:
                raise
            skipped[v.name] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            continue
        kept.append(v)
    return kept


def _ratios(variants: dict[str, dict[str, Any]], num: str, den: str) -> dict[str, float] | None:
    if num not in variants or den not in variants:
        return None
    a, b = variants[num], variants[den]
    return {
        "of": f"{num} / {den}",
        **{stat: ratio(a[f"images_per_s_{stat}"], b[f"images_per_s_{stat}"]) for stat in ("best", "median")},
    }


def bench_model(
    name: str, s: ModelSettings, device: torch.device, cache: np.ndarray, bar: tqdm | None = None
) -> dict[str, Any]:
    """Every variant of one model, interleaved over ``s.repeats``; images/s and the ratios."""
    b = _Bench(name, s, device, cache)
    plan, skipped, baselines = _plan(b, s)
    plan = _warm_up(plan, skipped, device)
    seconds: dict[str, list[float]] = {v.name: [] for v in plan}
    for repeat in range(s.repeats):
        # interleaved, so machine load hits every variant alike; every other repeat runs backwards,
        # so no variant always follows the same neighbour (warm caches, a model copy just evicted)
        for v in plan if repeat % 2 == 0 else plan[::-1]:
            v.setup()
            seconds[v.name].append(timed(lambda v=v: [v.step() for _ in range(s.steps)], device))
        if bar is not None:
            bar.update(1)
    sync(device)
    if not torch.isfinite(b.loss_sum):
        raise RuntimeError(f"{name}: the training steps produced a non-finite loss")
    images = s.steps * s.batch_size
    variants = {v.name: {**v.describe(), **rates(images, seconds[v.name]), **v.info} for v in plan}
    pref = b.pref
    result: dict[str, Any] = {
        "model": name,
        "timm_name": b.spec.timm_name,
        "preferred_memory_format": pref,
        "train_dtype": "bf16" if b.train_bf16 else "float32",
        "baselines": baselines,
        "variants": variants,
        "skipped": skipped,
        "efficiency": _ratios(variants, "train_loader", baselines["train"]),
        "channels_last_train": _ratios(variants, "train_cl", "train_nchw"),
        "channels_last_infer": _ratios(variants, "infer_cl", "infer_nchw"),
        "bf16_train": _ratios(variants, "train_bf16", f"train_{pref}"),
        "bf16_infer": _ratios(variants, "infer_bf16", f"infer_{pref}"),
        "compile_train": _ratios(variants, "train_compile", baselines["train"]),
        "compile_infer": _ratios(variants, "infer_compile", baselines["infer"]),
    }
    eff = result["efficiency"]
    result["meets_target"] = bool(eff is not None and eff["best"] >= TARGET_EFFICIENCY)
    if b.compiled is not None:
        torch._dynamo.reset()
    return result


def run(
    settings: ModelSettings | None = None, device: str | torch.device = "auto", progress: bool = False
) -> dict[str, Any]:
    """Time every model of ``settings.models``; one entry per model under ``"models"``."""
    s = settings or ModelSettings()
    dev = pick_device(device)
    for name in s.models:
        get_spec(name)  # unknown names fail before any timing
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as training: fixed shapes, let cuDNN pick kernels
    out: dict[str, Any] = {
        "settings": {**asdict(s), "models": list(s.models)},
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "images_per_measurement": s.steps * s.batch_size,
        "target_efficiency": TARGET_EFFICIENCY,
        "models": {},
    }
    with (
        tempfile.TemporaryDirectory(prefix="cxr-bench-models-") as tmp,
        tqdm(total=len(s.models) * s.repeats, desc="models", unit="repeat", disable=not progress) as bar,
    ):
        cache = make_cache(Path(tmp), max(s.cache_images, 2 * s.batch_size), s.size, s.seed)
        for name in s.models:
            bar.set_postfix_str(name)
            out["models"][name] = bench_model(name, s, dev, cache, bar)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        del cache
    return out
