"""``python -m benchmarks gpu-check``: what one GPU does with the paper's six models, in one short run.

Written before any GPU was lent, so that the first one can be used at once and within minutes:

* per model at 224 px, training images/s (forward, class-averaged BCE, backward, Adam step, on a
  batch already on the device) in float32 NCHW and under bf16 autocast in the model's memory
  format (channels_last for the CNNs, as training runs them); batch 128, halved until it fits;
* ``torch.compile`` of the bf16 step, its compile seconds measured apart from the steady-state
  rate (warm-up excluded), and how many steps it takes to pay the compile back, against the
  steps of one full paper run (30 epochs over NIH's training split);
* one phantom epoch end to end on the device, through the stages' library calls: the phantom
  generator (``fill_raw``), ``build_cache_from_raw``, ``splits_from_raw``, ``fit`` for one epoch,
  then ``load_model`` + ``predict_probs`` + ``summarise`` on the test split;
* timm's published RTX 3090 AMP training throughput for the same architectures beside ours
  (``TIMM_RTX3090``), so a wrong setup (fp32 by mistake, cuDNN off, a sync per step) stands out;
* with two or more GPUs, DDP scaling: images/s of the same DDP train step (one process per GPU, as
  torchrun runs the train stage) at 1 and at N GPUs, and the efficiency ``rate_N / (N x rate_1)``
  that the multi-GPU estimates of docs/scale-check.md assume (0.9 / 0.75 / 0.55 at 2 / 4 / 8).

Without CUDA it refuses (exit 1) unless ``--allow-cpu``: a smoke run of the same code paths at toy
size (efficientnet_b0, 64 px, 2 steps, a 32-image phantom), which is what the test suite runs.
A time budget (``--budget-s``) skips the compile measurements that would not fit, never the rest.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import math
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.timing import sync
from cxr_core.errors import CxrError

#: The paper's six models, in the order their compile is measured (cheapest compile first).
MODELS = ("efficientnet_b0", "densenet121", "swin_small", "efficientnet_b1", "densenet169", "swin_base")

#: timm's published training throughput on one RTX 3090 (AMP float16, PyTorch 1.12, CUDA 11.3),
#: images/s at the batch timm used, from huggingface/pytorch-image-models ``results/``:
#: ``benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv`` (commit bd6d377c74ef4dbcb1686e6403b657546bf49429)
#: and ``benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv`` (commit c865028c34fc05cc7deea8e753b30d8cd1952591).
#: All at 224 px; timm's benchmark trains with SGD and cross-entropy, ours with Adam and BCE.
TIMM_RTX3090: dict[str, dict[str, Any]] = {
    "densenet121": {"timm": "densenet121", "nchw": 730.11, "nchw_batch": 256, "nhwc": 913.65, "nhwc_batch": 256},
    "densenet169": {"timm": "densenet169", "nchw": 592.78, "nchw_batch": 256, "nhwc": 752.52, "nhwc_batch": 256},
    "efficientnet_b0": {
        "timm": "efficientnet_b0", "nchw": 1459.11, "nchw_batch": 384, "nhwc": 1751.72, "nhwc_batch": 512,
    },
    "efficientnet_b1": {
        "timm": "efficientnet_b1", "nchw": 1030.3, "nchw_batch": 256, "nhwc": 1325.85, "nhwc_batch": 256,
    },
    "swin_small": {"timm": "swin_small_patch4_window7_224", "nchw": 399.67, "nchw_batch": 192},
    "swin_base": {"timm": "swin_base_patch4_window7_224", "nchw": 279.66, "nchw_batch": 128},
}  # fmt: skip
TIMM_SOURCE = {
    "repo": "huggingface/pytorch-image-models",
    "nchw": ("results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv", "bd6d377c74ef4dbcb1686e6403b657546bf49429"),
    "nhwc": ("results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv", "c865028c34fc05cc7deea8e753b30d8cd1952591"),
}  # fmt: skip
#: NIH's training split (86,524 images of train_val_list.txt less 10% validation) and the paper's
#: epochs / batch:
#: the steps one full paper run takes, against which a compile's cost is weighed.
PAPER_TRAIN_IMAGES = 77_871
PAPER_EPOCHS = 30
PAPER_BATCH = 32


class GpuCheckError(CxrError, RuntimeError):
    """The check cannot run here (no CUDA without ``--allow-cpu``); the message says what to do."""


@dataclasses.dataclass(frozen=True)
class CheckSettings:
    """Sizes of one run. ``full()`` is the GPU run, ``smoke()`` the CPU test of the same code."""

    models: tuple[str, ...] = MODELS
    size: int = 224
    batch_size: int = 128  # the largest tried; halved on out-of-memory
    min_batch: int = 8
    warmup: int = 5
    steps: int = 20
    compile: bool = True
    compile_models: tuple[str, ...] = MODELS
    budget_s: float = 420.0  # the whole check; compile measurements are skipped past it
    compile_estimate_s: float = 90.0  # assumed for the first compile; later ones use the largest seen
    phantom_model: str = "densenet121"
    phantom_images: int = 512
    phantom_px: int = 1024
    phantom_batch: int = 32
    workers: int = 8
    seed: int = 0
    ddp_model: str = "densenet121"
    ddp_gpus: int | None = None  # None: every visible GPU when there are two or more; 0: skip

    @classmethod
    def smoke(cls) -> CheckSettings:
        return cls(
            models=("efficientnet_b0",), size=64, batch_size=4, min_batch=2, warmup=1, steps=2,
            compile=False, compile_models=(), phantom_model="efficientnet_b0", phantom_images=32,
            phantom_px=128, phantom_batch=4, workers=1, ddp_model="efficientnet_b0", ddp_gpus=0,
        )  # fmt: skip


def require_cuda(allow_cpu: bool) -> torch.device:
    """The GPU, or the CPU for ``--allow-cpu``; else :class:`GpuCheckError`."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if allow_cpu:
        return torch.device("cpu")
    raise GpuCheckError(
        "gpu-check needs a CUDA device and torch.cuda.is_available() is False here "
        f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); run it on a GPU machine, "
        "or pass --allow-cpu for the tiny CPU smoke run"
    )


