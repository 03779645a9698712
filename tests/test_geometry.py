"""Known-answer tests for cxr_core.explain.geometry, each worked out by hand in the comments."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_core.explain.geometry import (
    best_box_scores,
    binarise,
    box_iobb,
    box_iou,
    box_mask,
    box_masks,
    heatmap_boxes,
    paper_iou,
    pointing_hit,
    to_uint8,
)

#: The paper's IoU thresholds (section 4.1): A = H > a * 255.
PAPER_THRESHOLDS = (0.1, 0.15, 0.25, 0.35, 0.45)


def _block(size: int, rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[rows, cols] = True
    return m


# --- box masks and scaling ----------------------------------------------------------------------


def test_box_mask_pixel_centre_rule():
    # x in [1.2, 4.2): centres 1.5, 2.5, 3.5 -> cols 1..3; y in [2.5, 4.5): centres 2.5, 3.5 -> rows 2..3
    # (centre 4.5 is on the open end: excluded).
    np.testing.assert_array_equal(box_mask((1.2, 2.5, 3.0, 2.0), 8), _block(8, slice(2, 4), slice(1, 4)))
    # integer edges: the box is exactly the pixel block [2, 6) x [3, 5)
    np.testing.assert_array_equal(box_mask((2, 3, 4, 2), 8), _block(8, slice(3, 5), slice(2, 6)))
    # partly outside the image: clipped; x in [-2, 2) -> cols 0, 1; y in [6, 11) -> rows 6, 7
    np.testing.assert_array_equal(box_mask((-2, 6, 4, 5), 8), _block(8, slice(6, 8), slice(0, 2)))
    # sub-pixel box covering no centre: falls back to the pixel holding its midpoint (2.75, 2.75)
    np.testing.assert_array_equal(box_mask((2.6, 2.6, 0.3, 0.3), 8), _block(8, slice(2, 3), slice(2, 3)))
    # entirely outside: empty
    assert not box_mask((20, 20, 3, 3), 8).any()
    stacked = box_masks([(1.2, 2.5, 3.0, 2.0), (2, 3, 4, 2)], 8)
    assert stacked.shape == (2, 8, 8) and stacked.sum() == 6 + 8


@pytest.mark.parametrize("box", [(1, 1, 0, 2), (1, 1, 2, -1), (1, np.nan, 2, 2), (1, 2, 3)])
def test_box_mask_rejects_bad_boxes(box):
    with pytest.raises(ValueError, match="box"):
        box_mask(box, 8)


def test_scale_real_box_1024_to_224():
    # 00013118_008.png, Atelectasis: every coordinate times 224 / 1024 = 0.21875
    row = (225.084745762712, 547.019216763771, 86.7796610169491, 79.1864406779661)
    scaled = np.asarray(row) * 224 / 1024
    np.testing.assert_allclose(scaled, [49.237288135593, 119.660453667075, 18.983050847458, 17.322033898305])
    # its mask: x in [49.24, 68.22) -> centres 49.5 .. 67.5 -> 19 cols (49..67);
    # y in [119.66, 136.98) -> centres 120.5 .. 136.5 -> 17 rows (120..136); 323 px vs w*h = 328.8
    m = box_mask(scaled, 224)
    np.testing.assert_array_equal(m, _block(224, slice(120, 137), slice(49, 68)))


# --- the paper's IoU ----------------------------------------------------------------------------


def test_to_uint8_truncates():
    # 255 * [0.1001, 0.1021, 0.2, 0.999, 1.0, 0.0] = [25.53, 26.04, 51.0, 254.7, 255, 0] -> truncated
    np.testing.assert_array_equal(to_uint8([0.1001, 0.1021, 0.2, 0.999, 1.0, 0.0]), [25, 26, 51, 254, 255, 0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_uint8([1.5])


def _paper_reference(h: np.ndarray, b: np.ndarray, a: float) -> float:
    """The paper's formula, written literally for one map."""
    big_h = np.uint8(255 * h)
    big_a = (big_h > a * 255).astype(int)
    union = np.maximum(big_a, b.astype(int)).sum()
    return float((big_a * b).sum() / union) if union else 0.0


def test_paper_iou_hand_computed():
    # S = 8. Background 0.05 -> level 12; block rows 2..5 x cols 2..5 = 0.3 -> 76 (76.5 truncated);
    # inner rows 3..4 x cols 3..4 = 0.9 -> 229. Box (3, 3, 4, 3) -> rows 3..5 x cols 3..6 (12 px).
    # a = 0.1, 0.15, 0.25 (25.5, 38.25, 63.75): A = the 4 x 4 block (16 px); A & B = rows 3..5 x cols 3..5
    #   = 9 px; union = 16 + 12 - 9 = 19 -> 9/19.
    # a = 0.35, 0.45 (89.25, 114.75): A = inner 2 x 2 (4 px), all inside B -> 4 / 12 = 1/3.
    h = np.full((8, 8), 0.05)
    h[2:6, 2:6] = 0.3
    h[3:5, 3:5] = 0.9
    b = box_mask((3, 3, 4, 3), 8)
    assert b.sum() == 12
    iou = paper_iou(h[None], b[None], PAPER_THRESHOLDS)
    np.testing.assert_allclose(iou, [[9 / 19, 9 / 19, 9 / 19, 1 / 3, 1 / 3]], rtol=0, atol=1e-15)
    for a, value in zip(PAPER_THRESHOLDS, iou[0], strict=True):
        assert value == pytest.approx(_paper_reference(h, b, a), abs=1e-15)


