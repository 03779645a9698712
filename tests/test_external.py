"""External validation: the shifted phantom, the leakage guard, the decoded set and the scores."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from oracles import explicit_resamples
from PIL import Image
from sklearn.metrics import roc_auc_score

from cxr_core.audit.external import box_targets, class_aucs, external_summary, mapped
from cxr_core.data.external import chexpert, leakage
from cxr_core.data.external import phantom as ext_phantom
from cxr_core.data.external.base import ExternalDataError, ExternalTable, MappedClass
from cxr_core.data.external.build import LeakageSettings, NihImages, build_external
from cxr_core.data.external.registry import ReadSet, read_dataset
from cxr_core.data.external.store import ExternalSet
from cxr_core.evaluate.metrics import bootstrap_auc_ci
from cxr_core.labels import LABEL_INDEX, LABELS

SMALL = {
    "images": 30,
    "image_px": 96,
    "seed": 3,
    "contrast": 0.7,
    "noise": 6.0,
    "jpeg_quality": 85,
    "uncertain_fraction": 0.3,
    "blank_fraction": 0.05,
    "lateral_fraction": 0.3,
    "prevalence_floor": 0.3,
}
CHEXPERT = {"path": None, "csv": "valid.csv", "uncertain": "missing", "frontal_only": True}


def external_section(**phantom) -> dict:
    return {
        "datasets": ["phantom"],
        "leakage": "refuse",
        "leakage_correlation": 0.95,
        "min_positives": 5,
        "chexpert": dict(CHEXPERT),
        "vindr": {"path": None, "min_readers": 2},
        "padchest": {"path": None, "projections": ["PA", "AP"]},
        "phantom": {**SMALL, "uncertain": "missing", **phantom},
    }


# --------------------------------------------------------------------------- the shifted phantom


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory) -> tuple[ExternalTable, pd.DataFrame, Path]:
    work = tmp_path_factory.mktemp("ext")
    cfg = ext_phantom.ExternalPhantomConfig.from_params(SMALL)
    truth = ext_phantom.generate(cfg, work / "source")
    read = read_dataset(external_section(), "phantom", work / "again")
    assert read.source == "synthetic" and read.settings == {
        "csv": "valid.csv",
        "uncertain": "missing",
        "frontal_only": True,
    }
    return read.table, truth, work / "again" / "source"


def test_phantom_is_read_back_by_the_chexpert_reader_with_its_truth(phantom_set) -> None:
    table, truth, root = phantom_set
    csv = pd.read_csv(root / ext_phantom.FOLDER / ext_phantom.CSV)
    lateral = int((csv["Frontal/Lateral"] == "Lateral").sum())
    assert lateral > 0 and table.counts["lateral_skipped"] == lateral
    assert table.images == truth["Path"].tolist() and len(table.images) == SMALL["images"]
    lesion = table.class_names.index("Lung Lesion")
    expected = truth[["Mass", "Nodule"]].max(axis=1).to_numpy(float)
    known = np.isfinite(table.labels[:, lesion])
    # every labelled value is the truth; the unlabelled ones were written as -1 (positives) or blank
    assert np.array_equal(table.labels[known, lesion], expected[known])
    raw = csv[csv["Frontal/Lateral"] == "Frontal"]["Lung Lesion"].to_numpy()
    assert np.array_equal(~known, np.isnan(raw) | (raw == -1.0))
    assert (raw == -1.0).any()  # uncertain labels were written and became missing


def test_the_same_config_writes_the_same_bytes(phantom_set, tmp_path: Path) -> None:
    table, _, root = phantom_set
    again = tmp_path / "source"
    ext_phantom.generate(ext_phantom.ExternalPhantomConfig.from_params(SMALL), again)
    for rel in [ext_phantom.FOLDER + "/" + ext_phantom.CSV, table.images[0], table.images[-1]]:
        assert (again / rel).read_bytes() == (root / rel).read_bytes()


def test_shift_is_identity_without_contrast_or_noise_and_scales_contrast() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(60, 200, size=(32, 32)).astype(np.uint8)
    same = ext_phantom.ExternalPhantomConfig(**{**SMALL, "contrast": 1.0, "noise": 0.0})
    assert np.array_equal(ext_phantom.shift(img, same, rng), img)
    flat = ext_phantom.ExternalPhantomConfig(**{**SMALL, "contrast": 0.5, "noise": 0.0})
    out = ext_phantom.shift(img, flat, rng).astype(float)
    assert out.std() == pytest.approx(0.5 * img.std(), abs=0.6)


# --------------------------------------------------------------------------- the leakage guard


def _resaved(img: np.ndarray) -> np.ndarray:
    """What a re-release does to an image: another window, 3x the size, JPEG, and back to the cache size."""
    shifted = np.clip(0.8 * img.astype(float) + 20, 0, 255).astype(np.uint8)
    big = Image.fromarray(shifted).resize((3 * img.shape[0],) * 2, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG", quality=85)
    return np.asarray(Image.open(buffer).convert("L").resize(img.shape[::-1], Image.Resampling.BILINEAR))


@pytest.fixture(scope="module")
def nih_images(phantom_data) -> np.ndarray:
    from cxr_core.data.cache import load_cache

    images, _ = load_cache(phantom_data.cache)
    return np.asarray(images)


def test_a_resaved_copy_is_found_and_other_patients_are_not(nih_images: np.ndarray) -> None:
    nih = nih_images[:80]
    copies = np.stack([_resaved(img) for img in nih[:12]])
    every = np.arange(len(nih))
    hits = leakage.near_copies(copies, nih, every, 0.95)
    assert [(i, j) for i, j, _ in hits] == [(i, i) for i in range(12)]
    assert all(r > 0.97 for _, _, r in hits)  # the margins docs/external.md states
    # the phantom's patients look far more alike than real ones, and still none is taken for another
    others = leakage.near_copies(nih[40:], nih, np.arange(40), 0.5)
    assert others and max(r for _, _, r in others) < 0.93


def test_the_search_does_not_depend_on_its_chunks(nih_images: np.ndarray, monkeypatch) -> None:
    query = np.concatenate([np.stack([_resaved(img) for img in nih_images[:5]]), nih_images[50:60]])
    whole = leakage.near_copies(query, nih_images, np.arange(50), 0.9)
    monkeypatch.setattr(leakage, "_CHUNK", 3)
    chunked = leakage.near_copies(query, nih_images, np.arange(50), 0.9)
    assert [h[:2] for h in chunked] == [h[:2] for h in whole] and len(whole) >= 5
    assert [h[2] for h in chunked] == pytest.approx([h[2] for h in whole], abs=1e-5)
    fp = leakage.fingerprints(query[:2])
    assert np.allclose(np.linalg.norm(fp, axis=1), 1.0) and np.allclose(fp.mean(axis=1), 0.0, atol=1e-6)


def test_the_shifted_phantom_is_not_leaked_from_nih(phantom_set, nih_images: np.ndarray) -> None:
    table, _, _ = phantom_set
    from cxr_core.data.decode import decode_image

    ext = np.stack([decode_image(f, nih_images.shape[1]) for f in table.files])
    assert leakage.near_copies(ext, nih_images, np.arange(len(nih_images)), 0.95) == []


def test_nih_derived_sets_are_recognised_by_their_files(tmp_path: Path) -> None:
    (tmp_path / "stage_2_train_labels.csv").write_text("patientId,x,y,width,height,Target\n")
    (tmp_path / "siim").mkdir()
    (tmp_path / "siim" / "train-rle.csv").write_text("ImageId, EncodedPixels\n")
    found = leakage.nih_derived(tmp_path)
    assert any("RSNA" in f for f in found) and any("SIIM" in f for f in found)
    assert leakage.nih_derived(tmp_path / "siim") == [f for f in found if "SIIM" in f]


def _table_of(files: list[Path], boxes: pd.DataFrame | None = None) -> ReadSet:
    cls = (MappedClass("Effusion", ("Effusion",), "Pleural Effusion"),)
    labels = np.array([[i % 2] for i in range(len(files))], dtype=np.float32)
    names = [f.name for f in files]
    table = ExternalTable(
        "testset", cls, files, names, [f"p{i // 2}" for i in range(len(files))], labels, boxes
    )
    return ReadSet(table, "x", {"some": "setting"})


def _nih_like(tmp_path: Path, phantom_data, n: int) -> tuple[list[Path], np.ndarray]:
    from cxr_core.data.cache import load_cache

    images, index = load_cache(phantom_data.cache)
    files = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.asarray(images[i])).resize((200, 100)).save(path)
        files.append(path)
    return files, np.asarray(images)


def test_build_refuses_or_drops_nih_copies_naming_them(tmp_path: Path, phantom_data) -> None:
    files, nih = _nih_like(tmp_path, phantom_data, 6)
    rows = np.arange(3, 40)  # img3..img5 are NIH copies
    size = nih.shape[1]
    reference = NihImages(nih, rows, [f"nih{i}.png" for i in rows])
    common = {"size": size, "workers": 1, "on_error": "fail", "nih": reference}
    with pytest.raises(ExternalDataError, match=r"3 image\(s\).*img3.png ~ nih3.png \(r = "):
        build_external(
            _table_of(files), tmp_path / "out", leakage_settings=LeakageSettings("refuse", 0.95), **common
        )
    manifest = build_external(
        _table_of(files), tmp_path / "out", leakage_settings=LeakageSettings("drop", 0.95), **common
    )
    assert manifest["n_images"] == 3 and manifest["left_out"]["leakage_dropped"] == 3
    assert manifest["settings"] == {"some": "setting"} and manifest["bootstrap_group"] == "patient"
    assert not list((tmp_path / "out").glob("*.partial"))
    kept = ExternalSet.read(tmp_path / "out")
    assert kept.table["image"].tolist() == ["img0.png", "img1.png", "img2.png"]
    assert kept.images.shape == (3, size, size) and kept.labels[:, 0].tolist() == [0.0, 1.0, 0.0]


def test_build_names_unreadable_files_and_scales_boxes(tmp_path: Path, phantom_data) -> None:
    files, nih = _nih_like(tmp_path, phantom_data, 3)
    boxes = pd.DataFrame(
        {"image": ["img1.png", "img1.png"], "label": ["Effusion"] * 2, "x0": [20.0, 0.0], "y0": [10.0, 50.0],
         "x1": [120.0, 400.0], "y1": [60.0, 100.0]}
    )  # fmt: skip
    common = {
        "size": nih.shape[1], "workers": 1, "nih": NihImages(nih, np.arange(10, 20), [str(i) for i in range(10)]),
        "leakage_settings": LeakageSettings("refuse", 0.95),
    }  # fmt: skip
    manifest = build_external(_table_of(files, boxes), tmp_path / "ok", on_error="fail", **common)
    kept = ExternalSet.read(tmp_path / "ok")
    assert manifest["n_boxes"] == 2  # the image is 200 x 100: boxes become fractions, clipped at 1
    assert kept.boxes[["x0", "y0", "x1", "y1"]].to_numpy().tolist() == [
        [0.0, 0.5, 1.0, 1.0],
        [0.1, 0.1, 0.6, 0.6],
    ]
    files[2].write_bytes(b"not an image")
    with pytest.raises(ExternalDataError, match="img2.png"):
        build_external(_table_of(files, boxes), tmp_path / "bad", on_error="fail", **common)
    manifest = build_external(_table_of(files, boxes), tmp_path / "skip", on_error="skip", **common)
    assert manifest["n_images"] == 2 and manifest["left_out"]["unreadable"] == 1
    assert manifest["unreadable"] == ["img2.png"]


def test_a_dataset_without_a_path_says_which_key_to_set(tmp_path: Path) -> None:
    section = external_section()
    with pytest.raises(ExternalDataError, match=r"external.chexpert.path is null"):
        read_dataset(section, "chexpert", tmp_path)
    section["chexpert"]["path"] = str(tmp_path / "nowhere")
    with pytest.raises(ExternalDataError, match="no such folder"):
        read_dataset(section, "chexpert", tmp_path)
    assert chexpert.NAME == "chexpert"


# --------------------------------------------------------------------------- the scores


def test_mapped_scores_take_the_max_over_the_nih_findings() -> None:
    probs = np.zeros((2, len(LABELS)))
    probs[0, LABEL_INDEX["Mass"]], probs[0, LABEL_INDEX["Nodule"]] = 0.2, 0.7
    probs[1, LABEL_INDEX["Mass"]] = 0.4
    classes = [MappedClass("Lung Lesion", ("Mass", "Nodule"), "Lung Lesion", "proxy")]
    assert mapped(probs, classes)[:, 0].tolist() == [0.7, 0.4]


def _fake(rng: np.random.Generator, n: int, patients: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    targets = (rng.random((n, len(LABELS))) < 0.3).astype(np.uint8)
    probs = np.clip(0.3 * targets + rng.random((n, len(LABELS))) * 0.8, 0, 1)
    return targets, probs, rng.integers(0, patients, size=n)


def test_summary_matches_sklearn_on_the_labelled_rows_and_a_resample_loop() -> None:
    rng = np.random.default_rng(4)
    classes = [
        MappedClass("Effusion", ("Effusion",), "Pleural Effusion"),
        MappedClass("Lung Lesion", ("Mass", "Nodule"), "Lung Lesion", "proxy"),
    ]
    t, p, g = _fake(rng, 120, 40)
    labels = mapped(t, classes)
    labels[rng.random(labels.shape) < 0.15] = np.nan  # missing labels are left out, not negatives
    nt, npr, ng = _fake(rng, 150, 50)
    out = external_summary(classes, (labels, p, g), (nt, npr, ng), n_boot=40, ci=0.9, seed=3)
    scores = mapped(p, classes)
    for k, c in enumerate(classes):
        ok = np.isfinite(labels[:, k])
        assert out["classes"][c.name]["auc"] == pytest.approx(roc_auc_score(labels[ok, k], scores[ok, k]))
        nih = roc_auc_score(mapped(nt, classes)[:, k], mapped(npr, classes)[:, k])
        assert out["classes"][c.name]["nih_auc"] == pytest.approx(nih)
        assert out["classes"][c.name]["n_labelled"] == ok.sum()
    # the external replicates: one patient draw shared by the classes, each read on its labelled rows
    _, reps = class_aucs(labels, scores, g, n_boot=40, seed=[3, 1])
    for r, rows in enumerate(explicit_resamples(g, 40, [3, 1])):
        for k in range(2):
            keep = rows[np.isfinite(labels[rows, k])]
            y = labels[keep, k]
            expected = roc_auc_score(y, scores[keep, k]) if 0 < y.sum() < len(y) else np.nan
            assert reps[r, k] == pytest.approx(expected, nan_ok=True)


def test_the_nih_side_reproduces_the_test_stages_interval_for_a_direct_class() -> None:
    rng = np.random.default_rng(5)
    classes = [MappedClass("Effusion", ("Effusion",), "Pleural Effusion")]
    t, p, g = _fake(rng, 100, 30)
    nt, npr, ng = _fake(rng, 200, 60)
    out = external_summary(classes, (mapped(t, classes), p, g), (nt, npr, ng), n_boot=60, ci=0.95, seed=7)
    low, high, _, _ = bootstrap_auc_ci(nt, npr, ng, n_boot=60, ci=0.95, seed=7)
    k = LABEL_INDEX["Effusion"]
    assert out["classes"]["Effusion"]["nih_auc_ci"] == pytest.approx([low[k], high[k]])
    drop = out["classes"]["Effusion"]
    assert drop["drop"] == pytest.approx(drop["auc"] - drop["nih_auc"])
    assert out["macro_auc"] == pytest.approx(drop["auc"]) and out["macro_classes"] == ["Effusion"]


def test_box_targets_are_the_union_of_every_readers_box() -> None:
    boxes = pd.DataFrame(
        {"row": [2, 2, 0], "image": ["b", "b", "a"], "label": ["Effusion"] * 3,
         "x0": [0.0, 0.5, 0.25], "y0": [0.0, 0.5, 0.25], "x1": [0.25, 1.0, 0.5], "y1": [0.25, 1.0, 0.5]}
    )  # fmt: skip
    rows, names, masks = box_targets(boxes, 8)
    assert rows.tolist() == [0, 2] and names == ["Effusion", "Effusion"]
    expected = np.zeros((8, 8), bool)
    expected[:2, :2] = expected[4:, 4:] = True
    assert np.array_equal(masks[1], expected) and masks[0].sum() == 4


def test_box_scores_known_answer(monkeypatch) -> None:
    """Maps that are exactly the union mask hit and have IoU 1; maps peaked outside miss, IoU 0."""
    import cxr_core.audit.external as ext
    import cxr_core.explain.cams.batch_loop as compute
    from cxr_core.explain.cams.base_cam import CamMaps
    from cxr_core.explain.cams.settings import CamSettings
    from cxr_core.runtime import Runtime

    size = 16
    boxes = pd.DataFrame(
        {"row": [0, 0, 1], "image": ["a", "a", "b"], "label": ["Nodule/Mass", "Nodule/Mass", "Effusion"],
         "x0": [0.0, 0.5, 0.5], "y0": [0.0, 0.5, 0.0], "x1": [0.25, 0.75, 1.0], "y1": [0.25, 0.75, 0.5]}
    )  # fmt: skip
    classes = [
        MappedClass("Effusion", ("Effusion",), "Pleural effusion"),
        MappedClass("Nodule/Mass", ("Mass", "Nodule"), "Nodule/Mass", "proxy"),
    ]
    rows, names, masks = box_targets(boxes, size)
    seen = {}

    def fake_cams(model, spec, x, class_indices, methods, **kwargs):
        seen["targets"] = list(np.asarray(class_indices))
        inside = masks.astype(np.float32)
        outside = np.zeros_like(inside)
        outside[:, -1, 0] = 1.0  # bottom-left corner: in neither box
        # "Raw": a normalised map inside the box but a raw map peaked outside it; the pointing game
        # reads the raw map (the IoU the normalised one), as on NIH
        return {
            "Good": CamMaps(inside, inside),
            "Bad": CamMaps(outside, outside),
            "Raw": CamMaps(inside, outside),
        }

    monkeypatch.setattr(compute, "compute_cams", fake_cams)
    probs = np.zeros((2, len(LABELS)), np.float32)
    probs[0, LABEL_INDEX["Nodule"]] = 0.9  # the proxy is explained for its more probable finding
    settings = CamSettings(("Good", "Bad", "Raw"), 8, 0, "pytorch-grad-cam", 32)
    images = np.zeros((2, size, size), np.uint8)

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x

    out = ext.external_box_scores(
        Identity(), None, images, probs, boxes, classes, settings, Runtime.cpu(),
        {"Good": 0.5, "Bad": 0.5, "Raw": 0.5},
    )  # fmt: skip
    assert seen["targets"] == [LABEL_INDEX["Nodule"], LABEL_INDEX["Effusion"]]
    assert [names[i] for i in range(2)] == ["Nodule/Mass", "Effusion"] and rows.tolist() == [0, 1]
    good, bad = out["methods"]["Good"], out["methods"]["Bad"]
    assert good["pointing"] == {"Effusion": 1.0, "Nodule/Mass": 1.0, "mean": 1.0}
    assert good["iou_tuned"]["mean"] == 1.0 and bad["iou_tuned"]["mean"] == 0.0
    assert bad["pointing"]["mean"] == 0.0 and out["n_targets"] == 2 and out["n_images"] == 2
    raw = out["methods"]["Raw"]
    assert raw["pointing"]["mean"] == 0.0 and raw["iou_tuned"]["mean"] == 1.0


def test_the_shipped_default_run_shows_the_known_answer() -> None:
    """The committed phantom run: its best NIH model scores the shifted set above chance and below
    its NIH AUC of the same classes (the known answer of issue-free wiring)."""
    import json

    root = Path(__file__).resolve().parents[1]
    doc = json.loads((root / "metrics" / "external" / "phantom.json").read_text())
    best = json.loads((root / "metrics" / "headline.json").read_text())["best"]
    run = doc["models"][best["model"]][f"seed{best['seed']}"]
    assert doc["phantom"] and run["macro_auc_ci"][0] > 0.5 and run["macro_drop_ci"][1] < 0.0, run
