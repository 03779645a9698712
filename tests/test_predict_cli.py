"""``Predictor`` and ``cxr predict``: the pipeline's probabilities for user files, CSV / JSON, overlays,
which model is used (--model / --seed / the last run's best), the phantom warning, exit codes."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from app_files import MODEL, SIZE, anatomy, direct_probs, tiny_checkpoint, write_dicom, write_png
from click.testing import CliRunner
from PIL import Image
from scipy.special import expit

from cxr_core.app.cli import main
from cxr_core.app.imaging import read_image
from cxr_core.app.predictor import Predictor
from cxr_core.data.decode import decode_image
from cxr_core.labels import LABELS
from cxr_core.models.checkpoints import load_checkpoint, save_checkpoint

pytest.importorskip("pydicom", reason="DICOM support needs pydicom (pip install -e '.[demo]')")


PHANTOM_WARNING = "was trained on the phantom"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("models") / MODEL / "seed0" / "best.pt")


def with_source(path: Path, data_source: str, label_file: str = "Data_Entry_2017_v2020.csv") -> Path:
    """Rewrite a checkpoint's ``data_source`` / ``label_file`` (train@ records the raw manifest's)."""
    state = load_checkpoint(path)
    state.update(data_source=data_source, label_file=label_file)
    save_checkpoint(path, state)
    return path


def trained_project(root: Path, seeds: dict[int, str]) -> Path:
    """``root/data/models/MODEL/seed<k>/best.pt`` for each seed, with the given data sources."""
    for seed, source in seeds.items():
        with_source(
            tiny_checkpoint(root / "data/models" / MODEL / f"seed{seed}" / "best.pt", seed=seed), source
        )
    return root


def test_predictor_probabilities_and_heatmaps(checkpoint: Path, tmp_path: Path, single_thread: None) -> None:
    predictor = Predictor.from_checkpoint(checkpoint, MODEL)
    assert predictor.image_size == SIZE and predictor.name == MODEL
    png = write_png(tmp_path / "a.png", (anatomy(128, 128) // 16).astype(np.uint8))
    grey = predictor.load(png)
    probs = predictor.predict(grey)
    assert probs.shape == (1, 14) and probs.dtype == np.float32
    np.testing.assert_allclose(probs[0], direct_probs(checkpoint, decode_image(png, SIZE)), atol=1e-6)
    maps = predictor.heatmaps(np.stack([grey, grey]), ["Effusion", "Mass"], "EigenCAM")
    assert maps.shape == (2, SIZE, SIZE) and np.nanmax(maps) <= 1.0
    with pytest.raises(ValueError, match="unknown finding 'Efusion'"):
        predictor.heatmaps(grey, "Efusion", "GradCAM")
    with pytest.raises(ValueError, match="model's size"):
        predictor.predict(np.zeros((32, 32), np.uint8))


def test_cli_predict_folder_of_pngs_and_a_dicom(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread: None
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./params.yaml: the defaults apply
    folder = tmp_path / "xrays"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        grey = (anatomy(128, 128) // 16).astype(np.uint8)
        write_png(
            folder / f"0000000{i}_000.png",
            np.clip(grey + rng.integers(0, 40, grey.shape), 0, 255).astype(np.uint8),
        )
    dcm = write_dicom(folder / "scan.dcm", (4095 - anatomy(128, 128)).astype(np.uint16), "MONOCHROME1")
    out = tmp_path / "preds.csv"
    heat_dir = tmp_path / "heat"

    result = CliRunner().invoke(
        main,
        ["predict", "--model", MODEL, "--checkpoint", str(checkpoint), "--device", "cpu", "--out", str(out),
         "--heatmaps", str(heat_dir), "--finding", "Effusion", "--method", "GradCAM", "--overlay-px", "96",
         str(folder)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["file"]).name for r in rows] == [f"0000000{i}_000.png" for i in range(3)] + ["scan.dcm"]
    assert list(rows[0]) == ["file", *LABELS]
    for row in rows:
        probs = np.array([float(row[label]) for label in LABELS])
        assert np.all((probs >= 0) & (probs <= 1))
        path = Path(row["file"])
        grey = read_image(path, SIZE) if path.suffix == ".dcm" else decode_image(path, SIZE)
        np.testing.assert_allclose(probs, direct_probs(checkpoint, grey), atol=2e-6)
    overlays = sorted(p.name for p in heat_dir.iterdir())
    assert overlays == sorted(
        [f"0000000{i}_000.Effusion.GradCAM.png" for i in range(3)] + ["scan.Effusion.GradCAM.png"]
    )
    saved = Image.open(heat_dir / overlays[0])
    assert saved.size[0] == 96 and saved.size[1] > 96  # a caption band above the 96 x 96 overlay
    caption = saved.text  # PNG text chunks: a copied file still says what it shows
    p = float(rows[0]["Effusion"])
    assert caption["Finding"] == f"Effusion: p = {p:.3f}" and caption["Method"] == "GradCAM"
    assert caption["Model"] == MODEL and caption["Source"] == "00000000_000.png"
    assert "Warning" not in caption  # this checkpoint records no phantom source
    band = np.asarray(saved.convert("RGB"))[: saved.size[1] - 96]
    assert band.max() > 200 and band.min() == 0  # white text drawn on the black band
    assert dcm.exists()


def test_cli_predict_reports_bad_files_by_name_and_exits_1(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread: None
) -> None:
    monkeypatch.chdir(tmp_path)
    good = write_png(tmp_path / "good.png", (anatomy(64, 64) // 16).astype(np.uint8))
    bad = tmp_path / "report.txt"
    bad.write_text("not an image")
    rgb = write_dicom(tmp_path / "colour.dcm", np.zeros((8, 8, 3), np.uint8), "RGB", 8)
    result = CliRunner().invoke(
        main, ["predict", "--checkpoint", str(checkpoint), "--device", "cpu", str(good), str(bad), str(rgb)]
    )
    assert result.exit_code == 1
    rows = list(csv.DictReader(io.StringIO(result.stdout)))  # CSV on stdout, messages on stderr
    assert [r["file"] for r in rows] == [str(good)]
    assert "2 of 3 file(s) could not be read" in result.stderr
    assert f"{bad}: not an image file" in result.stderr and "colour.dcm" in result.stderr


def test_cli_predict_usage_errors(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    png = write_png(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    runner = CliRunner()
    result = runner.invoke(main, ["predict", "--model", "densenet121", str(png)])
    assert (
        result.exit_code == 1
        and "data/models/densenet121/seed0/best.pt: checkpoint not found" in result.output
    )
    result = runner.invoke(main, ["predict", "--model", "densenet121", "--seed", "3", str(png)])
    assert (
        result.exit_code == 1
        and "data/models/densenet121/seed3/best.pt: checkpoint not found" in result.output
    )
    result = runner.invoke(main, ["predict", "--seed", "3", str(png)])
    assert result.exit_code == 2 and "--seed needs --model" in result.output
    result = runner.invoke(
        main, ["predict", "--checkpoint", str(checkpoint), "--model-dir", str(tmp_path), str(png)]
    )
    assert result.exit_code == 2 and "not both" in result.output
    result = runner.invoke(
        main,
        ["predict", "--checkpoint", str(checkpoint), "--heatmaps", "h", "--finding", "Efusion", str(png)],
    )
    assert result.exit_code == 2 and "unknown finding 'Efusion'" in result.output
    result = runner.invoke(
        main, ["predict", "--model", "densenet169", "--checkpoint", str(checkpoint), str(png)]
    )
    assert result.exit_code == 1 and "not 'densenet169'" in result.output


def test_cli_predict_names_the_params_key_for_a_model_no_stage_trains(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((Path(__file__).parents[1] / "params.yaml").read_text())
    png = write_png(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    result = CliRunner().invoke(main, ["predict", "--model", "resnet50", str(png)])
    assert result.exit_code == 1 and "resnet50 is not in `models` of params.yaml" in result.output
    assert (
        "models=[densenet121,densenet169,efficientnet_b0,efficientnet_b1,swin_small,swin_base,resnet50]"
        in (result.output)
    )
    result = CliRunner().invoke(
        main, ["predict", "--model", "densenet121", str(png)]
    )  # listed, not trained yet
    assert result.exit_code == 1 and "checkpoint not found (train the model first" in result.output


def _probs(stdout: str) -> np.ndarray:
    rows = list(csv.DictReader(io.StringIO(stdout)))
    return np.array([[float(r[label]) for label in LABELS] for r in rows])


def test_cli_predict_picks_seed_and_warns_about_phantom_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread: None
) -> None:
    monkeypatch.chdir(trained_project(tmp_path, {0: "synthetic", 1: "nih"}))
    png = write_png(tmp_path / "a.png", (anatomy(64, 64) // 16).astype(np.uint8))
    runner = CliRunner()
    seed0 = runner.invoke(main, ["predict", "--model", MODEL, "--device", "cpu", str(png)])
    seed1 = runner.invoke(main, ["predict", "--model", MODEL, "--seed", "1", "--device", "cpu", str(png)])
    assert seed0.exit_code == 0 and seed1.exit_code == 0, seed0.output + seed1.output
    assert PHANTOM_WARNING in seed0.stderr and "never use them for a patient" in seed0.stderr
    assert PHANTOM_WARNING not in seed1.stderr  # trained on NIH's data
    assert "does not record what it was trained on" not in seed1.stderr
    grey = decode_image(png, SIZE)
    for result, seed in ((seed0, 0), (seed1, 1)):
        best = tmp_path / "data/models" / MODEL / f"seed{seed}" / "best.pt"
        np.testing.assert_allclose(_probs(result.stdout)[0], direct_probs(best, grey), atol=2e-6)
    assert not np.allclose(_probs(seed0.stdout), _probs(seed1.stdout), atol=1e-3)  # two different models


def test_cli_predict_without_model_uses_the_headline_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread: None
) -> None:
    monkeypatch.chdir(trained_project(tmp_path, {0: "nih", 1: "synthetic"}))
    png = write_png(tmp_path / "a.png", (anatomy(64, 64) // 16).astype(np.uint8))
    runner = CliRunner()
    missing = runner.invoke(main, ["predict", str(png)])
    assert missing.exit_code == 1 and "Traceback" not in missing.output
    assert "metrics/headline.json not found" in missing.output
    assert "dvc repro" in missing.output and "--model" in missing.output

    (tmp_path / "metrics").mkdir()
    headline = tmp_path / "metrics/headline.json"
    best = {
        "model": MODEL,
        "seed": 1,
        "checkpoint": f"data/models/{MODEL}/seed1/best.pt",
        "macro_auc": 0.8125,
    }
    headline.write_text(json.dumps({"best": best, "models": {}}))
    result = runner.invoke(main, ["predict", "--device", "cpu", str(png)])
    assert result.exit_code == 0, result.output
    assert f"using {MODEL} seed 1 (data/models/{MODEL}/seed1/best.pt, test macro AUC 0.812)" in result.stderr
    assert "metrics/headline.json" in result.stderr and PHANTOM_WARNING in result.stderr
    best_pt = tmp_path / "data/models" / MODEL / "seed1/best.pt"
    np.testing.assert_allclose(
        _probs(result.stdout)[0], direct_probs(best_pt, decode_image(png, SIZE)), atol=2e-6
    )

    headline.write_text(json.dumps({"models": {}}))
    bad = runner.invoke(main, ["predict", str(png)])
    assert bad.exit_code == 1 and "lacks key(s) ['best']" in bad.output
    headline.write_text("{not json")
    bad = runner.invoke(main, ["predict", str(png)])
    assert bad.exit_code == 1 and "not valid JSON" in bad.output


def test_cli_predict_json_format(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread: None
) -> None:
    monkeypatch.chdir(tmp_path)
    phantom = with_source(tiny_checkpoint(tmp_path / "phantom.pt"), "synthetic")
    good = write_png(tmp_path / "good.png", (anatomy(64, 64) // 16).astype(np.uint8))
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    runner = CliRunner()
    as_csv = runner.invoke(main, ["predict", "--checkpoint", str(phantom), "--device", "cpu", str(good)])
    out = tmp_path / "p.json"
    as_json = runner.invoke(
        main,
        ["predict", "--checkpoint", str(phantom), "--device", "cpu", "--format", "json", "--out", str(out),
         str(good), str(bad)],
    )  # fmt: skip
    assert as_json.exit_code == 1 and "1 of 2 file(s) could not be read" in as_json.stderr
    doc = json.loads(out.read_text())
    assert (doc["model"], doc["checkpoint"], doc["phantom"]) == (MODEL, str(phantom), True)
    assert doc["data_source"] == "synthetic" and doc["label_file"] == "Data_Entry_2017_v2020.csv"
    assert PHANTOM_WARNING in doc["warning"] and doc["labels"] == list(LABELS)
    assert [p["file"] for p in doc["predictions"]] == [str(good)]
    assert list(doc["predictions"][0]["probabilities"]) == list(LABELS)
    np.testing.assert_allclose(
        list(doc["predictions"][0]["probabilities"].values()), _probs(as_csv.stdout)[0], atol=1e-6
    )
    assert doc["failed"] == [
        {"file": str(bad), "reason": "not an image file (accepted: PNG, JPEG, TIFF, BMP or DICOM)"}
    ]

    plain = runner.invoke(main, ["predict", "--checkpoint", str(checkpoint), "--format", "json", str(good)])
    assert plain.exit_code == 0 and PHANTOM_WARNING not in plain.stderr
    doc = json.loads(plain.stdout)
    assert doc["phantom"] is False and doc["warning"] is None and doc["data_source"] == "unknown"
    assert "does not record what it was trained on" in plain.stderr


# ------------------------------------------------------------------ calls at the validation operating points


def operating_doc(thresholds: dict[str, float | None], model: str = MODEL, seed: int = 0) -> dict:
    """An operating-points file as the clinical@ stage writes it (data/operating/<model>/seed<k>.json)."""
    return {
        "model": model,
        "seed": seed,
        "method": "youden",
        "chosen_on": "val",
        "temperature": None,
        "thresholds": thresholds,
    }


def write_operating(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def known_thresholds(probs: np.ndarray) -> dict[str, float | None]:
    """Thresholds with known calls: the 2nd image's own probability (>=: positive for it), 0, 1, null."""
    thresholds: dict[str, float | None] = {}
    for j, label in enumerate(LABELS):
        thresholds[label] = [float(probs[1, j]), 0.0, 1.0, None][j % 4]
    return thresholds


