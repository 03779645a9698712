"""The model table, any timm name, weights from files / cache / hub, and each family's CAM layer."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from cxr_core.explain.layers import (
    cam_layer,
    cam_target_layer,
    get_module,
    reshape_transform,
    swin_reshape_transform,
)
from cxr_core.models import registry as models
from cxr_core.models.registry import (
    FAMILY_DEFAULTS,
    MODEL_TABLE,
    WeightsUnavailableError,
    create_model,
    get_spec,
)
from cxr_core.params import MODEL_FAMILIES, load_params
from cxr_core.train.config import TrainConfig

TINY = "test_efficientnet"  # timm's tiny test model (an EfficientNet, family "other" by name)


def test_table_is_the_papers_six_models() -> None:
    assert {k: v.timm_name for k, v in MODEL_TABLE.items()} == {
        "densenet121": "densenet121.tv_in1k",
        "densenet169": "densenet169.tv_in1k",
        "efficientnet_b0": "efficientnet_b0.ra_in1k",
        "efficientnet_b1": "efficientnet_b1.ft_in1k",
        "swin_small": "swin_small_patch4_window7_224.ms_in1k",
        "swin_base": "swin_base_patch4_window7_224.ms_in1k",
    }
    assert cam_layer(MODEL_TABLE["densenet121"]).path == "features.-1"
    assert cam_layer(MODEL_TABLE["efficientnet_b1"]).path == "conv_head"
    swin = MODEL_TABLE["swin_base"]
    assert (swin.family, cam_layer(swin).path, swin.channels_last, cam_layer(swin).nhwc) == (
        "swin",
        "layers.-1.blocks.-1.norm1",
        False,
        True,
    )
    assert all(
        spec.channels_last and not cam_layer(spec).nhwc
        for spec in MODEL_TABLE.values()
        if spec.family != "swin"
    )
    assert (
        MODEL_TABLE["densenet121"].display_name == "DenseNet-121"
        and get_spec("resnet18").display_name == "resnet18"
    )
    assert all(timm.is_model(spec.timm_name) for spec in MODEL_TABLE.values())


@pytest.mark.parametrize(
    ("name", "family", "layer"),
    [
        ("test_efficientnet", "other", "blocks.4"),  # families go by prefix: timm's test model is "other"
        ("tf_efficientnet_b0", "efficientnet", "conv_head"),
        ("densenet201", "densenet", "features.-1"),
        ("swin_tiny_patch4_window7_224", "swin", "layers.-1.blocks.-1.norm1"),
        ("resnet18", "other", "layer4"),  # best guess: last feature_info module
        ("resnet18.a1_in1k", "other", "layer4"),
    ],
)
def test_any_timm_name_gets_a_family_spec(name: str, family: str, layer: str) -> None:
    spec = get_spec(name)
    assert (spec.name, spec.timm_name, spec.family, cam_layer(spec).path) == (name, name, family, layer)
    assert spec.channels_last == FAMILY_DEFAULTS[family].channels_last


def test_unknown_name_names_the_value_and_the_way_out() -> None:
    with pytest.raises(ValueError) as info:
        get_spec("densenet12")
    message = str(info.value)
    assert "'densenet12'" in message
    assert all(name in message for name in MODEL_TABLE)
    assert "timm.list_models" in message
    assert "densenet121" in message.split("Did you mean")[1]


@pytest.mark.parametrize("name", ["resnet18", TINY])
def test_other_timm_models_are_created_with_14_logits_and_a_cam_layer(name: str) -> None:
    spec = get_spec(name)
    model = create_model(name, image_size=64).eval()
    seen: dict[str, torch.Tensor] = {}
    cam_target_layer(model, spec).register_forward_hook(lambda m, i, o: seen.update(out=o))
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 14)
    assert seen["out"].ndim == 4 and seen["out"].shape[-1] == 2  # stride 32: a 2 x 2 map at 64 px


def test_swin_needs_a_multiple_of_32() -> None:
    with pytest.raises(ValueError, match=r"image_size = 100 .*multiple of 32"):
        create_model("swin_small", image_size=100)


def test_get_module_follows_names_and_negative_indices() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Tanh()))
    assert get_module(model, "-1.-1") is model[1][1]
    assert get_module(model, "0") is model[0]
    with pytest.raises(ValueError, match=r"'1.nope'.*children are \['0', '1'\]"):
        get_module(model, "1.nope")


def test_cam_target_layer_without_a_path_is_a_clear_error() -> None:
    spec = models.ModelSpec("x", "not_a_timm_model", "other", "x", True)
    with pytest.raises(ValueError, match="no CAM target layer is known"):
        cam_target_layer(torch.nn.Sequential(torch.nn.ReLU()), spec)


def test_swin_reshape_transform() -> None:
    nhwc = torch.arange(2 * 3 * 3 * 5.0).view(2, 3, 3, 5)
    assert torch.equal(swin_reshape_transform(nhwc), nhwc.permute(0, 3, 1, 2))
    assert torch.equal(swin_reshape_transform(nhwc.reshape(2, 9, 5)), nhwc.permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="not a square grid"):
        swin_reshape_transform(torch.zeros(2, 10, 5))
    assert reshape_transform(MODEL_TABLE["swin_small"]) is swin_reshape_transform
    assert reshape_transform(MODEL_TABLE["densenet121"]) is None


# --- weights -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imagenet_state() -> dict[str, torch.Tensor]:
    """A random 'ImageNet' checkpoint: the tiny model with its 1000-class head."""
    torch.manual_seed(0)
    state = timm.create_model(TINY, num_classes=1000).state_dict()
    return {k: v.contiguous() for k, v in state.items()}


def _assert_backbone_from(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    head = model.pretrained_cfg["classifier"]
    assert loaded[f"{head}.weight"].shape[0] == 14 and state[f"{head}.weight"].shape[0] == 1000
    body = [k for k in state if not k.startswith(f"{head}.")]
    assert body and all(torch.equal(loaded[k], state[k]) for k in body)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_loads_backbone_and_replaces_head(tmp_path, imagenet_state, suffix: str) -> None:
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(imagenet_state, str(path))
    else:
        torch.save(imagenet_state, path)
    model = create_model(TINY, pretrained=True, weights=str(path))
    _assert_backbone_from(model, imagenet_state)


def test_weights_from_an_hf_cache_folder(tmp_path, imagenet_state) -> None:
    hub_id = timm.models.get_pretrained_cfg(TINY).hf_hub_id
    repo = tmp_path / "hub" / f"models--{hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    save_file(imagenet_state, str(repo / "snapshots" / "abc123" / "model.safetensors"))
    for folder in (tmp_path, tmp_path / "hub", repo):  # HF_HOME, HF_HOME/hub, one repo folder
        _assert_backbone_from(create_model(TINY, pretrained=True, weights=str(folder)), imagenet_state)


def test_bad_weights_paths_name_the_value(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"train.weights = '.*missing.pth' does not exist"):
        create_model(TINY, pretrained=True, weights=str(tmp_path / "missing.pth"))
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ValueError, match=r"expected a file ending in"):
        create_model(TINY, pretrained=True, weights=str(tmp_path / "w.txt"))
    with pytest.raises(ValueError, match=r"no weights for"):
        create_model(TINY, pretrained=True, weights=str(tmp_path))


def test_weights_for_another_architecture_are_refused(tmp_path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"not.a.key": torch.zeros(3)}, str(path))
    with pytest.raises(ValueError, match="another architecture"):
        create_model(TINY, pretrained=True, weights=str(path))


def test_hub_weights_come_from_the_cache_without_network(monkeypatch, tmp_path, imagenet_state) -> None:
    path = tmp_path / "model.safetensors"
    save_file(imagenet_state, str(path))
    monkeypatch.setattr(models, "_cached_hub_file", lambda hub_id, cache_dir=None: path)
    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: pytest.fail("network probed"))
    _assert_backbone_from(create_model(TINY, pretrained=True), imagenet_state)


@pytest.mark.parametrize("how", ["env", "unreachable"])
def test_offline_hub_fails_at_once_naming_both_fixes(monkeypatch, how: str) -> None:
    monkeypatch.setattr(models, "_cached_hub_file", lambda hub_id, cache_dir=None: None)
    if how == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.setattr(models.socket, "create_connection", _refuse)
        for key in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(key, raising=False)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        create_model("densenet121", pretrained=True)
    assert time.perf_counter() - start < 10  # timm's own retries take ~50 s
    message = str(info.value)
    assert "densenet121.tv_in1k" in message
    assert "train.pretrained: false" in message and "train.weights" in message and ".safetensors" in message


def _refuse(*args, **kwargs):
    raise OSError("network is unreachable (test)")


# --- the six real architectures ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODEL_TABLE))
def test_paper_models_train_and_expose_a_spatial_cam_layer(name: str) -> None:
    torch.manual_seed(0)
    spec = get_spec(name)
    model = create_model(name, image_size=224)
    seen: dict[str, torch.Tensor] = {}
    cam_target_layer(model, spec).register_forward_hook(lambda m, i, o: seen.update(out=o.detach()))
    logits = model(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 14)
    logits.float().sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    transform = reshape_transform(spec)
    features = transform(seen["out"]) if transform is not None else seen["out"]
    assert features.ndim == 4 and features.shape[0] == 2 and features.shape[-2:] == (7, 7)


@pytest.mark.slow
def test_swin_at_128_px_uses_window_4() -> None:
    spec = get_spec("swin_small")
    model = create_model("swin_small", image_size=128).eval()
    seen: dict[str, torch.Tensor] = {}
    cam_target_layer(model, spec).register_forward_hook(lambda m, i, o: seen.update(out=o))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 128, 128)).shape == (2, 14)
    assert swin_reshape_transform(seen["out"]).shape[-2:] == (4, 4)
    assert model.layers[0].blocks[0].window_size == (4, 4)


@pytest.mark.parametrize(
    ("name", "device", "mode", "expected"),
    [
        ("densenet121", "cpu", "auto", True),  # measured x1.5-1.7 on the CPU
        ("swin_small", "cpu", "auto", True),  # x2.2-2.3
        ("efficientnet_b0", "cpu", "auto", False),  # slower in bf16 on the CPU
        ("resnet18", "cpu", "auto", False),  # unmeasured family: float32
        ("efficientnet_b0", "cpu", "bf16", True),
        ("densenet121", "cpu", "none", False),
        ("efficientnet_b0", "cuda", "auto", True),
        ("densenet121", "cuda", "none", False),
    ],
)
def test_amp_policy_per_family_and_device(name: str, device: str, mode: str, expected: bool) -> None:
    import torch

    from cxr_core.runtime import resolve_amp

    assert resolve_amp(mode, torch.device(device), models.get_spec(name)) is expected


def test_params_know_every_model_family() -> None:
    """``train.lr_scale`` has one key per family (params.py keeps its own copy of the names)."""
    assert tuple(FAMILY_DEFAULTS) == MODEL_FAMILIES


def test_lr_scale_sets_each_family_its_own_rate() -> None:
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    params["train"]["lr_scale"].update(swin=0.4, efficientnet=2.0)
    rate = {
        m: TrainConfig.from_params(params, m, 128, 0).lr
        for m in ("densenet121", "efficientnet_b1", "swin_base")
    }
    assert rate == pytest.approx(
        {"densenet121": params["lr"], "efficientnet_b1": 2 * params["lr"], "swin_base": 0.4 * params["lr"]}
    )
