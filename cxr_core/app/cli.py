"""``cxr``: the user-facing command (``cxr predict`` on files, ``cxr export`` to share a model,
``cxr demo`` for the web app).

The DVC stages are ``python -m stages.<name>``; this group is for people who bring their own
images. Which model: ``--model M [--seed K]`` (``data/models/M/seedK/best.pt``), ``--checkpoint``
(a ``best.pt`` or a ``cxr export`` folder), ``--model-dir`` (an export folder), or nothing: the
best model of the last run, named in ``metrics/headline.json``. A model trained on the synthetic
phantom is always announced with a warning on stderr. Positive / negative calls use the operating
points the pipeline chose on the validation split (``data/operating/M/seedK.json``, an export's
``config.json``, or ``--operating``); the app never chooses a threshold. Exit codes of ``cxr predict``: 0 every file
was scored; 1 some file could not be read (it is named on stderr, the others are still scored and
written) or the model / checkpoint could not be loaded; 2 a usage error (bad option).
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import click

from cxr_core.app.imaging import DEFAULT_LIMITS
from cxr_core.app.overlay import DISPLAY_PX
from cxr_core.devtools.known_answer_run import main as known_answer
from cxr_core.devtools.leaderboard import main as leaderboard
from cxr_core.devtools.pr_report import main as pr_report
from cxr_core.devtools.sweep import main as sweep
from cxr_core.errors import CxrError
from cxr_core.logs import setup_logging
from cxr_core.runtime import DEVICES, check_amp, check_device

logger = logging.getLogger("cxr")


def all_lookups() -> dict[str, Any]:
    """Every registry the app's params can name (the app runs models, heatmaps and all)."""
    from cxr_core.data.external.registry import check_dataset
    from cxr_core.evaluate.operating import get_threshold_rule
    from cxr_core.explain.cams.eigen_cam import check_eigen_sign
    from cxr_core.explain.cams.registry import get_cam_method
    from cxr_core.explain.faithfulness import check_faithfulness
    from cxr_core.models.registry import get_spec
    from cxr_core.train.losses import get_loss

    return {
        "model": get_spec,
        "loss": get_loss,
        "device": check_device,
        "amp": check_amp,
        "cam method": get_cam_method,
        "eigen sign": check_eigen_sign,
        "threshold rule": get_threshold_rule,
        "faithfulness metric": check_faithfulness,
        "external dataset": check_dataset,
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


def checkpoint_path(model: str, seed: int) -> Path:
    """Where ``train@`` writes the best weights of (model, seed), relative to the project root."""
    from cxr_core.models.checkpoints import CHECKPOINT_PATTERN

    return Path(CHECKPOINT_PATTERN.format(model=model, seed=seed))


#: Where ``clinical@`` writes the validation operating points of (model, seed), beside the checkpoint's layout.
OPERATING_DIR = "data/operating"
OPERATING_PATTERN = OPERATING_DIR + "/{model}/seed{seed}.json"


def operating_path(model: str, seed: int) -> Path:
    """The operating-points file of the checkpoint :func:`checkpoint_path` gives for (model, seed)."""
    return Path(OPERATING_PATTERN.format(model=model, seed=seed))


def default_seed(params: dict[str, Any] | None) -> int:
    """The first of params.yaml's ``seeds`` (the training matrix), else 0."""
    seeds = (params or {}).get("seeds")
    return int(seeds[0]) if isinstance(seeds, list | tuple) and seeds else 0


def _choose_model(
    model_name: str | None,
    seed: int | None,
    checkpoint: Path | None,
    model_dir: Path | None,
    params: dict[str, Any] | None,
) -> tuple[Path, str | None, int | None]:
    """(checkpoint or export folder, model name to check it against, seed if known)."""
    from cxr_core.app.predictor import HEADLINE, read_headline

    if model_dir is not None and checkpoint is not None:
        raise click.UsageError("give --model-dir (an exported folder) or --checkpoint, not both")
    given = model_dir if model_dir is not None else checkpoint
    if given is not None:
        return given, model_name, seed
    if model_name is not None:
        k = default_seed(params) if seed is None else seed
        path = checkpoint_path(model_name, k)
        models = (params or {}).get("models") or []
        if params is not None and model_name not in models and not path.exists():
            listed = ",".join([*map(str, models), model_name])
            raise click.ClickException(
                f"{model_name} is not in `models` of params.yaml, so no stage trains it: add it "
                f"(e.g. `dvc exp run -S 'models=[{listed}]'`) and run `dvc repro train`"
            )
        return path, model_name, k
    if seed is not None:
        raise click.UsageError("--seed needs --model")
    try:
        best = read_headline(HEADLINE)
    except CxrError as exc:
        raise click.ClickException(str(exc)) from exc
    auc = f", test macro AUC {best.macro_auc:.3f}" if best.macro_auc is not None else ""
    seed_text = f" seed {best.seed}" if best.seed is not None else ""
    click.echo(
        f"no --model given: using {best.model}{seed_text} ({best.checkpoint}{auc}), "
        f"the best model of the last run ({HEADLINE})",
        err=True,
    )
    return best.checkpoint, best.model, best.seed


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


def model_options(what: str, folders: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--model / --seed / --checkpoint: which trained model ``what`` uses (see the module docstring)."""
    options = [
        click.option(
            "--model",
            "model_name",
            help="params name (densenet121, ...); checked against the checkpoint "
            "[default: the best model of the last run, from metrics/headline.json]",
        ),
        click.option(
            "--seed",
            type=click.IntRange(0),
            help="training seed of --model [default: the first of params.yaml seeds, else 0]",
        ),
        click.option(
            "--checkpoint",
            type=click.Path(path_type=Path),
            help=f"{what}: a best.pt{', or a folder written by `cxr export`' if folders else ''} "
            "[default: data/models/<model>/seed<seed>/best.pt]",
        ),
    ]

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


def _warn_if_phantom(predictor: Any) -> None:
    """The phantom warning (or, for a checkpoint that does not say, a note) on stderr."""
    warning = predictor.phantom_warning() or predictor.provenance_note()
    if warning:
        click.echo(warning, err=True)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@model_options("the model to run")
@click.option(
    "--model-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="a folder written by `cxr export` (config.json + model.safetensors), e.g. a downloaded hub repo",
)
@inference_options(
    "the runtime (train.device, amp, channels_last, eval_batch_size) and cam (batch_size, eigen_sign, random_stride, seed)"
)
@click.option(
    "--operating",
    "operating_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="operating points (thresholds chosen on the validation split) for the positive / negative calls "
    "[default: data/operating/<model>/seed<seed>.json for --model or the last run's best; an export's "
    "config.json for --model-dir]",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="output file [default: stdout]",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "json"]),
    default="csv",
    show_default=True,
    help="csv: file + the 14 probabilities per row; json: one object with the model and every file",
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
    "--overlay-px",
    default=DISPLAY_PX,
    show_default=True,
    type=click.IntRange(16, 4096),
    help="overlay width (a caption band sits above the image)",
)
def predict(
    inputs: tuple[Path, ...],
    model_name: str | None,
    seed: int | None,
    checkpoint: Path | None,
    model_dir: Path | None,
    params_path: Path | None,
    device: str | None,
    operating_file: Path | None,
    out: Path | None,
    fmt: str,
    heatmap_dir: Path | None,
    finding: str,
    method: str,
    batch_size: int,
    overlay_px: int,
    max_mb: float,
    max_px: int,
) -> None:
    """Score PNG / JPEG / DICOM files (or folders of them) with a trained model.

    Prints a CSV (file + the 14 finding probabilities) or JSON, or writes it to --out. Without
    --model / --checkpoint / --model-dir, the best model of the last run (metrics/headline.json)
    is used and named on stderr. With operating points (thresholds the pipeline chose on the
    validation split) every finding also gets a positive / negative call (CSV: <finding>_call). Files that cannot be read are named on stderr and skipped; the
    exit code is then 1. Folders are searched recursively for .png/.jpg/.jpeg/.dcm/.dicom files
    and extension-less DICOMs.
    """
    from cxr_core.app.imaging import ImageLimits, collect_files
    from cxr_core.app.predictor import (
        InferenceSettings,
        Predictor,
        finding_index,
        predict_files,
        probabilities,
    )
    from cxr_core.explain.cams.registry import get_cam_method
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
    pipeline = checkpoint is None and model_dir is None  # --model or the last run's best
    source, model_name, seed = _choose_model(model_name, seed, checkpoint, model_dir, params)
    try:
        predictor = Predictor.from_checkpoint(
            source,
            model_name,
            settings=InferenceSettings.from_params(params, device),
            limits=ImageLimits.from_mb(max_mb, max_px),
        )
        searched = _attach_operating(predictor, operating_file, model_name if pipeline else None, seed)
    except (CxrError, ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    _warn_if_phantom(predictor)
    if predictor.operating is not None:
        click.echo(predictor.operating.describe(), err=True)
    else:
        where = f" ({searched} not found)" if searched is not None else ""
        click.echo(
            f"note: no operating points{where}, so no positive / negative calls, probabilities only; "
            "run `dvc repro` (its clinical@ stage chooses thresholds on the validation split) "
            "or pass --operating",
            err=True,
        )
    if params and params["preprocess"]["image_size"] != predictor.image_size:
        logger.info(
            "checkpoint image size %d differs from preprocess.image_size %d: using the checkpoint's",
            predictor.image_size,
            params["preprocess"]["image_size"],
        )

    files = collect_files(inputs)
    ok, logits, failed = predict_files(predictor, files, batch_size=batch_size)
    probs = probabilities(logits)

    def write(fh: TextIO) -> None:
        calls = predictor.calls(logits)
        if fmt == "json":
            scaled = predictor.operating.scores(logits) if calls and predictor.operating.temperature else None
            _write_json(fh, predictor, ok, probs, failed, calls, scaled)
        else:
            _write_csv(fh, ok, probs, LABELS, calls)

    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as fh:
            write(fh)
        logger.info("wrote %d rows to %s", len(ok), out)
    else:
        write(sys.stdout)
        sys.stdout.flush()
    if heatmap_dir is not None and ok:
        _write_overlays(predictor, ok, probs, heatmap_dir, finding, method, overlay_px, cam_batch)
    if failed:
        listed = "\n".join(f"  {exc}" for exc in failed)
        click.echo(
            f"{len(failed)} of {len(files)} file(s) could not be read and were skipped:\n{listed}", err=True
        )
        sys.exit(1)


def _attach_operating(
    predictor: Any, given: Path | None, model_name: str | None, seed: int | None
) -> Path | None:
    """Give ``predictor`` its operating points: ``given``, else the pipeline's file for (model, seed).

    An export folder brings its own (config.json), which ``given`` replaces. Returns the default
    file looked for when it does not exist (for the note), else None. A missing ``given`` file or
    a malformed one is an error naming it.
    """
    from cxr_core.app.predictor import Operating

    if given is not None:
        predictor.operating = Operating.read(given, predictor.name)
        return None
    if predictor.operating is not None or model_name is None or seed is None:
        return None
    path = operating_path(model_name, seed)
    if not path.is_file():
        return path
    predictor.operating = Operating.read(path, predictor.name)
    return None


def call_column(label: str) -> str:
    """The CSV column of a finding's positive / negative call."""
    return f"{label}_call"


def _write_csv(
    fh: TextIO,
    files: Sequence[Path],
    probs: Any,
    labels: Sequence[str],
    calls: Sequence[Sequence[str | None]] | None = None,
) -> None:
    """file, the 14 probabilities, then (with operating points) the 14 calls; empty where no threshold."""
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(["file", *labels, *((call_column(x) for x in labels) if calls is not None else ())])
    for i, (path, row) in enumerate(zip(files, probs, strict=True)):
        called = [c or "" for c in calls[i]] if calls is not None else []
        writer.writerow([str(path), *(f"{float(p):.6f}" for p in row), *called])


def _write_json(
    fh: TextIO,
    predictor: Any,
    files: Sequence[Path],
    probs: Any,
    failed: Sequence[Any],
    calls: Sequence[Sequence[str | None]] | None = None,
    scaled: Any = None,
) -> None:
    """One object: which model (phantom or not) and operating points, then every file's probabilities.

    With operating points each prediction also has ``calls`` (finding -> positive / negative,
    null where no threshold was chosen), and with a temperature the ``scaled_probabilities``
    the calls compared with the thresholds.
    """
    from cxr_core.labels import LABELS

    operating = predictor.operating
    doc = {
        "model": predictor.name,
        "checkpoint": str(predictor.checkpoint),
        "data_source": predictor.meta.data_source,
        "label_file": predictor.meta.label_file,
        "phantom": predictor.phantom,
        "warning": predictor.phantom_warning(),
        "labels": list(LABELS),
        "operating_points": (
            {**operating.to_config(), "source": operating.source} if operating is not None else None
        ),
        "predictions": [
            {
                "file": str(path),
                "probabilities": {lab: round(float(p), 6) for lab, p in zip(LABELS, row, strict=True)},
                **({"calls": dict(zip(LABELS, calls[i], strict=True))} if calls is not None else {}),
                **(
                    {
                        "scaled_probabilities": {
                            lab: round(float(p), 6) for lab, p in zip(LABELS, scaled[i], strict=True)
                        }
                    }
                    if scaled is not None
                    else {}
                ),
            }
            for i, (path, row) in enumerate(zip(files, probs, strict=True))
        ],
        "failed": [{"file": str(exc.path), "reason": exc.reason} for exc in failed],
    }
    json.dump(doc, fh, indent=2)
    fh.write("\n")


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


def _overlay_caption(predictor: Any, path: Path, finding: str, probs: Any, method: str) -> dict[str, str]:
    """What an overlay shows, as PNG text keys: the finding and its probability, model, method, file."""
    from cxr_core.labels import LABELS

    caption = {
        "Finding": f"{finding}: p = {float(probs[LABELS.index(finding)]):.3f}",
        "Model": predictor.name,
        "Checkpoint": str(predictor.checkpoint),
        "Method": method,
        "Source": path.name,
        "Disclaimer": "research use only, not for diagnosis",
    }
    if predictor.phantom:
        caption["Warning"] = "PHANTOM MODEL: trained on synthetic images; meaningless for a real X-ray"
    return caption


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
    """Heatmap overlay PNGs: the image at ``overlay_px`` with the map blended on top, under a caption."""
    import numpy as np

    from cxr_core.app.imaging import read_image
    from cxr_core.app.overlay import captioned, overlay, save_overlay
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
            caption = _overlay_caption(predictor, path, findings[start + i], probs[start + i], method)
            lines = [caption["Finding"], f"{caption['Model']}, {method}"]
            image = captioned(overlay(display, maps[i]), lines, caption.get("Warning"))
            save_overlay(out_dir / names[start + i], image, caption)
    logger.info("wrote %d %s heatmap overlays to %s", len(files), method, out_dir)


@main.command("export")
@click.argument("out_dir", type=click.Path(path_type=Path, dir_okay=True))
@model_options("the checkpoint to export", folders=False)
@click.option(
    "--metrics",
    "metrics_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="test metrics for the card [default: metrics/test/<model>/seed<seed>.json; none with --checkpoint]",
)
@click.option(
    "--predictions",
    "predictions_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="test predictions for predictions.csv "
    "[default: data/predictions/<model>/seed<seed>.npz; none with --checkpoint]",
)
@click.option(
    "--operating",
    "operating_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="validation operating points for config.json and the card "
    "[default: data/operating/<model>/seed<seed>.json; none with --checkpoint]",
)
@click.option(
    "--params",
    "params_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="params.yaml for the card's training recipe [default: ./params.yaml if present]",
)
@click.option("--force", is_flag=True, help="replace an earlier export in OUT_DIR")
def export(
    out_dir: Path,
    model_name: str | None,
    seed: int | None,
    checkpoint: Path | None,
    metrics_path: Path | None,
    predictions_path: Path | None,
    operating_file: Path | None,
    params_path: Path | None,
    force: bool,
) -> None:
    """Write a trained model as a Hugging Face hub / timm folder: weights, config, card, test predictions.

    OUT_DIR gets model.safetensors + config.json (timm's hub format: `timm.create_model("local-dir:OUT_DIR",
    pretrained=True)` loads it), a model card README.md and predictions.csv. Without --model or
    --checkpoint, the best model of the last run (metrics/headline.json) is exported. The test
    metrics and predictions of (model, seed) are attached from the pipeline's files; with an
    explicit --checkpoint only those given by --metrics / --predictions are, since nothing ties
    the pipeline's files to another checkpoint. The operating points (thresholds chosen on the
    validation split) go into config.json and the card when their file exists. See docs/export.md.
    """
    from cxr_core.app.export import export_model

    params = _load_params(params_path)
    if checkpoint is not None and checkpoint.is_dir():
        raise click.BadParameter(
            f"{checkpoint} is a folder; export takes a best.pt", param_hint="--checkpoint"
        )
    source, model_name, seed = _choose_model(model_name, seed, checkpoint, None, params)
    if checkpoint is None and model_name is not None and seed is not None:
        metrics_path = metrics_path or Path("metrics/test") / model_name / f"seed{seed}.json"
        predictions_path = predictions_path or Path("data/predictions") / model_name / f"seed{seed}.npz"
        operating_file = operating_file or operating_path(model_name, seed)
    try:
        result = export_model(
            source,
            out_dir,
            model_name=model_name,
            seed=seed,
            params=params,
            metrics=metrics_path,
            predictions=predictions_path,
            operating=operating_file,
            split=Path("metrics/split.json"),
            force=force,
        )
    except (CxrError, ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    if result.phantom:
        click.echo(
            f"WARNING: {source} was trained on the phantom (synthetic data); its model card and "
            "config.json say so (phantom: true). Do not publish it as a chest X-ray model.",
            err=True,
        )
    click.echo(f"exported {source} to {result.folder}: {', '.join(result.files)}")


@main.command()
@click.option(
    "--model",
    "model_name",
    help="model selected at start: <model> (its first seed) or <model>/seed<k> "
    "[default: the first trained one]",
)
@click.option(
    "--models-dir",
    default="data/models",
    show_default=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="trained models, as data/models/<model>/seed<k>/best.pt",
)
@click.option(
    "--model-dir",
    "model_dirs",
    multiple=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="also offer this `cxr export` folder (repeatable)",
)
@click.option(
    "--operating-dir",
    default=OPERATING_DIR,
    show_default=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="validation operating points, as <dir>/<model>/seed<k>.json: positive / negative calls",
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
    model_dirs: tuple[Path, ...],
    operating_dir: Path,
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

    params = _load_params(params_path)
    try:
        app = build_app(
            models_dir=models_dir,
            exports=model_dirs,
            splits_dir=splits_dir,
            operating_dir=operating_dir,
            default_model=model_name,
            methods=default_methods(params),
            settings=InferenceSettings.from_params(params, device),
            limits=ImageLimits.from_mb(max_mb, max_px),
        )
    except CxrError as exc:  # DemoError, a malformed loc.csv, a bad checkpoint...
        raise click.ClickException(str(exc)) from exc
    launch(app, host=host, port=port)


main.add_command(pr_report, name="pr-report")
main.add_command(leaderboard, name="leaderboard")
main.add_command(known_answer, name="known-answer")
main.add_command(sweep, name="sweep")

if __name__ == "__main__":
    main()
