"""Heatmaps per second: ``cxr_core.explain.methods.compute_heatmaps`` vs pytorch-grad-cam used the plain way.

    python -m benchmarks.cams --model densenet121 --images 16 --size 224

The reference is pytorch-grad-cam as its README (and the paper's code) uses it: a new CAM object per
image in a ``with`` block, default settings, one image and one ``ClassifierOutputTarget`` at a time,
a full backward with parameter gradients. Ours: batched, one shared forward (and a head-only backward)
per batch for every method, no parameter gradients. Both run on the same model (random weights) and
the same images in one process, so the ratio is comparable; absolute numbers depend on the machine
(and, on a shared CPU, on its load: repeats are interleaved and the best and median are reported).
The Grad-CAM maps of both are compared for agreement.

A third contender sits between them: pytorch-grad-cam's own GradCAM through the adapter
``cxr_core.explain.library.LibraryCAM("pgc:GradCAM")``, one library call per batch (the same batch
size as ours) with one target per image, frozen parameters (no weight gradients) and the hooks
released per call. Its ratio to the plain use shows what batching and skipping the weight gradients
buy inside the library; ours over it, what the head-only backward and the shared forward add.

On a CPU, Grad-CAM alone is bounded near 3x: both sides pay one forward per image, and what ours
saves is pytorch-grad-cam's full backward (about two forwards' worth) plus per-image overheads. The
gap grows with every extra method (ours shares the forward) and with a GPU (batching).
"""

from __future__ import annotations

import argparse
import logging
import statistics
from typing import Any

import numpy as np
import torch

from benchmarks.timing import timed_call
from cxr_core.explain.cams.batch_loop import compute_heatmaps
from cxr_core.explain.cams.library_cam import LibraryCAM
from cxr_core.explain.degenerate import degeneracy_summary
from cxr_core.explain.layers import cam_target_layer, reshape_transform
from cxr_core.files import write_json
from cxr_core.models.registry import create_model, get_spec

ALL_METHODS = ("GradCAM", "GradCAMPlusPlus", "EigenCAM", "RandomCAM")
#: methods pytorch-grad-cam is timed on for "all methods" (its RandomCAM is a different method).
PGC_METHODS = ("GradCAM", "GradCAMPlusPlus", "EigenCAM")


