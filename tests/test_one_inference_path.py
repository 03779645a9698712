"""``cxr predict`` / the Predictor and the test stage give the same probabilities for the same images."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import PARAMS_FILE

from cxr_core.app.cli import main as cxr
from cxr_core.app.predictor import InferenceSettings, Predictor
from cxr_core.data.cache import load_cache
from cxr_core.data.tables import SplitTable
from cxr_core.evaluate.predictions import Predictions
from cxr_core.models.checkpoints import CheckpointMeta, save_checkpoint
from cxr_core.models.registry import create_model, get_spec
from cxr_core.params import load_params
from stages.test import main as score_test_split

TINY = "test_resnet"


@pytest.fixture(scope="module")
def scored(phantom_data, tmp_path_factory, single_thread):
    root = tmp_path_factory.mktemp("one_path")
    torch.manual_seed(0)
    model = create_model(TINY, image_size=phantom_data.image_size)
    checkpoint = root / "best.pt"
    meta = CheckpointMeta(TINY, get_spec(TINY).timm_name, phantom_data.image_size).to_dict()
    save_checkpoint(
        checkpoint, {**meta, "model": model.state_dict(), "epoch": 1, "val_loss": 1.0, "val_macro_auc": 0.5}
    )
    params = yaml.safe_load(PARAMS_FILE.read_text())
    params["train"]["eval_batch_size"] = 7  # batches that do not divide the test set
    params["test"]["bootstrap"] = 10
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["--model", TINY, "--params", str(root / "params.yaml"), "--checkpoint", str(checkpoint)]
    args += ["--cache", str(phantom_data.cache), "--splits", str(phantom_data.splits)]
    args += [
        "--metrics",
        str(root / "m.json"),
        "--roc",
        str(root / "roc.csv"),
        "--predictions",
        str(root / "p.npz"),
    ]
    result = CliRunner().invoke(score_test_split, args)
    assert result.exit_code == 0, result.output
    return root, checkpoint, Predictions.load(root / "p.npz")


def test_predictor_equals_the_test_stage_exactly(phantom_data, scored) -> None:
    root, checkpoint, stage = scored
    params = load_params(root / "params.yaml")
    predictor = Predictor.from_checkpoint(checkpoint, TINY, settings=InferenceSettings.from_params(params))
    images, _ = load_cache(phantom_data.cache)
    test = SplitTable.read(phantom_data.splits, "test")
    np.testing.assert_array_equal(test.rows, stage.rows)
    probs = predictor.predict(images[test.rows])
    assert probs.dtype == np.float32
    np.testing.assert_array_equal(probs, stage.probs)  # bit for bit, not approximately


def test_cxr_predict_on_the_png_files_gives_the_test_stage_probabilities(phantom_data, scored) -> None:
    root, checkpoint, stage = scored
    names = stage.images[:5]
    files = [str(phantom_data.raw / "images" / n) for n in names]
    args = [
        "predict",
        "--model",
        TINY,
        "--checkpoint",
        str(checkpoint),
        "--params",
        str(root / "params.yaml"),
    ]
    result = CliRunner().invoke(cxr, [*args, "--batch-size", "5", *files])
    assert result.exit_code == 0, result.output
    rows = list(
        csv.DictReader(
            io.StringIO(
                result.stdout.split("\n", 1)[1] if not result.stdout.startswith("file") else result.stdout
            )
        )
    )
    printed = np.array([[float(r[k]) for k in list(r)[1:]] for r in rows])
    # the CSV prints 6 decimals; the file -> model input path is the cache's own decoder
    np.testing.assert_allclose(printed, stage.probs[:5], atol=5e-7, rtol=0)
