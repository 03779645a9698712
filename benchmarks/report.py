"""Machine description and the Markdown report of a benchmark run (``results.md``).

Every table shows best (median) over interleaved repeats and ratios against a baseline measured in
the same run: on a shared machine the absolute numbers move with other jobs' load, the ratios much
less.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from benchmarks.compare import compare_md

#: Section key -> Markdown heading (the tests look for these).
SECTION_TITLES: dict[str, str] = {
    "loader": "Loader: cache vs paper-style",
    "efficiency": "Input-pipeline efficiency",
    "models": "Models: train and inference images/s",
    "cams": "CAMs: heatmaps/s",
    "preprocess": "Preprocess: build_cache vs decode-only",
    "compare": "Compare: paired AUC bootstrap vs a per-replicate sklearn loop",
}


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, threads, load, library versions, accelerator."""
    import timm
    import torchvision

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "platform": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


# --------------------------------------------------------------------------------------------
# cells


def num(x: float | None) -> str:
    """images/s with sensible digits."""
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def speed(r: Mapping[str, Any] | None, prefix: str = "images_per_s") -> str:
    """``best (median)`` of a rates dict."""
    if not r:
        return "n/a"
    return f"{num(r.get(f'{prefix}_best'))} ({num(r.get(f'{prefix}_median'))})"


def times(best: float | None, median: float | None = None) -> str:
    """A speed ratio as ``x1.23 (x1.10)``."""
    if best is None or not math.isfinite(best):
        return "n/a"
    text = f"x{best:.2f}"
    return text if median is None or not math.isfinite(median) else f"{text} (x{median:.2f})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


# --------------------------------------------------------------------------------------------
# sections


def loader_md(r: Mapping[str, Any]) -> list[str]:
    s = r["settings"]
    loaders = r["loaders"]
    labels = {
        "paper": f"paper-style: PIL PNG -> torchvision transforms, DataLoader({s['workers']} workers)",
        "cache": "cache: CacheBatches + prepare_batch(train=True), channels_last",
        "cache_nchw": "cache: CacheBatches + prepare_batch(train=True), NCHW",
        "cache_read": "cache: uint8 batch reads only (no augmentation; the floor)",
    }
    rows = []
    for name, label in labels.items():
        if name not in loaders:
            continue
        lr = loaders[name]
        rel = (
            "x1 (baseline)"
            if name == "paper"
            else times(lr.get("speedup_vs_paper_best"), lr.get("speedup_vs_paper_median"))
        )
        rows.append([label, speed(lr), rel])
    cache = loaders.get("cache", {})
    return [
        f"{s['images']} synthetic {s['source_side']}x{s['source_side']} PNGs (mean {r['mean_png_kb']:.0f} KB) "
        f"-> {s['size']}x{s['size']} training batches of {s['batch_size']} on {r['device']}, flip + rotation "
        f"augmentation on both sides; best (median) of {s['repeats']} interleaved epochs after a warm-up epoch. "
        f"The paper-style loader uses {s['workers']} worker processes; the cache path runs in the main "
        f"process on {r.get('cache_torch_threads', '?')} torch thread(s).",
        "",
        *_table(["loader", "images/s", "vs paper-style"], rows),
        "",
        f"Target: cache >= {r['target_speedup']:.0f}x paper-style: "
        f"{_verdict(bool(r['meets_target']))} ({times(cache.get('speedup_vs_paper_best'))}).",
    ]


def efficiency_md(r: Mapping[str, Any]) -> list[str]:
    rows = []
    for name, m in r["models"].items():
        eff = m.get("efficiency")
        base = m["baselines"]["train"]
        v = m["variants"]
        rows.append(
            [
                name,
                f"{base} ({m['train_dtype']})",
                speed(v.get(base)),
                speed(v.get("train_loader")),
                f"{eff['best']:.2f} ({eff['median']:.2f})" if eff else "n/a",
                _verdict(bool(m["meets_target"])),
            ]
        )
    s = r["settings"]
    return [
        "Train-step images/s fed by the real cache loader (memmap read + on-device augmentation + "
        "normalise) over train-step images/s on a batch already on the device, same dtype and memory "
        f"format; {s['steps']} steps of {s['batch_size']} at {s['size']} px per measurement, best (median) of "
        f"{s['repeats']} interleaved repeats. 1.0 = the loader costs nothing.",
        "",
        *_table(
            [
                "model",
                "baseline",
                "in-memory img/s",
                "cache-loader img/s",
                "efficiency",
                f"target >= {r['target_efficiency']}",
            ],
            rows,
        ),
    ]