def expected_calls(probs: np.ndarray, thresholds: dict[str, float | None]) -> list[list[str]]:
    """The reference: positive iff p >= t, '' where no threshold was chosen."""
    return [
        [
            "" if t is None else ("positive" if float(p) >= t else "negative")
            for p, t in zip(row, thresholds.values(), strict=True)
        ]
        for row in probs
    ]


@pytest.fixture
def scored_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread: None):
    """A project with MODEL seed 0 (NIH data), three PNGs and their probabilities from the Predictor."""
    monkeypatch.chdir(trained_project(tmp_path, {0: "nih"}))
    rng = np.random.default_rng(4)
    pngs = []
    for i in range(3):
        grey = (anatomy(64, 64) // 16).astype(np.uint8)
        pngs.append(
            write_png(
                tmp_path / f"x{i}.png",
                np.clip(grey + rng.integers(0, 60, grey.shape), 0, 255).astype(np.uint8),
            )
        )
    predictor = Predictor.from_checkpoint(tmp_path / "data/models" / MODEL / "seed0/best.pt", MODEL)
    probs = predictor.predict(np.stack([predictor.load(p) for p in pngs]))
    return tmp_path, pngs, probs


def test_cli_predict_calls_match_probabilities_at_the_operating_points(scored_project) -> None:
    root, pngs, probs = scored_project
    thresholds = known_thresholds(probs)
    write_operating(root / "data/operating" / MODEL / "seed0.json", operating_doc(thresholds))
    runner = CliRunner()
    result = runner.invoke(main, ["predict", "--model", MODEL, "--device", "cpu", *map(str, pngs)])
    assert result.exit_code == 0, result.output
    assert "chosen on the validation split (youden)" in result.stderr
    assert f"data/operating/{MODEL}/seed0.json" in result.stderr
    assert "no operating points" not in result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["file", *LABELS, *(f"{label}_call" for label in LABELS)]
    got = [[row[f"{label}_call"] for label in LABELS] for row in rows]
    want = expected_calls(probs, thresholds)
    assert got == want
    assert want[1][0] == "positive"  # the boundary: p == t is positive
    assert {c for row in got for c in row[3::4]} == {""}  # null thresholds: no call
    assert {c for row in got for c in row[1::4]} == {"positive"}  # threshold 0
    assert {c for row in got for c in row[2::4]} == {"negative"}  # threshold 1 (sigmoid < 1 here)
    np.testing.assert_allclose(_probs(result.stdout), probs, atol=5e-7)  # the probabilities are unchanged

    as_json = runner.invoke(
        main, ["predict", "--model", MODEL, "--device", "cpu", "--format", "json", *map(str, pngs)]
    )
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.stdout)
    assert doc["operating_points"]["thresholds"] == thresholds
    assert (doc["operating_points"]["method"], doc["operating_points"]["chosen_on"]) == ("youden", "val")
    for pred, want_row in zip(doc["predictions"], want, strict=True):
        assert list(pred["calls"]) == list(LABELS)
        assert list(pred["calls"].values()) == [c or None for c in want_row]


