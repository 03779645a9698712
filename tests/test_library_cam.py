"""pytorch-grad-cam methods by name (cxr_core.explain.cams.library_cam): agreement with the native CAMs, one target
per image, the raw maps, names and refusals, model state. CPU, resnet18 / a 64 px Swin, random weights."""

from __future__ import annotations

import gc
import subprocess
import sys

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
from pytorch_grad_cam.base_cam import BaseCAM as LibraryBaseCAM

from cxr_core.explain.cams.batch_loop import compute_cams
from cxr_core.explain.cams.features import FeatureExtractor
from cxr_core.explain.cams.library_cam import (
    CLASS_AGNOSTIC,
    LIBRARY_PREFIX,
    NCHW_ONLY,
    UNSUPPORTED,
    LibraryCAM,
    library_method_names,
    resolve_library_method,
)
from cxr_core.explain.cams.registry import get_cam_method
from cxr_core.explain.cams.settings import CamSettings
from cxr_core.explain.degenerate import degenerate_maps
from cxr_core.explain.layers import cam_target_layer, swin_reshape_transform
from cxr_core.models.registry import create_model, get_spec
from cxr_core.runtime import Runtime

ATOL = 2e-5
SHARED = ["GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM", "EigenCAM"]
CLASSES = [3, 11, 0]


