"""train@model: the paper's recipe on the uint8 cache -> ``best.pt`` + ``last.pt`` and a DVCLive log.

Re-running after a kill resumes from ``last.pt``. With ``train.nproc_per_node`` > 1 or
``train.nnodes`` > 1 the stage re-launches itself under torchrun (DDP) with its own arguments; on
several nodes every node runs this same command (``srun`` does, under SLURM) and torchrun's
rendezvous joins them (``cxr_core.train.distributed.Launch``). Everything else lives in
``cxr_core.train``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from cxr_core.data.cache import load_cache
from cxr_core.data.manifest import Manifest
from cxr_core.data.tables import SplitTable
from cxr_core.models.registry import get_spec
from cxr_core.params import load_params
from cxr_core.runtime import check_amp, check_device
from cxr_core.train.config import TrainConfig
from cxr_core.train.distributed import Launch, dist_env_from_environ
from cxr_core.train.loop import fit
from cxr_core.train.losses import get_loss
from stages._common import (
    cache_option,
    model_option,
    params_option,
    path_option,
    splits_option,
    stage_command,
)

logger = logging.getLogger("stages.train")

LOOKUPS = {"model": get_spec, "loss": get_loss, "device": check_device, "amp": check_amp}


@stage_command()
@model_option
@click.option(
    "--seed", "seed", required=True, type=click.IntRange(min=0), help="a training seed from `seeds`"
)
@params_option
@path_option("raw", "data/raw", "manifest.json: the data source recorded in every checkpoint")
@cache_option
@splits_option
@path_option("out", help="data/models/<model>/seed<k>: best.pt and last.pt")
@path_option("live", help="metrics/train/<model>/seed<k>: the DVCLive log")
@path_option("timings", "logs/train/timings.tsv", "untracked per-epoch seconds and images/s")
def main(
    model_name: str,
    seed: int,
    params: Path,
    raw: Path,
    cache: Path,
    splits: Path,
    out: Path,
    live: Path,
    timings: Path,
) -> None:
    cfg = load_params(params, LOOKUPS)  # every key checked before any work
    get_spec(model_name)  # an unknown --model fails here, with suggestions
    if "LOCAL_RANK" not in os.environ:  # not yet a torchrun worker
        relaunch_if_distributed(Launch.from_params(cfg["train"], os.environ, run=f"{model_name}-seed{seed}"))

    manifest = Manifest.read(raw)
    images, _ = load_cache(cache)
    train, val = SplitTable.read(splits, "train"), SplitTable.read(splits, "val")
    config = TrainConfig.from_params(
        cfg,
        model_name,
        image_size=int(images.shape[1]),
        seed=seed,
        data_source=manifest.source,
        label_file=manifest.label_file,
    )
    result = fit(config, images, train, val, out, live, timing_log=timings)
    if dist_env_from_environ().is_main:
        logger.info(
            "%s seed %d: best epoch %d, val loss %.4f, val macro AUC %.3f (%s)",
            model_name,
            seed,
            result.best_epoch,
            result.best_val_loss,
            result.best_val_macro_auc,
            out / "best.pt",
        )


def relaunch_if_distributed(launch: Launch) -> None:
    """Replace this process by torchrun running this same command when the job has several processes."""
    if launch.world_size == 1:
        return
    torchrun = ["-m", "torch.distributed.run", *launch.torchrun_args()]
    logger.info("relaunching under torchrun %s", " ".join(torchrun[2:]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *torchrun, "-m", "stages.train", *sys.argv[1:]])


if __name__ == "__main__":
    main()