def test_cli_predict_without_operating_points_gives_probabilities_only(scored_project) -> None:
    root, pngs, probs = scored_project
    result = CliRunner().invoke(main, ["predict", "--model", MODEL, "--device", "cpu", str(pngs[0])])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["file", *LABELS]
    assert f"no operating points (data/operating/{MODEL}/seed0.json not found)" in result.stderr
    assert "dvc repro" in result.stderr and "--operating" in result.stderr
    as_json = CliRunner().invoke(main, ["predict", "--model", MODEL, "--format", "json", str(pngs[0])])
    doc = json.loads(as_json.stdout)
    assert doc["operating_points"] is None and "calls" not in doc["predictions"][0]


def test_cli_predict_operating_option_and_bad_operating_files(scored_project) -> None:
    root, pngs, probs = scored_project
    runner = CliRunner()
    best = root / "data/models" / MODEL / "seed0/best.pt"
    half = {label: 0.5 for label in LABELS}
    given = write_operating(root / "mine.json", operating_doc(half))
    result = runner.invoke(
        main, ["predict", "--checkpoint", str(best), "--operating", str(given), str(pngs[0])]
    )
    assert result.exit_code == 0, result.output
    row = list(csv.DictReader(io.StringIO(result.stdout)))[0]
    assert [row[f"{x}_call"] for x in LABELS] == expected_calls(probs[:1], half)[0]
    assert str(given) in result.stderr

    plain = runner.invoke(main, ["predict", "--checkpoint", str(best), str(pngs[0])])
    assert plain.exit_code == 0 and "no operating points, so no positive" in plain.stderr

    default = root / "data/operating" / MODEL / "seed0.json"
    bad_value = write_operating(default, operating_doc({**half, "Mass": 1.5}))
    for args in (["--model", MODEL], ["--checkpoint", str(best), "--operating", str(bad_value)]):
        result = runner.invoke(main, ["predict", *args, str(pngs[0])])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert f"data/operating/{MODEL}/seed0.json" in result.output and "Mass" in result.output
    default.write_text("{not json")
    result = runner.invoke(main, ["predict", "--model", MODEL, str(pngs[0])])
    assert result.exit_code == 1 and f"data/operating/{MODEL}/seed0.json" in result.output
    other = write_operating(root / "other.json", operating_doc(half, model="densenet121"))
    result = runner.invoke(
        main, ["predict", "--checkpoint", str(best), "--operating", str(other), str(pngs[0])]
    )
    assert result.exit_code == 1 and "other.json" in result.output and "densenet121" in result.output
    result = runner.invoke(
        main, ["predict", "--checkpoint", str(best), "--operating", "nope.json", str(pngs[0])]
    )
    assert result.exit_code == 1 and "nope.json" in result.output


