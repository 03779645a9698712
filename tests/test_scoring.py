"""Scoring saved 0..255 heatmaps: known answers computed by hand."""

import numpy as np
import pandas as pd
import pytest

from cxr_core.explain.geometry import to_uint8
from cxr_core.explain.heldout import HeldoutSettings
from cxr_core.explain.scoring import as_unit_maps, score_heatmaps, threshold_key

HELDOUT = HeldoutSettings(sweep=(0.0, 0.5), maxboxacc_iou=(0.5,))


def _loc(boxes, labels):
    """Boxes alternately in the tune and the report half (scoring needs both)."""
    return pd.DataFrame(
        {
            "row": range(len(boxes)),
            "image": [f"{i:08d}_000.png" for i in range(len(boxes))],
            "label": labels,
            "label_index": [["Atelectasis", "Cardiomegaly"].index(lab) for lab in labels],
            "x": [b[0] for b in boxes],
            "y": [b[1] for b in boxes],
            "w": [b[2] for b in boxes],
            "h": [b[3] for b in boxes],
            "subset": ["tune" if i % 2 == 0 else "report" for i in range(len(boxes))],
        }
    )


def _score(maps: dict, degenerate: dict, loc: pd.DataFrame, probs: np.ndarray, **kwargs):
    """score_heatmaps with raw maps equal to the 0..255 maps (energy is not what these tests check)."""
    raw = {m: v.astype(np.float32) for m, v in maps.items()}
    return score_heatmaps(maps, raw, degenerate, loc, probs, heldout=HELDOUT, **kwargs)


def test_uint8_maps_round_trip_exactly():
    u = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    assert np.array_equal(to_uint8(as_unit_maps(u)), u)


def test_known_answers_for_one_box():
    # 8 x 8 map; truth box covers pixels x 2..5, y 2..5 (16 px).
    # heat: value 200 on x 2..5, y 2..3 (8 px, inside), 100 on x 0..1, y 6..7 (4 px, outside, not touching), 0 elsewhere.
    # a = 0.25 -> 63.75: A = 12 px, |A & B| = 8, |A | B| = 12 + 16 - 8 = 20 -> IoU 0.4
    # a = 0.45 -> 114.75: A = the 8 inside px -> IoU 8 / 16 = 0.5
    # boxes at a = 0.45: one component (x 2..5, y 2..3): box IoU = 8/16 = 0.5, IoBB = 8/8 = 1
    # boxes at a = 0.25: two components; best IoU 0.5 (the inside one), best IoBB 1.0
    # the same box twice, once in each half, so every mean is that box's
    heat = np.zeros((2, 8, 8), np.uint8)
    heat[:, 2:4, 2:6] = 200
    heat[:, 6:8, 0:2] = 100
    loc = _loc([(2.0, 2.0, 4.0, 4.0)] * 2, ["Atelectasis"] * 2)
    probs = np.array([[0.7, 0.1]] * 2)
    records, summary = _score(
        {"GradCAM": heat},
        {"GradCAM": np.array([False, False])},
        loc,
        probs,
        thresholds=[0.25, 0.45],
        box_thresholds=[0.5],
        positive_threshold=0.5,
    )
    row = records.iloc[0]
    assert row["iou_t025"] == pytest.approx(0.4) and row["iou_t045"] == pytest.approx(0.5)
    assert row["box_iou_t045"] == pytest.approx(0.5) and row["box_iobb_t045"] == pytest.approx(1.0)
    assert row["box_iou_t025"] == pytest.approx(0.5) and row["box_iobb_t025"] == pytest.approx(1.0)
    assert bool(row["pointing_hit"]) and row["prob"] == 0.7 and bool(row["positive_pred"])
    method = summary["methods"]["GradCAM"]
    assert method["iou"]["t045"] == {"Atelectasis": pytest.approx(0.5), "mean": pytest.approx(0.5)}
    assert method["box_acc_iou"]["t045"] == {"T050": 1.0}
    assert method["pointing"]["mean"] == 1.0 and method["degenerate_fraction"] == 0.0


