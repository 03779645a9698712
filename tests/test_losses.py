"""cxr_core.train.losses: known answers, empty halves, torch parity, extreme logits, bf16 autocast."""

from __future__ import annotations

import math

import pytest
import torch

from cxr_core.train.losses import LOSSES, bce, class_averaged_bce, get_loss

LN3 = math.log(3.0)
# BCE(z, y) = log(1 + e^-z) for y = 1, log(1 + e^z) for y = 0. With z in {0, ln 3, -ln 3}:
#   z = 0:     y=1 -> ln 2        y=0 -> ln 2
#   z = ln 3:  y=1 -> ln(4/3)     y=0 -> ln 4       (sigmoid = 0.75)
#   z = -ln 3: y=1 -> ln 4        y=0 -> ln(4/3)    (sigmoid = 0.25)
LOGITS = torch.tensor([[0.0, LN3], [LN3, -LN3], [-LN3, 0.0]])
TARGETS = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # label 1 has no positives
LN2, LN4, LN43 = math.log(2.0), math.log(4.0), math.log(4.0 / 3.0)


def test_class_averaged_bce_known_answer() -> None:
    # label 0: positives rows 0, 1 -> (ln 2 + ln 4/3) / 2; negatives row 2 -> ln 4/3
    label0 = (LN2 + LN43) / 2 + LN43  # 0.490415 + 0.287682 = 0.778097
    # label 1: no positives -> 0; negatives rows 0, 1, 2 -> (ln 4 + ln 4/3 + ln 2) / 3
    label1 = 0.0 + (LN4 + LN43 + LN2) / 3  # 2.367124 / 3 = 0.789041
    expected = (label0 + label1) / 2  # 0.783569
    assert class_averaged_bce(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.783569, abs=1e-6)


def test_bce_known_answer() -> None:
    # elements: ln 2, ln 4, ln 4/3, ln 4/3, ln 4/3, ln 2 -> (2 ln 2 + ln 4 + 3 ln 4/3) / 6 = 3.635634 / 6
    expected = (2 * LN2 + LN4 + 3 * LN43) / 6
    assert bce(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.605939, abs=1e-6)


def test_a_label_with_only_positives_has_a_zero_negative_term() -> None:
    logits = torch.tensor([[0.0], [LN3]])
    targets = torch.ones(2, 1)
    # positives: (ln 2 + ln 4/3) / 2; negatives: none -> 0
    assert class_averaged_bce(logits, targets).item() == pytest.approx((LN2 + LN43) / 2, rel=1e-6)


def test_class_averaged_bce_matches_the_definition_on_random_batches() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 14, generator=gen) * 3
    targets = (torch.rand(16, 14, generator=gen) < 0.2).float()
    targets[:, 13] = 0  # a label with no positives, as Hernia in most batches
    terms = []
    for c in range(14):
        per = torch.nn.functional.binary_cross_entropy_with_logits(
            logits[:, c], targets[:, c], reduction="none"
        )
        pos, neg = per[targets[:, c] == 1], per[targets[:, c] == 0]
        terms.append((pos.mean() if len(pos) else 0.0) + (neg.mean() if len(neg) else 0.0))
    assert class_averaged_bce(logits, targets).item() == pytest.approx(float(sum(terms) / 14), rel=1e-5)


def test_bce_equals_torch_bce_with_logits() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 14, generator=gen) * 5
    targets = (torch.rand(8, 14, generator=gen) < 0.3).float()
    torch.testing.assert_close(bce(logits, targets), torch.nn.BCEWithLogitsLoss()(logits, targets))


@pytest.mark.parametrize("loss_fn", list(LOSSES.values()))
def test_extreme_logits_give_finite_loss_and_gradients(loss_fn) -> None:
    logits = torch.tensor([[1e4, -1e4], [-1e4, 1e4], [80.0, -80.0]], requires_grad=True)
    targets = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])  # badly wrong and badly right
    loss = loss_fn(logits, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("loss_fn", list(LOSSES.values()))
def test_losses_compute_in_float32_under_bf16_autocast(loss_fn) -> None:
    logits = LOGITS.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(logits, TARGETS.to(torch.bfloat16))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(loss_fn(logits.float(), TARGETS).item(), rel=1e-6)


def test_registry_and_its_error() -> None:
    assert get_loss("class_averaged_bce") is class_averaged_bce and get_loss("bce") is bce
    with pytest.raises(ValueError, match=r"train.loss = 'focal'.*\['class_averaged_bce', 'bce'\]"):
        get_loss("focal")


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        class_averaged_bce(torch.zeros(2, 14), torch.zeros(2, 13))
