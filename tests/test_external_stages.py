"""external_data@ and external@ end to end on a real-layout copy of each data set.

Each copy holds real label rows (from the metadata torchxrayvision ships) in the data set's exact
folder structure with small synthetic images; the NIH side is the session's tiny phantom with a tiny
timm model. VinDr's box coordinates are scaled to its 96 px synthetic DICOMs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from app_files import tiny_checkpoint
from click.testing import CliRunner
from PIL import Image
from test_external_sources import _real, _write_dicom, needs_txrv

from cxr_core.data.cache import load_cache
from cxr_core.data.external import chexpert, padchest, vindr
from cxr_core.data.tables import SplitTable
from cxr_core.evaluate.predict import infer_logits, sigmoid_probs
from cxr_core.evaluate.predictions import Predictions
from cxr_core.models.checkpoints import load_model
from cxr_core.runtime import Runtime

MODEL = "test_efficientnet"
METHODS = ["GradCAM", "RandomCAM"]


def _noise(seed: int, side: int = 96) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(side, side)).astype(np.uint8)


def _chexpert(root: Path) -> None:
    real = _real("chexpert_train.csv.gz").iloc[:40]
    (root / "CheXpert-v1.0-small").mkdir(parents=True)
    real.to_csv(root / "CheXpert-v1.0-small" / "train.csv", index=False)
    for i, rel in enumerate(real["Path"]):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_noise(i)).save(root / rel, format="JPEG")


def _vindr(root: Path) -> None:
    real = _real("vinbigdata-train.csv.gz")
    boxed = real[real["class_name"].isin(["Cardiomegaly", "Pleural effusion", "Nodule/Mass"])]
    ids = (
        list(pd.unique(boxed["image_id"]))[:6]
        + list(pd.unique(real[real["class_name"] == "No finding"]["image_id"]))[:4]
    )
    rows = real[real["image_id"].isin(ids)].copy()
    for col in ("x_min", "y_min", "x_max", "y_max"):  # real boxes are in ~3,000 px images; ours are 96 px
        values = pd.to_numeric(rows[col], errors="coerce") / 32.0
        rows[col] = values.map(lambda v: "" if np.isnan(v) else f"{v:.1f}")
    root.mkdir(parents=True)
    rows.to_csv(root / "train.csv", index=False)
    for i, image in enumerate(ids):
        _write_dicom(root / "train" / f"{image}.dicom", _noise(100 + i).astype(np.uint16) * 16)


def _padchest(root: Path) -> None:
    real = _real("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz")
    rows = real[real["Projection"].isin(["PA", "AP"]) & real["Labels"].str.startswith("[")].iloc[:40]
    root.mkdir(parents=True)
    rows.rename(columns={"Unnamed: 0": ""}).to_csv(root / padchest.CSV_NAME, index=False)
    for i, (folder, image) in enumerate(zip(rows["ImageDir"], rows["ImageID"], strict=True)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(_noise(200 + i).astype(np.uint16) * 257).save(root / folder / image)


COPIES = {"chexpert": _chexpert, "vindr": _vindr, "padchest": _padchest}


@pytest.fixture(scope="module")
def nih_side(phantom_data, tmp_path_factory) -> Path:
    """models/, predictions/ and localise/ of one tiny run on the session's phantom."""
    root = tmp_path_factory.mktemp("nih_side")
    checkpoint = tiny_checkpoint(
        root / "models" / MODEL / "seed0" / "best.pt", image_size=phantom_data.image_size
    )
    model, _ = load_model(checkpoint)
    images, _ = load_cache(phantom_data.cache)
    test = SplitTable.read(phantom_data.splits, "test")
    logits = infer_logits(model, images, test.rows, runtime=Runtime.cpu(), batch_size=32)
    targets = test.targets.astype("uint8")
    Predictions(test.images, test.rows, test.patients, sigmoid_probs(logits), targets, logits.numpy()).save(
        root / "predictions" / MODEL / "seed0.npz"
    )
    loc = {"methods": {m: {"heldout": {"chosen_on": "tune", "thresholds": {"iou": 0.5}}} for m in METHODS}}
    (root / "localise" / MODEL).mkdir(parents=True)
    (root / "localise" / MODEL / "seed0.json").write_text(json.dumps(loc))
    return root


def _run(stage: str, args: list[str]) -> str:
    from importlib import import_module

    result = CliRunner().invoke(import_module(f"stages.{stage}").main, args)
    assert result.exit_code == 0, result.output
    return result.output


@needs_txrv
@pytest.mark.parametrize("name", sorted(COPIES))
def test_a_real_layout_copy_runs_through_both_stages(
    name: str, phantom_data, nih_side: Path, tmp_path: Path, write_params
) -> None:
    COPIES[name](tmp_path / "copy")
    params = write_params(
        {
            "models": [MODEL],
            "seeds": [0],
            "test.bootstrap": 20,
            "cam.methods": METHODS,
            "report.example_methods": ["GradCAM"],
            "external.datasets": [name],
            f"external.{name}.path": str(tmp_path / "copy"),
            "external.chexpert.csv": "train.csv",
        }
    )
    data, out = tmp_path / "data" / name, tmp_path / f"{name}.json"
    _run("external_data", ["--name", name, "--params", str(params), "--cache", str(phantom_data.cache),
                           "--splits", str(phantom_data.splits), "--out", str(data)])  # fmt: skip
    _run("external", ["--params", str(params), "--data", str(data), "--models",
                      str(nih_side / "models"), "--predictions", str(nih_side / "predictions"),
                      "--localise", str(nih_side / "localise"), "--out", str(out)])  # fmt: skip
    doc = json.loads(out.read_text())
    reader = {"chexpert": chexpert, "vindr": vindr, "padchest": padchest}[name]
    table = reader.read(
        tmp_path / "copy", {k: v for k, v in yaml_section(params, name).items() if k != "path"}
    )
    assert doc["dataset"] == name and not doc["phantom"] and doc["n_images"] == len(table.images)
    assert [c["name"] for c in doc["classes"]] == table.class_names
    run = doc["models"][MODEL]["seed0"]
    assert set(run["classes"]) == set(table.class_names)
    for cls, labels in zip(table.class_names, table.labels.T, strict=True):
        assert run["classes"][cls]["n_labelled"] == int(np.isfinite(labels).sum())
        assert run["classes"][cls]["positives"] == int((labels == 1).sum())
    assert doc["leakage"]["matches"] == 0 and doc["leakage"]["n_reference"] > 0
    if name == "vindr":
        boxes = run["boxes"]
        assert boxes["n_images"] == 6 and set(boxes["methods"]) == set(METHODS)
        assert all(0.0 <= boxes["methods"][m]["pointing"]["mean"] <= 1.0 for m in METHODS)
        assert boxes["methods"]["GradCAM"]["iou_threshold"] == 0.5
    else:
        assert "boxes" not in run


def yaml_section(params: Path, name: str) -> dict:
    import yaml

    return yaml.safe_load(params.read_text())["external"][name]
