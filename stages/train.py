"""train@model: the paper's recipe on the uint8 cache -> ``best.pt`` + ``last.pt`` and a DVCLive log.

Re-running after a kill resumes from ``last.pt``. With ``train.nproc_per_node`` > 1 the stage
re-launches itself under torchrun (DDP); everything else lives in ``cxr_core.train.loop``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from cxr_core.files import setup_logging
from cxr_core.params import load_params

logger = logging.getLogger("stages.train")


@click.command()
@click.option("--model", "model_name", required=True, help="params name (densenet121, ...) or timm name")
@click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path())
@click.option(
    "--cache", "cache_dir", default="data/cache", show_default=True, type=click.Path(path_type=Path)
)
@click.option(
    "--splits", "splits_dir", default="data/splits", show_default=True, type=click.Path(path_type=Path)
)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="data/models/<model>")
@click.option(
    "--live", "live_dir", required=True, type=click.Path(path_type=Path), help="metrics/train/<model>"
)
def main(
    model_name: str, params_path: str, cache_dir: Path, splits_dir: Path, out_dir: Path, live_dir: Path
) -> None:
    setup_logging()
    params = load_params(params_path)  # every key checked before any work
    from cxr_core.models.registry import get_spec

    get_spec(model_name)  # an unknown --model fails here, with suggestions
    nproc = params["train"]["nproc_per_node"]
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
        argv += ["-m", "stages.train", "--model", model_name, "--params", str(params_path)]
        argv += [
            "--cache",
            str(cache_dir),
            "--splits",
            str(splits_dir),
            "--out",
            str(out_dir),
            "--live",
            str(live_dir),
        ]
        logger.info("train.nproc_per_node = %d: relaunching under torchrun", nproc)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, argv)

    import pandas as pd

    from cxr_core.data.cache import load_cache
    from cxr_core.train.loop import SplitArrays, TrainConfig, fit

    images, _ = load_cache(cache_dir)
    train, val = (
        SplitArrays.from_table(pd.read_csv(splits_dir / f"{name}.csv", dtype={"image": str}))
        for name in ("train", "val")
    )
    cfg = TrainConfig.from_params(params, model_name, image_size=int(images.shape[1]))
    result = fit(cfg, images, train, val, out_dir, live_dir)
    if os.environ.get("RANK", "0") != "0":
        return
    logger.info(
        "%s: best epoch %d, val loss %.4f, val macro AUC %.3f (%s)",
        model_name,
        result.best_epoch,
        result.best_val_loss,
        result.best_val_macro_auc,
        out_dir / "best.pt",
    )


if __name__ == "__main__":
    main()
