"""``cxr export``: the hub folder loads back in plain timm, offline, with the checkpoint's exact logits.

Known answers: the logits of the checkpoint's own model (``load_model``), the test metrics and
predictions written here, and ``cxr predict``'s probabilities for NIH-format 1024 px files with
real images' fine texture (``textured_xrays``), which the model card's recipe, run as a user runs
it, must reproduce; timm's ``create_transform`` does not.
"""

from __future__ import annotations

import csv
import io
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from textured_xrays import card_recipe, run_recipe, write_nih_like_images

from cxr_core.app import hub_preprocess
from cxr_core.app.cli import main
from cxr_core.app.export import EXPORT_FILES, RECIPE_FOLDER, RECIPE_IMAGE, prediction_columns
from cxr_core.app.imaging import read_image
from cxr_core.app.predictor import Predictor
from cxr_core.evaluate.predictions import Predictions
from cxr_core.labels import LABELS
from cxr_core.models.checkpoints import CheckpointMeta, load_checkpoint, load_model, save_checkpoint
from cxr_core.models.registry import create_model, get_spec

ARCH = "resnet10t"  # a real timm architecture, ~5 M parameters: exports and loads in well under a second
SIZE = 48
LABEL_FILE = "Data_Entry_2017_v2020.csv"


def write_checkpoint(
    path: Path, data_source: str = "synthetic", seed: int = 0, arch: str = ARCH, size: int = SIZE
) -> Path:
    """A best.pt as train@ writes it (CheckpointMeta + weights + the epoch's scores), 0 training steps."""
    torch.manual_seed(seed)
    model = create_model(arch, image_size=size)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval-mode buffers are exported too
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    meta = CheckpointMeta(
        arch, get_spec(arch).timm_name, size, data_source=data_source, label_file=LABEL_FILE
    )
    save_checkpoint(
        path,
        {**meta.to_dict(), "model": model.state_dict(), "epoch": 2, "val_loss": 1.25, "val_macro_auc": 0.6},
    )
    return path


def known_metrics() -> dict:
    auc = {label: 0.5 + i / 100 for i, label in enumerate(LABELS)}
    return {
        "macro_auc": 0.75,
        "macro_auc_ci": [0.7, 0.8],
        "auc": auc,
        "auc_ci": {label: [v - 0.1, v + 0.05] for label, v in auc.items()},
        "positives": {label: 3 + i for i, label in enumerate(LABELS)},
        "n_images": 50,
        "n_patients": 20,
    }


