"""Saliency sanity checks (cxr_core.explain.sanity): cascade steps per family, randomised copies,
Spearman against scipy, the verdict rules and the known answers of the randomisation test on a tiny
resnet18 (random control fails, Grad-CAM passes, EigenCAM blind to the head). CPU, random weights,
one thread."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from cxr_core.explain.cams.batch_loop import compute_heatmaps
from cxr_core.explain.layers import cam_target_layer, get_module
from cxr_core.explain.sanity import (
    cascade_steps,
    randomisation_check,
    randomised_copy,
    sanity_verdict,
    spearman_maps,
)
from cxr_core.models.registry import create_model, get_spec

pytestmark = pytest.mark.usefixtures("single_thread")

CLASSES = [3, 11, 0, 5]
METHODS = ["GradCAM", "EigenCAM", "RandomCAM"]


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet18", num_classes=14).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(len(CLASSES), 3, 96, 96, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def check(tiny, images) -> dict:
    return randomisation_check(tiny, get_spec("resnet18"), images, CLASSES, METHODS, seed=0)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -------------------------------------------------------------------------------------- cascade steps


def test_cascade_steps_of_resnet18_are_cumulative_from_the_top(tiny):
    assert cascade_steps(tiny) == [
        ("head", ["fc"]),
        ("head+layer4", ["fc", "layer4"]),
        ("head+layer4+layer3", ["fc", "layer4", "layer3"]),
    ]
    assert cascade_steps(tiny, stages=0) == [("head", ["fc"])]
    full = cascade_steps(tiny, stages=5)  # feature_info: act1, layer1..layer4: the whole network
    assert full[-1] == (
        "head+layer4+layer3+layer2+layer1+act1",
        ["fc", "layer4", "layer3", "layer2", "layer1", "conv1", "bn1"],
    )
    with pytest.raises(ValueError, match=r"stages must lie in \[0, 5\]"):
        cascade_steps(tiny, stages=6)
    with pytest.raises(ValueError, match="get_classifier"):
        cascade_steps(nn.Sequential(nn.Linear(2, 2)))


# Measured on timm 1.0: the stage ending at feature_info[i] starts after feature_info[i - 1]; the
# last stage takes every later module except the classifier.
FAMILY_STEPS = {
    "densenet121": [
        ("head", ["classifier"]),
        ("head+features.norm5", ["features.transition3", "features.denseblock4", "features.norm5"]),
        ("head+features.norm5+features.denseblock3", ["features.transition2", "features.denseblock3"]),
    ],
    "efficientnet_b0": [
        ("head", ["classifier"]),
        ("head+blocks.6", ["blocks.5", "blocks.6", "conv_head", "bn2"]),
        ("head+blocks.6+blocks.4", ["blocks.3", "blocks.4"]),
    ],
    "swin_small": [
        ("head", ["head.fc"]),
        ("head+layers.3", ["layers.3", "norm"]),
        ("head+layers.3+layers.2", ["layers.2"]),
    ],
}


@pytest.mark.parametrize("name", list(FAMILY_STEPS))
def test_cascade_steps_of_the_paper_families(name):
    with torch.device("meta"):  # structure only: no memory, no weights
        model = create_model(name, num_classes=14)
    steps = cascade_steps(model)
    added = [(label, paths[len(steps[i - 1][1]) if i else 0 :]) for i, (label, paths) in enumerate(steps)]
    assert added == FAMILY_STEPS[name]
    for (_, before), (_, after) in zip(steps, steps[1:], strict=False):
        assert after[: len(before)] == before  # a later step holds every earlier one
    for path in steps[-1][1]:
        get_module(model, path)
    # the CAM layer is untouched by the head step and re-initialised by the first stage step
    layer = cam_target_layer(model, get_spec(name))

    def holds_layer(paths: list[str]) -> bool:
        return any(any(m is layer for m in get_module(model, p).modules()) for p in paths)

    assert not holds_layer(steps[0][1])
    assert holds_layer(steps[1][1])
    # the whole cascade re-initialises every parameter
    full = cascade_steps(model, stages=len(model.feature_info))[-1][1]
    covered = {id(p) for path in full for p in get_module(model, path).parameters()}
    assert covered == {id(p) for p in model.parameters()}


# ---------------------------------------------------------------------------------- randomised copies


def test_randomised_copy_is_deterministic_nested_and_leaves_the_original_alone(tiny):
    tiny.train()  # the copy is in eval mode whatever the original's mode
    try:
        before = _state(tiny)
        rng = torch.get_rng_state()
        a = randomised_copy(tiny, ["fc", "layer4"], seed=7)
        b = randomised_copy(tiny, ["fc", "layer4"], seed=7)
        c = randomised_copy(tiny, ["fc", "layer4"], seed=8)
        head_only = randomised_copy(tiny, ["fc"], seed=7)
        assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is untouched
        assert tiny.training and not a.training
    finally:
        tiny.eval()
    after = _state(tiny)
    assert all(torch.equal(before[k], after[k]) for k in before)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["fc.weight"], sc["fc.weight"])
    assert torch.equal(head_only.state_dict()["fc.weight"], sa["fc.weight"])  # same seed: nested steps
    for key, value in sa.items():
        if key.startswith(("fc.", "layer4.")):
            if key.endswith("running_mean"):
                assert torch.equal(value, torch.zeros_like(value))
            elif key.endswith("running_var"):
                assert torch.equal(value, torch.ones_like(value))
            elif key.endswith((".weight", ".bias")) and before[key].std() > 0:
                assert not torch.equal(value, before[key]), key
        else:
            assert torch.equal(value, before[key]), key  # everything below layer4 as it was


def test_randomised_copy_redraws_parameters_without_reset_parameters():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(
                5 + 3 * torch.randn(20_000, generator=torch.Generator().manual_seed(123))
            )
            self.constant = nn.Parameter(torch.full((4,), 0.1))

    model = nn.Sequential(Scaled(), nn.Linear(3, 3))
    copy_ = randomised_copy(model, ["0"], seed=0)
    gain, old = copy_[0].gain.detach(), model[0].gain.detach()
    assert not torch.equal(gain, old)
    assert abs(gain.mean().item() - 5) < 0.1 and abs(gain.std().item() - 3) < 0.1  # N(mean, std) of before
    assert abs(torch.corrcoef(torch.stack([gain, old]))[0, 1].item()) < 0.05
    assert torch.equal(copy_[0].constant, model[0].constant)  # no spread to draw from
    assert torch.equal(copy_[1].weight, model[1].weight)  # not listed


# --------------------------------------------------------------------------------------------- Spearman


def test_spearman_maps_matches_scipy_with_ties_and_is_nan_for_constant_maps():
    gen = np.random.default_rng(0)
    a = np.round(gen.random((5, 6, 7)), 1)  # many ties
    b = np.round(0.5 * a + gen.random((5, 6, 7)), 1)
    a[3] = 0.4  # constant
    b[4, 2, 2] = np.nan
    rho = spearman_maps(a, b)
    assert rho.shape == (5,) and rho.dtype == np.float64
    for i in range(3):
        assert rho[i] == pytest.approx(spearmanr(a[i].ravel(), b[i].ravel()).statistic, abs=1e-12)
    assert np.isnan(rho[3]) and np.isnan(rho[4])
    assert spearman_maps(a[:3], a[:3]) == pytest.approx(np.ones(3))
    assert spearman_maps(torch.from_numpy(a[:1]), torch.from_numpy(-a[:1])) == pytest.approx([-1.0])
    with pytest.raises(ValueError, match="differ in shape"):
        spearman_maps(a, b[:2])


# --------------------------------------------------------------------------------------------- verdict


def _result(values: list[float | None]) -> dict:
    steps = [f"s{i}" for i in range(len(values))]
    return {"steps": steps, "spearman": dict(zip(steps, values, strict=True))}


def test_sanity_verdict_rules():
    result = {
        "low": _result([1.0, 0.9, 0.2]),
        "at_limit": _result([0.1, 0.5]),
        "none": _result([0.3, None]),
        "nan": _result([0.3, math.nan]),
        "negative": _result([0.0, -0.8]),
    }
    verdict = sanity_verdict(result, max_rank_correlation=0.5)
    assert verdict["low"] == {"passes": True, "final_step": "s2", "final_spearman": 0.2}
    assert verdict["at_limit"]["passes"] is False  # strictly below
    assert verdict["none"] == {"passes": False, "final_step": "s1", "final_spearman": None}
    assert verdict["nan"] == {"passes": False, "final_step": "s1", "final_spearman": None}
    assert verdict["negative"]["passes"] is True  # anti-correlated maps did change
    with pytest.raises(ValueError, match="finite"):
        sanity_verdict(result, math.nan)


# -------------------------------------------------------------------- the randomisation check's answers


def test_randomisation_check_result_structure(check):
    steps = ["head", "head+layer4", "head+layer4+layer3"]
    for method in METHODS:
        res = check[method]
        assert res["steps"] == steps
        assert res["modules"]["head+layer4"] == ["fc", "layer4"]
        assert res["n_images"] == len(CLASSES)
        for step in steps:
            per_image = res["spearman_per_image"][step]
            assert len(per_image) == len(CLASSES)
            finite = [r for r in per_image if r is not None]
            assert res["n_finite"][step] == len(finite)
            assert res["spearman"][step] == pytest.approx(np.mean(finite))
    json.dumps(check, allow_nan=False)  # metrics-file ready: None, never NaN


def test_known_answers_random_control_fails_gradcam_passes_eigencam_blind_to_the_head(check):
    verdict = sanity_verdict(check, max_rank_correlation=0.5)
    # the random control does not depend on the model at all
    assert all(check["RandomCAM"]["spearman"][s] == pytest.approx(1.0) for s in check["RandomCAM"]["steps"])
    assert verdict["RandomCAM"] == {
        "passes": False,
        "final_step": "head+layer4+layer3",
        "final_spearman": 1.0,
    }
    # Grad-CAM follows the weights
    assert verdict["GradCAM"]["passes"] is True
    assert verdict["GradCAM"]["final_spearman"] < 0.3  # measured 0.10
    # EigenCAM hooks layer4, below the head: the head step leaves every map exactly as it was ...
    eigen = check["EigenCAM"]
    assert eigen["n_finite"]["head"] == len(CLASSES)
    assert eigen["spearman_per_image"]["head"] == [1.0] * len(CLASSES)
    # ... the stage steps change them (measured 0.89 and 0.85 on random weights and noise images)
    assert eigen["spearman"]["head+layer4"] < 0.97
    assert eigen["spearman"]["head+layer4+layer3"] < 0.97


def test_randomisation_check_takes_trained_maps_and_maps_the_target_layer(tiny, images):
    spec = get_spec("resnet18")
    kwargs = {"target_layer": tiny.layer3, "random_stride": 16}
    trained = compute_heatmaps(tiny, spec, images, CLASSES, ["EigenCAM", "RandomCAM"], seed=0, **kwargs)
    res = randomisation_check(
        tiny,
        spec,
        images,
        CLASSES,
        ["EigenCAM", "RandomCAM"],
        seed=0,
        stages=1,
        cam_kwargs=kwargs,
        trained_maps=trained,
    )
    assert res["EigenCAM"]["spearman"]["head"] == pytest.approx(1.0)  # layer3 of each copy was hooked
    assert res["EigenCAM"]["spearman"]["head+layer4"] == pytest.approx(1.0)  # layer4 is above layer3
    assert res["RandomCAM"]["spearman"]["head+layer4"] == pytest.approx(1.0)
    # the trap: trained maps drawn with another CAM seed make the model-free control look model-dependent
    other = compute_heatmaps(tiny, spec, images, CLASSES, ["RandomCAM"], seed=1, random_stride=16)
    res = randomisation_check(
        tiny, spec, images, CLASSES, ["RandomCAM"], seed=0, stages=0, cam_kwargs=kwargs, trained_maps=other
    )
    assert res["RandomCAM"]["spearman"]["head"] < 0.5
    with pytest.raises(ValueError, match="lacks the methods"):
        randomisation_check(tiny, spec, images, CLASSES, ["GradCAM"], seed=0, trained_maps=other)
