"""localise: score the saved heatmaps of one model (paper IoU, box metrics, pointing game)."""

from __future__ import annotations

from pathlib import Path

import click

from cxr_core.files import setup_logging, write_json
from cxr_core.params import load_params


@click.command()
@click.option("--model", "model_name", required=True)
@click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path())
@click.option("--heatmaps", required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--splits", "splits_dir", default="data/splits", show_default=True, type=click.Path(path_type=Path)
)
@click.option("--records", "records_path", required=True, type=click.Path(path_type=Path), help="per-box CSV")
@click.option("--metrics", "metrics_path", required=True, type=click.Path(path_type=Path))
def main(
    model_name: str,
    params_path: str,
    heatmaps: Path,
    splits_dir: Path,
    records_path: Path,
    metrics_path: Path,
) -> None:
    setup_logging()
    cam = load_params(params_path)["cam"]
    import pandas as pd

    from cxr_core.explain.scoring import SavedHeatmaps, score_heatmaps

    loc = pd.read_csv(splits_dir / "loc.csv")
    saved = SavedHeatmaps.load(heatmaps)
    records, summary = score_heatmaps(
        saved.maps,
        saved.degenerate,
        loc,
        saved.probs,
        thresholds=cam["thresholds"],
        box_thresholds=cam["box_thresholds"],
    )
    records_path.parent.mkdir(parents=True, exist_ok=True)
    records.to_csv(records_path, index=False, float_format="%.6g")
    write_json(metrics_path, {"model": model_name, **summary})


if __name__ == "__main__":
    main()
