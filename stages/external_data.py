"""external_data@name: read one evaluation-only data set in place and decode it once.

The phantom set is written in CheXpert's layout first and then read like a real copy. Every image
is compared with the NIH train and validation images before anything is written (the leakage
guard); the decoded set uses the NIH cache's image size and decoding rules.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from cxr_core.data.cache import load_cache
from cxr_core.data.external.build import LeakageSettings, NihImages, build_external
from cxr_core.data.external.registry import check_dataset, read_dataset
from cxr_core.data.tables import SplitTable
from cxr_core.params import load_params
from stages._common import cache_option, params_option, path_option, splits_option, stage_command

logger = logging.getLogger("stages.external_data")


@stage_command()
@path_option("name", help="a name from params.yaml external.datasets")
@params_option
@cache_option
@splits_option
@path_option("out", help="data/external/<name>")
def main(name: Path, params: Path, cache: Path, splits: Path, out: Path) -> None:
    cfg = load_params(params, {"external dataset": check_dataset})
    external, name = cfg["external"], str(name)
    images, index = load_cache(cache)  # the external set is decoded at the NIH cache's size
    rows = np.sort(np.concatenate([SplitTable.read(splits, part).rows for part in ("train", "val")]))
    shutil.rmtree(out, ignore_errors=True)  # nothing stale from an earlier, larger set
    manifest = build_external(
        read_dataset(external, name, out),
        out,
        size=images.shape[1],
        workers=cfg["preprocess"]["workers"],
        on_error=cfg["preprocess"]["on_error"],
        nih=NihImages(images, rows, index["image"].to_numpy()[rows].tolist()),
        leakage_settings=LeakageSettings(external["leakage"], external["leakage_correlation"]),
    )
    logger.info(
        "external set %s: %d images, %d patients, %d boxes, left out %s -> %s",
        name,
        manifest["n_images"],
        manifest["n_patients"],
        manifest["n_boxes"],
        manifest["left_out"],
        out,
    )


if __name__ == "__main__":
    main()