def _cell(m: Mapping[str, Any], variant: str) -> str:
    if variant in m["variants"]:
        return speed(m["variants"][variant])
    return "skipped" if variant in m["skipped"] else "n/a"


def _effect(m: Mapping[str, Any], key: str) -> str:
    r = m.get(key)
    return times(r["best"], r["median"]) if r else "n/a"


def models_md(r: Mapping[str, Any]) -> list[str]:
    s = r["settings"]
    lines = [
        f"{s['batch_size']} images at {s['size']} px per step, {s['steps']} steps per measurement, best "
        f"(median) of {s['repeats']} interleaved repeats, on {r['device']} with {r['torch_threads']} torch "
        "thread(s). CL = channels_last; bf16 and compile run in the model's preferred format (pref.); "
        "effects are ratios of images/s to the float32 run in the same process.",
    ]
    for kind, title in (
        ("train", "Train step (forward + backward + Adam)"),
        ("infer", "Inference (eval, no grad)"),
    ):
        rows = [
            [
                name,
                m["preferred_memory_format"],
                _cell(m, f"{kind}_nchw"),
                _cell(m, f"{kind}_cl"),
                _effect(m, f"channels_last_{kind}"),
                _cell(m, f"{kind}_bf16"),
                _effect(m, f"bf16_{kind}"),
                _cell(m, f"{kind}_compile"),
                _effect(m, f"compile_{kind}"),
            ]
            for name, m in r["models"].items()
        ]
        header = ["model", "pref.", "NCHW fp32", "CL fp32", "CL effect", "bf16", "bf16 effect"]
        lines += ["", f"### {title}, images/s", "", *_table([*header, "compile", "compile effect"], rows)]
    compiled = [
        f"{name}: "
        + ", ".join(
            f"{k} {m['variants'][f'{k}_compile']['warmup_s']:.0f} s"
            for k in ("train", "infer")
            if f"{k}_compile" in m["variants"]
        )
        for name, m in r["models"].items()
        if any(f"{k}_compile" in m["variants"] for k in ("train", "infer"))
    ]
    if compiled:
        lines += ["", "torch.compile warm-up, compilation included: " + "; ".join(compiled)]
    reasons: dict[str, set[str]] = {}
    for m in r["models"].values():
        for variant, why in m["skipped"].items():
            reasons.setdefault(why, set()).add(variant)
    if reasons:
        lines += ["", "Skipped:"]
        lines += [f"- {', '.join(sorted(v))}: {why}" for why, v in reasons.items()]
    return lines


