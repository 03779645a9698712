"""The train stage under torchrun (2 CPU processes, gloo) on the tiny phantom set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cxr_core.data.cache import load_cache
from cxr_core.data.tables import SplitTable
from cxr_core.evaluate.predict import infer_logits
from cxr_core.models.checkpoints import load_checkpoint, load_model
from cxr_core.runtime import Runtime
from cxr_core.train.loop import validation_metrics
from cxr_core.train.losses import get_loss
from cxr_core.train.resume import BEST_FILE, LAST_FILE

TINY = "test_resnet"
EPOCHS = 3

pytestmark = pytest.mark.slow


def test_train_stage_under_torchrun_matches_single_process_evaluation(
    tmp_path: Path, phantom_data, write_params, single_thread
) -> None:
    params = write_params(
        {
            "models": [TINY],
            "train.epochs": EPOCHS,
            "train.batch_size": 8,
            "train.nproc_per_node": 2,
            "train.device": "cpu",
        }
    )
    out, live = tmp_path / "data" / "models" / TINY, tmp_path / "metrics" / "train" / TINY
    cmd = [sys.executable, "-m", "stages.train", "--model", TINY, "--seed", "0", "--params", str(params)]
    cmd += [
        "--raw",
        str(phantom_data.raw),
        "--cache",
        str(phantom_data.cache),
        "--splits",
        str(phantom_data.splits),
    ]
    cmd += ["--out", str(out), "--live", str(live)]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "relaunching under torchrun" in proc.stderr

    # exactly one checkpoint pair, written by rank 0, and one DVCLive log
    assert sorted(p.name for p in out.iterdir()) == [BEST_FILE, LAST_FILE]
    last = load_checkpoint(out / LAST_FILE)
    assert last["resume_key"]["world_size"] == 2 and last["epoch"] == EPOCHS
    history = last["history"]
    assert [row["epoch"] for row in history] == list(range(1, EPOCHS + 1))
    assert history[-1]["train_loss"] < history[0]["train_loss"], history
    assert proc.stderr.count(f"{TINY} epoch 1/{EPOCHS}: train_loss") == 1  # one rank logs

    # the val metrics logged for the best epoch equal a single-process evaluation of best.pt
    summary = json.loads((live / "metrics.json").read_text())
    images, _ = load_cache(phantom_data.cache)
    val = SplitTable.read(phantom_data.splits, "val")
    model, meta = load_model(out / BEST_FILE, model_name=TINY)
    logits = infer_logits(model, images, val.rows, runtime=Runtime.cpu(), batch_size=64)
    loss, auc = validation_metrics(logits, val.targets, get_loss(last["config"]["loss"]))
    assert meta["epoch"] == summary["best_epoch"]
    assert summary["best_val_loss"] == pytest.approx(loss, rel=1e-5)
    assert summary["best_val_macro_auc"] == pytest.approx(auc, rel=1e-5)
    logged = pd.read_csv(live / "plots" / "metrics" / "val_loss.tsv", sep="\t")
    assert logged["step"].tolist() == list(range(1, EPOCHS + 1))
    assert logged.loc[logged["step"] == meta["epoch"], "val_loss"].item() == pytest.approx(loss, rel=1e-5)
