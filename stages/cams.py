"""cams: one heatmap per (localisation image, box label) and CAM method, from the trained model.

Heatmaps are saved as the paper's 0..255 maps so the localise stage can re-score any threshold
without the model. Each map is targeted at its own box label (one target per image).
"""

from __future__ import annotations

from pathlib import Path

import click

from cxr_core.files import setup_logging
from cxr_core.params import load_params


@click.command()
@click.option("--model", "model_name", required=True, help="Model name from params.yaml `models`.")
@click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path())
@click.option("--checkpoint", required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--cache", "cache_dir", default="data/cache", show_default=True, type=click.Path(path_type=Path)
)
@click.option(
    "--splits", "splits_dir", default="data/splits", show_default=True, type=click.Path(path_type=Path)
)
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="heatmaps .npz")
def main(
    model_name: str, params_path: str, checkpoint: Path, cache_dir: Path, splits_dir: Path, out_path: Path
) -> None:
    setup_logging()
    params = load_params(params_path)
    import numpy as np
    import pandas as pd
    import torch
    from tqdm import tqdm

    from cxr_core.data.batches import normalise, to_device
    from cxr_core.data.cache import load_cache
    from cxr_core.explain.geometry import to_uint8
    from cxr_core.explain.methods import compute_heatmaps, degenerate_maps
    from cxr_core.explain.scoring import SavedHeatmaps
    from cxr_core.models.checkpoints import load_model
    from cxr_core.models.registry import get_spec
    from cxr_core.train.loop import evaluate, resolve_device

    cam, train = params["cam"], params["train"]
    device = resolve_device(train["device"])
    amp = train["amp"] == "bf16" and device.type == "cuda"
    model, _ = load_model(checkpoint, model_name=model_name)
    model.to(device)
    spec = get_spec(model_name)
    images, _ = load_cache(cache_dir)
    loc = pd.read_csv(splits_dir / "loc.csv")
    rows = loc["row"].to_numpy()

    probs = evaluate(model, images, rows, batch_size=train["eval_batch_size"], device=device, amp=amp)
    maps = {m: np.zeros((len(loc), *images.shape[1:]), np.uint8) for m in cam["methods"]}
    degenerate = {m: np.zeros(len(loc), bool) for m in cam["methods"]}
    step = cam["batch_size"]
    for start in tqdm(range(0, len(loc), step), desc=f"CAMs {model_name}", unit="batch"):
        stop = min(start + step, len(loc))
        x = normalise(to_device(images[rows[start:stop]], device))
        out = compute_heatmaps(
            model,
            spec,
            x,
            loc["label_index"].to_numpy()[start:stop],
            cam["methods"],
            batch_size=step,
            seed=params["seed"] + start,
            autocast_dtype=torch.bfloat16 if amp else None,
        )
        for method, h in out.items():
            bad = degenerate_maps(h)
            degenerate[method][start:stop] = bad
            maps[method][start:stop] = to_uint8(np.where(bad[:, None, None], 0.0, np.nan_to_num(h)))
    SavedHeatmaps(maps, degenerate, probs).save(out_path)


if __name__ == "__main__":
    main()
