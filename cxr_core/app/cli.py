"""``cxr``: the user-facing command (``cxr predict`` on files, ``cxr demo`` for the web app).

The DVC stages are ``python -m stages.<name>``; this group is for people who bring their own
images. Exit codes of ``cxr predict``: 0 every file was scored; 1 some file could not be read (it
is named on stderr, the others are still scored and written) or the model / checkpoint could not
be loaded; 2 a usage error (bad option).
"""

from __future__ import annotations

import csv
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import click

from cxr_core.app.imaging import DEFAULT_LIMITS
from cxr_core.app.overlay import DISPLAY_PX
from cxr_core.logs import setup_logging
from cxr_core.runtime import DEVICES, check_amp, check_device

logger = logging.getLogger("cxr")


def all_lookups() -> dict[str, Any]:
    """Every registry the app's params can name (the app runs models, heatmaps and all)."""
    from cxr_core.explain.methods import check_eigen_sign, get_cam_method
    from cxr_core.models.registry import get_spec
    from cxr_core.train.losses import get_loss

    return {
        "model": get_spec,
        "loss": get_loss,
        "device": check_device,
        "amp": check_amp,
        "cam method": get_cam_method,
        "eigen sign": check_eigen_sign,
    }


TOP_FINDING = "top"


def _load_params(params_path: Path | None) -> dict[str, Any] | None:
    """The validated params.yaml when given or present in the working folder; None otherwise."""
    from cxr_core.params import ParamsError, load_params

    if params_path is None:
        default = Path("params.yaml")
        if not default.is_file():
            return None
        params_path = default
    try:
        return load_params(params_path, lookups=all_lookups())
    except (ParamsError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


def _default_checkpoint(model: str | None, checkpoint: Path | None) -> Path:
    if checkpoint is not None:
        return checkpoint
    if model is None:
        raise click.UsageError("give --model (its checkpoint is data/models/<model>/best.pt) or --checkpoint")
    return Path("data/models") / model / "best.pt"


def inference_options(reads: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options every model-running command shares: params file, device and upload limits.

    ``reads`` names what the command takes from params.yaml (optional: ./params.yaml if present);
    ``--device`` falls back to params' ``train.device``.
    """
    options = [
        click.option(
            "--params",
            "params_path",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help=f"params.yaml for {reads} [default: ./params.yaml if present]",
        ),
        click.option("--device", type=click.Choice(DEVICES), help="[default: train.device, else auto]"),
        click.option(
            "--max-mb",
            default=DEFAULT_LIMITS.max_mb,
            show_default=True,
            type=click.FloatRange(0, min_open=True),
            help="largest file accepted",
        ),
        click.option(
            "--max-px",
            default=DEFAULT_LIMITS.max_side,
            show_default=True,
            type=click.IntRange(1),
            help="max pixels per side",
        ),
    ]

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def main(verbose: bool) -> None:
    """Chest X-ray classifiers of this pipeline: score files, or look at them in the demo app."""
    setup_logging(verbose)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_name", help="params name (densenet121, ...); checked against the checkpoint")
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path, dir_okay=False),
    help="trained weights [default: data/models/<model>/best.pt]",
)
@inference_options(
    "the runtime (train.device, amp, channels_last, eval_batch_size) and cam (batch_size, eigen_sign, random_stride, seed)"
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="CSV file (file + 14 findings) [default: stdout]",
)
@click.option(
    "--heatmaps",
    "heatmap_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="write one heatmap overlay PNG per image into this folder",
)
@click.option(
    "--finding",
    default=TOP_FINDING,
    show_default=True,
    help=f"finding the heatmaps explain; '{TOP_FINDING}': each image's most probable one",
)
@click.option("--method", default="GradCAM", show_default=True, help="CAM method (GradCAM, EigenCAM, ...)")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1))
@click.option(
    "--overlay-px", default=DISPLAY_PX, show_default=True, type=click.IntRange(16, 4096), help="overlay side"
)
def predict(
    inputs: tuple[Path, ...],
    model_name: str | None,
    checkpoint: Path | None,
    params_path: Path | None,
    device: str | None,
    out: Path | None,
    heatmap_dir: Path | None,
    finding: str,
    method: str,
    batch_size: int,
    overlay_px: int,
    max_mb: float,
    max_px: int,
) -> None:
    """Score PNG / JPEG / DICOM files (or folders of them) with a trained model.

    Prints a CSV (file + the 14 finding probabilities) or writes it to --out. Files that cannot be
    read are named on stderr and skipped; the exit code is then 1. Folders are searched recursively
    for .png/.jpg/.jpeg/.dcm/.dicom files and extension-less DICOMs.
    """
    from cxr_core.app.imaging import ImageLimits, collect_files
    from cxr_core.app.predictor import InferenceSettings, Predictor, finding_index, predict_files
    from cxr_core.errors import CxrError
    from cxr_core.explain.methods import get_cam_method
    from cxr_core.labels import LABELS

    if heatmap_dir is not None:
        try:
            get_cam_method(method)
            if finding != TOP_FINDING:
                finding_index(finding)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc
    params = _load_params(params_path)
    cam_batch = int(params["cam"]["batch_size"]) if params else 16
    try:
        predictor = Predictor.from_checkpoint(
            _default_checkpoint(model_name, checkpoint),
            model_name,
            settings=InferenceSettings.from_params(params, device),
            limits=ImageLimits.from_mb(max_mb, max_px),
        )
    except (CxrError, ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    if params and params["preprocess"]["image_size"] != predictor.image_size:
        logger.info(
            "checkpoint image size %d differs from preprocess.image_size %d: using the checkpoint's",
            predictor.image_size,
            params["preprocess"]["image_size"],
        )

    files = collect_files(inputs)
    ok, probs, failed = predict_files(predictor, files, batch_size=batch_size)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as fh:
            _write_csv(fh, ok, probs, LABELS)
        logger.info("wrote %d rows to %s", len(ok), out)
    else:
        _write_csv(sys.stdout, ok, probs, LABELS)
        sys.stdout.flush()
    if heatmap_dir is not None and ok:
        _write_overlays(predictor, ok, probs, heatmap_dir, finding, method, overlay_px, cam_batch)
    if failed:
        listed = "\n".join(f"  {exc}" for exc in failed)
        click.echo(
            f"{len(failed)} of {len(files)} file(s) could not be read and were skipped:\n{listed}", err=True
        )
        sys.exit(1)


def _write_csv(fh: TextIO, files: Sequence[Path], probs: Any, labels: Sequence[str]) -> None:
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(["file", *labels])
    for path, row in zip(files, probs, strict=True):
        writer.writerow([str(path), *(f"{float(p):.6f}" for p in row)])


def _overlay_names(files: Sequence[Path], suffixes: Sequence[str]) -> list[str]:
    """``<stem>.<suffix>.png``, made unique (``-1``, ``-2``) when two inputs share a stem."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for path, suffix in zip(files, suffixes, strict=True):
        base = f"{path.stem}.{suffix}"
        n = seen.get(base, 0)
        seen[base] = n + 1
        names.append(f"{base}.png" if n == 0 else f"{base}-{n}.png")
    return names


def _write_overlays(
    predictor: Any,
    files: Sequence[Path],
    probs: Any,
    out_dir: Path,
    finding: str,
    method: str,
    overlay_px: int,
    batch_size: int,
) -> None:
    """Heatmap overlay PNGs (the image at ``overlay_px`` with the map blended on top)."""
    import numpy as np
    from PIL import Image

    from cxr_core.app.imaging import read_image
    from cxr_core.app.overlay import overlay
    from cxr_core.labels import LABELS

    out_dir.mkdir(parents=True, exist_ok=True)
    findings = [LABELS[int(np.argmax(p))] if finding == TOP_FINDING else finding for p in probs]
    names = _overlay_names(files, [f"{f}.{method}" for f in findings])
    for start in range(0, len(files), batch_size):
        chunk = list(files[start : start + batch_size])
        maps = predictor.heatmaps(
            np.stack([predictor.load(p) for p in chunk]), findings[start : start + batch_size], method
        )
        for i, path in enumerate(chunk):
            display = read_image(path, overlay_px, limits=predictor.limits)
            Image.fromarray(overlay(display, maps[i])).save(out_dir / names[start + i])
    logger.info("wrote %d %s heatmap overlays to %s", len(files), method, out_dir)


@main.command()
@click.option("--model", "model_name", help="model selected at start [default: the first trained one]")
@click.option(
    "--models-dir",
    default="data/models",
    show_default=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="one folder per model with best.pt",
)
@click.option(
    "--splits",
    "splits_dir",
    default="data/splits",
    show_default=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="loc.csv there gives the radiologist boxes",
)
@inference_options(
    "the runtime (train.device, amp, channels_last, eval_batch_size) and cam (methods, eigen_sign, random_stride, seed)"
)
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 to serve the network")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535))
def demo(
    model_name: str | None,
    models_dir: Path,
    splits_dir: Path,
    params_path: Path | None,
    device: str | None,
    host: str,
    port: int,
    max_mb: float,
    max_px: int,
) -> None:
    """Web app: upload an X-ray, see the 14 probabilities and a heatmap (needs the demo extra)."""
    from cxr_core.app.demo import build_app, default_methods, launch
    from cxr_core.app.imaging import ImageLimits
    from cxr_core.app.predictor import InferenceSettings
    from cxr_core.errors import CxrError

    params = _load_params(params_path)
    try:
        app = build_app(
            models_dir=models_dir,
            splits_dir=splits_dir,
            default_model=model_name,
            methods=default_methods(params),
            settings=InferenceSettings.from_params(params, device),
            limits=ImageLimits.from_mb(max_mb, max_px),
        )
    except CxrError as exc:  # DemoError, a malformed loc.csv, a bad checkpoint...
        raise click.ClickException(str(exc)) from exc
    launch(app, host=host, port=port)


if __name__ == "__main__":
    main()
