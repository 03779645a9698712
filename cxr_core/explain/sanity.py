"""Sanity and faithfulness checks for saliency maps: cascading model randomisation and ROAD.

**Model-parameter randomisation, cascading** (Adebayo et al. 2018, "Sanity Checks for Saliency
Maps"; for chest X-rays, Arun et al. 2021, "Assessing the Trustworthiness of Saliency Maps for
Localizing Abnormalities in Medical Imaging"). A map that explains *the model* must change when the
model's learned weights are destroyed. The weights are re-initialised from the top down,
cumulatively: first the classifier, then the last feature stage as well, then the one below it, and
at every step each image's map is compared with the trained model's map of the same method, image and
class by Spearman rank correlation. A method whose maps stay highly correlated with the trained
ones after the cascade is an edge/input detector, not an explanation (the random-map control
does not depend on the model at all and must fail; EigenCAM at a layer below the classifier cannot
see the classifier, so the first step alone leaves it unchanged).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from cxr_core.explain.cams import batch_loop  # a module: tests replace its compute_heatmaps
from cxr_core.explain.layers import get_module

if TYPE_CHECKING:
    from cxr_core.models.registry import ModelSpec

#: The first cascade step: only the classifier is re-initialised.
HEAD_STEP = "head"


# --------------------------------------------------------------------------------------------------
# Cascade steps
# --------------------------------------------------------------------------------------------------


def _classifier_path(model: nn.Module) -> str:
    get = getattr(model, "get_classifier", None)
    if not callable(get):
        raise ValueError(
            f"{type(model).__name__} has no get_classifier(): the cascade needs a timm classifier to find the head"
        )
    head = get()
    if isinstance(head, (list, tuple)):  # distilled models return (head, head_dist)
        head = head[0]
    for path, module in model.named_modules():
        if module is head and path:
            if not any(True for _ in module.parameters()):
                break
            return path
    raise ValueError(
        f"{type(model).__name__}.get_classifier() is not a submodule with parameters (num_classes=0?)"
    )


def _feature_modules(model: nn.Module) -> list[str]:
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"{type(model).__name__} has no timm feature_info: its stages are unknown")
    return [str(entry["module"]) for entry in info]


def _stage_roots(
    model: nn.Module, lo: int, hi: float, classifier: str, order: dict[str, int], end: dict[str, int]
) -> list[str]:
    """The largest modules whose whole subtree lies in pre-order positions (lo, hi], classifier excluded.

    Modules holding neither parameters nor buffers (activations, pooling, dropout) are left out.
    """
    roots: list[str] = []

    def visit(module: nn.Module, path: str) -> None:
        start, stop = order[path], end[path]
        if stop <= lo or start > hi or path == classifier:
            return
        contains_head = classifier == path or classifier.startswith(f"{path}.") or path == ""
        if start > lo and stop <= hi and not contains_head:
            if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
                roots.append(path)
            return
        for name, child in module.named_children():
            child_path = f"{path}.{name}" if path else name
            if child_path in order:  # a module registered twice is visited at its first place only
                visit(child, child_path)

    visit(model, "")
    return roots


def cascade_steps(model: nn.Module, stages: int = 2) -> list[tuple[str, list[str]]]:
    """Cumulative randomisation steps from the top: ``[("head", [classifier]), ("head+<stage>", ...), ...]``.

    Stages come from timm's ``feature_info``: the stage that outputs at ``feature_info[i]`` is every
    module registered after ``feature_info[i - 1]``'s subtree up to the end of ``feature_info[i]``'s
    (registration order = execution order in timm's CNNs and Swin). The last stage also takes
    everything registered after its output module except the classifier (EfficientNet's
    ``conv_head``/``bn2``, Swin's final ``norm``), so each step re-initialises everything above its
    lowest stage. A step is named after the ``feature_info`` modules of its stages, e.g.
    ``"head+layer4+layer3"``, and its module list extends the previous step's list (same prefix):
    randomised with the same seed, a later step holds the earlier step's fresh weights too.
    ``stages`` may be 0 (head only) up to ``len(model.feature_info)`` (the whole network of a CNN or
    Swin; parameters held directly by the model object, such as a ViT's ``cls_token`` and
    ``pos_embed``, belong to no module and so to no step).
    """
    classifier = _classifier_path(model)
    features = _feature_modules(model)
    if not 0 <= stages <= len(features):
        raise ValueError(f"stages must lie in [0, {len(features)}] (timm's feature_info), got {stages}")
    named = dict(model.named_modules())
    order = {path: i for i, path in enumerate(named)}
    end: dict[str, int] = {}
    for path in reversed(order):  # the last pre-order position inside each subtree
        children = (f"{path}.{n}" if path else n for n, _ in named[path].named_children())
        end[path] = max([order[path], *(end[c] for c in children if c in end)])
    for name in features:
        if name not in order:
            raise ValueError(f"feature_info module {name!r} is not a submodule of {type(model).__name__}")

    steps = [(HEAD_STEP, [classifier])]
    modules = [classifier]
    label = HEAD_STEP
    for k in range(1, stages + 1):
        i = len(features) - k  # the stage that outputs at features[i]
        lo = end[features[i - 1]] if i > 0 else -1
        hi = math.inf if k == 1 else end[features[i]]
        modules = [*modules, *_stage_roots(model, lo, hi, classifier, order, end)]
        label = f"{label}+{features[i]}"
        steps.append((label, modules))
    return steps


# --------------------------------------------------------------------------------------------------
# Randomised copies
# --------------------------------------------------------------------------------------------------


def _resolve(model: nn.Module, path: str, named: Mapping[str, nn.Module]) -> nn.Module:
    if path in named:
        return named[path]
    return get_module(model, path)  # negative indices and the like


def _redraw(p: Tensor) -> None:
    """Re-draw in place from N(mean, std) of its current values (constants stay constant)."""
    values = p.detach().float()
    std = float(values.std()) if values.numel() > 1 else 0.0
    mean = float(values.mean())
    if not math.isfinite(std) or std == 0.0:
        return
    p.copy_(torch.randn(p.shape, device=p.device, dtype=torch.float32).mul_(std).add_(mean).to(p.dtype))


def randomised_copy(model: nn.Module, module_paths: Sequence[str], seed: int) -> nn.Module:
    """A deep copy in eval mode whose listed modules (with all submodules) hold freshly drawn parameters.

    Every module under the listed ones that has ``reset_parameters`` is re-initialised with it
    (torch's own initialisation: Linear/Conv uniform, BatchNorm/LayerNorm weight 1 and bias 0 with
    running statistics reset, timm Swin's relative position bias re-drawn), in the order of
    ``module_paths``, each subtree in registration order. A parameter that no ``reset_parameters``
    changed (its module has none, or it leaves it alone) is re-drawn from a normal with the mean and
    std of its current values; a constant (or one-element) parameter has no spread to draw from and
    is kept. The draws come from torch's default generators reseeded with ``seed`` inside
    ``torch.random.fork_rng``: the result depends only on (model, paths, seed) and the caller's RNG
    state is left as it was. CPU and CUDA draws differ for the same seed. ``model`` is not touched.
    """
    if isinstance(module_paths, str):
        module_paths = [module_paths]
    clone = copy.deepcopy(model).eval()
    targets = _target_modules(clone, module_paths)
    cuda = sorted({p.device.index or 0 for p in clone.parameters() if p.is_cuda})
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        torch.default_generator.manual_seed(int(seed))
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(int(seed))
        params = {id(p): p for module in targets for p in module.parameters(recurse=False)}
        changed: set[int] = set()
        for module in targets:
            changed |= _reset(module)
        for key, p in params.items():
            if key not in changed and not p.is_meta:
                _redraw(p)
    return clone


def _target_modules(model: nn.Module, module_paths: Sequence[str]) -> list[nn.Module]:
    """The listed modules and all their submodules, each once, in the order of ``module_paths``."""
    named = dict(model.named_modules())
    targets: list[nn.Module] = []
    seen: set[int] = set()
    for path in module_paths:
        for module in _resolve(model, path, named).modules():
            if id(module) not in seen:
                seen.add(id(module))
                targets.append(module)
    return targets


def _reset(module: nn.Module) -> set[int]:
    """``reset_parameters`` and ``reset_running_stats`` of one module, where it has them; the ids of
    its own parameters that the reset changed."""
    changed: set[int] = set()
    own = list(module.parameters(recurse=False))
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        before = [None if p.is_meta else p.detach().clone() for p in own]
        reset()
        for p, old in zip(own, before, strict=True):
            if old is None or not torch.equal(old, p):
                changed.add(id(p))
    reset_stats = getattr(module, "reset_running_stats", None)
    if callable(reset_stats):
        reset_stats()
    return changed


# --------------------------------------------------------------------------------------------------
# Rank correlation
# --------------------------------------------------------------------------------------------------


def spearman_maps(a: np.ndarray | Tensor, b: np.ndarray | Tensor) -> np.ndarray:
    """Per-map Spearman rank correlation of two (B, H, W) stacks -> float64 (B,).

    Ties get average ranks (``scipy.stats.rankdata``), i.e. ``scipy.stats.spearmanr`` map by map.
    NaN where either map is constant (no ranking to compare) or holds a non-finite value.
    """
    from scipy.stats import rankdata

    x = np.asarray(a.detach().cpu() if isinstance(a, Tensor) else a, dtype=np.float64)
    y = np.asarray(b.detach().cpu() if isinstance(b, Tensor) else b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"map stacks differ in shape: {x.shape} vs {y.shape}")
    if x.ndim == 2:
        x, y = x[None], y[None]
    if x.ndim != 3:
        raise ValueError(f"maps must be (B, H, W), got shape {x.shape}")
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    out = np.full(len(x), np.nan)
    if x.shape[1] < 2:
        return out
    finite = np.isfinite(x).all(axis=1) & np.isfinite(y).all(axis=1)
    spread = np.ptp(np.where(finite[:, None], x, 0), axis=1) * np.ptp(np.where(finite[:, None], y, 0), axis=1)
    ok = finite & (spread > 0)
    if not ok.any():
        return out
    rx = rankdata(x[ok], axis=1)
    ry = rankdata(y[ok], axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    r = (rx * ry).sum(axis=1) / np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    out[ok] = np.clip(r, -1.0, 1.0)
    return out


def _mean_or_none(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


# --------------------------------------------------------------------------------------------------
# The randomisation check
# --------------------------------------------------------------------------------------------------


def _module_path(model: nn.Module, module: nn.Module) -> str:
    for path, candidate in model.named_modules():
        if candidate is module:
            return path
    raise ValueError("cam_kwargs['target_layer'] is not a submodule of the model")


def randomisation_check(
    model: nn.Module,
    spec: ModelSpec,
    images: Tensor | np.ndarray,
    class_indices: Tensor | np.ndarray | Sequence[int],
    methods: Sequence[str],
    *,
    seed: int,
    stages: int = 2,
    batch_size: int = 16,
    cam_kwargs: dict[str, Any] | None = None,
    trained_maps: Mapping[str, np.ndarray] | None = None,
) -> dict[str, dict[str, Any]]:
    """Cascading model-parameter randomisation: how similar each method's maps stay as weights go.

    ``images``: (B, 3, S, S) float, normalised, as for ``compute_heatmaps``; image b is explained for
    ``class_indices[b]`` by the trained model and by every randomised copy, and the two maps of the
    same method, image and class are compared (Spearman, :func:`spearman_maps`). ``seed`` draws the
    fresh weights (one seed for all steps, so the steps are nested, see :func:`cascade_steps`) and is
    also the CAMs' seed (the random control's) unless ``cam_kwargs`` holds ``"seed"``.
    ``cam_kwargs`` go to ``compute_heatmaps`` for the trained model and every copy alike
    (``eigen_sign``, ``random_stride``, ``autocast_dtype``, ...; a ``target_layer`` of ``model`` is
    mapped to the same layer of each copy). ``trained_maps`` skips the trained model's pass; they
    must come from the same images, classes and CAM settings (a random control drawn with another
    seed would look model-dependent).

    Returns, per method::

        {"steps": ["head", "head+layer4", "head+layer4+layer3"],
         "modules": {"head": ["fc"], "head+layer4": ["fc", "layer4"], ...},
         "spearman": {"head": 0.98, "head+layer4": 0.12, ...},      # mean over finite images, or None
         "spearman_per_image": {"head": [0.97, None, ...], ...},    # None: a constant or NaN map
         "n_images": 8, "n_finite": {"head": 7, ...}}
    """
    methods = [methods] if isinstance(methods, str) else list(dict.fromkeys(methods))
    kwargs = dict(cam_kwargs or {})
    cam_seed = kwargs.pop("seed", seed)
    for key in ("batch_size", "model", "spec", "images", "class_indices", "methods"):
        if key in kwargs:
            raise ValueError(f"cam_kwargs must not set {key!r}: it is an argument of randomisation_check")
    layer = kwargs.pop("target_layer", None)
    layer_path = _module_path(model, layer) if layer is not None else None
    steps = cascade_steps(model, stages)
    n = len(images)

    def maps_of(net: nn.Module) -> dict[str, np.ndarray]:
        extra = dict(kwargs)
        if layer_path is not None:
            extra["target_layer"] = dict(net.named_modules())[layer_path]
        return batch_loop.compute_heatmaps(
            net, spec, images, class_indices, methods, batch_size, cam_seed, **extra
        )

    if trained_maps is None:
        trained = maps_of(model)
    else:
        missing = [m for m in methods if m not in trained_maps]
        if missing:
            raise ValueError(f"trained_maps lacks the methods {missing}")
        trained = {m: np.asarray(trained_maps[m]) for m in methods}
        for m, t in trained.items():
            if t.ndim != 3 or len(t) != n:
                raise ValueError(f"trained_maps[{m!r}] must be (B, H, W) with B = {n}, got shape {t.shape}")

    result: dict[str, dict[str, Any]] = {
        m: {
            "steps": [name for name, _ in steps],
            "modules": {name: list(paths) for name, paths in steps},
            "spearman": {},
            "spearman_per_image": {},
            "n_images": n,
            "n_finite": {},
        }
        for m in methods
    }
    for name, paths in steps:
        net = randomised_copy(model, paths, seed)
        randomised = maps_of(net)
        del net  # one copy alive at a time
        for m in methods:
            rho = spearman_maps(trained[m], randomised[m])
            result[m]["spearman"][name] = _mean_or_none(rho)
            result[m]["spearman_per_image"][name] = [float(r) if np.isfinite(r) else None for r in rho]
            result[m]["n_finite"][name] = int(np.isfinite(rho).sum())
    return result


def sanity_verdict(result: Mapping[str, Mapping[str, Any]], max_rank_correlation: float) -> dict[str, dict]:
    """Per method: ``{"passes", "final_step", "final_spearman"}`` of a :func:`randomisation_check` result.

    A method passes when its mean Spearman at the last (most randomised) step is below
    ``max_rank_correlation``. The signed correlation is used: maps anti-correlated with the trained
    ones did change. No finite correlation (every map constant or NaN) is no evidence: it fails.
    """
    limit = float(max_rank_correlation)
    if not math.isfinite(limit):
        raise ValueError(f"max_rank_correlation must be a finite number, got {max_rank_correlation!r}")
    out: dict[str, dict] = {}
    for method, res in result.items():
        final = res["steps"][-1]
        value = res["spearman"].get(final)
        value = None if value is None or not math.isfinite(value) else float(value)
        out[method] = {
            "passes": value is not None and value < limit,
            "final_step": final,
            "final_spearman": value,
        }
    return out


__all__ = [
    "HEAD_STEP",
    "cascade_steps",
    "randomisation_check",
    "randomised_copy",
    "sanity_verdict",
    "spearman_maps",
]