def pgc_plain(
    model: torch.nn.Module,
    layer: torch.nn.Module,
    reshape: Any,
    images: torch.Tensor,
    classes: np.ndarray,
    method: str,
) -> np.ndarray:
    """pytorch-grad-cam the README way: a new CAM object per image, one image at a time."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = getattr(pytorch_grad_cam, method)
    maps = []
    for image, c in zip(images, classes, strict=True):
        with cls(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
            maps.append(cam(input_tensor=image[None], targets=[ClassifierOutputTarget(int(c))])[0])
    model.zero_grad(set_to_none=True)  # it leaves parameter gradients behind
    return np.stack(maps)


def adapter_batched(
    cam: LibraryCAM, images: torch.Tensor, classes: np.ndarray, batch_size: int
) -> np.ndarray:
    """The adapter over every image, ``batch_size`` images (and their targets) per library call."""
    return np.concatenate(
        [
            cam(images[start : start + batch_size], classes[start : start + batch_size])[0]
            for start in range(0, len(images), batch_size)
        ]
    )


def default_batch_size(device: torch.device) -> int:
    """4 on a CPU (DenseNet's concatenations fall out of cache at larger batches: bs 16 measured
    ~20% slower than bs 4 at 224), 32 on a GPU."""
    return 32 if device.type == "cuda" else 4


def run(  # noqa: C901 - one timed section per method, in the order the report prints them
    model: str = "densenet121",
    images: int = 16,
    size: int = 224,
    batch_size: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    threads: int | None = None,
    include_pgc_all: bool = True,
    repeats: int = 3,
    include_adapter: bool = True,
) -> dict[str, Any]:
    """Time ours, pytorch-grad-cam plain and (``include_adapter``) pytorch-grad-cam through
    :class:`LibraryCAM` on the same model and images; returns the numbers as a dict."""
    if threads:
        torch.set_num_threads(threads)
    # random weights make some Grad-CAM maps all-zero (reported below as degenerate_fraction);
    # one warning per timed call would only clutter the output
    logging.getLogger("cxr_core.explain.methods").setLevel(logging.ERROR)
    dev = torch.device(device)
    if batch_size is None:
        batch_size = default_batch_size(dev)
    torch.manual_seed(seed)
    spec = get_spec(model)
    net = create_model(model, image_size=size).eval().to(dev)
    layer = cam_target_layer(net, spec)
    reshape = reshape_transform(spec)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(images, 3, size, size, generator=gen).to(dev)
    classes = np.random.default_rng(seed).integers(0, 14, size=images)

    # warm-up at the timed batch size (allocator, oneDNN primitives, lazy inits) for both paths
    compute_heatmaps(
        net, spec, x[:batch_size], classes[:batch_size], list(ALL_METHODS), batch_size=batch_size
    )
    pgc_plain(net, layer, reshape, x[:1], classes[:1], "GradCAM")
    adapter = LibraryCAM("pgc:GradCAM", net, layer, reshape)
    if include_adapter:
        adapter_batched(adapter, x[:batch_size], classes[:batch_size], batch_size)

    result: dict[str, Any] = {
        "model": model,
        "images": images,
        "size": size,
        "batch_size": batch_size,
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "repeats": repeats,
    }
    times: dict[str, list[float]] = {k: [] for k in ("ours_gradcam", "ours_all", "pgc_gradcam")}
    if include_pgc_all:
        times.update({f"pgc_{m}": [] for m in PGC_METHODS[1:]})
    if include_adapter:
        times["adapter_gradcam"] = []
    ours: dict[str, np.ndarray] = {}
    ours_all: dict[str, np.ndarray] = {}
    ref = np.zeros(0)
    via_adapter = np.zeros(0)
    # interleaved repeats, so that load from other processes hits both sides alike
    for _ in range(repeats):
        t, ours = timed_call(
            lambda: compute_heatmaps(net, spec, x, classes, ["GradCAM"], batch_size=batch_size), dev
        )
        times["ours_gradcam"].append(t)
        t, ref = timed_call(lambda: pgc_plain(net, layer, reshape, x, classes, "GradCAM"), dev)
        times["pgc_gradcam"].append(t)
        if include_adapter:
            t, via_adapter = timed_call(lambda: adapter_batched(adapter, x, classes, batch_size), dev)
            times["adapter_gradcam"].append(t)
        t, ours_all = timed_call(
            lambda: compute_heatmaps(net, spec, x, classes, list(ALL_METHODS), batch_size=batch_size), dev
        )
        times["ours_all"].append(t)
        if include_pgc_all:
            for method in PGC_METHODS[1:]:
                t, _ = timed_call(lambda m=method: pgc_plain(net, layer, reshape, x, classes, m), dev)
                times[f"pgc_{method}"].append(t)

    for stat, fn in (("min", min), ("median", statistics.median)):
        best = {k: fn(v) for k, v in times.items()}
        for k, v in best.items():
            result[f"{k}_s_{stat}"] = v
        result[f"ours_gradcam_images_per_s_{stat}"] = images / best["ours_gradcam"]
        result[f"ours_all_images_per_s_{stat}"] = images / best["ours_all"]  # every method's map
        result[f"ours_all_heatmaps_per_s_{stat}"] = images * len(ALL_METHODS) / best["ours_all"]
        result[f"pgc_gradcam_images_per_s_{stat}"] = images / best["pgc_gradcam"]
        result[f"gradcam_speedup_{stat}"] = best["pgc_gradcam"] / best["ours_gradcam"]
        if include_adapter:
            # one GradCAM map per image: images/s are heatmaps/s
            result[f"adapter_gradcam_images_per_s_{stat}"] = images / best["adapter_gradcam"]
            result[f"adapter_vs_pgc_speedup_{stat}"] = best["pgc_gradcam"] / best["adapter_gradcam"]
            result[f"ours_vs_adapter_speedup_{stat}"] = best["adapter_gradcam"] / best["ours_gradcam"]
        if include_pgc_all:
            pgc_all = best["pgc_gradcam"] + sum(best[f"pgc_{m}"] for m in PGC_METHODS[1:])
            result[f"pgc_all_s_{stat}"] = pgc_all
            result[f"pgc_all_images_per_s_{stat}"] = images / pgc_all
            # ours also computes RandomCAM in that time; pgc's three methods are the comparison
            result[f"all_methods_speedup_{stat}"] = pgc_all / best["ours_all"]
    result["times_s"] = times
    result["gradcam_max_abs_diff_vs_pgc"] = float(np.abs(ours["GradCAM"] - ref).max())
    if include_adapter:
        result["adapter_gradcam_max_abs_diff_vs_pgc"] = float(np.abs(via_adapter - ref).max())
    result["degenerate_fraction"] = {
        m: row["degenerate_fraction"] for m, row in degeneracy_summary(ours_all, model=model).items()
    }
    return result


def _report(r: dict[str, Any]) -> str:
    lines = [
        f"{r['model']} at {r['size']}, {r['images']} images, batch {r['batch_size']}, {r['device']}, "
        f"{r['torch_threads']} torch threads; best (median) of {r['repeats']} interleaved repeats",
    ]

    def row(label: str, key: str, speedup: str | None = None, extra: str = "") -> None:
        text = f"  {label:<48}{r[key + '_min']:8.2f} ({r[key + '_median']:.2f}) images/s"
        if speedup:
            text += f"   x{r[speedup + '_min']:.1f} (x{r[speedup + '_median']:.1f})"
        lines.append(text + extra)

    row("pytorch-grad-cam GradCAM (plain, per image)", "pgc_gradcam_images_per_s")
    if "adapter_gradcam_images_per_s_min" in r:
        row(
            "pytorch-grad-cam GradCAM via LibraryCAM (batched)",
            "adapter_gradcam_images_per_s",
            "adapter_vs_pgc_speedup",
        )
    row("ours GradCAM (batched)", "ours_gradcam_images_per_s", "gradcam_speedup")
    if "ours_vs_adapter_speedup_min" in r:
        lines.append(
            f"  {'ours GradCAM vs LibraryCAM GradCAM':<48}{'':8}"
            f"   x{r['ours_vs_adapter_speedup_min']:.1f} (x{r['ours_vs_adapter_speedup_median']:.1f})"
        )
    if "pgc_all_s_min" in r:
        row("pytorch-grad-cam GradCAM, GradCAM++, EigenCAM", "pgc_all_images_per_s")
    row(
        "ours GradCAM, GradCAM++, EigenCAM, RandomCAM",
        "ours_all_images_per_s",
        "all_methods_speedup" if "pgc_all_s_min" in r else None,
        f"  ({r['ours_all_heatmaps_per_s_min']:.1f} heatmaps/s)",
    )
    lines.append(f"  max |ours - pgc| on the GradCAM maps: {r['gradcam_max_abs_diff_vs_pgc']:.2e}")
    if "adapter_gradcam_max_abs_diff_vs_pgc" in r:
        lines.append(
            f"  max |LibraryCAM - pgc| on the GradCAM maps: {r['adapter_gradcam_max_abs_diff_vs_pgc']:.2e}"
        )
    lines.append(f"  degenerate fraction (random weights): {r['degenerate_fraction']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 4 on CPU, 32 on GPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gradcam-only", action="store_true", help="skip timing pgc's other methods")
    parser.add_argument("--no-adapter", action="store_true", help="skip timing the LibraryCAM adapter")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    result = run(
        args.model,
        args.images,
        args.size,
        args.batch_size,
        args.device,
        args.seed,
        args.threads,
        include_pgc_all=not args.gradcam_only,
        repeats=args.repeats,
        include_adapter=not args.no_adapter,
    )
    print(_report(result))
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
