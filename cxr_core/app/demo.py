"""The demo app (paper section 4.3): the paper's two programs, classification and localisation, in one page.

Pick a trained model (every ``<models_dir>/<model>/seed<k>/best.pt``, and any ``cxr export``
folder given; the last run's best, as ``metrics/headline.json`` names it, comes first), upload a
PNG, JPEG or DICOM or click one of the localisation set's images, and see the 14 probabilities and
a heatmap of a chosen finding by a chosen CAM method. When the file name is in the localisation set (``loc.csv``), the
radiologists' boxes are drawn on both images, as in the paper's Figure 4, so the heatmap can be
judged against them. A model trained on the synthetic phantom gets a red banner above the results
(and a line in every result's message), so nobody mistakes its numbers for a reading. When the
pipeline has chosen operating points for the model on the validation split
(``<operating_dir>/<model>/seed<k>.json``, or an export's ``config.json``), a table shows each
finding's call at that threshold next to its probability; the page never picks a threshold.

Bad uploads (not an image, over the size limit, a colour / multi-frame / pixel-less DICOM) get a
message in the page, never a stack trace. Gradio is an optional extra
(``pip install -e '.[demo]'``), imported only when the app is built.
"""

from __future__ import annotations

import html
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_core.app.imaging import DEFAULT_LIMITS, ImageLimits, read_image, resize_grey
from cxr_core.app.overlay import DISPLAY_PX, overlay
from cxr_core.app.predictor import (
    FALLBACK_SETTINGS,
    HEADLINE,
    InferenceSettings,
    Operating,
    Predictor,
    finding_index,
    read_headline,
)
from cxr_core.app.predictor import probabilities as probabilities_of
from cxr_core.data.decode import ImageDecodeError
from cxr_core.data.metadata import BOX_SPACE
from cxr_core.data.rawdata import locate_images
from cxr_core.data.tables import LocTable
from cxr_core.errors import CxrError
from cxr_core.labels import BOX_LABELS, LABELS

if TYPE_CHECKING:
    import gradio as gr

logger = logging.getLogger(__name__)

TOP_FINDING = "(most probable)"
#: The page's banner for a model trained on the phantom (cxr predict says the same on stderr).
PHANTOM_BANNER = (
    '<div role="alert" style="border: 3px solid #b91c1c; background: #fee2e2; color: #7f1d1d; '
    'padding: 0.6em 1em; border-radius: 6px;">'
    '<strong style="font-size: 1.2em;">⚠️ Phantom model: not trained on real X-rays</strong><br>'
    "<code>{model}</code> was trained on the <strong>phantom</strong>, synthetic images drawn by this "
    "project so the pipeline can be tested. Its probabilities and heatmaps mean nothing for a real chest "
    "X-ray; never use them for a patient.</div>"
)
PHANTOM_NOTE = "⚠️ Phantom model (synthetic training data): these numbers mean nothing for a real X-ray."
#: CAM methods offered when params.yaml is not at hand (RandomCAM is a scoring control, not a view).
DEFAULT_METHODS: tuple[str, ...] = ("GradCAM", "EigenCAM", "GradCAMPlusPlus")
INSTALL_HINT = "the demo needs Gradio, an optional extra: pip install -e '.[demo]'"


class DemoError(CxrError, RuntimeError):
    """The app cannot start (no trained model, Gradio missing); the message says what to do."""


