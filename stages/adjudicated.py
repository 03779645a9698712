"""adjudicated: Google's radiologist-adjudicated labels for part of the official test split.

Majkowska et al. (Radiology 2020) re-read NIH test images for four findings. Real data: the file
is taken from ``clinical.adjudicated`` or from the installed ``torchxrayvision`` package's
``data/`` folder and checked; the phantom: a stand-in in the same format is derived from the
phantom's own labels with a seeded share of flipped values, so the code path runs and is tested.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from cxr_core.data.adjudicated import adjudicated_path, read_adjudicated, write_phantom_adjudicated
from cxr_core.data.manifest import PHANTOM_SOURCE, Manifest
from cxr_core.data.metadata import DATA_ENTRY
from cxr_core.data.tables import SplitTable
from cxr_core.files import atomic_path
from cxr_core.params import load_params
from stages._common import params_option, path_option, splits_option, stage_command

logger = logging.getLogger("stages.adjudicated")


@stage_command()
@params_option
@path_option("raw", "data/raw", "manifest.json and Data_Entry.csv (download stage)")
@splits_option
@path_option("out", help="data/adjudicated/google2019_nih-chest-xray-labels.csv.gz")
def main(params: Path, raw: Path, splits: Path, out: Path) -> None:
    cfg = load_params(params)
    clinical = cfg["clinical"]
    manifest = Manifest.read(raw)
    out.parent.mkdir(parents=True, exist_ok=True)
    if manifest.source == PHANTOM_SOURCE:
        test = SplitTable.read(splits, "test")
        table = write_phantom_adjudicated(
            out,
            raw / DATA_ENTRY,
            test.images,
            flip_rate=clinical["adjudicated_flip_rate"],
            seed=cfg["data"]["phantom"]["seed"],
            fraction=clinical["adjudicated_fraction"],
        )
        logger.info("phantom stand-in of the adjudicated labels: %d rows -> %s", len(table), out)
        return
    source = adjudicated_path(clinical["adjudicated"])
    table = read_adjudicated(source)  # refuse a file that is not in the format before copying it
    with atomic_path(out) as tmp:
        shutil.copyfile(source, tmp)
    logger.info("adjudicated labels: %d rows from %s -> %s", len(table), source, out)


if __name__ == "__main__":
    main()