def test_paper_iou_strict_threshold_and_truncation():
    # a = 0.2 -> a * 255 = 51 exactly. Pixel (0,0) = 0.2 -> level 51, NOT > 51; pixel (0,1) = 0.21 -> 53.
    # Box (0, 0, 2, 1) covers both: A = {(0,1)}, B = 2 px -> IoU 1/2 (a '>=' rule would give 1).
    h = np.zeros((1, 4, 4))
    h[0, 0, 0], h[0, 0, 1] = 0.2, 0.21
    b = box_mask((0, 0, 2, 1), 4)[None]
    np.testing.assert_allclose(paper_iou(h, b, [0.2]), [[0.5]])
    # a = 0: zeros are not > 0, so only the two non-zero pixels are predicted -> 2/2.
    np.testing.assert_allclose(paper_iou(h, b, [0.0]), [[1.0]])
    # truncation: 0.1001 -> 25 (not > 25.5; rounding would give 26 and count it); 0.1021 -> 26 counts.
    h2 = np.zeros((1, 4, 4))
    h2[0, 0, 0], h2[0, 0, 1] = 0.1001, 0.1021
    np.testing.assert_allclose(paper_iou(h2, b, [0.1]), [[0.5]])
    assert binarise(h2[0], 0.1).sum() == 1


def test_paper_iou_empty_union_is_zero_and_matches_reference_in_chunks(monkeypatch):
    import cxr_core.explain.geometry as loc

    assert paper_iou(np.zeros((1, 4, 4)), np.zeros((1, 4, 4), bool), [0.1]).tolist() == [[0.0]]
    rng = np.random.default_rng(0)
    h = rng.random((13, 16, 16))
    boxes = np.column_stack([rng.uniform(0, 10, (13, 2)), rng.uniform(1, 8, (13, 2))])
    masks = box_masks(boxes, 16)
    monkeypatch.setattr(loc, "_IOU_CHUNK_PIXELS", 5 * 16 * 16)  # chunks of 5 maps
    got = paper_iou(h, masks, (0.0, 0.1, 0.2, 0.45, 0.6, 1.0))
    ref = [[_paper_reference(h[k], masks[k], a) for a in (0.0, 0.1, 0.2, 0.45, 0.6, 1.0)] for k in range(13)]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-15)
    assert (got[:, -1] == 0).all()  # nothing exceeds 255


def test_paper_iou_argument_errors():
    h = np.zeros((2, 4, 4))
    with pytest.raises(ValueError, match="masks"):
        paper_iou(h, np.zeros((2, 4, 5), bool), PAPER_THRESHOLDS)
    with pytest.raises(ValueError, match="thresholds"):
        paper_iou(h, np.zeros((2, 4, 4), bool), [1.5])
    with pytest.raises(ValueError, match="heatmaps"):
        paper_iou(np.zeros((4, 4)), np.zeros((4, 4), bool), PAPER_THRESHOLDS)


# --- boxes from heatmaps ------------------------------------------------------------------------


def _two_blobs() -> np.ndarray:
    # blob 1: rows 1..2 x cols 1..3 at 0.8 -> box (x=1, y=1, w=3, h=2)
    # blob 2: rows 5..8 x cols 6..7 at 0.6, plus pixel (4, 5) at 0.6 touching (5, 6) only diagonally;
    #   8-connectivity merges it -> rows 4..8 x cols 5..7 -> box (5, 4, 3, 5)
    h = np.zeros((10, 10))
    h[1:3, 1:4] = 0.8
    h[5:9, 6:8] = 0.6
    h[4, 5] = 0.6
    return h


def test_heatmap_boxes_two_blobs_8_connectivity():
    h = _two_blobs()
    assert heatmap_boxes(h, 0.5) == [(1.0, 1.0, 3.0, 2.0), (5.0, 4.0, 3.0, 5.0)]
    assert heatmap_boxes(h, 0.7) == [(1.0, 1.0, 3.0, 2.0)]  # 0.6 -> 153 is not > 178.5
    assert heatmap_boxes(h, 0.9) == []
    # a returned box's mask is exactly the component's bounding rectangle
    np.testing.assert_array_equal(box_mask((5.0, 4.0, 3.0, 5.0), 10), _block(10, slice(4, 9), slice(5, 8)))


