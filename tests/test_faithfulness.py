"""Faithfulness of saliency maps (cxr_core.explain.faithfulness): ROAD and the cam_mult score on a toy
model whose evidence is known exactly. CPU, one thread."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cxr_core.explain.faithfulness import ClassifierOutputSigmoidTarget, faithfulness_scores, road_scores

pytestmark = pytest.mark.usefixtures("single_thread")

SIZE = 32
PATCH = (slice(12, 18), slice(8, 14))  # the only pixels the toy model looks at


class PatchModel(nn.Module):
    """Two logits: class 0 = 4 * (mean intensity of PATCH) - 2; class 1 = constant 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = 4 * x[:, :, PATCH[0], PATCH[1]].mean(dim=(1, 2, 3)) - 2
        return torch.stack([logit, torch.zeros_like(logit)], dim=1)


@pytest.fixture(scope="module")
def road_case() -> tuple[torch.Tensor, np.ndarray]:
    gen = torch.Generator().manual_seed(0)
    x = 0.05 * torch.randn(2, 3, SIZE, SIZE, generator=gen)
    x[:, :, PATCH[0], PATCH[1]] += 1.0  # bright evidence: sigmoid(2) before, ~sigmoid(-2) once imputed
    yy, xx = np.mgrid[:SIZE, :SIZE]
    bump = np.exp(-((yy - 14.5) ** 2 + (xx - 10.5) ** 2) / (2 * 5.0**2)).astype(np.float32)
    return x, np.stack([bump, bump])


def test_road_scores_a_map_of_the_true_evidence_above_its_inverse(road_case):
    x, bump = road_case
    model = PatchModel()
    rng = torch.get_rng_state()
    good = road_scores(model, x, [0, 0], bump)
    bad = road_scores(model, x, [0, 0], 1 - bump)
    assert torch.equal(torch.get_rng_state(), rng)
    assert good.shape == (2,) and good.dtype == np.float64
    # LeRF keeps the patch at every percentile (change 0), MoRF imputes it: (LeRF - MoRF) / 2 > 0
    assert np.all(good > 0.3) and np.all(bad < -0.3)
    exact = (1 / (1 + math.exp(-2)) - 1 / (1 + math.exp(2))) / 2  # patch 1 -> ~0: logit 2 -> -2
    assert good == pytest.approx([exact, exact], abs=0.02)
    assert good == pytest.approx(-bad, abs=0.05)
    assert np.array_equal(road_scores(model, x, [0, 0], bump), good)  # seeded imputation noise
    logit = road_scores(model, x, [0, 0], bump, target="logit")
    assert logit == pytest.approx([2.0, 2.0], abs=0.1)  # the logit falls by ~4 under MoRF only
    # class 1 does not look at the image at all: nothing to remove
    assert road_scores(model, x, [1, 1], bump) == pytest.approx([0.0, 0.0], abs=1e-6)


def test_road_scores_nan_maps_and_argument_checks(road_case):
    x, bump = road_case
    maps = bump.copy()
    maps[1, 0, 0] = np.nan
    scores = road_scores(PatchModel(), x, [0, 0], maps, percentiles=(50,))
    assert scores[0] > 0 and np.isnan(scores[1])
    with pytest.raises(ValueError, match="maps must be"):
        road_scores(PatchModel(), x, [0, 0], bump[:, :16])
    with pytest.raises(ValueError, match="one integer class per image"):
        road_scores(PatchModel(), x, [0], bump)
    with pytest.raises(ValueError, match="target must be"):
        road_scores(PatchModel(), x, [0, 0], bump, target="softmax")
    assert ClassifierOutputSigmoidTarget(1)(torch.tensor([0.0, 2.0])) == pytest.approx(1 / (1 + math.exp(-2)))


def test_cam_mult_faithfulness_prefers_the_true_evidence(road_case):
    x, bump = road_case
    model = PatchModel()
    good = faithfulness_scores(model, x, [0, 0], bump, metric="cam_mult")
    bad = faithfulness_scores(model, x, [0, 0], 1 - bump, metric="cam_mult")
    assert (good > bad).all()
    with pytest.raises(ValueError, match="faithfulness metric must be one of"):
        faithfulness_scores(model, x, [0, 0], bump, metric="deletion")