def import_gradio() -> Any:
    """Gradio, or a :class:`DemoError` naming the extra to install."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as exc:
        raise DemoError(f"{INSTALL_HINT} ({exc})") from exc
    return gradio


def trained_models(models_dir: str | os.PathLike) -> dict[str, Path]:
    """``<model>/seed<k>`` -> its ``best.pt``, for every one under ``models_dir``; by model, then seed."""
    root = Path(models_dir)
    if not root.is_dir():
        return {}
    found = []
    for path in root.glob("*/seed*/best.pt"):
        digits = path.parent.name.removeprefix("seed")
        if path.is_file() and digits.isdigit():
            found.append((path.parent.parent.name, int(digits), path))
    return {f"{model}/seed{seed}": path for model, seed, path in sorted(found)}


def operating_file(operating_dir: str | os.PathLike, key: str) -> Path | None:
    """``<operating_dir>/<model>/seed<k>.json`` for a ``<model>/seed<k>`` key (None for an export's key)."""
    model, sep, seed = key.partition("/seed")
    return Path(operating_dir) / model / f"seed{seed}.json" if sep and seed.isdigit() else None


def calls_table(result: Analysis, operating: Operating | None) -> str:
    """HTML: finding, probability and (with operating points) the call at the validation threshold.

    With a temperature, the temperature-scaled probability the call compared is shown too.
    """
    probabilities = result.probabilities or {}
    if not probabilities:
        return ""
    scaled = result.scaled if operating is not None else None
    head = ["finding", "probability"]
    if scaled is not None:
        head.append(f"scaled (T = {operating.temperature:g})")
    if operating is not None:
        head += [f"call at the {operating.chosen_on} operating point", "threshold"]
    rows = []
    for i, label in enumerate(LABELS):
        cells = [html.escape(label), f"{probabilities[label]:.3f}"]
        if scaled is not None:
            cells.append(f"{scaled[label]:.3f}")
        if operating is not None:
            threshold = operating.thresholds[i]
            call = (result.calls or {}).get(label)
            cells += [call or "no threshold", "" if threshold is None else f"{threshold:.3f}"]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if operating is None:
        note = (
            "No operating points for this model: probabilities only (the pipeline's clinical@ stage "
            "chooses thresholds on the validation split; run <code>dvc repro</code>)."
        )
    else:
        note = (
            f"Calls: positive when the {'scaled ' if scaled is not None else ''}probability is at or "
            f"above the threshold chosen on the {html.escape(operating.split_name)} split "
            f"({html.escape(operating.method)})."
        )
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<p>{note}</p><table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def pick_model(models: Sequence[str], wanted: str | None) -> str | None:
    """``wanted`` as a key of ``models``: itself, or a bare model name -> its first seed."""
    if wanted is None or wanted in models:
        return wanted
    return next((m for m in models if m.split("/seed")[0] == wanted), None)


def best_of_last_run(models: Sequence[str], headline: str | os.PathLike | None) -> str | None:
    """The ``<model>/seed<k>`` the report stage named best in ``headline``, when it is among ``models``."""
    if headline is None or not Path(headline).is_file():
        return None
    try:
        best = read_headline(headline)
    except CxrError as exc:
        logger.warning("%s; the demo starts on the first model instead", exc)
        return None
    return pick_model(models, best.model if best.seed is None else f"{best.model}/seed{best.seed}")


def example_images(
    raw_dir: str | os.PathLike, boxes: Mapping[str, Sequence[tuple]], limit: int = 4
) -> list[Path]:
    """Up to ``limit`` localisation-set images found in the raw folder, one per boxed finding.

    They show what the page is for at one click: the heatmap beside the radiologist's box. None
    when the raw folder or its images are not there (a clone before ``dvc repro``).
    """
    by_finding: dict[str, str] = {}
    for name in sorted(boxes):
        for label in sorted({b[4] for b in boxes[name]}, key=BOX_LABELS.index):
            by_finding.setdefault(label, name)
    names = list(dict.fromkeys(by_finding[label] for label in BOX_LABELS if label in by_finding))
    try:
        found = locate_images(Path(raw_dir), names)
    except (CxrError, OSError) as exc:
        logger.info("no example images: %s", exc)
        return []
    return [p for p in found if p is not None][:limit]


def default_methods(params: Mapping[str, Any] | None) -> list[str]:
    """``cam.methods`` from params.yaml without the random control, else :data:`DEFAULT_METHODS`."""
    methods = list(params["cam"]["methods"]) if params else list(DEFAULT_METHODS)
    return [m for m in methods if m != "RandomCAM"] or list(DEFAULT_METHODS)


def load_boxes(splits_dir: str | os.PathLike) -> dict[str, list[tuple[float, float, float, float, str]]]:
    """Radiologist boxes of ``loc.csv`` by image file name, in the 1024 px space; {} without the file."""
    path = Path(splits_dir) / "loc.csv"
    if not path.is_file():
        logger.info("%s not found: no radiologist boxes in the demo", path)
        return {}
    table = LocTable.read(splits_dir).table
    boxes: dict[str, list[tuple[float, float, float, float, str]]] = {}
    for row in table.itertuples(index=False):
        boxes.setdefault(str(row.image), []).append(
            (float(row.x1024), float(row.y1024), float(row.w1024), float(row.h1024), str(row.label))
        )
    return boxes


@dataclass
class Analysis:
    """What one upload gives: the page's outputs, or a message when it could not be read."""

    message: str
    probabilities: dict[str, float] | None = None
    calls: dict[str, str | None] | None = None  # finding -> positive / negative / None (no threshold)
    scaled: dict[str, float] | None = None  # temperature-scaled probabilities the calls compared
    heatmap_image: np.ndarray | None = None
    input_image: np.ndarray | None = None
    finding: str | None = None
    boxes: list[tuple[float, float, float, float, str]] = field(default_factory=list)
    error: bool = False


class DemoBackend:
    """Everything the page does, without Gradio (so it is testable): models loaded once, on first use."""

    def __init__(
        self,
        models_dir: str | os.PathLike = "data/models",
        splits_dir: str | os.PathLike = "data/splits",
        *,
        exports: Sequence[str | os.PathLike] = (),
        operating_dir: str | os.PathLike | None = "data/operating",
        raw_dir: str | os.PathLike | None = "data/raw",
        settings: InferenceSettings = FALLBACK_SETTINGS,
        limits: ImageLimits = DEFAULT_LIMITS,
        display_px: int = DISPLAY_PX,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.operating_dir = None if operating_dir is None else Path(operating_dir)
        self.sources: dict[str, Path] = trained_models(self.models_dir)
        for folder in exports:  # exported folders by their own name (the path if two share one)
            key = Path(folder).name or str(folder)
            self.sources[f"{folder}" if key in self.sources else key] = Path(folder)
        self.models = list(self.sources)
        self.boxes = load_boxes(splits_dir)
        self.examples = [] if raw_dir is None else example_images(raw_dir, self.boxes)
        self.settings = settings
        self.limits = limits
        self.display_px = display_px
        self._predictors: dict[str, Predictor] = {}
        self._lock = threading.Lock()

    def predictor(self, model: str) -> Predictor:
        """The model's predictor, loaded from its ``best.pt`` / export folder when first asked for.

        A trained ``<model>/seed<k>`` gets the operating points of its file when there is one (an
        export brings its own); a malformed file fails the load, naming it.
        """
        if model not in self.sources:
            raise ValueError(f"no trained model {model!r}; trained: {self.models}")
        with self._lock:
            if model not in self._predictors:
                predictor = Predictor.from_checkpoint(
                    self.sources[model], settings=self.settings, limits=self.limits
                )
                path = operating_file(self.operating_dir, model) if self.operating_dir else None
                if predictor.operating is None and path is not None and path.is_file():
                    predictor.operating = Operating.read(path, predictor.name)
                self._predictors[model] = predictor
            return self._predictors[model]

    def notice(self, model: str | None) -> str:
        """The banner (HTML) above the results: a loud warning for a phantom-trained model, else its data."""
        if not model:
            return ""
        try:
            predictor = self.predictor(model)
        except Exception as exc:  # shown again, with the details, when an upload tries it
            logger.exception("loading %s failed", model)
            name, reason = html.escape(model), html.escape(str(exc))
            return f"<p>⚠️ Cannot load model <code>{name}</code>: {reason}</p>"
        if predictor.phantom:
            return PHANTOM_BANNER.format(model=html.escape(model))
        name, source, labels = (
            html.escape(x) for x in (model, predictor.meta.data_source, predictor.meta.label_file)
        )
        return (
            f"<p><code>{name}</code>: trained on data source <code>{source}</code> (labels: "
            f"<code>{labels}</code>). For research, not diagnosis.</p>"
        )

    def analyse(
        self, path: str | os.PathLike | None, model: str | None, finding: str, method: str
    ) -> Analysis:
        """One upload -> probabilities, heatmap overlay, boxes; or a readable message, never an exception."""
        if path is None:
            return Analysis("Upload a chest X-ray (PNG, JPEG or DICOM) to start.")
        name = Path(path).name
        if not model:
            return Analysis("No trained model selected.", error=True)
        try:
            predictor = self.predictor(model)
        except Exception as exc:  # a broken checkpoint must not take the page down
            logger.exception("loading %s failed", model)
            return Analysis(f"Cannot load model `{model}`: {exc}", error=True)
        try:
            native = read_image(path, limits=self.limits)
            model_input = predictor.load(path)
        except ImageDecodeError as exc:
            logger.info("upload refused: %s", exc)
            return Analysis(f"Cannot use `{name}`: {exc.reason}.", error=True)
        logits = predictor.logits(model_input)
        probs = probabilities_of(logits)[0]
        probabilities = {label: float(p) for label, p in zip(LABELS, probs, strict=True)}
        op, calls, scaled = predictor.operating, None, None
        if op is not None:
            calls = dict(zip(LABELS, op.calls(op.scores(logits))[0], strict=True))
            if op.temperature is not None:
                scaled = {x: float(v) for x, v in zip(LABELS, op.scores(logits)[0], strict=True)}
        chosen = LABELS[int(np.argmax(probs))] if finding in (TOP_FINDING, "", None) else finding
        try:
            finding_index(chosen)
            heatmap = predictor.heatmaps(model_input, chosen, method)[0]
        except (ValueError, RuntimeError) as exc:
            logger.exception("heatmap failed")
            return Analysis(
                f"Probabilities computed, but the {method} heatmap failed: {exc}",
                probabilities,
                calls,
                scaled,
                error=True,
            )
        display = resize_grey(native, self.display_px)
        boxes = self.boxes.get(name, [])
        scale = self.display_px / BOX_SPACE
        message = (
            f"**{name}**: {model} at {predictor.image_size} px; {method} heatmap for **{chosen}** "
            f"(p = {probabilities[chosen]:.3f})."
        )
        if predictor.phantom:
            message = f"{PHANTOM_NOTE}\n\n{message}"
        if boxes:
            message += " Localisation-set image: radiologist box(es) in green for " + ", ".join(
                sorted({b[4] for b in boxes})
            )
        return Analysis(
            message,
            probabilities,
            calls,
            scaled,
            overlay(display, heatmap, boxes=boxes, box_scale=scale),
            overlay(display, None, boxes=boxes, box_scale=scale),
            chosen,
            boxes,
        )


def build_app(
    models_dir: str | os.PathLike = "data/models",
    splits_dir: str | os.PathLike = "data/splits",
    *,
    exports: Sequence[str | os.PathLike] = (),
    operating_dir: str | os.PathLike | None = "data/operating",
    raw_dir: str | os.PathLike | None = "data/raw",
    headline: str | os.PathLike | None = HEADLINE,
    default_model: str | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    settings: InferenceSettings = FALLBACK_SETTINGS,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> gr.Blocks:
    """The Gradio Blocks of the demo (launch it with :func:`launch`, or ``.launch()`` in a test)."""
    backend = DemoBackend(
        models_dir,
        splits_dir,
        exports=exports,
        operating_dir=operating_dir,
        raw_dir=raw_dir,
        settings=settings,
        limits=limits,
    )
    if not backend.models:
        raise DemoError(
            f"no trained model in {models_dir} (expected {models_dir}/<model>/seed<k>/best.pt); "
            "train one first: `dvc repro` (or `dvc repro train@densenet121-0`), or pass --model-dir"
        )
    chosen = pick_model(backend.models, default_model)
    if default_model is not None and chosen is None:
        raise DemoError(
            f"--model {default_model!r} has no {models_dir}/{default_model}/seed<k>/best.pt; "
            f"trained: {backend.models}"
        )
    first = chosen or best_of_last_run(backend.models, headline) or backend.models[0]
    gr = import_gradio()
    methods = list(methods) or list(DEFAULT_METHODS)

    def run(path: str | None, model: str, finding: str, method: str) -> tuple[Any, ...]:
        result = backend.analyse(path, model, finding, method)
        if result.error:
            gr.Warning(result.message.replace("`", ""))  # the toast shows plain text
        text = f"⚠️ {result.message}" if result.error else result.message
        table = calls_table(result, backend.predictor(model).operating) if result.probabilities else ""
        return text, result.probabilities, table, result.heatmap_image, result.input_image

    with gr.Blocks(title="Chest X-ray classification and localisation", analytics_enabled=False) as app:
        gr.Markdown(
            "## Chest X-ray demo: 14 findings and heatmaps\n"
            "Upload a chest X-ray (PNG, JPEG or DICOM). The model gives a probability for each of the 14 "
            "ChestX-ray14 findings; the heatmap shows where it looked for the chosen finding. Images from "
            "the localisation set also show the radiologist's box (green). For research, not diagnosis."
        )
        notice = gr.HTML(backend.notice(first), elem_id="cxr-notice")
        with gr.Row():
            model = gr.Dropdown(backend.models, value=first, label="Model")
            finding = gr.Dropdown([TOP_FINDING, *LABELS], value=TOP_FINDING, label="Finding for the heatmap")
            method = gr.Dropdown(methods, value=methods[0], label="Heatmap method")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(
                    label="Chest X-ray (PNG, JPEG, DICOM)", type="filepath", elem_id="cxr-upload"
                )
                if backend.examples:
                    gr.Examples(
                        [[str(p)] for p in backend.examples],
                        inputs=[upload],
                        label="Or click an image of the localisation set (radiologist boxes in green)",
                        cache_examples=False,
                        elem_id="cxr-examples",
                    )
                message = gr.Markdown("Upload a chest X-ray to start.", elem_id="cxr-message")
                probabilities = gr.Label(
                    num_top_classes=len(LABELS), label="Probabilities", elem_id="cxr-probs"
                )
                calls = gr.HTML("", elem_id="cxr-calls")
            with gr.Column(scale=1):
                heatmap = gr.Image(label="Heatmap overlay", type="numpy", format="png", elem_id="cxr-heatmap")
            with gr.Column(scale=1):
                original = gr.Image(
                    label="Input (radiologist boxes in green)",
                    type="numpy",
                    format="png",
                    elem_id="cxr-input",
                )
        gr.on(
            [upload.change, model.change, finding.change, method.change],
            run,
            inputs=[upload, model, finding, method],
            outputs=[message, probabilities, calls, heatmap, original],
        )
        model.change(backend.notice, inputs=[model], outputs=[notice])
    app.cxr_backend = backend  # for tests and callers that want the models / boxes
    return app


def launch(
    app: gr.Blocks,
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    block: bool = True,
    max_upload_factor: int = 4,
) -> None:
    """Serve the app. Gradio's own upload cap is a multiple of our limit: between the two, our message shows."""
    backend: DemoBackend = app.cxr_backend
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's start-up self-checks, one line each
    logger.info("demo on http://%s:%d (models: %s)", host, port, ", ".join(backend.models))
    app.queue(default_concurrency_limit=1).launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        quiet=True,
        ssr_mode=False,
        max_file_size=max_upload_factor * backend.limits.max_bytes,
        show_error=False,
        allowed_paths=sorted({str(p.parent.resolve()) for p in backend.examples}),
    )