def test_box_iou_and_iobb_hand_computed():
    # (0,0,4,4) vs (2,2,4,4): intersection 2 x 2 = 4; union 16 + 16 - 4 = 28 -> IoU 1/7; IoBB 4/16.
    assert box_iou((0, 0, 4, 4), (2, 2, 4, 4)) == pytest.approx(1 / 7)
    assert box_iobb((0, 0, 4, 4), (2, 2, 4, 4)) == pytest.approx(0.25)
    # small prediction inside the truth: IoU 4/16, IoBB 1 (why IoBB is reported beside IoU)
    assert box_iou((1, 1, 2, 2), (0, 0, 4, 4)) == pytest.approx(0.25)
    assert box_iobb((1, 1, 2, 2), (0, 0, 4, 4)) == pytest.approx(1.0)
    # disjoint / touching edges: 0
    assert box_iou((0, 0, 2, 2), (2, 0, 2, 2)) == 0.0
    # broadcasts over predicted boxes
    np.testing.assert_allclose(box_iou([(0, 0, 4, 4), (1, 1, 2, 2)], (0, 0, 4, 4)), [1.0, 0.25])


def test_best_box_scores_per_threshold():
    # truth (4, 4, 4, 5), area 20. At 0.5: boxes (1,1,3,2) (disjoint) and (5,4,3,5) (area 15, inside truth)
    #   -> best IoU 15/20 = 0.75, best IoBB 15/15 = 1. At 0.7: only the disjoint box -> 0, 0. At 0.9: none -> 0, 0.
    iou, iobb = best_box_scores(_two_blobs(), (4, 4, 4, 5), [0.5, 0.7, 0.9])
    np.testing.assert_allclose(iou, [0.75, 0.0, 0.0])
    np.testing.assert_allclose(iobb, [1.0, 0.0, 0.0])


# --- pointing game, accuracy, random control ----------------------------------------------------


def test_pointing_game_hit_miss_tie_flat():
    h = np.zeros((6, 4, 4))
    h[0, 1, 2] = 1.0  # unique max at (1, 2), box covers it -> hit
    h[1, 1, 2] = 1.0  # same map, box elsewhere -> miss
    h[2, 0, 0] = h[2, 3, 3] = 0.7  # tie, both as near the centroid: the first, (0, 0), is outside -> miss
    h[3, 0, 0] = h[3, 3, 3] = 0.7  # the same tie, the box over the first maximum -> hit
    h[4] = 0.5  # flat map, box covers everything -> miss by rule
    # h[5] all zeros: flat too -> miss
    masks = np.stack(
        [
            box_mask((2, 1, 1, 1), 4),
            box_mask((0, 2, 2, 2), 4),
            box_mask((3, 3, 1, 1), 4),
            box_mask((0, 0, 1, 1), 4),
            np.ones((4, 4), bool),
            np.ones((4, 4), bool),
        ]
    )
    np.testing.assert_array_equal(pointing_hit(h, masks), [True, False, False, True, False, False])


def test_a_plateau_points_at_its_centre_not_its_edge():
    # a box prior's maximum is a wide plateau (rows 2..9, columns 3..14): its centroid is (5.5, 8.5),
    # so it points at (5, 8), the first of the four nearest tied pixels; the first maximum in
    # row-major order, (2, 3), would sit on the plateau's edge
    h = np.zeros((3, 16, 16))
    h[:, 2:10, 3:15] = 1.0
    masks = np.stack([box_mask((8, 5, 1, 1), 16), box_mask((3, 2, 1, 1), 16), box_mask((9, 6, 1, 1), 16)])
    np.testing.assert_array_equal(pointing_hit(h, masks), [True, False, False])
    # two separate tied peaks: it points at one of them (the first of the equally near), not between
    two = np.zeros((2, 16, 16))
    two[:, 1, 1] = two[:, 14, 14] = 1.0
    masks = np.stack([box_mask((1, 1, 1, 1), 16), box_mask((6, 6, 4, 4), 16)])
    np.testing.assert_array_equal(pointing_hit(two, masks), [True, False])


def test_pointing_game_upsamples_the_raw_map_and_takes_the_first_of_a_plateau():
    # a 4 x 4 raw map with one peak at (1, 2), scored at 16 x 16: bilinear upsampling (half-pixel
    # centres) puts the source centre between output pixels 4p + 1 and 4p + 2: a 2 x 2 plateau whose
    # four pixels are equally near its centroid; the first, (5, 9), is the one that points, so a box
    # on (5, 9) is hit and one on (6, 10) (also maximal) is not
    raw = np.zeros((2, 4, 4))
    raw[:, 1, 2] = 3.0
    masks = np.stack([box_mask((9, 5, 1, 1), 16), box_mask((10, 6, 1, 1), 16)])
    np.testing.assert_array_equal(pointing_hit(raw, masks), [True, False])
    with pytest.raises(ValueError, match="K x h x w"):
        pointing_hit(raw[0], masks)
    with pytest.raises(ValueError, match="2 x S x S"):
        pointing_hit(raw, masks[:, :, :8])
    with pytest.raises(ValueError, match="NaN"):
        pointing_hit(np.full((2, 4, 4), np.nan), masks)
