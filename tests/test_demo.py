"""The demo's page logic without Gradio (the browser test drives the real page) and ``cxr demo``:
models as ``<model>/seed<k>`` and export folders, the phantom banner, messages and boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from app_files import MODEL, anatomy, tiny_checkpoint, write_dicom, write_png
from click.testing import CliRunner

from cxr_core.app.cli import main
from cxr_core.app.imaging import ImageLimits
from cxr_core.labels import LABELS
from cxr_core.models.checkpoints import load_checkpoint, save_checkpoint

pytest.importorskip("pydicom", reason="DICOM support needs pydicom (pip install -e '.[demo]')")


KEY = f"{MODEL}/seed0"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/MODEL/seed0/best.pt, trained (so to speak) on NIH's data: no phantom warning."""
    return with_source(
        tiny_checkpoint(tmp_path_factory.mktemp("models") / MODEL / "seed0" / "best.pt"), "nih"
    )


def with_source(path: Path, data_source: str) -> Path:
    state = load_checkpoint(path)
    state.update(data_source=data_source, label_file="Data_Entry_2017_v2020.csv")
    save_checkpoint(path, state)
    return path


def test_demo_backend_messages_and_boxes(checkpoint: Path, tmp_path: Path, single_thread: None) -> None:
    from cxr_core.app.demo import TOP_FINDING, DemoBackend

    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "loc.csv").write_text(
        "row,image,patient,label,label_index,x,y,w,h,x1024,y1024,w1024,h1024,subset\n"
        "0,00000001_000.png,1,Effusion,2,1,1,1,1,512.0,600.0,256.0,200.0,report\n"
    )
    backend = DemoBackend(checkpoint.parents[2], splits, display_px=128)
    assert backend.models == [KEY]
    png = write_png(tmp_path / "00000001_000.png", (anatomy(256, 256) // 16).astype(np.uint8))

    result = backend.analyse(str(png), KEY, TOP_FINDING, "GradCAM")
    assert (
        not result.error and result.probabilities is not None and list(result.probabilities) == list(LABELS)
    )
    assert result.finding == max(result.probabilities, key=result.probabilities.get)
    assert result.heatmap_image.shape == (128, 128, 3) and result.boxes == [
        (512.0, 600.0, 256.0, 200.0, "Effusion")
    ]
    assert tuple(result.input_image[75, 64]) == (0, 255, 0)  # box left edge at 512 / 1024 * 128 = 64
    assert "radiologist box" in result.message and "Phantom" not in result.message
    assert "Phantom" not in backend.notice(KEY) and "<code>nih</code>" in backend.notice(KEY)

    text = tmp_path / "notes.txt"
    text.write_text("hello")
    refused = backend.analyse(str(text), KEY, "Effusion", "GradCAM")
    assert refused.error and refused.probabilities is None and "`notes.txt`" in refused.message
    assert "not an image file" in refused.message
    assert "Upload" in backend.analyse(None, KEY, "Effusion", "GradCAM").message


def test_demo_backend_reads_dicom_and_refuses_large_files(
    checkpoint: Path, tmp_path: Path, single_thread: None
) -> None:
    from cxr_core.app.demo import DemoBackend

    dcm = write_dicom(tmp_path / "scan.dcm", (4095 - anatomy(128, 128)).astype(np.uint16), "MONOCHROME1")
    result = DemoBackend(checkpoint.parents[2], tmp_path / "no-splits", display_px=96).analyse(
        str(dcm), KEY, "Cardiomegaly", "GradCAM"
    )
    assert not result.error and result.finding == "Cardiomegaly" and result.boxes == []
    assert result.heatmap_image.shape == (96, 96, 3)

    small = DemoBackend(checkpoint.parents[2], tmp_path, limits=ImageLimits(max_bytes=1000))
    refused = small.analyse(str(dcm), KEY, "Cardiomegaly", "GradCAM")
    assert refused.error and "`scan.dcm`" in refused.message and "MB limit" in refused.message
    rgb = write_dicom(tmp_path / "colour.dcm", np.zeros((8, 8, 3), np.uint8), "RGB", 8)
    assert "'RGB' is not supported" in small.analyse(str(rgb), KEY, "Mass", "GradCAM").message


def test_cxr_demo_without_trained_models_says_how_to_train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["demo", "--models-dir", str(tmp_path / "models")])
    assert result.exit_code == 1 and "no trained model" in result.output and "dvc repro" in result.output
    assert "models/<model>/seed<k>/best.pt" in result.output


def test_demo_lists_seeds_and_exports_and_warns_about_phantom_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread: None
) -> None:
    from cxr_core.app.demo import PHANTOM_NOTE, DemoBackend, pick_model, trained_models

    models = tmp_path / "models"
    for seed, source in ((10, "nih"), (2, "synthetic")):
        with_source(tiny_checkpoint(models / MODEL / f"seed{seed}" / "best.pt", seed=seed), source)
    (models / "old_layout").mkdir()
    tiny_checkpoint(models / "old_layout" / "best.pt")  # the layout before seeds: not offered
    assert list(trained_models(models)) == [f"{MODEL}/seed2", f"{MODEL}/seed10"]  # seeds in numeric order
    assert pick_model(list(trained_models(models)), MODEL) == f"{MODEL}/seed2"
    assert pick_model(list(trained_models(models)), "densenet121") is None

    monkeypatch.chdir(tmp_path)
    exported = CliRunner().invoke(
        main, ["export", "--checkpoint", str(models / MODEL / "seed2/best.pt"), "shared"]
    )
    assert exported.exit_code == 0, exported.output
    backend = DemoBackend(models, tmp_path / "no-splits", exports=[tmp_path / "shared"], display_px=64)
    assert backend.models == [f"{MODEL}/seed2", f"{MODEL}/seed10", "shared"]

    png = write_png(tmp_path / "x.png", (anatomy(64, 64) // 16).astype(np.uint8))
    for key, phantom in ((f"{MODEL}/seed2", True), (f"{MODEL}/seed10", False), ("shared", True)):
        notice = backend.notice(key)
        assert ("Phantom model" in notice) is phantom and (
            "never use them for a patient" in notice
        ) is phantom
        result = backend.analyse(str(png), key, "Effusion", "GradCAM")
        assert not result.error and result.message.startswith(PHANTOM_NOTE) is phantom
    np.testing.assert_allclose(  # the export scores as its checkpoint does
        list(backend.analyse(str(png), "shared", "Mass", "GradCAM").probabilities.values()),
        list(backend.analyse(str(png), f"{MODEL}/seed2", "Mass", "GradCAM").probabilities.values()),
        atol=1e-6,
    )


def test_demo_shows_calls_at_the_validation_operating_points(
    checkpoint: Path, tmp_path: Path, single_thread: None
) -> None:
    import json

    from cxr_core.app.demo import DemoBackend, calls_table

    png = write_png(tmp_path / "x.png", (anatomy(64, 64) // 16).astype(np.uint8))
    operating = tmp_path / "operating"
    none_yet = DemoBackend(checkpoint.parents[2], tmp_path, operating_dir=operating)
    result = none_yet.analyse(str(png), KEY, "Effusion", "GradCAM")
    assert not result.error and result.calls is None
    table = calls_table(result, none_yet.predictor(KEY).operating)
    assert "No operating points" in table and "call at" not in table

    probs = result.probabilities
    thresholds = {label: probs[label] for label in LABELS}  # p >= t: every call positive ...
    thresholds["Mass"] = min(1.0, probs["Mass"] + 1e-6)  # ... but this one
    thresholds["Hernia"] = None
    (operating / MODEL).mkdir(parents=True)
    doc = {"model": MODEL, "seed": 0, "method": "youden", "chosen_on": "val", "temperature": None}
    (operating / MODEL / "seed0.json").write_text(json.dumps({**doc, "thresholds": thresholds}))
    backend = DemoBackend(checkpoint.parents[2], tmp_path, operating_dir=operating)
    result = backend.analyse(str(png), KEY, "Effusion", "GradCAM")
    want = {label: "positive" for label in LABELS} | {"Mass": "negative", "Hernia": None}
    assert result.calls == want
    table = calls_table(result, backend.predictor(KEY).operating)
    assert "<th>call at the val operating point</th>" in table and "validation split (youden)" in table
    assert f"<td>Mass</td><td>{probs['Mass']:.3f}</td><td>negative</td>" in table
    assert "<td>Hernia</td>" in table and "no threshold" in table

    (operating / MODEL / "seed0.json").write_text(json.dumps({**doc, "thresholds": {"Mass": 0.5}}))
    broken = DemoBackend(checkpoint.parents[2], tmp_path, operating_dir=operating)
    refused = broken.analyse(str(png), KEY, "Effusion", "GradCAM")
    assert refused.error and "seed0.json" in refused.message


def test_demo_calls_of_a_temperature_scaled_run_use_the_scaled_probabilities(
    checkpoint: Path, tmp_path: Path, single_thread: None
) -> None:
    import json

    from scipy.special import expit

    from cxr_core.app.demo import DemoBackend, calls_table

    png = write_png(tmp_path / "x.png", (anatomy(64, 64) // 16).astype(np.uint8))
    operating = tmp_path / "operating"
    (operating / MODEL).mkdir(parents=True)
    backend = DemoBackend(checkpoint.parents[2], tmp_path, operating_dir=operating)
    predictor = backend.predictor(KEY)  # loaded before the file exists: no operating points yet
    logits = predictor.logits(predictor.load(png))[0].astype(np.float64)
    scaled = expit(logits / 2.0)
    thresholds = {label: float(v) for label, v in zip(LABELS, scaled, strict=True)}
    thresholds["Edema"] = float(np.nextafter(scaled[LABELS.index("Edema")], 2.0))  # just above: negative
    doc = {"model": MODEL, "seed": 0, "method": "max_f1", "chosen_on": "val", "temperature": 2.0}
    (operating / MODEL / "seed0.json").write_text(json.dumps({**doc, "thresholds": thresholds}))
    backend = DemoBackend(checkpoint.parents[2], tmp_path, operating_dir=operating)
    result = backend.analyse(str(png), KEY, "Effusion", "GradCAM")
    assert result.calls == {label: "positive" for label in LABELS} | {"Edema": "negative"}
    np.testing.assert_allclose(list(result.scaled.values()), scaled, rtol=0, atol=1e-12)
    table = calls_table(result, backend.predictor(KEY).operating)
    assert "<th>scaled (T = 2)</th>" in table and "scaled probability" in table and "(max_f1)" in table


def _raw_folder(tmp_path: Path, names: list[str]) -> Path:
    """An official-layout raw folder holding ``names`` (its manifest as the download stage writes it)."""
    import json

    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    for name in names:
        write_png(raw / "images" / name, (anatomy(64, 64) // 16).astype(np.uint8))
    fields = {"source": "nih", "label_file": "x", "layout": "official", "image_root": "."}
    (raw / "manifest.json").write_text(
        json.dumps({**fields, "images": len(names), "missing": [], "fingerprint": "0"})
    )
    return raw


def test_demo_examples_are_boxed_images_one_per_finding(tmp_path: Path) -> None:
    from cxr_core.app.demo import example_images

    box = (1.0, 1.0, 10.0, 10.0)
    boxes = {
        "b.png": [(*box, "Mass"), (*box, "Effusion")],
        "a.png": [(*box, "Effusion")],
        "c.png": [(*box, "Nodule")],
        "gone.png": [(*box, "Atelectasis")],  # in loc.csv, not in the raw folder: left out
    }
    raw = _raw_folder(tmp_path, ["a.png", "b.png", "c.png", "unboxed.png"])
    assert [p.name for p in example_images(raw, boxes)] == ["a.png", "b.png", "c.png"]
    assert [p.name for p in example_images(raw, boxes, limit=2)] == ["a.png", "b.png"]
    assert example_images(tmp_path / "no-raw", boxes) == []  # a clone before `dvc repro`


def test_demo_starts_on_the_last_runs_best_model_with_examples(tmp_path: Path, single_thread: None) -> None:
    pytest.importorskip("gradio", reason="the demo extra (pip install -e '.[demo]')")
    import json

    import gradio as gr

    from cxr_core.app.demo import best_of_last_run, build_app

    models = tmp_path / "models"
    for seed in (0, 1):
        tiny_checkpoint(models / MODEL / f"seed{seed}" / "best.pt", seed=seed)
    keys = [f"{MODEL}/seed0", f"{MODEL}/seed1"]
    headline = tmp_path / "headline.json"
    best = {"model": MODEL, "seed": 1, "checkpoint": f"models/{MODEL}/seed1/best.pt", "macro_auc": 0.7}
    headline.write_text(json.dumps({"best": best, "models": {}}))
    assert best_of_last_run(keys, headline) == f"{MODEL}/seed1"
    assert best_of_last_run(keys, tmp_path / "none.json") is None
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"best": {**best, "model": "densenet121"}, "models": {}}))
    assert best_of_last_run(keys, other) is None  # best of another workspace: not offered here
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert best_of_last_run(keys, broken) is None  # logged; the page still starts

    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "loc.csv").write_text(
        "row,image,patient,label,label_index,x,y,w,h,x1024,y1024,w1024,h1024,subset\n"
        "0,00000001_000.png,1,Effusion,2,1,1,1,1,512.0,600.0,256.0,200.0,report\n"
    )
    raw = _raw_folder(tmp_path, ["00000001_000.png"])
    app = build_app(models, splits, raw_dir=raw, headline=headline, operating_dir=None)
    dropdowns = {c.label: c.value for c in app.blocks.values() if isinstance(c, gr.Dropdown)}
    assert dropdowns["Model"] == f"{MODEL}/seed1"
    assert [p.name for p in app.cxr_backend.examples] == ["00000001_000.png"]
    assert any(isinstance(c, gr.Dataset) for c in app.blocks.values())  # gr.Examples renders a Dataset
    first = build_app(models, splits, raw_dir=raw, headline=None, operating_dir=None)
    assert {c.label: c.value for c in first.blocks.values() if isinstance(c, gr.Dropdown)}["Model"] == keys[0]