def known_predictions() -> Predictions:
    rng = np.random.default_rng(0)
    return Predictions(
        images=np.array(["00000001_000.png", "00000001_001.png", "00000007_000.png"]),
        rows=np.array([4, 5, 9]),
        patients=np.array([1, 1, 7]),
        probs=rng.random((3, 14)).astype(np.float32),
        targets=(rng.random((3, 14)) < 0.3).astype(np.uint8),
        logits=rng.normal(size=(3, 14)).astype(np.float32),
    )


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_params: Callable[..., Path]) -> Path:
    """A project folder as after `dvc repro` with seeds [0]: best.pt, test metrics, predictions, split."""
    write_checkpoint(tmp_path / "data/models" / ARCH / "seed0/best.pt")
    (tmp_path / "metrics/test" / ARCH).mkdir(parents=True)
    (tmp_path / "metrics/test" / ARCH / "seed0.json").write_text(json.dumps(known_metrics()))
    (tmp_path / "metrics/split.json").write_text(
        json.dumps(
            {p: {"images": n, "patients": n // 2} for p, n in (("train", 90), ("val", 20), ("test", 50))}
        )
    )
    known_predictions().save(tmp_path / "data/predictions" / ARCH / "seed0.npz")
    write_params({"train.epochs": 3})
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network: hub offline mode, and any socket connection fails loudly."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(f"network access attempted in an offline test: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_export_loads_back_in_timm_offline_with_identical_logits(
    project: Path, offline: None, single_thread: None
) -> None:
    import timm

    result = CliRunner().invoke(main, ["export", "--model", ARCH, "out"])
    assert result.exit_code == 0, result.output
    assert "phantom" in result.stderr
    out = project / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(EXPORT_FILES)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert len(set(modes.values())) == 1, modes  # the weights are as readable as the card

    reference, _ = load_model(project / "data/models" / ARCH / "seed0/best.pt")
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference(x)
        by_folder = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        assert torch.equal(by_folder(x), want)
        cfg = json.loads((out / "config.json").read_text())
        by_file = timm.create_model(
            cfg["architecture"],
            pretrained=True,
            pretrained_cfg_overlay={"file": str(out / "model.safetensors"), "num_classes": 14},
            num_classes=14,  # the overlay's num_classes keeps the head: timm drops it when they differ
        ).eval()
        assert torch.equal(by_file(x), want)
    assert by_folder.pretrained_cfg["label_names"] == list(LABELS)


def test_config_is_timms_hub_format_with_the_pipelines_preprocessing(project: Path) -> None:
    assert CliRunner().invoke(main, ["export", "--model", ARCH, "--seed", "0", "out"]).exit_code == 0
    cfg = json.loads((project / "out/config.json").read_text())
    assert cfg["architecture"] == ARCH and cfg["num_classes"] == 14 and cfg["label_names"] == list(LABELS)
    pre = cfg["pretrained_cfg"]
    assert pre["input_size"] == [3, SIZE, SIZE] and pre["num_classes"] == 14
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["std"] == [0.229, 0.224, 0.225]
    assert (pre["interpolation"], pre["crop_pct"], pre["crop_mode"]) == ("bilinear", 1.0, "squash")
    assert not {"tag", "license", "origin_url", "paper_ids"} & set(pre)  # ImageNet weights' identity
    assert cfg["phantom"] is True and cfg["data_source"] == "synthetic" and cfg["label_file"] == LABEL_FILE
    assert "operating_points" in cfg and cfg["operating_points"] is None
    assert cfg["cxr_pipeline"] == {
        "format": 2,
        "model": ARCH,
        "timm_name": ARCH,
        "image_size": SIZE,
        "seed": 0,
        "epoch": 2,
        "val_loss": 1.25,
        "val_macro_auc": 0.6,
        "pretrained": False,
        "base_model": None,
        "base_model_license": None,
        "precision": {"cpu": "float32", "cuda": "bfloat16"},  # train.amp: auto; resnets gain nothing on CPU
    }
    shipped = (project / "out/preprocess.py").read_bytes()
    assert shipped == Path(hub_preprocess.__file__).read_bytes()


# ------------------------------------------------------------------ the card's recipe == cxr predict

TOLERANCE = 1e-3  # probability; the recipe is in fact bit-exact up to cxr predict's 6 printed decimals


@pytest.fixture(scope="module")
def nih_like(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The five 1024 px textured files of ``textured_xrays`` (8-bit, RGBA, 16-bit, JPEG)."""
    return write_nih_like_images(tmp_path_factory.mktemp("nih_like"))


def calibrate_head(checkpoint: Path, files: list[Path]) -> None:
    """Scale and centre the head so the logits over ``files`` have std 1 and mean 0 per finding.

    A random network's logits barely move between images (std ~0.003), so any preprocessing
    error vanishes in them; a trained model's move by units, and so do its errors. This gives the
    tiny model a trained model's sensitivity (measured: timm's resize then moves it by ~0.1).
    """
    state = load_checkpoint(checkpoint)
    model, _ = load_model(checkpoint)
    x = hub_preprocess.normalise(np.stack([read_image(f, SIZE) for f in files]))
    with torch.no_grad():
        logits = model(x)
        gain = 1.0 / logits.std(0)
        head = model.get_classifier()
        head.weight.mul_(gain[:, None])
        head.bias.copy_(head.bias * gain - (logits * gain).mean(0))
    state["model"] = model.state_dict()
    save_checkpoint(checkpoint, state)


def cxr_predict_probs(files: list[Path]) -> dict[str, np.ndarray]:
    result = CliRunner().invoke(main, ["predict", "--device", "cpu", "--model", ARCH, *map(str, files)])
    assert result.exit_code == 0, result.output
    return {
        row["file"]: np.array([float(row[x]) for x in LABELS])
        for row in csv.DictReader(io.StringIO(result.stdout))
    }


def timm_transform_probs(folder: Path, files: list[Path], bf16: bool) -> dict[str, np.ndarray]:
    """The recipe the card used to show: timm's resolve_data_config + create_transform."""
    import timm

    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    x = torch.stack([transform(Image.open(f).convert("L").convert("RGB")) for f in files])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(x).float()
    return dict(zip(map(str, files), torch.sigmoid(logits).numpy(), strict=True))


def max_difference(got: dict[str, Any], want: dict[str, np.ndarray]) -> float:
    assert sorted(got) == sorted(want)
    return max(float(np.abs(np.asarray(got[f]) - want[f]).max()) for f in want)


@pytest.mark.parametrize("amp", ["bf16", "none"])
def test_the_cards_recipe_gives_cxr_predicts_probabilities_on_textured_nih_format_files(
    project: Path,
    write_params: Callable[..., Path],
    nih_like: list[Path],
    amp: str,
    single_thread: None,
) -> None:
    write_params({"train.epochs": 3, "train.amp": amp})  # bf16: cxr predict autocasts on the CPU too
    calibrate_head(project / "data/models" / ARCH / "seed0/best.pt", nih_like)
    assert CliRunner().invoke(main, ["export", "--model", ARCH, "out"]).exit_code == 0
    out = project / "out"
    card = (out / "README.md").read_text()
    bf16 = amp == "bf16"
    assert f"enabled={bf16}" in card and ("bf16 autocast on the CPU" in card) == bf16
    want = cxr_predict_probs(nih_like)

    recipe = card_recipe(card, out, nih_like, (RECIPE_FOLDER, RECIPE_IMAGE))
    assert max_difference(run_recipe(recipe, project), want) <= TOLERANCE

    old = max_difference(timm_transform_probs(out, nih_like, bf16), want)
    assert old > 50 * TOLERANCE  # what the card showed before: wrong on real-format files
    if bf16:  # float32 where the pipeline ran bf16 is wrong too
        fp32 = card_recipe(
            card.replace("enabled=True", "enabled=False"), out, nih_like, (RECIPE_FOLDER, RECIPE_IMAGE)
        )
        assert max_difference(run_recipe(fp32, project), want) > 10 * TOLERANCE


def test_shipped_preprocess_reads_files_as_the_pipeline_does(nih_like: list[Path], tmp_path: Path) -> None:
    from cxr_core.data import batches, decode

    assert (hub_preprocess.MEAN, hub_preprocess.STD) == (batches.IMAGENET_MEAN, batches.IMAGENET_STD)
    assert (hub_preprocess.RESAMPLE, hub_preprocess.REDUCING_GAP) == (decode.RESAMPLE, decode.REDUCING_GAP)
    assert hub_preprocess.FORMATS == decode.ALLOWED_FORMATS
    assert hub_preprocess.SIXTEEN_BIT_MODES == decode.SIXTEEN_BIT_MODES
    for size in (SIZE, 128, 224):
        grey = np.stack([read_image(f, size) for f in nih_like])
        assert np.array_equal(np.stack([hub_preprocess.load(f, size) for f in nih_like]), grey)
    shipped = hub_preprocess.load_batch(nih_like, SIZE)
    pipeline = batches.prepare_batch(np.stack([read_image(f, SIZE) for f in nih_like]), "cpu", train=False)
    assert torch.equal(shipped, pipeline)

    dicom = tmp_path / "scan.dcm"
    dicom.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    with pytest.raises(hub_preprocess.PreprocessError, match=r"scan\.dcm: DICOM .*cxr predict"):
        hub_preprocess.load(dicom, SIZE)
    garbage = tmp_path / "notes.png"
    garbage.write_text("not an image")
    with pytest.raises(hub_preprocess.PreprocessError, match=r"notes\.png: cannot decode"):
        hub_preprocess.load(garbage, SIZE)


@pytest.mark.parametrize("init", ["scratch", "imagenet", "unknown"])
def test_card_and_config_describe_the_trained_weights_not_timms_imagenet_ones(
    project: Path, write_params: Callable[..., Path], init: str
) -> None:
    write_checkpoint(project / "data/models/densenet121/seed0/best.pt", arch="densenet121", size=32)
    if init == "unknown":
        (project / "params.yaml").unlink()
    else:
        write_params({"train.pretrained": init == "imagenet"})
    assert CliRunner().invoke(main, ["export", "--model", "densenet121", "out"]).exit_code == 0
    text = (project / "out/config.json").read_text()
    cfg = json.loads(text)
    card = (project / "out/README.md").read_text()
    front = card.split("---\n")[1]
    assert cfg["architecture"] == "densenet121" and cfg["cxr_pipeline"]["timm_name"] == "densenet121"
    assert not {"tag", "license"} & set(cfg["pretrained_cfg"])
    assert "license:" not in front  # the user sets it; never the ImageNet weights' licence
    assert "A timm `densenet121` classifier" in card
    info = cfg["cxr_pipeline"]
    if init == "imagenet":
        assert info["pretrained"] is True and info["base_model"] == "timm/densenet121.tv_in1k"
        assert info["base_model_license"] == "apache-2.0"  # timm's entry for these weights
        assert "base_model: timm/densenet121.tv_in1k\nbase_model_relation: finetune" in front
        assert "Fine-tuned from timm's ImageNet-1k weights `timm/densenet121.tv_in1k`" in card
        assert "are under their own licence (apache-2.0)" in card
        return
    assert info["pretrained"] is (False if init == "scratch" else None) and info["base_model"] is None
    assert "tv_in1k" not in text + card and "apache" not in text + card and "base_model" not in front
    assert (
        "Initial weights: random (trained from scratch" in card
        if init == "scratch"
        else "Initial weights: not recorded" in card and "Precision: not recorded" in card
    )


def test_predictions_csv_and_model_card(project: Path) -> None:
    assert CliRunner().invoke(main, ["export", "--model", ARCH, "out"]).exit_code == 0
    rows = list(csv.reader((project / "out/predictions.csv").open()))
    assert rows[0] == prediction_columns()
    assert rows[0][:4] == ["image", "patient", "prob_Atelectasis", "prob_Cardiomegaly"]
    assert rows[0][16] == "label_Atelectasis" and len(rows[0]) == 2 + 28
    preds = known_predictions()
    assert [r[:2] for r in rows[1:]] == [
        [str(i), str(p)] for i, p in zip(preds.images, preds.patients, strict=True)
    ]
    np.testing.assert_allclose(np.array([r[2:16] for r in rows[1:]], float), preds.probs, atol=5e-7)
    assert np.array_equal(np.array([r[16:] for r in rows[1:]], int), preds.targets)

    card = (project / "out/README.md").read_text()
    assert card.startswith("---\ntags:\n") and "library_name: timm" in card
    assert "PHANTOM MODEL" in card and card.index("PHANTOM MODEL") < card.index("## Model details")
    assert "Not for clinical use" in card
    assert "**0.750** [0.700, 0.800]" in card and "50 images, 20 patients" in card
    assert "| Effusion | 0.520 | [0.420, 0.570] | 5 |" in card
    assert f"`{LABEL_FILE}` (NIH's 2020 re-release" in card
    assert "| train.epochs | 3 |" in card and "| lr (Adam) | 0.0005 |" in card
    assert "train 90 images / 45 patients" in card and "`test_list.txt`" in card
    assert "Kept epoch: 2" in card and "operating_points" in card


def test_real_data_export_has_no_phantom_warning_and_hides_local_paths(
    project: Path, write_params: Callable[..., Path]
) -> None:
    best = project / "data/models" / ARCH / "seed0/best.pt"
    write_checkpoint(best, data_source="/home/someone/nih-chest-xrays")
    result = CliRunner().invoke(main, ["export", "--model", ARCH, "out"])
    assert result.exit_code == 0 and "phantom" not in result.stderr
    cfg = json.loads((project / "out/config.json").read_text())
    assert cfg["phantom"] is False and cfg["data_source"] == "local"
    card = (project / "out/README.md").read_text()
    assert "PHANTOM" not in card and "someone" not in card and "Not for clinical use" in card
    assert "datasets:\n- nih-chest-xrays" in card


def test_export_refuses_to_overwrite_and_explicit_checkpoints_get_no_pipeline_results(project: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["export", "--model", ARCH, "out"]).exit_code == 0
    again = runner.invoke(main, ["export", "--model", ARCH, "out"])
    assert again.exit_code == 1 and "--force" in again.output and "Traceback" not in again.output
    first = {p.name: p.read_bytes() for p in (project / "out").iterdir()}
    assert runner.invoke(main, ["export", "--model", ARCH, "--force", "out"]).exit_code == 0
    assert {p.name: p.read_bytes() for p in (project / "out").iterdir()} == first  # byte-reproducible
    (project / "mine").mkdir()
    (project / "mine/notes.txt").write_text("keep")
    foreign = runner.invoke(main, ["export", "--model", ARCH, "mine"])
    assert foreign.exit_code == 1 and "notes.txt" in foreign.output

    ckpt = project / "data/models" / ARCH / "seed0/best.pt"
    alone = runner.invoke(main, ["export", "--checkpoint", str(ckpt), "solo"])
    assert alone.exit_code == 0, alone.output
    assert not (project / "solo/predictions.csv").exists()
    assert "No test metrics were found" in (project / "solo/README.md").read_text()

    missing = runner.invoke(main, ["export", "--model", "densenet121", "x"])
    assert (
        missing.exit_code == 1
        and "data/models/densenet121/seed0/best.pt: checkpoint not found" in missing.output
    )
    headless = runner.invoke(main, ["export", "y"])
    assert headless.exit_code == 1 and "metrics/headline.json not found" in headless.output


def test_export_defaults_to_the_best_model_of_the_headline(project: Path) -> None:
    (project / "metrics/headline.json").write_text(
        json.dumps(
            {
                "best": {
                    "model": ARCH,
                    "seed": 0,
                    "checkpoint": f"data/models/{ARCH}/seed0/best.pt",
                    "macro_auc": 0.75,
                },
                "models": {},
            }
        )
    )
    result = CliRunner().invoke(main, ["export", "out"])
    assert result.exit_code == 0, result.output
    assert f"using {ARCH} seed 0" in result.stderr and (project / "out/predictions.csv").is_file()


def test_cxr_predict_runs_an_exported_folder_like_its_checkpoint(project: Path, single_thread: None) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["export", "--model", ARCH, "out"]).exit_code == 0
    png = project / "x.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (80, 80), dtype=np.uint8)).save(png)
    base = ["predict", "--device", "cpu"]
    by_ckpt = runner.invoke(main, [*base, "--model", ARCH, str(png)])
    by_dir = runner.invoke(main, [*base, "--model-dir", "out", str(png)])
    by_folder_ckpt = runner.invoke(main, [*base, "--checkpoint", "out", str(png)])
    for result in (by_ckpt, by_dir, by_folder_ckpt):
        assert result.exit_code == 0, result.output
        assert "was trained on the phantom" in result.stderr
    assert by_dir.stdout == by_ckpt.stdout == by_folder_ckpt.stdout
    assert list(csv.DictReader(io.StringIO(by_dir.stdout)))[0]["file"] == str(png)

    wrong = runner.invoke(main, [*base, "--model-dir", "out", "--model", "densenet121", str(png)])
    assert wrong.exit_code == 1 and "not 'densenet121'" in wrong.output


def test_cxr_predict_refuses_folders_that_are_not_this_pipelines_exports(project: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["export", "--model", ARCH, "out"]).exit_code == 0
    png = project / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    config = project / "out/config.json"
    cfg = json.loads(config.read_text())

    cfg["pretrained_cfg"]["mean"] = [0.5, 0.5, 0.5]
    config.write_text(json.dumps(cfg))
    result = runner.invoke(main, ["predict", "--model-dir", "out", str(png)])
    assert (
        result.exit_code == 1 and "pretrained_cfg.mean" in result.output and "Traceback" not in result.output
    )

    cfg["label_names"] = sorted(LABELS)
    config.write_text(json.dumps(cfg))
    result = runner.invoke(main, ["predict", "--model-dir", "out", str(png)])
    assert result.exit_code == 1 and "label_names" in result.output

    cfg["label_names"], cfg["pretrained_cfg"]["mean"] = list(LABELS), [0.485, 0.456, 0.406]
    config.write_text(json.dumps(cfg))
    weights = project / "out/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated download
    result = runner.invoke(main, ["predict", "--model-dir", "out", str(png)])
    assert result.exit_code == 1 and "timm cannot rebuild the exported model" in result.output
    assert "Traceback" not in result.output

    empty = project / "empty"
    empty.mkdir()
    result = runner.invoke(main, ["predict", "--model-dir", str(empty), str(png)])
    assert result.exit_code == 1 and "no config.json" in result.output and "cxr export" in result.output


def write_operating(path: Path, thresholds: dict, model: str = ARCH, temperature: float | None = 1.5) -> Path:
    """data/operating/<model>/seed<k>.json as the clinical@ stage writes it (chosen on val)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "model": model,
        "seed": 0,
        "method": "youden",
        "chosen_on": "val",
        "temperature": temperature,
        "thresholds": thresholds,
    }
    path.write_text(json.dumps(doc))
    return path


KNOWN_THRESHOLDS = {label: (None if i == 3 else round(0.05 + i / 20, 4)) for i, label in enumerate(LABELS)}


def test_export_carries_the_operating_points_and_predict_model_dir_uses_them(
    project: Path, single_thread: None
) -> None:
    write_operating(project / "data/operating" / ARCH / "seed0.json", KNOWN_THRESHOLDS)
    runner = CliRunner()
    assert runner.invoke(main, ["export", "--model", ARCH, "out"]).exit_code == 0
    cfg = json.loads((project / "out/config.json").read_text())
    assert cfg["operating_points"] == {
        "thresholds": KNOWN_THRESHOLDS,
        "method": "youden",
        "chosen_on": "val",
        "temperature": 1.5,
    }
    card = (project / "out/README.md").read_text()
    assert "## Operating points" in card and "chosen on the validation split (youden)" in card
    assert "| Atelectasis | 0.0500 |" in card and "| Infiltration | none chosen |" in card
    assert "| Hernia | 0.7000 |" in card and "`sigmoid(logit / T)` with T = 1.500" in card
    assert card.index("## Evaluation") < card.index("## Operating points") < card.index("## Intended use")

    png = project / "x.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (80, 80), dtype=np.uint8)).save(png)
    base = ["predict", "--device", "cpu", str(png)]
    by_ckpt = runner.invoke(main, [*base, "--model", ARCH])
    by_dir = runner.invoke(main, [*base, "--model-dir", "out"])
    for result in (by_ckpt, by_dir):
        assert result.exit_code == 0, result.output
        assert "chosen on the validation split (youden)" in result.stderr
    assert by_dir.stdout == by_ckpt.stdout  # same probabilities, same calls
    assert "sigmoid(logit / 1.5)" in by_dir.stderr  # the thresholds are on the temperature-scaled scale
    row = list(csv.DictReader(io.StringIO(by_dir.stdout)))[0]
    exported = Predictor.from_checkpoint(project / "out")
    logits = exported.logits(exported.load(png))[0].astype(np.float64)
    scaled = 1.0 / (1.0 + np.exp(-logits / 1.5))  # Guo et al. 2017: sigmoid(z / T)
    for label, p in zip(LABELS, scaled, strict=True):
        t = KNOWN_THRESHOLDS[label]
        assert row[f"{label}_call"] == ("" if t is None else "positive" if p >= t else "negative")
    probs = exported.predict(exported.load(png))[0]

    replaced = write_operating(project / "half.json", {label: 0.5 for label in LABELS}, temperature=None)
    by_option = runner.invoke(main, [*base, "--model-dir", "out", "--operating", str(replaced)])
    assert by_option.exit_code == 0 and "half.json" in by_option.stderr
    row = list(csv.DictReader(io.StringIO(by_option.stdout)))[0]
    assert [row[f"{x}_call"] for x in LABELS] == ["positive" if p >= 0.5 else "negative" for p in probs]


def test_export_without_or_with_a_bad_operating_file(project: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["export", "--model", ARCH, "out"]).exit_code == 0
    assert json.loads((project / "out/config.json").read_text())["operating_points"] is None
    assert "Operating points: none" in (project / "out/README.md").read_text()
    png = project / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    plain = runner.invoke(main, ["predict", "--model-dir", "out", str(png)])
    assert plain.exit_code == 0 and "no operating points" in plain.stderr
    assert "_call" not in plain.stdout

    bad = write_operating(
        project / "data/operating" / ARCH / "seed0.json", {**KNOWN_THRESHOLDS, "Mass": -0.1}
    )
    result = runner.invoke(main, ["export", "--model", ARCH, "--force", "out"])
    assert result.exit_code == 1 and str(Path("data/operating") / ARCH / "seed0.json") in result.output
    assert "Mass" in result.output and "Traceback" not in result.output
    write_operating(bad, KNOWN_THRESHOLDS, model="densenet121")
    result = runner.invoke(main, ["export", "--model", ARCH, "--force", "out"])
    assert result.exit_code == 1 and "densenet121" in result.output

    write_operating(bad, KNOWN_THRESHOLDS)
    assert runner.invoke(main, ["export", "--model", ARCH, "--force", "out"]).exit_code == 0
    config = project / "out/config.json"
    cfg = json.loads(config.read_text())
    cfg["operating_points"]["thresholds"]["Edema"] = 2.0  # a hand-edited or corrupted download
    config.write_text(json.dumps(cfg))
    result = runner.invoke(main, ["predict", "--model-dir", "out", str(png)])
    assert result.exit_code == 1 and "out/config.json (operating_points)" in result.output
    assert "thresholds['Edema'] = 2.0" in result.output