# --------------------------------------------------------------------------------------------
# training throughput


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class _Trainer:
    """One model's weights, Adam state and a fixed batch on the device: the train loop's step."""

    def __init__(
        self, name: str, s: CheckSettings, device: torch.device, batch: int, *, bf16: bool, compiled: bool
    ) -> None:
        from cxr_core.data.batches import prepare_batch
        from cxr_core.models.registry import create_model, get_spec
        from cxr_core.train.losses import get_loss

        self.device, self.bf16 = device, bf16
        spec = get_spec(name)
        self.channels_last = bf16 and bool(spec.channels_last)  # fp32 is the plain NCHW baseline
        torch.manual_seed(s.seed)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = create_model(name, image_size=s.size).to(device, memory_format=fmt).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.step_model: Any = torch.compile(self.model) if compiled else self.model
        rng = np.random.default_rng(s.seed)
        images = rng.integers(0, 256, (batch, s.size, s.size), dtype=np.uint8)
        self.x = prepare_batch(images, device, train=False, channels_last=self.channels_last)
        self.y = torch.from_numpy((rng.random((batch, 14)) < 0.2).astype(np.float32)).to(device)
        self.loss_fn = get_loss("class_averaged_bce")
        self.loss_sum = torch.zeros((), device=device)

    def step(self) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.step_model(self.x)
        loss = self.loss_fn(logits.float(), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach()  # no host sync per step, as in training

    def run(self, n: int) -> float:
        """Seconds for ``n`` steps, device work included."""
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(n):
            self.step()
        sync(self.device)
        return time.perf_counter() - t0


def _variant(
    name: str, s: CheckSettings, device: torch.device, batch: int, *, bf16: bool, compiled: bool = False
) -> dict[str, Any]:
    """images/s of one variant; compiled: the first two steps (compile + first run) timed apart."""
    trainer = _Trainer(name, s, device, batch, bf16=bf16, compiled=compiled)
    out: dict[str, Any] = {"batch": batch, "bf16": bf16, "channels_last": trainer.channels_last}
    try:
        first = trainer.run(2) if compiled else 0.0
        trainer.run(s.warmup)
        seconds = trainer.run(s.steps)
        step_s = seconds / s.steps
        out.update(
            images_per_s=batch * s.steps / seconds,
            step_s=step_s,
            loss_finite=bool(math.isfinite(float(trainer.loss_sum))),
        )
        if compiled:
            out["compile_s"] = max(first - 2 * step_s, 0.0)
        if device.type == "cuda":
            out["max_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    finally:
        del trainer
        _free(device)
    return out


def _fit_batch(name: str, s: CheckSettings, device: torch.device) -> tuple[int, dict[str, Any]]:
    """The fp32 variant at the largest batch <= ``s.batch_size`` that fits (halving on OOM)."""
    batch = s.batch_size
    while True:
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            return batch, _variant(name, s, device, batch, bf16=False)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            if not _is_oom(exc) or batch // 2 < s.min_batch:
                raise
            _free(device)
            batch //= 2


def paper_run_steps() -> int:
    """Optimiser steps of one full paper run (drop_last batches x epochs)."""
    return PAPER_TRAIN_IMAGES // PAPER_BATCH * PAPER_EPOCHS


def measure_model(name: str, s: CheckSettings, device: torch.device) -> dict[str, Any]:
    """fp32 and bf16 (+channels_last for CNNs) images/s of one model, and timm's RTX 3090 numbers."""
    batch, fp32 = _fit_batch(name, s, device)
    bf16 = _variant(name, s, device, batch, bf16=True)
    timm_ref = TIMM_RTX3090.get(name, {})
    layout = "nhwc" if bf16["channels_last"] and "nhwc" in timm_ref else "nchw"
    return {
        "batch": batch,
        "fp32": fp32,
        "bf16": bf16,
        "bf16_speedup": bf16["images_per_s"] / fp32["images_per_s"],
        "timm_rtx3090": {**timm_ref, "compared_layout": layout},
        "vs_timm_rtx3090": bf16["images_per_s"] / timm_ref[layout] if timm_ref else None,
    }


def break_even_steps(compile_s: float, eager_step_s: float, compiled_step_s: float, batch: int) -> float:
    """Paper-run steps (batch ``PAPER_BATCH``) after which a compile has paid for itself.

    Step times were measured at ``batch``; a step of the paper's batch is taken to cost
    ``PAPER_BATCH / batch`` of one (throughput-bound GPU). Infinite when compiling saves nothing.
    """
    saved = (eager_step_s - compiled_step_s) * PAPER_BATCH / batch
    return compile_s / saved if saved > 0 else math.inf


def measure_compile(
    name: str, s: CheckSettings, device: torch.device, eager: dict[str, Any]
) -> dict[str, Any]:
    """The compiled bf16 step: compile seconds, steady images/s, and steps to pay the compile back."""
    batch = eager["batch"]
    compiled = _variant(name, s, device, batch, bf16=True, compiled=True)
    break_even = break_even_steps(compiled["compile_s"], eager["bf16"]["step_s"], compiled["step_s"], batch)
    return {
        **compiled,
        "speedup": compiled["images_per_s"] / eager["bf16"]["images_per_s"],
        "break_even_paper_steps": break_even,
        "paper_run_steps": paper_run_steps(),
        "pays": bool(break_even < paper_run_steps()),
    }


# --------------------------------------------------------------------------------------------
# DDP scaling


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(
    rank: int, world: int, port: int, s: CheckSettings, device_type: str, batch: int, out: Any
) -> None:
    """One rank of the DDP step (nccl on CUDA, gloo on the CPU); rank 0 puts the job's images/s in ``out``."""
    import torch.distributed as dist

    cuda = device_type == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(1)  # the CPU path is a functional check: ranks must not fight for cores
    dist.init_process_group(
        "nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        trainer = _Trainer(s.ddp_model, s, device, batch, bf16=cuda, compiled=False)
        trainer.step_model = torch.nn.parallel.DistributedDataParallel(
            trainer.model, device_ids=[rank] if cuda else None
        )
        trainer.run(s.warmup)
        seconds = torch.tensor([trainer.run(s.steps)], dtype=torch.float64, device=device)
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)  # the job is as fast as its slowest rank
        if rank == 0:
            out.put(
                {
                    "world_size": dist.get_world_size(),
                    "images_per_s": world * batch * s.steps / seconds.item(),
                }
            )
    finally:
        dist.destroy_process_group()


def ddp_rate(s: CheckSettings, device_type: str, world: int, batch: int) -> dict[str, Any]:
    """images/s of ``world`` DDP processes (one GPU each), ``batch`` images per process per step."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    out = context.SimpleQueue()
    mp.start_processes(
        _ddp_worker,
        args=(world, _free_port(), s, device_type, batch, out),
        nprocs=world,
        start_method="spawn",
    )
    return out.get()


def efficiency(rate_1: float, rate_n: float, n: int) -> float:
    """DDP scaling efficiency: the N-GPU rate over N times the one-GPU rate (1.0 = linear)."""
    return rate_n / (n * rate_1)


def ddp_scaling(s: CheckSettings, device_type: str, gpus: int, batch: int) -> dict[str, Any]:
    """The DDP step at 1 and ``gpus`` processes, same per-GPU batch (so N GPUs train N x the images)."""
    one = ddp_rate(s, device_type, 1, batch)
    many = ddp_rate(s, device_type, gpus, batch)
    return {
        "model": s.ddp_model,
        "per_gpu_batch": batch,
        "gpus": many["world_size"],
        "images_per_s_1": one["images_per_s"],
        "images_per_s_n": many["images_per_s"],
        "efficiency": efficiency(one["images_per_s"], many["images_per_s"], many["world_size"]),
    }


def _ddp_section(s: CheckSettings, device: torch.device, models: dict[str, Any]) -> dict[str, Any]:
    """DDP scaling over every visible GPU (or ``s.ddp_gpus``), or why it was skipped."""
    visible = torch.cuda.device_count() if device.type == "cuda" else 0
    gpus = visible if s.ddp_gpus is None else min(s.ddp_gpus, visible)
    if gpus < 2:
        return {"skipped": f"{visible} GPU(s) visible: DDP scaling needs two or more"}
    batch = models.get(s.ddp_model, {}).get("batch", s.batch_size)  # the batch that fitted one GPU
    try:
        return ddp_scaling(s, device.type, gpus, batch)
    except Exception as exc:  # a failed collective is a finding, not a crash of the check
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


# --------------------------------------------------------------------------------------------
# phantom epoch end to end


def _params(s: CheckSettings, device: torch.device) -> dict[str, Any]:
    """The shipped params.yaml, validated, with this check's sizes and one epoch on ``device``."""
    from cxr_core.params import load_params

    params = copy.deepcopy(load_params(Path(__file__).resolve().parents[1] / "params.yaml"))
    phantom = params["data"]["phantom"]
    phantom.update(images=s.phantom_images, image_px=s.phantom_px, workers=s.workers)
    params["data"]["source"] = "synthetic"
    params["preprocess"].update(image_size=s.size, workers=s.workers)
    params["train"].update(
        epochs=1,
        batch_size=s.phantom_batch,
        device=device.type,
        pretrained=False,
        weights=None,
        compile=False,
    )
    return params


def phantom_epoch(s: CheckSettings, device: torch.device, workdir: Path) -> dict[str, Any]:
    """Phantom -> cache -> splits -> one training epoch -> test metrics, each step timed."""
    from cxr_core.data.cache import load_cache
    from cxr_core.data.preprocess import build_cache_from_raw
    from cxr_core.data.sources import fill_raw
    from cxr_core.data.splits import splits_from_raw
    from cxr_core.data.tables import SplitTable
    from cxr_core.evaluate.metrics import summarise
    from cxr_core.evaluate.predict import predict_probs
    from cxr_core.models.checkpoints import load_model
    from cxr_core.models.registry import get_spec
    from cxr_core.runtime import Runtime
    from cxr_core.train.config import TrainConfig
    from cxr_core.train.loop import fit

    params = _params(s, device)
    raw, cache, models = workdir / "raw", workdir / "cache", workdir / "models"
    times: dict[str, float] = {}

    def timed(key: str, fn: Callable[[], Any]) -> Any:
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times[key] = time.perf_counter() - t0
        return out

    timed("phantom_s", lambda: fill_raw(params["data"], raw))
    prep = params["preprocess"]
    timed(
        "preprocess_s",
        lambda: build_cache_from_raw(
            raw, cache, size=prep["image_size"], workers=prep["workers"], on_error=prep["on_error"]
        ),
    )
    images, index = load_cache(cache, expected_size=s.size)
    split = params["split"]
    splits = timed(
        "split_s",
        lambda: splits_from_raw(
            raw, index, val_fraction=split["val_fraction"], group_by=split["group_by"], seed=split["seed"],
            image_size=s.size, loc_tune_fraction=split["loc_tune_fraction"],
        ),
    )  # fmt: skip
    train, val, test = SplitTable(splits.train), SplitTable(splits.val), SplitTable(splits.test)
    cfg = TrainConfig.from_params(params, s.phantom_model, image_size=s.size, seed=int(params["seed"]))
    result = timed("train_epoch_s", lambda: fit(cfg, images, train, val, models))
    runtime = Runtime.from_params(params["train"], get_spec(s.phantom_model))

    def evaluate() -> dict[str, Any]:
        model, _meta = load_model(models / "best.pt", model_name=s.phantom_model)
        probs = predict_probs(
            model, images, test.rows, runtime=runtime, batch_size=params["train"]["eval_batch_size"]
        )
        targets = test.targets.astype(np.uint8)
        return summarise(targets, probs, test.patients, n_boot=params["test"]["bootstrap"], seed=cfg.seed)

    summary = timed("test_s", evaluate)
    return {
        "model": s.phantom_model,
        "device": str(device),
        "amp": runtime.amp,
        "channels_last": runtime.channels_last,
        "images": len(index),
        "train": len(train.rows),
        "val": len(val.rows),
        "test": len(test.rows),
        "epochs": len(result.history),
        "val_loss": result.best_val_loss,
        "test_macro_auc": summary["macro_auc"],
        **times,
        "total_s": sum(times.values()),
    }


# --------------------------------------------------------------------------------------------
# the run


def run(
    s: CheckSettings, device: torch.device, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Eager throughput of every model, the phantom epoch, then compiles while the budget lasts."""
    say = progress or (lambda _msg: None)
    t_start = time.perf_counter()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as training: fixed shapes, let cuDNN pick kernels
    models: dict[str, Any] = {}
    for name in s.models:
        t0 = time.perf_counter()
        models[name] = measure_model(name, s, device)
        m = models[name]
        say(
            f"{name}: batch {m['batch']}, fp32 {m['fp32']['images_per_s']:.0f} img/s, "
            f"bf16{'+cl' if m['bf16']['channels_last'] else ''} {m['bf16']['images_per_s']:.0f} img/s "
            f"(x{m['bf16_speedup']:.2f}) [{time.perf_counter() - t0:.0f} s]"
        )
    with tempfile.TemporaryDirectory(prefix="cxr-gpu-check-") as tmp:
        phantom = phantom_epoch(s, device, Path(tmp))
    say(
        f"phantom epoch ({phantom['model']}): {phantom['total_s']:.1f} s, test macro AUC {phantom['test_macro_auc']}"
    )
    ddp = _ddp_section(s, device, models)
    if "efficiency" in ddp:
        say(
            f"DDP {ddp['model']}: {ddp['images_per_s_1']:.0f} img/s on 1 GPU, {ddp['images_per_s_n']:.0f} on "
            f"{ddp['gpus']}: efficiency {ddp['efficiency']:.2f}"
        )

    compiled: dict[str, Any] = {}
    estimate = s.compile_estimate_s
    for name in (m for m in s.compile_models if m in models) if s.compile else ():
        left = s.budget_s - (time.perf_counter() - t_start)
        if left < 1.5 * estimate:
            compiled[name] = {
                "skipped": f"budget: {left:.0f} s left, a compile is estimated at {estimate:.0f} s"
            }
            continue
        t0 = time.perf_counter()
        try:
            compiled[name] = measure_compile(name, s, device, models[name])
        except Exception as exc:  # a compiler failure is a finding, not a crash of the check
            compiled[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        estimate = max(estimate, time.perf_counter() - t0)
        c = compiled[name]
        if "images_per_s" in c:
            say(
                f"{name} compiled: {c['images_per_s']:.0f} img/s (x{c['speedup']:.2f} over eager bf16), "
                f"compile {c['compile_s']:.0f} s, pays back after {c['break_even_paper_steps']:.0f} paper steps"
            )
        else:
            say(f"{name} compiled: {c.get('error')}")
    if not s.compile:
        compiled = {name: {"skipped": "compile off (CPU smoke run)"} for name in s.models}
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda}
    if device.type == "cuda":
        info.update(
            gpu=torch.cuda.get_device_name(device), capability=list(torch.cuda.get_device_capability(device))
        )
    info["cpu_count"] = os.cpu_count()
    return {
        "settings": dataclasses.asdict(s),
        "machine": info,
        "models": models,
        "compile": compiled,
        "phantom_epoch": phantom,
        "ddp": ddp,
        "timm_source": TIMM_SOURCE,
        "paper_run_steps": paper_run_steps(),
        "seconds": time.perf_counter() - t_start,
    }


def _n(x: Any, digits: int = 0) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def to_markdown(r: dict[str, Any]) -> str:
    """Throughput table with timm's RTX 3090 numbers, the compile table and the phantom epoch."""
    m = r["machine"]
    lines = [
        "# GPU check",
        "",
        f"Device: {m.get('gpu', m['device'])}; torch {m['torch']}, CUDA {m['cuda']}. "
        f"{r['settings']['size']} px; train step = forward + class-averaged BCE + backward + Adam, "
        f"{r['settings']['steps']} timed steps after {r['settings']['warmup']} warm-up.",
        "",
        "| model | batch | fp32 img/s | bf16 img/s (layout) | bf16 / fp32 | timm RTX 3090 AMP img/s (batch) | ours / timm |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, x in r["models"].items():
        t = x["timm_rtx3090"]
        layout = t.get("compared_layout", "nchw")
        timm_cell = f"{t[layout]:.0f} ({layout}, {t[layout + '_batch']})" if layout in t else "n/a"
        lines.append(
            f"| {name} | {x['batch']} | {_n(x['fp32']['images_per_s'])} | {_n(x['bf16']['images_per_s'])} "
            f"({'channels_last' if x['bf16']['channels_last'] else 'NCHW'}) | x{x['bf16_speedup']:.2f} | "
            f"{timm_cell} | {_n(x['vs_timm_rtx3090'], 2)} |"
        )
    src = r["timm_source"]
    lines += [
        "",
        f"timm: {src['repo']} `{src['nchw'][0]}` @ {src['nchw'][1][:12]} and `{src['nhwc'][0]}` @ "
        f"{src['nhwc'][1][:12]} (AMP float16, SGD, cross-entropy; an RTX 3090, not this GPU).",
        "",
        f"torch.compile of the bf16 step (a full paper run is {r['paper_run_steps']} steps of batch 32):",
        "",
        "| model | compiled img/s | vs eager bf16 | compile s | break-even (paper steps) | pays |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in r["compile"].items():
        if "images_per_s" in c:
            lines.append(
                f"| {name} | {_n(c['images_per_s'])} | x{c['speedup']:.2f} | {_n(c['compile_s'])} | "
                f"{_n(c['break_even_paper_steps'])} | {'yes' if c['pays'] else 'no'} |"
            )
        else:
            lines.append(f"| {name} | {c.get('skipped') or c.get('error')} | | | | |")
    p = r["phantom_epoch"]
    lines += [
        "",
        f"Phantom epoch end to end ({p['model']}, {p['images']} images at {r['settings']['phantom_px']} px -> "
        f"{r['settings']['size']} px, {p['train']} train / {p['val']} val / {p['test']} test, {p['device']}, "
        f"bf16 {p['amp']}, channels_last {p['channels_last']}):",
        "",
        "| phantom | preprocess | split | train 1 epoch (+val, checkpoints) | test (predict + bootstrap) | total |",
        "|---|---|---|---|---|---|",
        f"| {p['phantom_s']:.1f} s | {p['preprocess_s']:.1f} s | {p['split_s']:.1f} s | {p['train_epoch_s']:.1f} s "
        f"| {p['test_s']:.1f} s | {p['total_s']:.1f} s |",
        "",
        f"Test macro AUC after one epoch: {_n(p['test_macro_auc'], 3)}.",
        "",
        _ddp_markdown(r["ddp"]),
        "",
        f"Whole check: {r['seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def _ddp_markdown(d: dict[str, Any]) -> str:
    if "efficiency" not in d:
        return f"DDP scaling: {d.get('skipped') or d.get('error')}."
    return (
        f"DDP scaling ({d['model']}, {d['per_gpu_batch']} images per GPU per step, bf16 on CUDA): "
        f"{d['images_per_s_1']:.0f} images/s on 1 GPU, {d['images_per_s_n']:.0f} on {d['gpus']}; "
        f"efficiency {d['efficiency']:.2f} (1.00 = linear; docs/scale-check.md assumes 0.9 / 0.75 / 0.55 "
        "at 2 / 4 / 8 GPUs)."
    )
