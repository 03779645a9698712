"""The model table (paper names -> timm), model creation and weights.

The six architectures of the paper are rows of :data:`MODEL_TABLE`; any other timm model name works
too, with its settings taken from :data:`FAMILY_DEFAULTS` by timm-name prefix. What training and
inference need to know about an architecture (its family, display name, whether ``channels_last``
pays off) lives in one :class:`ModelSpec`, so no stage grows an ``if "swin" in name`` branch; where
a CAM hooks each family is ``cxr_core.explain.layers`` (a CAM change must not retrain).

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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from cxr_core.errors import CxrError
from cxr_core.labels import NUM_CLASSES

if TYPE_CHECKING:  # timm and torch are imported where a model is built: the stages that only read
    from torch import nn  # the table (report, adjudicated) start about 2 s sooner without them

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


class ModelError(CxrError, ValueError):
    """An unknown model name, an image size it cannot take, or a weights file that does not fit."""


class WeightsUnavailableError(CxrError, RuntimeError):
    """Pretrained weights were asked for but cannot be fetched or found."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything the pipeline needs to know about one architecture."""

    name: str  # params name, e.g. "densenet121"
    timm_name: str  # e.g. "densenet121.tv_in1k"
    family: str  # "densenet" | "efficientnet" | "swin" | "other"
    display_name: str  # how tables and figures name it (the paper's names for its six)
    channels_last: bool  # channels_last memory format helps (CNNs) or not (Swin)
    cpu_bf16: bool = False  # bf16 autocast pays on the CPU (``train.amp: auto``)


@dataclass(frozen=True)
class FamilyDefaults:
    """Per-family settings, used for every timm name of that family (measured: benchmarks/models.py)."""

    channels_last: bool  # CNNs x1.2-1.3 on CPU, Swin ~x1.0
    cpu_bf16: bool  # CPU training with bf16 autocast: DenseNets x1.5-1.7, Swins x2.2-2.3, EfficientNets x0.8


FAMILY_DEFAULTS: dict[str, FamilyDefaults] = {
    "densenet": FamilyDefaults(channels_last=True, cpu_bf16=True),
    "efficientnet": FamilyDefaults(channels_last=True, cpu_bf16=False),
    "swin": FamilyDefaults(channels_last=False, cpu_bf16=True),
    "other": FamilyDefaults(channels_last=True, cpu_bf16=False),  # unmeasured: float32 is the safe default
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

#: params name -> (timm name with the ImageNet-1k tag used, the paper's display name).
_PAPER_MODELS: dict[str, tuple[str, str]] = {
    "densenet121": ("densenet121.tv_in1k", "DenseNet-121"),
    "densenet169": ("densenet169.tv_in1k", "DenseNet-169"),
    "efficientnet_b0": ("efficientnet_b0.ra_in1k", "ENet-b0"),
    "efficientnet_b1": ("efficientnet_b1.ft_in1k", "ENet-b1"),
    "swin_small": ("swin_small_patch4_window7_224.ms_in1k", "Swin-Small"),
    "swin_base": ("swin_base_patch4_window7_224.ms_in1k", "Swin-Base"),
}


def family_of(timm_name: str) -> str:
    """Family of a timm model name, by prefix (see :data:`FAMILY_PREFIXES`)."""
    for prefix, family in FAMILY_PREFIXES:
        if timm_name.startswith(prefix):
            return family
    return "other"


def _spec_from_family(name: str, timm_name: str, display_name: str | None = None) -> ModelSpec:
    family = family_of(timm_name)
    defaults = FAMILY_DEFAULTS[family]
    return ModelSpec(name, timm_name, family, display_name or name, defaults.channels_last, defaults.cpu_bf16)


#: The paper's six models (``models`` in params.yaml) -> timm names with the ImageNet-1k tags used.
MODEL_TABLE: dict[str, ModelSpec] = {
    name: _spec_from_family(name, timm_name, shown) for name, (timm_name, shown) in _PAPER_MODELS.items()
}


@functools.lru_cache(maxsize=64)
def get_spec(name: str) -> ModelSpec:
    """Spec of a table name or of any timm model name; unknown names fail before any work starts."""
    if name in MODEL_TABLE:
        return MODEL_TABLE[name]
    import timm

    if not isinstance(name, str) or not name or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), [*MODEL_TABLE, *timm.list_models()], n=5, cutoff=0.6)
        hint = f" Did you mean {list(dict.fromkeys(close))}?" if close else ""
        raise ModelError(
            f"unknown model {name!r}: expected one of the table names {list(MODEL_TABLE)} or a timm "
            f"model name (find them with `python -c \"import timm; print(timm.list_models('*densenet*'))\"`)."
            f"{hint}"
        )
    return _spec_from_family(name, name)


def _size_kwargs(spec: ModelSpec, image_size: int) -> dict[str, Any]:
    """timm kwargs that make the model accept ``image_size`` inputs."""
    import timm

    if spec.family == "swin":
        if image_size % 32:
            raise ModelError(
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
    import timm

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
            raise ModelError(
                f"train.weights = {str(weights)!r}: expected a file ending in {list(WEIGHT_SUFFIXES)}"
            )
        return path
    if path.is_dir():
        found = _weights_in_folder(path, spec)
        if found is None:
            raise ModelError(
                f"train.weights = {str(weights)!r}: no weights for {spec.timm_name!r} in this folder; looked for "
                f"{list(WEIGHT_FILE_NAMES)} in it, in snapshots/*/ and in a Hugging Face cache "
                f"(models--{_hub_id(spec).replace('/', '--')}/snapshots/...)"
            )
        return found
    raise ModelError(
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
    import timm

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
    import timm

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
        raise ModelError(
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
    import torch

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
    import timm

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
