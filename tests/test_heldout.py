"""Held-out localisation (cxr_core.explain.heldout, baselines, geometry.energy_in_boxes): hand-made
heatmaps and boxes with exact answers, and thresholds that never see the report half."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cxr_core.explain.baselines import baseline_maps, box_prior
from cxr_core.explain.geometry import box_masks, energy_in_boxes, paper_iou, upsample_bilinear
from cxr_core.explain.heldout import (
    HeldoutSettings,
    choose_threshold,
    heldout_scores,
    sweep_thresholds,
)
from cxr_core.explain.scoring import score_heatmaps, score_method

S = 32
SETTINGS = HeldoutSettings(sweep=tuple(sweep_thresholds(0.1).tolist()), maxboxacc_iou=(0.3, 0.5, 0.7))


def _square(x: int, y: int, w: int, h: int, value: float = 1.0) -> np.ndarray:
    m = np.zeros((S, S))
    m[y : y + h, x : x + w] = value
    return m


def _loc(boxes, labels, subsets) -> pd.DataFrame:
    b = np.asarray(boxes, dtype=float)
    return pd.DataFrame(
        {
            "image": [f"{i:08d}_000.png" for i in range(len(b))],
            "row": np.arange(len(b)),
            "patient": np.arange(len(b)),
            "label": labels,
            "label_index": [0] * len(b),
            "x": b[:, 0],
            "y": b[:, 1],
            "w": b[:, 2],
            "h": b[:, 3],
            "subset": subsets,
        }
    )


# ------------------------------------------------------------------------------------ geometry


def test_upsampling_is_torchs_bilinear_with_half_pixel_centres():
    raw = np.random.default_rng(0).random((3, 4, 7)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(raw)[:, None], size=(S, S), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(upsample_bilinear(raw, S), ref[:, 0].numpy(), atol=1e-6)


def test_energy_is_the_share_of_the_upsampled_map_inside_the_box():
    rng = np.random.default_rng(1)
    raw = rng.random((4, 4, 4))
    boxes = np.array([[3.2, 4.7, 10, 6], [0, 0, S, S], [20, 20, 3, 2], [0.4, 0.2, 0.3, 0.3]])
    up, masks = upsample_bilinear(raw, S), box_masks(boxes, S)
    expected = (up * masks).sum(axis=(1, 2)) / up.sum(axis=(1, 2))
    np.testing.assert_allclose(energy_in_boxes(raw, boxes, S), expected, rtol=1e-12)
    assert energy_in_boxes(raw, boxes, S)[1] == pytest.approx(1.0)


def test_energy_hand_cases():
    box = np.array([[8, 8, 8, 8]])
    # all mass inside the box, half of it, none; a map without mass points nowhere
    assert energy_in_boxes(_square(8, 8, 8, 8)[None], box, S) == pytest.approx([1.0])
    assert energy_in_boxes(_square(8, 8, 16, 8)[None], box, S) == pytest.approx([0.5])
    assert energy_in_boxes(_square(20, 20, 4, 4)[None], box, S) == pytest.approx([0.0])
    assert energy_in_boxes(np.zeros((1, S, S)), box, S) == pytest.approx([0.0])
    # x / y order: a tall thin box and a wide flat one on a map that fills only the tall one
    tall = _square(4, 0, 4, 32)
    assert energy_in_boxes(
        np.stack([tall, tall]), np.array([[4, 0, 4, 32], [0, 4, 32, 4]]), S
    ) == pytest.approx([1.0, 4 / 32])
    with pytest.raises(ValueError, match=">= 0"):
        energy_in_boxes(-np.ones((1, 4, 4)), box, S)


# ------------------------------------------------------------------------------------ held-out


def test_maxboxacc_and_tuned_iou_hand_cases():
    # box 0: the map is exactly the box (IoU 1 at every threshold); box 1: a map whose only region
    # overlaps the box with IoU 64 / 192 = 1 / 3 (hit at 0.3, miss at 0.5 and 0.7); box 2: the map
    # misses the box entirely
    boxes = np.array([[8, 8, 8, 8], [0, 0, 8, 16], [20, 20, 6, 6]], dtype=float)
    maps = np.stack([_square(8, 8, 8, 8), _square(0, 8, 8, 16), _square(0, 0, 4, 4)])
    labels = np.array(["Mass", "Nodule", "Effusion"])
    tune = np.array([True, True, True])
    table, chosen = heldout_scores(
        maps,
        box_masks(boxes, S),
        boxes,
        labels,
        tune,
        sweep=np.asarray(SETTINGS.sweep),
        maxboxacc_iou=(0.3, 0.5, 0.7),
    )
    np.testing.assert_array_equal(table["maxbox_d030"], [1, 1, 0])
    np.testing.assert_array_equal(table["maxbox_d050"], [1, 0, 0])
    np.testing.assert_array_equal(table["maxbox_d070"], [1, 0, 0])
    np.testing.assert_allclose(table["maxboxacc"], [1, 1 / 3, 0])
    np.testing.assert_allclose(table["iou_tuned"], [1.0, 64 / 192, 0.0])  # paper IoU: 8x8 overlap / union
    assert chosen["iou"] == 0.0 and chosen["maxboxacc"] == {"d030": 0.0, "d050": 0.0, "d070": 0.0}


def test_maxboxacc_counts_an_iou_exactly_at_the_cut_off_as_a_hit():
    # the map's only region is the top half of the box: IoU = 64 / 128 = 0.5 exactly, a hit at
    # delta = 0.5 (Choe et al.: IoU >= delta) and a miss at the next cut-off up
    boxes = np.array([[0, 0, 8, 16]] * 2, dtype=float)
    maps = np.stack([_square(0, 0, 8, 8)] * 2)
    table, _ = heldout_scores(
        maps, box_masks(boxes, S), boxes, np.array(["Mass"] * 2), np.array([True, False]),
        sweep=np.asarray(SETTINGS.sweep), maxboxacc_iou=(0.5, 0.51),
    )  # fmt: skip
    np.testing.assert_array_equal(table["maxbox_d050"], [1, 1])
    np.testing.assert_array_equal(table["maxbox_d051"], [0, 0])


def test_equal_tune_hit_counts_choose_the_lowest_threshold():
    # per-class hits 1, 4, 4, 4 (column 0) and 2, 4, 2, 4 (column 1) of 3, 5, 6, 7 boxes: equal class
    # means (83/140) whose floats differ in the last bit; the documented rule takes the lower threshold
    counts, a, b = [3, 5, 6, 7], [1, 4, 4, 4], [2, 4, 2, 4]
    labels = np.repeat(["Mass", "Nodule", "Effusion", "Atelectasis"], counts)
    hits = np.zeros((len(labels), 2))
    start = 0
    for n, ha, hb in zip(counts, a, b, strict=True):
        hits[start : start + ha, 0] = 1
        hits[start : start + hb, 1] = 1
        start += n
    assert choose_threshold(hits, labels, np.ones(len(labels), bool), hits=True) == 0


def test_threshold_is_chosen_on_the_tune_half_only():
    rng = np.random.default_rng(2)
    scores = rng.random((40, 10))
    labels = np.array(["Mass", "Nodule"] * 20)
    tune = np.arange(40) < 20
    chosen = choose_threshold(scores, labels, tune)
    explicit = pd.DataFrame(scores[tune]).groupby(labels[tune]).mean().mean()  # per class, then over classes
    assert chosen == int(np.argmax(explicit.to_numpy()))
    changed = scores.copy()
    changed[~tune] = rng.random((20, 10)) * 100  # report rows: anything at all
    assert choose_threshold(changed, labels, tune) == chosen
    with pytest.raises(ValueError, match="tune half"):
        choose_threshold(scores, labels, np.zeros(40, bool))


def _phantom_like(seed: int = 3, k: int = 24):
    """Maps that are noisy copies of their boxes, boxes of two findings, half tune / half report."""
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 20, size=(k, 2))
    wh = rng.integers(4, 12, size=(k, 2))
    boxes = np.column_stack([xy, wh]).astype(float)
    maps = np.clip(box_masks(boxes, S) * rng.uniform(0.3, 1.0, (k, 1, 1)) + rng.random((k, S, S)) * 0.5, 0, 1)
    labels = np.array(["Mass", "Nodule"] * (k // 2))
    subsets = np.array(["tune"] * (k // 2) + ["report"] * (k // 2))
    return boxes, maps, labels, subsets


def test_report_boxes_never_move_the_chosen_thresholds_or_the_box_prior():
    boxes, maps, labels, subsets = _phantom_like()
    loc = _loc(boxes, labels, subsets)
    uint8 = (maps * 255).astype(np.uint8)
    raw = maps.astype(np.float32)
    probs = np.full((len(loc), 14), 0.5)
    common = {"method": "GradCAM", "thresholds": [0.25], "positive_threshold": 0.5, "heldout": SETTINGS}
    _, chosen = score_method(uint8, raw, loc, probs, np.zeros(len(loc), bool), **common)
    report = subsets == "report"
    moved = loc.copy()
    moved.loc[report, ["x", "y"]] = np.random.default_rng(9).integers(0, 20, size=(report.sum(), 2))
    moved_maps = uint8.copy()
    moved_maps[report] = np.random.default_rng(10).integers(0, 256, size=(report.sum(), S, S))
    _, again = score_method(moved_maps, raw, moved, probs, np.zeros(len(loc), bool), **common)
    assert again == chosen
    tune = subsets == "tune"
    prior = box_prior(box_masks(boxes, S), labels, tune)
    prior_moved = box_prior(box_masks(moved[["x", "y", "w", "h"]].to_numpy(), S), labels, tune)
    for label in prior:
        np.testing.assert_array_equal(prior[label], prior_moved[label])


def test_baselines_known_answers():
    boxes = np.array([[8, 8, 8, 8], [0, 0, 16, 16], [10, 10, 4, 4]], dtype=float)
    labels = np.array(["Mass", "Mass", "Nodule"])
    tune = np.array([True, False, True])
    maps = baseline_maps(boxes, labels, tune, S)
    prior, prior_raw = maps["BoxPrior"]
    # the Mass prior is the one tune Mass box: its own box is hit exactly, the report box partly
    np.testing.assert_array_equal(prior[0], (_square(8, 8, 8, 8) * 255).astype(np.uint8))
    np.testing.assert_array_equal(prior[1], prior[0])
    energy = energy_in_boxes(prior_raw, boxes, S)
    assert energy[0] == pytest.approx(1.0) and energy[1] == pytest.approx(1.0)  # the prior lies inside box 1
    uniform, uniform_raw = maps["UniformMap"]
    assert (uniform == 255).all()
    areas = boxes[:, 2] * boxes[:, 3] / S**2
    np.testing.assert_allclose(energy_in_boxes(uniform_raw, boxes, S), areas)
    np.testing.assert_allclose(paper_iou(uniform / 255.0, box_masks(boxes, S), [0.5])[:, 0], areas)


def test_score_heatmaps_adds_the_baselines_and_reports_on_the_report_half():
    boxes, maps, labels, subsets = _phantom_like(k=16)
    loc = _loc(boxes, labels, subsets)
    uint8 = {"GradCAM": (maps * 255).astype(np.uint8)}
    raw = {"GradCAM": maps.astype(np.float32)}
    records, summary = score_heatmaps(
        uint8,
        raw,
        {"GradCAM": np.zeros(len(loc), bool)},
        loc,
        np.full((len(loc), 14), 0.5),
        thresholds=[0.25],
        box_thresholds=[0.5],
        positive_threshold=0.5,
        heldout=SETTINGS,
    )
    assert set(summary["methods"]) == {"GradCAM", "BoxPrior", "UniformMap", "CentreMap"}
    assert summary["subsets"] == {"tune": 8, "report": 8}
    report = records[(records["method"] == "GradCAM") & (records["subset"] == "report")]
    held = summary["methods"]["GradCAM"]["heldout"]
    assert held["chosen_on"] == "tune"
    assert held["report"]["energy"]["mean"] == pytest.approx(
        np.mean([report.loc[report["label"] == lab, "energy"].mean() for lab in ("Mass", "Nodule")])
    )
    # the maps are their boxes plus noise: the method beats anatomy-only maps on energy
    uniform = summary["methods"]["UniformMap"]["heldout"]["report"]["energy"]["mean"]
    assert held["report"]["energy"]["mean"] > uniform
    assert summary["methods"]["UniformMap"]["heldout"]["report"]["pointing"]["mean"] == 0.0
