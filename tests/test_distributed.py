"""The train stage under torchrun on the tiny phantom set (CPU processes, gloo): one node with two
processes, two "nodes" on localhost joined by torchrun's c10d rendezvous, and how a node's torchrun
command line follows from params, SLURM's variables and torchrun's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cxr_core.data.cache import load_cache
from cxr_core.data.tables import SplitTable
from cxr_core.evaluate.predict import infer_logits
from cxr_core.models.checkpoints import load_checkpoint, load_model
from cxr_core.models.registry import create_model
from cxr_core.params import ParamsError, load_params
from cxr_core.runtime import Runtime
from cxr_core.train.distributed import DEFAULT_PORT, Launch, LaunchError, first_slurm_host
from cxr_core.train.loop import validation_metrics
from cxr_core.train.losses import get_loss
from cxr_core.train.resume import BEST_FILE, LAST_FILE

TINY = "test_resnet"
EPOCHS = 3
#: Variables of torchrun, its launchers and SLURM that a test's child processes must not inherit.
LAUNCH_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("SLURM_")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _stage(params: Path, data, out: Path, live: Path, model: str = TINY) -> list[str]:
    cmd = [sys.executable, "-m", "stages.train", "--model", model, "--seed", "0", "--params", str(params)]
    cmd += ["--raw", str(data.raw), "--cache", str(data.cache), "--splits", str(data.splits)]
    return [*cmd, "--out", str(out), "--live", str(live), "--timings", str(out.parent / "timings.tsv")]


@pytest.mark.slow
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


@pytest.mark.slow
def test_two_nodes_on_localhost_train_the_weights_of_one_process_with_the_same_global_batch(
    tmp_path: Path, phantom_data, write_params
) -> None:
    """Two stage commands, one process each, joined by c10d on 127.0.0.1, against one process.

    DDP averages the ranks' gradients; that is the one-process gradient of the global batch when
    the loss is a mean over images and nothing else couples the images of a rank's half: so a
    LayerNorm ViT (BatchNorm normalises each half by its own statistics), plain BCE (the
    class-averaged loss counts each half's positives) and no augmentation (each rank has its own
    draws). The shards of CacheBatches interleave to exactly the one-process batches. What is left
    is float summation order (halves of 4 summed by all-reduce, not one batch of 8): the weights
    agree to within 2e-3 of how far training moved them (2.6e-4 measured); a shard of other images
    than the global batch's, or ranks that never all-reduce, move them about as much as training.
    """
    model = "test_vit"
    common = {
        "models": [model],
        "train.epochs": 2,
        "train.batch_size": 8,
        "train.loss": "bce",
        "train.augment.hflip_p": 0.0,
        "train.augment.rotate_p": 0.0,
        "train.device": "cpu",
    }
    endpoint = f"127.0.0.1:{_free_port()}"
    two = write_params({**common, "train.nnodes": 2, "train.rdzv_endpoint": endpoint}, name="two.yaml")
    one = write_params(common, name="one.yaml")
    nodes_out, one_out = tmp_path / "nodes" / "models", tmp_path / "one" / "models"
    runs = [
        subprocess.Popen(
            _stage(params, phantom_data, out, out.parent / "live", model),
            cwd=tmp_path,
            env=_clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for params, out in ((two, nodes_out), (two, nodes_out), (one, one_out))
    ]
    logs = [run.communicate(timeout=900) for run in runs]
    for run, (_out, err) in zip(runs, logs, strict=True):
        assert run.returncode == 0, err[-4000:]
    for _out, err in logs[:2]:  # each node: one torchrun agent of a 2-node c10d job
        assert f"--nnodes 2 --nproc_per_node 1 --rdzv_backend c10d --rdzv_endpoint {endpoint}" in err, err[
            -2000:
        ]
    assert "relaunching" not in logs[2][1]

    last = load_checkpoint(nodes_out / LAST_FILE)
    assert last["resume_key"]["world_size"] == 2 and last["epoch"] == 2
    assert load_checkpoint(one_out / LAST_FILE)["resume_key"]["world_size"] == 1
    nodes, single = _weights(nodes_out / LAST_FILE), _weights(one_out / LAST_FILE)
    import torch

    torch.manual_seed(0)  # the loop's initial weights: the run's seed, then the model
    start = create_model(model, image_size=phantom_data.image_size).state_dict()
    moved = max(float((single[k].float() - start[k].float()).abs().max()) for k in single)
    apart = max(float((nodes[k].float() - single[k].float()).abs().max()) for k in single)
    assert moved > 1e-3, moved  # training did move the weights
    assert apart <= 2e-3 * moved, (apart, moved)


def test_one_node_is_torchrun_standalone() -> None:
    launch = Launch.from_params({"nnodes": 1, "nproc_per_node": 4, "rdzv_endpoint": None}, {}, "m-seed0")
    assert launch.world_size == 4 and launch.torchrun_args() == ["--standalone", "--nproc_per_node", "4"]
    assert (
        Launch.from_params({"nnodes": 1, "nproc_per_node": 1, "rdzv_endpoint": None}, {}, "r").world_size == 1
    )


def test_nodes_without_a_node_rank_meet_at_the_params_endpoint_by_c10d() -> None:
    train = {"nnodes": 2, "nproc_per_node": 4, "rdzv_endpoint": "node01:29400"}
    launch = Launch.from_params(train, {"MASTER_ADDR": "elsewhere"}, "densenet121-seed0")
    assert launch.world_size == 8
    assert launch.torchrun_args() == [
        "--nnodes", "2", "--nproc_per_node", "4", "--rdzv_backend", "c10d",
        "--rdzv_endpoint", "node01:29400", "--rdzv_id", "cxr-densenet121-seed0",
    ]  # fmt: skip


def test_a_node_rank_from_the_environment_makes_node_0_host_rank_0() -> None:
    train = {"nnodes": 3, "nproc_per_node": 2, "rdzv_endpoint": None}
    launch = Launch.from_params(
        train, {"NODE_RANK": "2", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "1234"}, "r"
    )
    assert launch.torchrun_args() == [
        "--nnodes", "3", "--nproc_per_node", "2", "--node_rank", "2",
        "--master_addr", "10.0.0.5", "--master_port", "1234",
    ]  # fmt: skip


SRUN = {  # what srun --nodes=2 --ntasks-per-node=1 sets in its second task
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_PROCID": "1",
}


def test_under_srun_the_task_is_the_node_rank_and_the_first_node_hosts_the_rendezvous() -> None:
    launch = Launch.from_params({"nnodes": 2, "nproc_per_node": 8, "rdzv_endpoint": None}, SRUN, "m-seed1")
    assert (launch.node_rank, launch.rdzv_endpoint, launch.rdzv_id) == (
        1,
        ("gpu07", DEFAULT_PORT),
        "4242-m-seed1",
    )
    assert "--node_rank" in launch.torchrun_args() and "gpu07" in launch.torchrun_args()


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [("gpu[07-08,10],cpu1", "gpu07"), ("node1,node2", "node1"), ("a-b[3-4]", "a-b3"), ("solo", "solo")],
)
def test_first_slurm_host(nodelist: str, first: str) -> None:
    assert first_slurm_host(nodelist) == first


@pytest.mark.parametrize(
    ("train", "environ", "message"),
    [
        ({"nnodes": 2}, {}, "train.nnodes > 1 needs a rendezvous endpoint every node reaches: set train.rdzv_endpoint"),
        ({"nnodes": 2}, {"MASTER_ADDR": "node1", "MASTER_PORT": "http"}, "MASTER_ADDR:MASTER_PORT = 'node1:http'"),
        ({"nnodes": 2, "rdzv_endpoint": "node1:99999"}, {}, "train.rdzv_endpoint = 'node1:99999' is not a rendezvous endpoint"),
        ({"nnodes": 2}, {"NODE_RANK": "2", "MASTER_ADDR": "n"}, "NODE_RANK = 2 but train.nnodes = 2"),
        ({"nnodes": 2}, {"NODE_RANK": "first"}, "NODE_RANK = 'first' is not an integer"),
        ({"nnodes": 4}, SRUN, "srun started 2 task(s) on 2 node(s)"),
        ({"nnodes": 2}, {**SRUN, "SLURM_STEP_NUM_TASKS": "16"}, "start one task per node, srun --nodes=2 --ntasks-per-node=1"),
    ],
)  # fmt: skip
def test_bad_launch_settings_name_the_key_or_variable(train: dict, environ: dict, message: str) -> None:
    with pytest.raises(LaunchError) as err:
        Launch.from_params({"nproc_per_node": 1, "rdzv_endpoint": None, **train}, environ, "r")
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("endpoint", ["node1:", "node1:0", "http://node1:29500", "a b", 29500])
def test_a_malformed_rdzv_endpoint_in_params_is_refused_naming_the_key(write_params, endpoint) -> None:
    with pytest.raises(ParamsError, match=r"train.rdzv_endpoint = .* is not allowed; expected host:port"):
        load_params(write_params({"train.rdzv_endpoint": endpoint}))
    assert load_params(write_params({"train.rdzv_endpoint": "[::1]:29500"}))["train"]["rdzv_endpoint"]


def test_the_stage_refuses_bad_launch_settings_before_any_work(tmp_path: Path, write_params) -> None:
    params = write_params({"train.nnodes": 2})
    cmd = [sys.executable, "-m", "stages.train", "--model", TINY, "--seed", "0", "--params", str(params)]
    cmd += ["--out", str(tmp_path / "out"), "--live", str(tmp_path / "live")]
    done = subprocess.run(
        cmd, cwd=Path(__file__).parents[1], env=_clean_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "set train.rdzv_endpoint" in done.stderr
