"""The model table (paper names -> timm), model creation, weights, and CAM target layers.

The six architectures of the paper are rows of :data:`MODEL_TABLE`; any other timm model name works
too, with its settings taken from :data:`FAMILY_DEFAULTS` by timm-name prefix. Everything a later
stage needs to know about an architecture (where to hook a CAM, whether its feature maps are
channels-last, whether ``channels_last`` memory format pays off) lives in one :class:`ModelSpec`,
so no stage grows an ``if "swin" in name`` branch.

Weights: ``pretrained=True`` loads ImageNet weights from the Hugging Face hub through timm, or from
a local file / HF cache folder given as ``weights``. Offline, the hub path fails at once with a
message naming both fixes, instead of timm's ~50 s of retries.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from cxr_core.labels import NUM_CLASSES

_logger = logging.getLogger(__name__)

#: Weight file endings accepted for ``train.weights`` (loaded with safetensors or ``weights_only=True``).
WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt", ".bin")
#: File names looked for inside a weights folder (timm's hub files first).
WEIGHT_FILE_NAMES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
#: Seconds the connectivity probe waits before declaring the hub unreachable.
HUB_PROBE_TIMEOUT_S = 3.0

FIX_HINT = (
    "either set `train.pretrained: false` in params.yaml (train from scratch), or set `train.weights` "
    "to a local weights file (.safetensors/.pth/.bin) or a Hugging Face cache folder holding it"
)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be fetched or found."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything the pipeline needs to know about one architecture."""

    name: str  # params name, e.g. "densenet121"
    timm_name: str  # e.g. "densenet121.tv_in1k"
    family: str  # "densenet" | "efficientnet" | "swin" | "other"
    cam_layer: str  # dotted path into the model, negative ints allowed; "" = unknown
    channels_last: bool  # channels_last memory format helps (CNNs) or not (Swin)
    nhwc_features: bool  # features at cam_layer are N,H,W,C: CAMs need swin_reshape_transform


@dataclass(frozen=True)
class FamilyDefaults:
    """Per-family settings, used for every timm name of that family."""

    cam_layer: str  # "" for "other": resolved from the model's timm ``feature_info``
    channels_last: bool
    nhwc_features: bool
    note: str


FAMILY_DEFAULTS: dict[str, FamilyDefaults] = {
    "densenet": FamilyDefaults("features.-1", True, False, "last norm (norm5 + ReLU) of the dense features"),
    "efficientnet": FamilyDefaults("conv_head", True, False, "the 1x1 head conv before pooling"),
    "swin": FamilyDefaults(
        "layers.-1.blocks.-1.norm1", False, True, "first norm of the last block; timm gives NHWC there"
    ),
    "other": FamilyDefaults(
        "",
        True,
        False,
        "best guess: the last module of timm's feature_info (the stride-32 stage of a CNN, "
        "e.g. resnet 'layer4', convnext 'stages.3'); token-shaped outputs (ViT) are not spatial maps",
    ),
}

#: timm-name prefixes -> family, first match wins. swinv2_cr nests its blocks under ``stages`` and
#: returns NCHW from them, so the generic feature_info guess is right for it.
FAMILY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("swinv2_cr", "other"),
    ("swin", "swin"),
    ("densenet", "densenet"),
    ("efficientnet", "efficientnet"),
    ("tf_efficientnet", "efficientnet"),
)

_PAPER_MODELS: dict[str, str] = {
    "densenet121": "densenet121.tv_in1k",
    "densenet169": "densenet169.tv_in1k",
    "efficientnet_b0": "efficientnet_b0.ra_in1k",
    "efficientnet_b1": "efficientnet_b1.ft_in1k",
    "swin_small": "swin_small_patch4_window7_224.ms_in1k",
    "swin_base": "swin_base_patch4_window7_224.ms_in1k",
}


def family_of(timm_name: str) -> str:
    """Family of a timm model name, by prefix (see :data:`FAMILY_PREFIXES`)."""
    for prefix, family in FAMILY_PREFIXES:
        if timm_name.startswith(prefix):
            return family
    return "other"


def _spec_from_family(name: str, timm_name: str) -> ModelSpec:
    family = family_of(timm_name)
    defaults = FAMILY_DEFAULTS[family]
    cam_layer = defaults.cam_layer or _feature_info_layer(timm_name)
    return ModelSpec(name, timm_name, family, cam_layer, defaults.channels_last, defaults.nhwc_features)


def _feature_info_layer(timm_name: str) -> str:
    """Last feature module of a timm model, built on the meta device (no memory, no weights)."""
    try:
        with torch.device("meta"):
            model = timm.create_model(timm_name, pretrained=False)
        return str(model.feature_info[-1]["module"])
    except Exception as exc:  # any failure only means "no guess": cam_target_layer explains
        _logger.debug("no feature_info CAM layer for %s: %s", timm_name, exc)
        return ""


#: The paper's six models (``models`` in params.yaml) -> timm names with the ImageNet-1k tags used.
MODEL_TABLE: dict[str, ModelSpec] = {name: _spec_from_family(name, t) for name, t in _PAPER_MODELS.items()}


