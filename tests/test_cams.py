"""Batched CAMs (cxr_core.explain.cams): agreement with pytorch-grad-cam, one target per image, no parameter
gradients, Swin NHWC, the random control and degenerate-map detection. CPU, random weights."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import (
    get_2d_projection,
    get_2d_projection_with_sign_correction,
)

from cxr_core.explain.cams.base_cam import normalise_maps
from cxr_core.explain.cams.batch_loop import compute_heatmaps
from cxr_core.explain.cams.eigen_cam import EigenCAM, first_principal_projection
from cxr_core.explain.cams.features import FeatureExtractor
from cxr_core.explain.cams.grad_cam import GradCAM
from cxr_core.explain.cams.random_cam import RandomCAM
from cxr_core.explain.cams.registry import CAM_METHODS, get_cam_method
from cxr_core.explain.degenerate import degeneracy_summary, degenerate_maps
from cxr_core.explain.layers import cam_layer, cam_target_layer, reshape_transform, swin_reshape_transform
from cxr_core.models.registry import create_model, get_spec

ATOL = 2e-5
GRADIENT_METHODS = ["GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM"]
CORE_METHODS = ["GradCAM", "EigenCAM", "GradCAMPlusPlus"]


def _tiny(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    model = create_model("resnet18", num_classes=14).eval()
    return model, cam_target_layer(model, get_spec("resnet18"))


@pytest.fixture(scope="module")
def tiny():
    return _tiny()


@pytest.fixture(scope="module")
def tiny_images() -> torch.Tensor:
    return torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(1))


CLASSES = [3, 11, 0]


def _pgc_maps(method: str, model, layer, images, classes, reshape=None) -> np.ndarray:
    with getattr(pgc, method)(model, [layer], reshape_transform=reshape) as cam:
        out = cam(images, [ClassifierOutputTarget(c) for c in classes])
    model.zero_grad(set_to_none=True)  # pytorch-grad-cam leaves parameter gradients behind
    return out


# ---------------------------------------------------------------------------------------- registry


def test_registry_has_the_required_methods_with_pytorch_grad_cam_names():
    for name in ["GradCAM", "EigenCAM", "GradCAMPlusPlus", "RandomCAM"]:
        assert get_cam_method(name) is CAM_METHODS[name]
        assert CAM_METHODS[name].__name__ == name
    for name in CAM_METHODS:
        if name != "RandomCAM":  # ours is a model-free control, theirs random channel weights
            assert hasattr(pgc, name)


def test_unknown_method_names_the_available_ones(tiny, tiny_images):
    with pytest.raises(ValueError, match="unknown CAM method 'GradCam'") as err:
        get_cam_method("GradCam")
    for name in CAM_METHODS:
        assert name in str(err.value)
    model, layer = tiny
    with pytest.raises(ValueError, match="available: .*GradCAMPlusPlus"):
        compute_heatmaps(model, get_spec("resnet18"), tiny_images, CLASSES, ["GradCAM", "ScoreCam"])


# ------------------------------------------------------------------------- agreement with pgc


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_gradient_methods_match_pytorch_grad_cam(tiny, tiny_images, method):
    model, layer = tiny
    ref = _pgc_maps(method, model, layer, tiny_images, CLASSES)
    with get_cam_method(method)(model, layer) as cam:
        ours = cam(tiny_images, CLASSES)
    assert ours.shape == ref.shape == (3, 96, 96)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=ATOL)


def test_eigencam_projection_matches_pytorch_grad_cam_svd(tiny, tiny_images):
    model, layer = tiny
    acts = FeatureExtractor(model, layer)(tiny_images, need_gradients=False).activations
    ref = get_2d_projection(acts.numpy())
    scale = np.abs(ref).max()
    # default: pytorch-grad-cam's own sign (LAPACK's), value for value
    np.testing.assert_allclose(first_principal_projection(acts).numpy(), ref, atol=1e-4 * scale)
    # the batched eigh route gives the same component up to its sign
    for r, o in zip(ref, first_principal_projection(acts, sign="none").numpy(), strict=True):
        assert min(np.abs(r - o).max(), np.abs(r + o).max()) < 1e-4 * scale
    # sign="peak" is pytorch-grad-cam's get_2d_projection_with_sign_correction (Seg-Eigen-CAM Eq. 13)
    peak = first_principal_projection(acts, sign="peak").numpy()
    np.testing.assert_allclose(peak, get_2d_projection_with_sign_correction(acts.numpy()), atol=1e-4 * scale)


def test_eigencam_maps_match_pytorch_grad_cam(tiny, tiny_images):
    model, layer = tiny
    ref = _pgc_maps("EigenCAM", model, layer, tiny_images, CLASSES)
    np.testing.assert_allclose(EigenCAM(model, layer)(tiny_images, CLASSES), ref, atol=ATOL)

    class SignCorrectedEigenCAM(pgc.EigenCAM):
        def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth):
            return get_2d_projection_with_sign_correction(activations)

    with SignCorrectedEigenCAM(model, [layer]) as ref_cam:
        ref_peak = ref_cam(tiny_images, None)
    np.testing.assert_allclose(EigenCAM(model, layer, sign="peak")(tiny_images, CLASSES), ref_peak, atol=ATOL)


def test_eigencam_sign_conventions_on_a_hot_and_a_cold_spot():
    gen = torch.Generator().manual_seed(0)
    hot = 1.0 + 0.05 * torch.rand(1, 32, 5, 5, generator=gen)
    cold = hot.clone()
    hot[..., 1, 3] += 2.0  # one position much more active than the rest
    cold[..., 1, 3] -= 0.9  # one position much less active
    for acts, spot_is_peak in ((hot, True), (cold, False)):
        by_activation = first_principal_projection(acts, sign="activation")[0]
        by_peak = first_principal_projection(acts, sign="peak")[0]
        # "activation": high where the features are high, the cold spot stays the minimum
        spot = by_activation.argmax() if spot_is_peak else by_activation.argmin()
        assert spot == 8
        # "peak": the isolated spot is always made the maximum, hot or cold
        assert by_peak.argmax() == 8
    with pytest.raises(ValueError, match="sign must be one of"):
        EigenCAM(torch.nn.Identity(), torch.nn.Identity(), sign="positive")


def test_eigencam_is_class_agnostic(tiny, tiny_images):
    model, layer = tiny
    a = EigenCAM(model, layer)(tiny_images, [0, 0, 0])
    b = EigenCAM(model, layer)(tiny_images, [5, 9, 13])
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------- one target per image


@pytest.mark.parametrize("method", ["GradCAM", "GradCAMPlusPlus"])
def test_each_image_is_explained_for_its_own_class(tiny, tiny_images, method):
    model, layer = tiny
    cam = get_cam_method(method)(model, layer)
    a, b = 2, 9
    both = cam(tiny_images[:2], [a, b])
    alone0 = cam(tiny_images[0:1], [a])[0]
    alone1 = cam(tiny_images[1:2], [b])[0]
    np.testing.assert_allclose(both[0], alone0, atol=1e-5)
    np.testing.assert_allclose(both[1], alone1, atol=1e-5)
    # image 1 really is explained for b, not for a (nor left blank)
    wrong = cam(tiny_images[1:2], [a])[0]
    assert np.abs(both[1] - wrong).max() > 1e-2
    assert not degenerate_maps(both).any()


def test_pytorch_grad_cam_single_target_leaves_later_images_blank(tiny, tiny_images):
    """The pitfall our API rules out: one target for a batch -> only image 0 explained."""
    model, layer = tiny
    with pgc.GradCAM(model, [layer]) as cam:
        maps = cam(tiny_images, [ClassifierOutputTarget(CLASSES[0])])
    model.zero_grad(set_to_none=True)
    assert degenerate_maps(maps).tolist() == [False, True, True]
    with pytest.raises(ValueError, match="one class index per image"):
        GradCAM(model, layer)(tiny_images, CLASSES[0])
    with pytest.raises(ValueError, match="one class index per image"):
        GradCAM(model, layer)(tiny_images, CLASSES[:2])
    with pytest.raises(ValueError, match=r"\[0, 14\)"):
        GradCAM(model, layer)(tiny_images, [0, 1, 14])


# ----------------------------------------------------------------------------- no param grads


def test_parameters_restored_and_no_grad_accumulated():
    model, layer = _tiny(seed=3)
    model.train()
    frozen = {name for name, _ in list(model.named_parameters())[:5]}
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    images = torch.randn(2, 3, 64, 64)
    for name in GRADIENT_METHODS + ["EigenCAM"]:
        get_cam_method(name)(model, layer)(images, [1, 2])
    compute_heatmaps(model, get_spec("resnet18"), images, [1, 2], list(CAM_METHODS), batch_size=1)
    assert model.training  # mode restored too
    for name, p in model.named_parameters():
        assert p.grad is None, name
        assert p.requires_grad is (name not in frozen), name
        assert torch.equal(p, before[name]), name
    assert not any(h for m in model.modules() for h in m._forward_hooks.values())


# -------------------------------------------------------------------------- compute_heatmaps


def test_compute_heatmaps_one_forward_per_batch_and_matches_single_methods(tiny, tiny_images):
    model, layer = tiny
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        maps = compute_heatmaps(model, get_spec("resnet18"), tiny_images, CLASSES, list(CAM_METHODS), 2, 7)
    finally:
        handle.remove()
    assert len(calls) == 2  # 3 images at batch size 2, every method from the same forward
    assert set(maps) == set(CAM_METHODS)
    for name, m in maps.items():
        assert m.shape == (3, 96, 96) and m.dtype == np.float32
        single = get_cam_method(name)(model, layer, seed=7)(tiny_images, CLASSES)
        np.testing.assert_allclose(m, single, atol=1e-5, err_msg=name)
    again = compute_heatmaps(model, get_spec("resnet18"), tiny_images, CLASSES, list(CAM_METHODS), 3, 7)
    for name in maps:
        np.testing.assert_allclose(maps[name], again[name], atol=1e-5, err_msg=name)


def test_compute_heatmaps_random_only_needs_no_forward(tiny, tiny_images):
    model, _ = tiny
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        maps = compute_heatmaps(model, get_spec("resnet18"), tiny_images, CLASSES, ["RandomCAM"], seed=1)
    finally:
        handle.remove()
    assert calls == [] and maps["RandomCAM"].shape == (3, 96, 96)


def test_compute_heatmaps_rejects_bad_inputs(tiny, tiny_images):
    model, _ = tiny
    spec = get_spec("resnet18")
    with pytest.raises(ValueError, match="one class index per image"):
        compute_heatmaps(model, spec, tiny_images, [1, 2], ["GradCAM"])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        compute_heatmaps(model, spec, tiny_images[0], [1], ["GradCAM"])
    with pytest.raises(ValueError, match="float"):
        compute_heatmaps(model, spec, tiny_images.to(torch.uint8), CLASSES, ["GradCAM"])
    with pytest.raises(ValueError, match="batch_size"):
        compute_heatmaps(model, spec, tiny_images, CLASSES, ["GradCAM"], batch_size=0)


# ------------------------------------------------------------------------------- random control


def test_random_cam_deterministic_smooth_and_per_image(tiny, tiny_images):
    model, layer = tiny
    a = RandomCAM(model, layer, seed=5)(tiny_images)
    b = RandomCAM(model, layer, seed=5)(tiny_images)
    c = RandomCAM(model, layer, seed=6)(tiny_images)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1
    assert a.shape == (3, 96, 96) and a.min() >= 0 and a.max() <= 1
    assert not degenerate_maps(a).any()
    assert np.abs(a[0] - a[1]).max() > 0.1 and np.abs(a[1] - a[2]).max() > 0.1
    # smooth: neighbouring pixels differ far less than the map's range
    assert np.abs(np.diff(a, axis=-1)).max() < 0.2
    # position-seeded: the same maps whatever the batching
    tail = RandomCAM(model, layer, seed=5)(tiny_images[1:], positions=torch.arange(1, 3))
    np.testing.assert_array_equal(tail, a[1:])


# ------------------------------------------------------------------------------- degeneracy


def test_nan_inputs_give_nan_maps_that_are_reported(tiny, tiny_images):
    model, _ = tiny
    images = tiny_images.clone()
    images[1] = float("nan")
    maps = compute_heatmaps(model, get_spec("resnet18"), images, CLASSES, ["GradCAM"])
    assert degenerate_maps(maps["GradCAM"]).tolist() == [False, True, False]
    assert np.isnan(maps["GradCAM"][1]).all()
    assert degeneracy_summary(maps)["GradCAM"]["nonfinite"] == 1


def test_normalise_maps_is_pytorch_grad_cams_scaling():
    from pytorch_grad_cam.utils.image import scale_cam_image

    raw = torch.randn(4, 7, 7)
    ours = normalise_maps(raw, (224, 224)).numpy()
    ref = scale_cam_image(scale_cam_image(np.maximum(raw.numpy(), 0), (224, 224)))
    np.testing.assert_allclose(ours, ref, atol=ATOL)


# ----------------------------------------------------------------------- real architectures

REAL = [
    "densenet121",
    "efficientnet_b0",
    "swin_small",
    pytest.param("densenet169", marks=pytest.mark.slow),
    pytest.param("efficientnet_b1", marks=pytest.mark.slow),
    pytest.param("swin_base", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name", REAL)
def test_real_architectures_at_224(name):
    torch.manual_seed(0)
    spec = get_spec(name)
    model = create_model(name, image_size=224).eval()
    # A random head can make a Grad-CAM map negative everywhere (DenseNet: the gradient at norm5 is
    # W[c] / 49 at every position), which is correctly all-zero after the ReLU and reported as
    # degenerate; a non-negative head keeps the random-weight maps informative.
    with torch.no_grad():
        model.get_classifier().weight.abs_()
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    classes = [4, 10]
    maps = compute_heatmaps(model, spec, images, classes, CORE_METHODS + ["RandomCAM"], batch_size=2)
    for method, m in maps.items():
        assert m.shape == (2, 224, 224), method
        assert np.isfinite(m).all() and m.min() >= 0 and m.max() <= 1, method
        assert not degenerate_maps(m).any(), method
        assert (m.std(axis=(1, 2)) > 0.01).all(), method  # not flat
    summary = degeneracy_summary(maps, model=name)
    assert all(row["degenerate_fraction"] == 0.0 for row in summary.values())
    # image 1 explained for its own class: batched equals alone
    layer = cam_target_layer(model, spec)
    reshape = reshape_transform(spec)
    alone = GradCAM(model, layer, reshape)(images[1:], classes[1:])
    np.testing.assert_allclose(maps["GradCAM"][1], alone[0], atol=1e-4)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_swin_features_are_nchw_7x7_and_match_pytorch_grad_cam():
    torch.manual_seed(0)
    assert cam_layer(get_spec("swin_small")).nhwc and cam_layer(get_spec("swin_base")).nhwc
    spec = get_spec("swin_tiny_patch4_window7_224")  # same layout as the table's Swins, cheaper
    assert cam_layer(spec).nhwc and cam_layer(spec).path == cam_layer(get_spec("swin_small")).path
    model = create_model(spec.name, image_size=224).eval()
    layer = cam_target_layer(model, spec)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    raw = []
    handle = layer.register_forward_hook(lambda m, i, o: raw.append(o))
    feats = FeatureExtractor(model, layer, swin_reshape_transform)(images, [1, 2])
    handle.remove()
    assert raw[0].shape == (2, 7, 7, 768)  # timm gives NHWC here
    assert feats.activations.shape == feats.gradients.shape == (2, 768, 7, 7)
    assert swin_reshape_transform(raw[0]).shape == (2, 768, 7, 7)
    ours = GradCAM(model, layer, swin_reshape_transform)(images, [1, 2])
    ref = _pgc_maps("GradCAM", model, layer, images, [1, 2], swin_reshape_transform)
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    # without the transform the (h, C) plane would be taken for (h, w): we refuse, pgc does not
    with pytest.raises(ValueError, match="channels-last"):
        GradCAM(model, layer)(images, [1, 2])
    with pgc.GradCAM(model, [layer]) as cam:
        wrong = cam(images, [ClassifierOutputTarget(1), ClassifierOutputTarget(2)])
    model.zero_grad(set_to_none=True)
    assert wrong.shape == (2, 224, 224) and not degenerate_maps(wrong).any()  # silently wrong


def test_hirescam_is_gradcam_on_a_densenet_norm5_layer():
    """norm5 -> global average pool -> linear: the gradient is the same at every position, so the
    element-wise product (HiResCAM) and the mean-gradient weights (Grad-CAM) give one map (CAM)."""
    torch.manual_seed(0)
    model = create_model("densenet121", num_classes=14).eval()
    spec = get_spec("densenet121")
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    maps = compute_heatmaps(model, spec, images, [2, 5], ["GradCAM", "HiResCAM", "GradCAMPlusPlus"])
    np.testing.assert_allclose(maps["HiResCAM"], maps["GradCAM"], atol=1e-5)
    assert np.abs(maps["GradCAMPlusPlus"] - maps["GradCAM"]).max() > 1e-2
