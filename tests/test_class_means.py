"""cxr_core.explain.class_means: the one localisation average and the one tie rule, against explicit
pandas / fraction computations on boxes spread unequally over the findings."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from cxr_core.explain.class_means import TIE_TOLERANCE, best_column, class_means

CLASSES = ["Atelectasis", "Cardiomegaly", "Effusion", "Mass"]


def _labels(counts: list[int]) -> np.ndarray:
    return np.repeat(CLASSES[: len(counts)], counts)


def test_class_means_is_the_mean_over_classes_of_the_mean_over_boxes():
    # 1, 4, 9 and 2 boxes: a mean over boxes would weight Effusion nine times Atelectasis
    rng = np.random.default_rng(0)
    labels = rng.permutation(_labels([1, 4, 9, 2]))
    values = rng.random(len(labels))
    got = class_means(values, labels, CLASSES)
    per_class = pd.Series(values).groupby(labels).mean()  # reference: pandas groupby
    assert list(got) == [*CLASSES, "mean"]
    for c in CLASSES:
        assert got[c] == pytest.approx(per_class[c], abs=1e-15)
    assert got["mean"] == pytest.approx(per_class.mean(), abs=1e-15)
    assert abs(got["mean"] - values.mean()) > 1e-3  # the box mean is a different number here


def test_class_means_columns_absent_classes_and_no_boxes():
    labels = _labels([2, 3])
    values = np.arange(10, dtype=float).reshape(5, 2)
    got = class_means(values, labels, ["Mass", *CLASSES])  # Mass has no box: left out, not 0
    assert list(got) == ["Atelectasis", "Cardiomegaly", "mean"]
    np.testing.assert_allclose(got["mean"], [(1 + 6) / 2, (2 + 7) / 2])
    assert np.isnan(class_means(np.zeros(0), np.zeros(0, str), CLASSES)["mean"])
    with pytest.raises(ValueError, match="3 scores for 5 box labels"):
        class_means(np.zeros(3), labels, CLASSES)
    with pytest.raises(ValueError, match=r"\['Infiltrate'\] are not among"):  # uncanonical: never dropped
        class_means(np.zeros(2), np.array(["Mass", "Infiltrate"]), CLASSES)
    with pytest.raises(ValueError, match="hits must be 0 or 1"):
        best_column(np.full((2, 2), 0.5), labels[:2], CLASSES, hits=True)


def test_equal_class_mean_counts_tie_exactly_and_go_to_the_lowest_column():
    # 3, 5, 6 and 7 boxes; column 0 hits 1, 4, 4, 4 and column 1 hits 2, 4, 2, 4: both class means
    # are 83/140 exactly, but the float means differ in the last bit (column 1 looks larger)
    labels = _labels([3, 5, 6, 7])
    hits = np.zeros((len(labels), 2))
    for c, (a, b) in zip(CLASSES, [(1, 2), (4, 4), (4, 2), (4, 4)], strict=True):
        rows = np.flatnonzero(labels == c)
        hits[rows[:a], 0] = 1
        hits[rows[:b], 1] = 1
    exact = [sum(Fraction(int(hits[labels == c, t].sum()), int((labels == c).sum())) for c in CLASSES) / 4
             for t in (0, 1)]  # fmt: skip
    assert exact[0] == exact[1] == Fraction(83, 140)
    floats = class_means(hits, labels, CLASSES)["mean"]
    assert floats[1] > floats[0]  # what an argmax over float means would pick
    assert best_column(hits, labels, CLASSES, hits=True) == 0
    hits[np.flatnonzero(labels == "Mass")[5], 0] = 1  # one more hit: column 0 now strictly better
    assert best_column(hits, labels, CLASSES, hits=True) == 0
    hits[:, 0] = 0
    assert best_column(hits, labels, CLASSES, hits=True) == 1


def test_continuous_scores_tie_within_the_stated_tolerance():
    labels = _labels([2, 2])
    base = np.array([0.2, 0.4, 0.6, 0.8])
    close = base + 0.1 * TIE_TOLERANCE  # within tolerance of column 0: a tie -> the lowest column
    far = base + 10 * TIE_TOLERANCE
    assert best_column(np.column_stack([base, close]), labels, CLASSES) == 0
    assert best_column(np.column_stack([base, far]), labels, CLASSES) == 1
    with_nan = np.column_stack([np.full(4, np.nan), base])
    assert best_column(with_nan, labels, CLASSES) == 1
    assert best_column(np.zeros((0, 3)), np.zeros(0, str), CLASSES) == 0