def _tiny(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    model = create_model("resnet18", num_classes=14).eval()
    return model, cam_target_layer(model, get_spec("resnet18"))


@pytest.fixture(scope="module")
def tiny():
    return _tiny()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------ names


def test_supported_names_are_the_library_cams_that_fit_the_interface(tiny):
    names = library_method_names()
    assert names == sorted(names)
    assert set(SHARED) | {"ScoreCAM", "AblationCAM", "EigenGradCAM", "KPCA_CAM", "RandomCAM"} <= set(names)
    assert not set(names) & set(UNSUPPORTED)
    for name in UNSUPPORTED:
        assert hasattr(pgc, name), name  # every reason is about a real export
    assert not issubclass(pgc.DeepFeatureFactorization, LibraryBaseCAM)
    model, layer = tiny
    for name in names:
        cls = getattr(pgc, name)
        assert issubclass(cls, LibraryBaseCAM), name
        with cls(model, [layer], reshape_transform=None) as cam:  # constructs with the adapter's arguments
            adapter = LibraryCAM(name, model, layer)
            assert adapter.runs_backward is bool(cam.uses_gradients), name
            # the batch loop's shared forward gives it nothing: the library runs its own
            assert not adapter.uses_activations and not adapter.uses_gradients
        assert adapter.name == LIBRARY_PREFIX + name and adapter.library_name == name
        assert adapter.class_agnostic is (name in CLASS_AGNOSTIC)
    assert {"EigenCAM", "KPCA_CAM", "RandomCAM"} <= CLASS_AGNOSTIC


def test_resolve_prefixed_and_bare_names():
    assert resolve_library_method("pgc:GradCAM") == "GradCAM"
    assert resolve_library_method("pgc:ScoreCAM") == "ScoreCAM"
    assert resolve_library_method("ScoreCAM") == "ScoreCAM"  # bare supported library class
    assert resolve_library_method("GradCam") is None  # bare: only a candidate
    assert resolve_library_method("FullGrad") is None
    with pytest.raises(
        ValueError, match=r"unknown pytorch-grad-cam method 'pgc:GradCam'.*'pgc:GradCAM'"
    ) as err:
        resolve_library_method("pgc:GradCam")
    for name in library_method_names():
        assert LIBRARY_PREFIX + name in str(err.value)
    with pytest.raises(ValueError, match="unknown pytorch-grad-cam method 'pgc:'"):
        resolve_library_method("pgc:")


@pytest.mark.parametrize("name", ["FullGrad", "DeepFeatureFactorization", "SESS"])
def test_unsupported_names_say_why(tiny, name):
    with pytest.raises(ValueError, match=f"'pgc:{name}' is not supported: ") as err:
        resolve_library_method(f"pgc:{name}")
    assert UNSUPPORTED[name] in str(err.value) and "available: pgc:" in str(err.value)
    with pytest.raises(ValueError, match="is not supported"):
        LibraryCAM(name, *tiny)  # a bare name given to the adapter is a library name


def test_without_the_library_the_error_names_the_pip_package(monkeypatch, tiny):
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # import now fails
    with pytest.raises(ValueError, match="pip install grad-cam"):
        library_method_names()
    with pytest.raises(ValueError, match="grad-cam"):
        LibraryCAM("pgc:GradCAM", *tiny)
    assert resolve_library_method("GradCAM") is None


def test_importing_the_module_does_not_import_the_library():
    code = (
        "import sys, cxr_core.explain.cams.library_cam as lib; "
        "assert 'pytorch_grad_cam' not in sys.modules, 'imported'; print(lib.LIBRARY_PREFIX)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "pgc:"


# ------------------------------------------------------------------ agreement with native


@pytest.mark.parametrize("method", SHARED)
def test_maps_and_raw_maps_match_the_native_methods(tiny, images, method):
    model, layer = tiny
    maps, raw = LibraryCAM(f"pgc:{method}", model, layer)(images, CLASSES)
    native = get_cam_method(method)(model, layer)
    assert maps.shape == (3, 96, 96) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, native(images, CLASSES), atol=ATOL)
    features = FeatureExtractor(model, layer)(images, CLASSES)
    native_raw = native.cam(features).clamp_min(0).numpy()
    assert raw.shape == native_raw.shape == (3, 3, 3) and raw.dtype == np.float32
    assert raw.min() >= 0
    scale = np.abs(native_raw).max(axis=(1, 2), keepdims=True)
    assert (scale > 0).all()
    np.testing.assert_allclose(raw / scale, native_raw / scale, atol=1e-4)


# --------------------------------------------------------------------- one target per image


@pytest.mark.parametrize("method", ["GradCAM", "LayerCAM"])
def test_each_image_is_explained_for_its_own_class(tiny, images, method):
    model, layer = tiny
    cam = LibraryCAM(f"pgc:{method}", model, layer)
    both, raw = cam(images, CLASSES)
    for b, c in enumerate(CLASSES):
        alone, alone_raw = cam(images[b : b + 1], [c])
        np.testing.assert_allclose(both[b], alone[0], atol=1e-5)
        np.testing.assert_allclose(raw[b], alone_raw[0], rtol=1e-4, atol=1e-7)
    assert not degenerate_maps(both).any()
    # each image really is explained for its class: another class gives another map
    for b, c in enumerate(CLASSES):
        other, _ = cam(images[b : b + 1], [(c + 5) % 14])
        assert np.abs(both[b] - other[0]).max() > 1e-2


def test_class_indices_are_checked_before_the_library_runs(tiny, images):
    model, layer = tiny
    cam = LibraryCAM("pgc:GradCAM", model, layer)
    with pytest.raises(ValueError, match="one class index per image"):
        cam(images, 3)  # one target would explain only the first image
    with pytest.raises(ValueError, match="one class index per image: got 2 for 3"):
        cam(images, CLASSES[:2])
    with pytest.raises(ValueError, match="integers"):
        cam(images, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=">= 0"):
        cam(images, [1, -1, 2])
    # out of range: a clear error, not an IndexError swallowed by the library's with block
    with pytest.raises(ValueError, match=r"\[0, 14\) \(the model has 14 outputs\)"):
        cam(images, [0, 1, 14])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        cam(images[0], [1])
    assert all(p.grad is None for p in model.parameters())


# -------------------------------------------------------------------------- model state


def test_model_state_restored_and_no_grad_left():
    model, layer = _tiny(seed=3)
    model.train()
    frozen = {name for name, _ in list(model.named_parameters())[:5]}
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    kept = model.get_classifier().bias
    kept.grad = torch.full_like(kept, 7.0)  # the caller's own gradient survives
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    images = torch.randn(2, 3, 64, 64)
    for name in ["GradCAM", "GradCAMPlusPlus", "EigenCAM", "RandomCAM", "ShapleyCAM", "EigenGradCAM"]:
        LibraryCAM(f"pgc:{name}", model, layer)(images, [1, 2])
    LibraryCAM("pgc:AblationCAM", model, model.layer1)(images, [1, 2])
    assert model.training
    for name, p in model.named_parameters():
        if p is kept:
            assert torch.equal(p.grad, torch.full_like(kept, 7.0))
        else:
            assert p.grad is None, name
        assert p.requires_grad is (name not in frozen), name
        assert torch.equal(p, before[name]), name
    assert model.layer1 is not None and type(model.layer1).__name__ == "Sequential"  # ablation layer put back
    assert not any(h for m in model.modules() for h in m._forward_hooks.values())


def test_library_objects_are_freed_without_the_cyclic_gc(tiny, images):
    """Each call's library object (its outputs and retained autograd graph) goes with the call."""
    model, layer = tiny
    cam = LibraryCAM("pgc:GradCAM", model, layer)
    gc.collect()
    gc.disable()
    try:
        cam(images, CLASSES)
        alive = [o for o in gc.get_objects() if issubclass(type(o), LibraryBaseCAM)]
    finally:
        gc.enable()
    assert alive == []


def test_random_cam_is_deterministic_given_the_seed_and_leaves_numpy_alone(tiny, images):
    model, layer = tiny
    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)
    a, _ = LibraryCAM("pgc:RandomCAM", model, layer, seed=5)(images, CLASSES)
    assert np.random.random() == expected_next  # the caller's RNG stream is untouched
    b, _ = LibraryCAM("pgc:RandomCAM", model, layer, seed=5)(images, CLASSES)
    c, _ = LibraryCAM("pgc:RandomCAM", model, layer, seed=6)(images, CLASSES)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1