@functools.lru_cache(maxsize=64)
def get_spec(name: str) -> ModelSpec:
    """Spec of a table name or of any timm model name; unknown names fail before any work starts."""
    if name in MODEL_TABLE:
        return MODEL_TABLE[name]
    if not isinstance(name, str) or not name or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), [*MODEL_TABLE, *timm.list_models()], n=5, cutoff=0.6)
        hint = f" Did you mean {list(dict.fromkeys(close))}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}: expected one of the table names {list(MODEL_TABLE)} or a timm "
            f"model name (find them with `python -c \"import timm; print(timm.list_models('*densenet*'))\"`)."
            f"{hint}"
        )
    return _spec_from_family(name, name)


def _size_kwargs(spec: ModelSpec, image_size: int) -> dict[str, Any]:
    """timm kwargs that make the model accept ``image_size`` inputs."""
    if spec.family == "swin":
        if image_size % 32:
            raise ValueError(
                f"image_size = {image_size} does not work with {spec.name!r}: Swin needs a multiple of 32 "
                "(the window is image_size // 32, e.g. 224 -> 7, 128 -> 4)"
            )
        return {"img_size": image_size, "window_size": image_size // 32}
    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    if cfg is not None and cfg.fixed_input_size and cfg.input_size[-1] != image_size:
        return {"img_size": image_size}  # ViT-like models: resize the position embedding
    return {}


def create_model(
    name: str,
    *,
    image_size: int = 224,
    pretrained: bool = False,
    weights: str | None = None,
    num_classes: int = NUM_CLASSES,
) -> nn.Module:
    """A timm classifier with ``num_classes`` logits, random or with ImageNet weights (head replaced).

    ``weights`` (a file or an HF cache folder) is used only when ``pretrained`` is true, matching
    ``train.pretrained`` / ``train.weights``; without it the weights come from the hub.
    """
    spec = get_spec(name)
    kwargs: dict[str, Any] = {"num_classes": num_classes, **_size_kwargs(spec, image_size)}
    if not pretrained:
        if weights is not None:
            _logger.info("train.weights = %r is not used: train.pretrained is false", weights)
        return timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    if weights is not None:
        return _create_from_file(spec, resolve_weights_path(weights, spec), kwargs)
    return _create_from_hub(spec, kwargs)


def resolve_weights_path(weights: str | os.PathLike, spec: ModelSpec) -> Path:
    """The weights file named by ``train.weights``: a file, or a folder holding one (HF cache layouts too)."""
    path = Path(weights).expanduser()
    if path.is_file():
        if not path.name.endswith(WEIGHT_SUFFIXES):
            raise ValueError(
                f"train.weights = {str(weights)!r}: expected a file ending in {list(WEIGHT_SUFFIXES)}"
            )
        return path
    if path.is_dir():
        found = _weights_in_folder(path, spec)
        if found is None:
            raise ValueError(
                f"train.weights = {str(weights)!r}: no weights for {spec.timm_name!r} in this folder; looked for "
                f"{list(WEIGHT_FILE_NAMES)} in it, in snapshots/*/ and in a Hugging Face cache "
                f"(models--{_hub_id(spec).replace('/', '--')}/snapshots/...)"
            )
        return found
    raise ValueError(
        f"train.weights = {str(weights)!r} does not exist; expected a weights file {list(WEIGHT_SUFFIXES)} "
        "or a Hugging Face cache folder"
    )


def _weights_in_folder(folder: Path, spec: ModelSpec) -> Path | None:
    for fname in WEIGHT_FILE_NAMES:  # a plain folder, e.g. a downloaded hub repo
        if (folder / fname).is_file():
            return folder / fname
    hub_id = _hub_id(spec)
    for cache_dir in (folder, folder / "hub"):  # HF_HOME/hub or HF_HOME
        found = _cached_hub_file(hub_id, cache_dir) if hub_id else None
        if found is not None:
            return found
    for snapshot in sorted(folder.glob("snapshots/*"), key=lambda p: p.stat().st_mtime, reverse=True):
        for fname in WEIGHT_FILE_NAMES:  # one repo folder of the cache: models--timm--X
            if (snapshot / fname).is_file():
                return snapshot / fname
    return None


def _hub_id(spec: ModelSpec) -> str:
    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    return (cfg.hf_hub_id or "") if cfg is not None else ""


def _cached_hub_file(hub_id: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """A hub weights file already in the HF cache, found without touching the network."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = hub_id.partition("@")
    for fname in WEIGHT_FILE_NAMES:
        found = try_to_load_from_cache(repo_id, fname, cache_dir=cache_dir, revision=revision or None)
        if isinstance(found, str):
            return Path(found)
    return None


def _create_from_file(spec: ModelSpec, path: Path, kwargs: dict[str, Any]) -> nn.Module:
    """Load a local state dict through timm, which converts foreign layouts and drops the 1000-class head.

    timm loads without ``strict`` once the head is dropped, so a file for another architecture
    would load nothing silently: the tensor names are compared afterwards (none matching is an
    error, under half a warning: converted foreign layouts match partly).
    """
    _logger.info("loading %s weights from %s", spec.timm_name, path)
    model = timm.create_model(
        spec.timm_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
    )
    file_keys = _state_dict_keys(path)
    head = model.pretrained_cfg.get("classifier") or ""
    head_names = {head} if isinstance(head, str) else set(head)
    body = [k for k in model.state_dict() if k.rsplit(".", 1)[0] not in head_names]
    matched = sum(k in file_keys for k in body)
    if matched == 0:
        raise ValueError(
            f"train.weights = {str(path)!r}: none of the {len(body)} tensor names of {spec.timm_name!r} is in "
            "this file; it holds weights for another architecture"
        )
    if matched < len(body) // 2:
        _logger.warning(
            "only %d of %d tensor names of %s appear in %s: the file may be for another architecture",
            matched,
            len(body),
            spec.timm_name,
            path,
        )
    return model


def _state_dict_keys(path: Path) -> set[str]:
    """Tensor names in a weights file, read without loading the tensors where the format allows."""
    if path.name.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return set(f.keys())
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):  # timm's nesting rules
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    return {k.removeprefix("module.").removeprefix("_orig_mod.") for k in checkpoint}


def _create_from_hub(spec: ModelSpec, kwargs: dict[str, Any]) -> nn.Module:
    """Hub weights through timm: from the HF cache if there, else only if the hub answers at once."""
    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise WeightsUnavailableError(f"timm has no pretrained weights for {spec.timm_name!r}; {FIX_HINT}")
    if cfg.hf_hub_id:
        cached = _cached_hub_file(cfg.hf_hub_id)
        if cached is not None:
            return _create_from_file(spec, cached, kwargs)
    host = _hub_host(cfg.hf_hub_id, cfg.url)
    if not hub_reachable(host):
        raise WeightsUnavailableError(
            f"pretrained weights for {spec.timm_name!r} are not in the local cache and {host} cannot be "
            f"reached (offline, or HF_HUB_OFFLINE is set); {FIX_HINT}"
        )
    try:
        return timm.create_model(spec.timm_name, pretrained=True, **kwargs)
    except OSError as exc:  # hub / HTTP errors are OSError subclasses
        raise WeightsUnavailableError(
            f"downloading weights for {spec.timm_name!r} failed ({exc}); {FIX_HINT}"
        ) from exc


def _hub_host(hf_hub_id: str | None, url: str | None) -> str:
    if hf_hub_id:
        from huggingface_hub import constants

        return urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    return urlparse(url or "").hostname or ""


def hub_reachable(host: str, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """False when offline mode is set or ``host:443`` does not accept a connection within ``timeout_s``.

    With an HTTPS proxy configured the direct probe says nothing, so it is skipped (timm's own
    errors are still turned into the same message).
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    if not host:
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def get_module(model: nn.Module, dotted_path: str) -> nn.Module:
    """Submodule at ``dotted_path``; integer parts index (``-1`` = last), so paths survive depth changes."""
    module = model
    for i, part in enumerate(dotted_path.split(".")):
        try:
            if part.lstrip("-").isdigit() and hasattr(module, "__getitem__"):
                module = module[int(part)]
            else:
                module = getattr(module, part)
        except (AttributeError, IndexError, TypeError, KeyError) as exc:
            where = ".".join(dotted_path.split(".")[:i]) or "the model"
            children = [name for name, _ in module.named_children()]
            raise ValueError(
                f"module path {dotted_path!r}: {where} has no {part!r}; its children are {children}"
            ) from exc
        if not isinstance(module, nn.Module):
            raise ValueError(
                f"module path {dotted_path!r}: {part!r} is a {type(module).__name__}, not a module"
            )
    return module


def cam_target_layer(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """The layer CAMs hook for this architecture (DESIGN "CAM target layers")."""
    if not spec.cam_layer:
        raise ValueError(
            f"no CAM target layer is known for {spec.timm_name!r} (family {spec.family!r}, timm gives no "
            f"feature_info); add it to MODEL_TABLE with a cam_layer path, e.g. one of "
            f"{[n for n, _ in model.named_children()]}"
        )
    return get_module(model, spec.cam_layer)


def swin_reshape_transform(t: torch.Tensor) -> torch.Tensor:
    """N,H,W,C (timm Swin) or N,L,C tokens with square L -> N,C,H,W, as CAM code expects."""
    if t.ndim == 4:
        return t.permute(0, 3, 1, 2)
    if t.ndim == 3:
        n, length, c = t.shape
        side = int(round(length**0.5))
        if side * side != length:
            raise ValueError(
                f"swin_reshape_transform: {length} tokens is not a square grid (tensor {tuple(t.shape)}); "
                "models with a class token need their own transform"
            )
        return t.reshape(n, side, side, c).permute(0, 3, 1, 2)
    raise ValueError(
        f"swin_reshape_transform: expected a 4-d NHWC or 3-d NLC tensor, got shape {tuple(t.shape)}"
    )


def reshape_transform(spec: ModelSpec) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The transform pytorch-grad-cam needs for ``spec``'s CAM layer (None: the layer gives N,C,H,W)."""
    return swin_reshape_transform if spec.nhwc_features else None
