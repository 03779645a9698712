"""download: fill ``data/raw`` from the source named by ``data.source``.

``synthetic`` writes the phantom ChestX-ray14, ``nih`` fetches the 12 official archives, a folder
path links an existing official / Kaggle copy in place.
"""

from __future__ import annotations

from pathlib import Path

from cxr_core.data.sources import fill_raw
from cxr_core.params import load_params
from stages._common import params_option, path_option, stage_command


@stage_command()
@params_option
@path_option("out", "data/raw", "the raw folder (official layout + manifest.json)")
def main(params: Path, out: Path) -> None:
    data = load_params(params)["data"]
    fill_raw(data, out)


if __name__ == "__main__":
    main()