def test_operating_points_from_a_mapping_name_the_source_and_key() -> None:
    from cxr_core.app.predictor import Operating

    good = operating_doc({label: 0.25 for label in LABELS})
    points = Operating.from_mapping(good, "f.json")
    assert points.thresholds == (0.25,) * 14 and points.split_name == "validation"
    assert points.calls(np.array([[0.25] * 7 + [0.2499] * 7])) == [["positive"] * 7 + ["negative"] * 7]
    # the pipeline's own rules (operating_problem): an export may not bring test-chosen thresholds
    bad_cases = [
        ({**good, "thresholds": {"Mass": 0.5}}, "thresholds lack label(s) ['Atelectasis'"),
        ({**good, "thresholds": {**good["thresholds"], "Edema": "0.5"}}, "thresholds['Edema'] = '0.5'"),
        ({**good, "thresholds": {**good["thresholds"], "Edema": True}}, "thresholds['Edema'] = True"),
        (
            {**good, "temperature": -1.0},
            "temperature must be a positive number or null (not fitted), got -1.0",
        ),
        (
            {**good, "temperature": float("inf")},
            "temperature must be a positive number or null (not fitted), got inf",
        ),
        ({**good, "chosen_on": "test"}, "chosen_on must be 'val' (thresholds are never chosen on test)"),
        ({**good, "method": "made_up"}, "method 'made_up' is not one of"),
        ({k: v for k, v in good.items() if k != "method"}, "method None is not one of"),
    ]
    for doc, message in bad_cases:
        with pytest.raises(ValueError, match=re.escape(message)) as info:
            Operating.from_mapping(doc, "f.json")
        assert str(info.value).startswith("f.json: ")