def test_class_mean_and_degenerate_maps():
    # two boxes of two classes; the Cardiomegaly map is flagged degenerate -> scored 0 and not a pointing hit
    heat = np.zeros((2, 8, 8), np.uint8)
    heat[0, 0:4, 0:4] = 255  # exactly the Atelectasis box: IoU 1 at every threshold
    heat[1, :, :] = 0
    loc = _loc([(0.0, 0.0, 4.0, 4.0), (4.0, 4.0, 4.0, 4.0)], ["Atelectasis", "Cardiomegaly"])
    records, summary = _score(
        {"EigenCAM": heat},
        {"EigenCAM": np.array([False, True])},
        loc,
        np.full((2, 2), 0.2),
        thresholds=[0.1],
        box_thresholds=[0.1, 0.5],
        positive_threshold=0.5,
    )
    method = summary["methods"]["EigenCAM"]
    assert method["iou"]["t010"] == {"Atelectasis": 1.0, "Cardiomegaly": 0.0, "mean": 0.5}
    assert method["pointing"] == {"Atelectasis": 1.0, "Cardiomegaly": 0.0, "mean": 0.5}
    assert method["box_acc_iobb"]["t010"] == {"T010": 0.5, "T050": 0.5}
    assert method["degenerate_fraction"] == 0.5
    assert summary["n_boxes"] == 2 and summary["n_images"] == 2 and summary["image_size"] == 8
    # the method's rows, then the image-independent baselines scored by the same code
    assert (
        records["method"].tolist()
        == ["EigenCAM"] * 2 + ["BoxPrior"] * 2 + ["UniformMap"] * 2 + ["CentreMap"] * 2
    )


def test_every_average_is_over_classes_not_boxes():
    # three Atelectasis boxes (one hit) and one Cardiomegaly box (hit): the class mean is
    # (1/3 + 1) / 2 = 2/3 for the pointing game and the paper IoU alike; over boxes it would be 1/2
    heat = np.zeros((4, 8, 8), np.uint8)
    heat[0, 0:4, 0:4] = 255  # on its box
    heat[1:3, 6:8, 6:8] = 255  # away from the box
    heat[3, 4:8, 4:8] = 255  # on its box
    boxes = [(0.0, 0.0, 4.0, 4.0)] * 3 + [(4.0, 4.0, 4.0, 4.0)]
    loc = _loc(boxes, ["Atelectasis"] * 3 + ["Cardiomegaly"])
    _, summary = _score({"GradCAM": heat}, {"GradCAM": np.zeros(4, bool)}, loc, np.zeros((4, 2)),
                        thresholds=[0.5], box_thresholds=[0.5], positive_threshold=0.5)  # fmt: skip
    method = summary["methods"]["GradCAM"]
    assert method["pointing"] == {"Atelectasis": pytest.approx(1 / 3), "Cardiomegaly": 1.0,
                                  "mean": pytest.approx(2 / 3)}  # fmt: skip
    assert method["iou"]["t050"]["mean"] == pytest.approx(2 / 3)
    assert method["box_acc_iou"]["t050"]["T050"] == pytest.approx(2 / 3)


def test_threshold_keys_and_size_mismatch():
    assert [threshold_key(a) for a in (0.1, 0.15, 0.45)] == ["t010", "t015", "t045"]
    assert threshold_key(0.5, "T") == "T050"
    loc = _loc([(0.0, 0.0, 4.0, 4.0)], ["Atelectasis"])
    with pytest.raises(ValueError, match="re-run the cams stage"):
        _score(
            {"GradCAM": np.zeros((2, 8, 8), np.uint8)},
            {"GradCAM": np.zeros(2, bool)},
            loc,
            np.zeros((1, 2)),
            thresholds=[0.1],
            box_thresholds=[0.5],
            positive_threshold=0.5,
        )


def test_positive_pred_uses_the_configured_cut():
    heat = np.zeros((2, 8, 8), np.uint8)
    loc = _loc([(2.0, 2.0, 4.0, 4.0)] * 2, ["Atelectasis"] * 2)
    common = {"thresholds": [0.1], "box_thresholds": [0.5]}
    args = ({"GradCAM": heat}, {"GradCAM": np.zeros(2, bool)}, loc, np.array([[0.4, 0.1]] * 2))
    low, _ = _score(*args, positive_threshold=0.3, **common)
    high, _ = _score(*args, positive_threshold=0.5, **common)
    assert bool(low.iloc[0]["positive_pred"]) and not bool(high.iloc[0]["positive_pred"])


def test_an_empty_half_is_refused_with_the_param_named():
    from cxr_core.errors import ArtifactError

    loc = _loc([(2.0, 2.0, 4.0, 4.0)] * 2, ["Atelectasis"] * 2).assign(subset="report")
    with pytest.raises(ArtifactError, match="no box in its tune half.*split.loc_tune_fraction"):
        _score({"GradCAM": np.zeros((2, 8, 8), np.uint8)}, {"GradCAM": np.zeros(2, bool)}, loc,
               np.zeros((2, 2)), thresholds=[0.1], box_thresholds=[0.5], positive_threshold=0.5)  # fmt: skip