def cams_md(r: Mapping[str, Any]) -> list[str]:
    n = r.get("images", 0)
    rows: list[list[str]] = []

    def pair(stat: str, key: str) -> float | None:
        return r.get(f"{key}_{stat}")

    def per_s(count: float, key: str) -> str:
        best, median = r.get(f"{key}_s_min"), r.get(f"{key}_s_median")
        if not best:
            return "n/a"
        return f"{num(count / best)} ({num(count / median)})" if median else num(count / best)

    rows.append(
        [
            "GradCAM",
            per_s(n, "ours_gradcam"),
            per_s(n, "pgc_gradcam"),
            times(pair("min", "gradcam_speedup"), pair("median", "gradcam_speedup")),
        ]
    )
    if "adapter_gradcam_s_min" in r:
        rows.append(
            [
                "GradCAM, pytorch-grad-cam through LibraryCAM (batched, one target per image)",
                per_s(n, "adapter_gradcam"),
                per_s(n, "pgc_gradcam"),
                times(pair("min", "adapter_vs_pgc_speedup"), pair("median", "adapter_vs_pgc_speedup")),
            ]
        )
    for method in ("GradCAMPlusPlus", "EigenCAM"):
        if f"pgc_{method}_s_min" in r:
            rows.append([method, "(in the shared run below)", per_s(n, f"pgc_{method}"), ""])
    if "ours_all_s_min" in r:
        pgc_all = per_s(3 * n, "pgc_all") if "pgc_all_s_min" in r else "n/a"
        rows.append(
            [
                "all methods, shared forward (ours: 4 incl. RandomCAM; pgc: 3)",
                per_s(4 * n, "ours_all"),
                pgc_all,
                times(pair("min", "all_methods_speedup"), pair("median", "all_methods_speedup"))
                + " (time for the same images)",
            ]
        )
    return [
        f"{r.get('model')} at {r.get('size')} px, {n} images, batch {r.get('batch_size')}, {r.get('device')}; "
        f"heatmaps/s, best (median) of {r.get('repeats')} interleaved repeats. Baseline: pytorch-grad-cam "
        "used the README way (one CAM object and one image at a time); ours: cxr_core.explain.methods batched.",
        "",
        *_table(["method", "ours heatmaps/s", "pytorch-grad-cam heatmaps/s", "speed-up"], rows),
        "",
        f"max |ours - pytorch-grad-cam| on the GradCAM maps: {r.get('gradcam_max_abs_diff_vs_pgc', float('nan')):.1e}",
    ]


def preprocess_md(r: Mapping[str, Any]) -> list[str]:
    labels = {
        "decode_only": "decode-only limit: PNG decode in the same pool (baseline)",
        "build_cache": "build_cache: decode + grey + resize + memmap write",
        "paper_single": "paper-style per image, 1 process (every epoch)",
        "paper_pool": f"paper-style per image, {r['workers']} workers (every epoch)",
    }
    base = r["decode_only_images_per_s"]
    rows = [
        [label, num(r[f"{key}_images_per_s"]), times(r[f"{key}_images_per_s"] / base)]
        for key, label in labels.items()
    ]
    return [
        f"{r['images']} synthetic 1024x1024 PNGs (mean {r['mean_png_kb']:.0f} KB) -> {r['size']} px, "
        f"{r['workers']} workers, best of {r['repeat']} interleaved rounds.",
        "",
        *_table(["path", "images/s", "vs decode-only"], rows),
        "",
        f"build_cache time / decode-only time: {r['cache_over_decode_only_time']:.2f} (target <= 1.5).",
    ]


RENDERERS: dict[str, tuple[str, Callable[[Mapping[str, Any]], list[str]]]] = {
    "loader": ("loader", loader_md),
    "efficiency": ("models", efficiency_md),
    "models": ("models", models_md),
    "cams": ("cams", cams_md),
    "preprocess": ("preprocess", preprocess_md),
    "compare": ("compare", compare_md),
}


def section_md(key: str, sections: Mapping[str, Any]) -> str:
    """One section's Markdown (heading + table), or "" when its results are absent."""
    source, render = RENDERERS[key]
    if source not in sections:
        return ""
    return "\n".join([f"## {SECTION_TITLES[key]}", "", *render(sections[source]), ""])


def to_markdown(results: Mapping[str, Any]) -> str:
    """The whole ``results.md``: machine block, then every section that ran."""
    m = results["machine"]
    device = m["device"] + (f" ({m['gpu']}, CUDA {m['cuda']})" if "gpu" in m else "")
    head = [
        "# Benchmarks",
        "",
        f"`python -m benchmarks {results['command']}{' --quick' if results['quick'] else ''}`, "
        f"{results['started']}, {results['seconds']:.0f} s in all.",
        "",
        f"- Machine: {m['cpu']}, {m['logical_cores']} logical cores ({m['usable_cores']} usable), "
        f"{m['torch_threads']} torch threads ({m.get('threads_choice', 'torch default')}), 1-min load average {m['load_average_1m']:.1f} at the start",
        f"- Device: {device}",
        f"- Software: Python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}, timm {m['timm']}",
        f"- {results['note']}",
        "",
    ]
    body = [section_md(key, results["sections"]) for key in RENDERERS]
    return "\n".join(head + [b for b in body if b])