def test_cli_predict_with_a_temperature_calls_on_the_scaled_probabilities(scored_project) -> None:
    """The thresholds of a temperature-scaled run apply to sigmoid(logit / T) (Guo et al. 2017)."""
    root, pngs, probs = scored_project
    predictor = Predictor.from_checkpoint(root / "data/models" / MODEL / "seed0/best.pt", MODEL)
    logits = predictor.logits(np.stack([predictor.load(p) for p in pngs])).astype(np.float64)
    temperature = 2.5
    scaled = expit(logits / temperature)  # scipy's sigmoid; known_thresholds puts one exactly on a score
    thresholds = known_thresholds(scaled)
    doc = {**operating_doc(thresholds), "temperature": temperature}
    write_operating(root / "data/operating" / MODEL / "seed0.json", doc)
    runner = CliRunner()
    result = runner.invoke(main, ["predict", "--model", MODEL, *map(str, pngs)])
    assert result.exit_code == 0, result.output
    assert "sigmoid(logit / 2.5)" in result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [[r[f"{x}_call"] for x in LABELS] for r in rows] == expected_calls(scaled, thresholds)
    np.testing.assert_allclose(_probs(result.stdout), probs, atol=5e-7)  # printed: the raw probabilities
    as_json = json.loads(
        runner.invoke(main, ["predict", "--model", MODEL, "--format", "json", str(pngs[1])]).stdout
    )
    pred = as_json["predictions"][0]
    np.testing.assert_allclose(list(pred["scaled_probabilities"].values()), scaled[1], atol=5e-7)
    assert as_json["operating_points"]["temperature"] == temperature


def test_overlay_of_a_phantom_model_says_so_in_the_image_and_its_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread: None
) -> None:
    monkeypatch.chdir(tmp_path)
    phantom = with_source(tiny_checkpoint(tmp_path / "phantom.pt"), "synthetic")
    good = write_png(tmp_path / "good.png", (anatomy(64, 64) // 16).astype(np.uint8))
    args = ["predict", "--checkpoint", str(phantom), "--device", "cpu", "--method", "GradCAM"]
    result = CliRunner().invoke(main, [*args, "--overlay-px", "128", "--heatmaps", "h", str(good)])
    assert result.exit_code == 0, result.output
    (saved,) = [Image.open(p) for p in Path("h").iterdir()]
    assert saved.text["Warning"].startswith("PHANTOM MODEL") and saved.text["Checkpoint"] == str(phantom)
    band = np.asarray(saved.convert("RGB"))[: saved.size[1] - 128].astype(int)
    reddish = (band[..., 0] > 150) & (band[..., 1] < 150)  # the warning line is drawn in red
    assert reddish.any()