# ------------------------------------------------------------------------- library-only methods


def test_score_cam_on_a_batch(tiny):
    model, _ = tiny
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    # layer1 (64 channels): 64 masked forwards per image instead of layer4's 512
    maps, raw = LibraryCAM("pgc:ScoreCAM", model, model.layer1, batch_size=32)(x, [2, 9])
    assert maps.shape == (2, 64, 64) and raw.shape == (2, 16, 16)
    assert maps.dtype == raw.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert not degenerate_maps(maps).any()


def test_eigen_grad_cam_and_ablation_cam_on_a_batch(tiny, images):
    model, layer = tiny
    for cam in (LibraryCAM("pgc:EigenGradCAM", model, layer), LibraryCAM("AblationCAM", model, model.layer1)):
        maps, raw = cam(images, CLASSES)
        assert maps.shape == (3, 96, 96) and raw.shape[0] == 3 and raw.min() >= 0, cam
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1, cam
    assert raw.shape == (3, 24, 24)  # layer1 of a 96 px image
    assert model.layer1 is not None and not isinstance(model.layer1, pgc.AblationLayer)


# ---------------------------------------------------------------------------- Swin (NHWC)


def test_swin_reshape_transform_is_passed_through():
    torch.manual_seed(0)
    spec = get_spec("swin_tiny_patch4_window7_224")
    model = create_model(spec.name, image_size=64).eval()  # window 2, a 2 x 2 map at the CAM layer
    layer = cam_target_layer(model, spec)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    maps, raw = LibraryCAM("pgc:GradCAM", model, layer, swin_reshape_transform)(x, [1, 2])
    native = get_cam_method("GradCAM")(model, layer, swin_reshape_transform)
    np.testing.assert_allclose(maps, native(x, [1, 2]), atol=1e-4)
    assert raw.shape == (2, 2, 2)
    with pytest.raises(ValueError, match="channels-last"):
        LibraryCAM("pgc:GradCAM", model, layer)(x, [1, 2])
    for name in NCHW_ONLY:
        with pytest.raises(ValueError, match=f"{name} does not work with a reshape transform"):
            LibraryCAM(f"pgc:{name}", model, layer, swin_reshape_transform)
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------- the pipeline's entry point


def test_pipeline_runs_library_methods_by_name_beside_native_ones(tiny, images):
    model, _ = tiny
    spec = get_spec("resnet18")
    settings = CamSettings(("GradCAM", "pgc:GradCAM", "EigenGradCAM"), 2, 0, "pytorch-grad-cam", 32)
    out = compute_cams(model, spec, images, CLASSES, settings, Runtime.cpu())
    assert list(out) == ["GradCAM", "pgc:GradCAM", "EigenGradCAM"]
    np.testing.assert_allclose(out["pgc:GradCAM"].maps, out["GradCAM"].maps, atol=2e-5)
    scale = out["GradCAM"].raw.max()
    np.testing.assert_allclose(out["pgc:GradCAM"].raw, out["GradCAM"].raw, atol=1e-4 * scale)
    for name, cam in out.items():
        assert cam.maps.shape == (3, 96, 96) and cam.raw.shape == (3, 3, 3), name
        assert (cam.raw >= 0).all() and np.isfinite(cam.maps).all()


def test_unknown_method_lists_native_and_library_ones():
    with pytest.raises(ValueError, match="unknown CAM method 'ScoreCam'") as err:
        get_cam_method("ScoreCam")
    text = str(err.value)
    assert "GradCAM" in text and "ScoreCAM" in text and "pgc:<Name>" in text
