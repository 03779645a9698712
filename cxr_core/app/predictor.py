"""A trained classifier on user files: 14 probabilities and heatmaps, as the pipeline computes them.

The forward is the pipeline's own (:func:`cxr_core.evaluate.predict.predict_probs`) with the
runtime settings of params.yaml, so ``cxr predict`` and the demo give the test stage's
probabilities for the same image. Reading files is :mod:`cxr_core.app.imaging`.

A model comes from a train-stage checkpoint (``data/models/<model>/seed<k>/best.pt``) or from a
folder written by ``cxr export`` (timm's hub format: ``config.json`` + ``model.safetensors``);
:meth:`Predictor.from_checkpoint` takes either. Whichever it is, the predictor knows what the
model was trained on, so callers can warn when it is the synthetic phantom.

A predictor may carry :class:`Operating` points: one threshold per finding, chosen on the
validation split by the pipeline (``data/operating/<model>/seed<k>.json``, or an export's
``config.json``). With them a probability becomes a positive / negative call. The app never
chooses a threshold itself: a threshold picked on the images being scored would flatter them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cxr_core.app.imaging import DEFAULT_LIMITS, ImageLimits, read_image
from cxr_core.data.batches import normalise, to_device
from cxr_core.data.decode import ImageDecodeError
from cxr_core.errors import CxrError
from cxr_core.evaluate.predict import infer_logits
from cxr_core.explain.cams.batch_loop import compute_heatmaps
from cxr_core.labels import LABEL_INDEX, LABELS
from cxr_core.models.checkpoints import CheckpointMeta
from cxr_core.runtime import Runtime

if TYPE_CHECKING:
    from torch import nn

    from cxr_core.models.registry import ModelSpec

logger = logging.getLogger(__name__)

#: What the report stage writes about the last run; ``best`` names the model ``cxr predict`` defaults to.
HEADLINE = Path("metrics/headline.json")
#: Said (stderr, the demo page) whenever a model trained on the phantom is used.
PHANTOM_WARNING = (
    "WARNING: {name} was trained on the phantom (data_source: synthetic), computer-drawn images that "
    "stand in for ChestX-ray14 so the pipeline can be tested. Its probabilities mean nothing for real "
    "chest X-rays; never use them for a patient."
)


class ModelSourceError(CxrError, ValueError):
    """A model folder or the last run's headline file cannot give a model; the message says why."""


#: The two calls at an operating point (a finding without a threshold gets none).
POSITIVE, NEGATIVE = "positive", "negative"
#: How the operating file's ``chosen_on`` is said to users.
SPLIT_NAMES = {"val": "validation", "train": "training", "test": "test"}


def probabilities(logits: np.ndarray) -> np.ndarray:
    """float32 sigmoid of float32 logits, the very operation of ``predict_probs`` (bit for bit)."""
    return torch.sigmoid(torch.as_tensor(np.asarray(logits, dtype=np.float32))).numpy().astype(np.float32)


def finding_index(finding: str) -> int:
    """Index of a finding name in LABELS; unknown names list the allowed ones."""
    try:
        return LABEL_INDEX[finding]
    except KeyError:
        raise ValueError(f"unknown finding {finding!r}; expected one of {list(LABELS)}") from None


@dataclass(frozen=True)
class InferenceSettings:
    """How the app runs a model: the params' runtime keys, eval batch and heatmap knobs.

    Built from the same params.yaml as the pipeline, so ``cxr predict`` and the test stage give
    the same probabilities for the same image. Without a params file the app runs in float32.
    """

    device: str
    amp: str
    channels_last: bool
    batch_size: int
    eigen_sign: str
    random_stride: int
    seed: int  # the random control's seed, as in cams@

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None, device: str | None = None) -> InferenceSettings:
        """From validated params (None: :data:`FALLBACK_SETTINGS`); ``device`` overrides ``train.device``."""
        if params is None:
            return replace(FALLBACK_SETTINGS, device=device or FALLBACK_SETTINGS.device)
        train, cam = params["train"], params["cam"]
        return cls(
            device=device or train["device"],
            amp=train["amp"],
            channels_last=train["channels_last"],
            batch_size=train["eval_batch_size"],
            eigen_sign=cam["eigen_sign"],
            random_stride=cam["random_stride"],
            seed=params["seed"],
        )

    def runtime(self, spec: ModelSpec) -> Runtime:
        return Runtime.from_params(
            {"device": self.device, "amp": self.amp, "channels_last": self.channels_last}, spec
        )


#: Without a params file: float32 on the best device, the paper's EigenCAM sign, a 32-px random grid.
FALLBACK_SETTINGS = InferenceSettings(
    device="auto",
    amp="none",
    channels_last=False,
    batch_size=32,
    eigen_sign="pytorch-grad-cam",
    random_stride=32,
    seed=0,
)


@dataclass(frozen=True)
class Operating:
    """Per-finding decision thresholds chosen by the pipeline on the validation split, and their origin.

    ``thresholds`` follows LABELS; None where the pipeline chose none (e.g. a finding without
    validation positives). A finding is called positive when its score is ``>= threshold``. The
    score is what the thresholds were chosen on: the sigmoid probability the predictor prints
    when ``temperature`` is null, else the validation temperature-scaled ``sigmoid(logit / T)``
    (:func:`cxr_core.evaluate.calibration.apply_temperature`); :meth:`scores` gives it from logits.
    """

    thresholds: tuple[float | None, ...]
    method: str
    chosen_on: str
    temperature: float | None
    source: str  # the file they were read from, for messages

    @classmethod
    def from_mapping(cls, doc: Any, source: str | os.PathLike) -> Operating:
        """From an operating file's or an export config's fields; ValueError naming ``source`` and the key.

        The pipeline's own rules (:func:`cxr_core.evaluate.operating.operating_problem`): thresholds in
        [0, 1] or null for the 14 findings, a known rule, chosen on validation, a finite temperature.
        """
        from cxr_core.evaluate.operating import operating_problem

        problem = operating_problem(doc, run=False)
        if problem:
            raise ValueError(f"{source}: {problem}")
        thresholds = [
            None if doc["thresholds"][label] is None else float(doc["thresholds"][label]) for label in LABELS
        ]
        temperature = doc["temperature"]
        return cls(
            tuple(thresholds),
            doc["method"],
            doc["chosen_on"],
            None if temperature is None else float(temperature),
            str(source),
        )

    @classmethod
    def read(cls, path: str | os.PathLike, model_name: str | None = None) -> Operating:
        """The pipeline's operating file (:class:`cxr_core.evaluate.operating.OperatingPoints`).

        ``model_name``, when given, must be the file's ``model``: another model's thresholds are
        meaningless for this one's probabilities.
        """
        from cxr_core.evaluate.operating import OperatingPoints

        doc = OperatingPoints.read(path)
        if model_name is not None and doc.get("model") != model_name:
            raise ModelSourceError(
                f"{path}: operating points of model {doc.get('model')!r}, not {model_name!r}; "
                "pass that model's file (data/operating/<model>/seed<k>.json)"
            )
        try:
            return cls.from_mapping(doc, path)
        except ValueError as exc:
            raise ModelSourceError(str(exc)) from None

    @property
    def split_name(self) -> str:
        return SPLIT_NAMES.get(self.chosen_on, self.chosen_on)

    def to_config(self) -> dict[str, Any]:
        """The ``operating_points`` section of an export's config.json (no local path)."""
        return {
            "thresholds": dict(zip(LABELS, self.thresholds, strict=True)),
            "method": self.method,
            "chosen_on": self.chosen_on,
            "temperature": self.temperature,
        }

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """``(N, 14)`` logits -> what the thresholds apply to (see the class docstring)."""
        if self.temperature is None:
            return probabilities(logits)
        from cxr_core.evaluate.calibration import apply_temperature

        return apply_temperature(logits, self.temperature)

    def calls(self, scores: np.ndarray) -> list[list[str | None]]:
        """``(N, 14)`` :meth:`scores` -> per row and finding :data:`POSITIVE` / :data:`NEGATIVE`, or None."""
        probs = np.asarray(scores, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] != len(LABELS):
            raise ValueError(f"expected (N, {len(LABELS)}) probabilities, got shape {probs.shape}")
        return [
            [
                None if t is None else (POSITIVE if p >= t else NEGATIVE)
                for p, t in zip(row, self.thresholds, strict=True)
            ]
            for row in probs.tolist()
        ]

    def describe(self) -> str:
        """One line for stderr: where the thresholds come from."""
        unset = sum(t is None for t in self.thresholds)
        gaps = f"; {unset} finding(s) have no threshold and get no call" if unset else ""
        score = (
            "a probability"
            if self.temperature is None
            else f"a temperature-scaled probability sigmoid(logit / {self.temperature:g})"
        )
        return (
            f"calls: positive when {score} >= its finding's threshold, thresholds chosen on the "
            f"{self.split_name} split ({self.method}) by the pipeline, from {self.source}{gaps}"
        )


class Predictor:
    """A trained classifier loaded once: files -> 14 sigmoid probabilities, and heatmaps on demand.

    Thread-safe (one lock): the demo serves requests from worker threads, and CAMs toggle the
    parameters' ``requires_grad`` while they run.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        image_size: int,
        *,
        settings: InferenceSettings = FALLBACK_SETTINGS,
        limits: ImageLimits = DEFAULT_LIMITS,
        checkpoint: Path | None = None,
        meta: CheckpointMeta | None = None,
        operating: Operating | None = None,
    ) -> None:
        self.settings = settings
        self.runtime = settings.runtime(spec)
        self.model = self.runtime.prepare(model).eval()
        self.spec = spec
        self.image_size = int(image_size)
        self.limits = limits
        self.checkpoint = checkpoint
        self.meta = meta or CheckpointMeta(spec.name, spec.timm_name, int(image_size))
        self.operating = operating
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        model_name: str | None = None,
        *,
        settings: InferenceSettings = FALLBACK_SETTINGS,
        limits: ImageLimits = DEFAULT_LIMITS,
        operating: Operating | None = None,
    ) -> Predictor:
        """Load ``best.pt`` (``weights_only=True``) or an export folder; the model comes from the file(s).

        A folder is read as ``cxr export`` output (:meth:`from_export`). ``operating``: the
        thresholds to call with (for a folder, they replace its config.json's).
        """
        from cxr_core.models.checkpoints import load_model
        from cxr_core.models.registry import get_spec

        if Path(checkpoint).is_dir():
            return cls.from_export(
                checkpoint, model_name, settings=settings, limits=limits, operating=operating
            )
        model, meta = load_model(checkpoint, model_name=model_name, map_location="cpu")
        name = str(meta["model_name"])
        logger.info(
            "loaded %s (%s px, epoch %s) from %s",
            name,
            meta["image_size"],
            meta.get("epoch", "?"),
            checkpoint,
        )
        return cls(
            model,
            get_spec(name),
            int(meta["image_size"]),
            settings=settings,
            limits=limits,
            checkpoint=Path(checkpoint),
            meta=CheckpointMeta.of({**meta, "model": None}, checkpoint),
            operating=operating,
        )

    @classmethod
    def from_export(
        cls,
        folder: str | os.PathLike,
        model_name: str | None = None,
        *,
        settings: InferenceSettings = FALLBACK_SETTINGS,
        limits: ImageLimits = DEFAULT_LIMITS,
        operating: Operating | None = None,
    ) -> Predictor:
        """A ``cxr export`` folder, rebuilt by timm itself (``local-dir:``), no network.

        Its ``config.json`` must describe this pipeline's model: 14 outputs named as ChestX-ray14's
        in order, a square input and the pipeline's normalisation (the predictor feeds images the
        pipeline's way, so a folder expecting other preprocessing would score them wrongly). Its
        ``operating_points`` (null: none) are used unless ``operating`` is given.
        """
        meta, spec = read_export_config(folder)
        operating = operating or read_export_operating(folder)
        if model_name is not None and meta.model_name != model_name:
            raise ModelSourceError(
                f"{folder}: exported model is {meta.model_name!r}, not {model_name!r}; "
                "pass the folder of that model"
            )
        import timm
        from safetensors import SafetensorError

        try:
            model = timm.create_model(f"local-dir:{Path(folder).resolve()}", pretrained=True)
        except (RuntimeError, OSError, ValueError, KeyError, SafetensorError) as exc:
            raise ModelSourceError(
                f"{folder}: timm cannot rebuild the exported model ({exc}); export it again with `cxr export`"
            ) from exc
        logger.info("loaded %s (%s px) from the export %s", meta.model_name, meta.image_size, folder)
        return cls(
            model.eval(),
            spec,
            meta.image_size,
            settings=settings,
            limits=limits,
            checkpoint=Path(folder),
            meta=meta,
            operating=operating,
        )

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def phantom(self) -> bool:
        """Trained on the synthetic phantom (its probabilities mean nothing on real X-rays)."""
        return self.meta.phantom

    def provenance_note(self) -> str | None:
        """A note for a model that does not record its training data (checkpoints from before it was)."""
        if self.meta.data_source != "unknown":
            return None
        return (
            f"note: {self.name} ({self.checkpoint}) does not record what it was trained on (written before "
            "checkpoints recorded data_source); with this project's default params.yaml that was the phantom"
        )

    def phantom_warning(self) -> str | None:
        """:data:`PHANTOM_WARNING` for this model, or None when it was not trained on the phantom."""
        return PHANTOM_WARNING.format(name=f"{self.name} ({self.checkpoint})") if self.phantom else None

    def load(self, path: str | os.PathLike) -> np.ndarray:
        """One file -> the ``S x S`` uint8 model input (what the cache would hold for it)."""
        return read_image(path, self.image_size, limits=self.limits)

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    def _check(self, images: np.ndarray) -> np.ndarray:
        batch = np.asarray(images, dtype=np.uint8)
        if batch.ndim == 2:
            batch = batch[None]
        if batch.ndim != 3 or batch.shape[1:] != (self.image_size, self.image_size):
            raise ValueError(
                f"expected uint8 images of {self.image_size} x {self.image_size} (the model's size), "
                f"got shape {batch.shape}; use Predictor.load() to read files"
            )
        return batch

    def logits(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``(B, S, S)`` (or one ``S x S``) -> float32 ``(B, 14)`` logits.

        The pipeline's own forward (``cxr_core.evaluate.predict.infer_logits``), in batches of
        ``eval_batch_size``; :func:`probabilities` turns them into what :meth:`predict` gives.
        """
        batch = self._check(images)
        if len(batch) == 0:
            return np.zeros((0, len(LABELS)), np.float32)
        with self._lock:
            out = infer_logits(self.model, batch, runtime=self.runtime, batch_size=self.settings.batch_size)
        return out.numpy().astype(np.float32)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``(B, S, S)`` (or one ``S x S``) -> float32 ``(B, 14)`` sigmoid probabilities.

        ``sigmoid(logits)`` exactly as the test stage's ``predict_probs`` computes it.
        """
        return probabilities(self.logits(images))

    def calls(self, logits: np.ndarray) -> list[list[str | None]] | None:
        """Positive / negative per finding at the operating points (None without them)."""
        return None if self.operating is None else self.operating.calls(self.operating.scores(logits))

    def heatmaps(
        self, images: np.ndarray, finding: str | Sequence[str], method: str = "GradCAM", batch_size: int = 16
    ) -> np.ndarray:
        """float32 ``(B, S, S)`` maps in [0, 1] for ``finding`` (one name, or one per image) by ``method``."""
        batch = np.asarray(images, dtype=np.uint8)
        if batch.ndim == 2:
            batch = batch[None]
        findings = [finding] * len(batch) if isinstance(finding, str) else list(finding)
        if len(findings) != len(batch):
            raise ValueError(f"{len(findings)} findings for {len(batch)} images; give one, or one per image")
        classes = [finding_index(f) for f in findings]
        # a copy: decoded images are read-only views of Pillow's buffer, which torch warns about
        x_u8 = to_device(np.array(self._check(batch)), self.device)
        x = normalise(x_u8, channels_last=self.runtime.channels_last)
        with self._lock:
            maps = compute_heatmaps(
                self.model,
                self.spec,
                x,
                classes,
                [method],
                batch_size=batch_size,
                autocast_dtype=self.runtime.autocast_dtype,
                channels_last=self.runtime.channels_last,
                seed=self.settings.seed,
                eigen_sign=self.settings.eigen_sign,
                random_stride=self.settings.random_stride,
            )
        return maps[method]


def predict_files(
    predictor: Predictor, files: Sequence[Path], batch_size: int = 16
) -> tuple[list[Path], np.ndarray, list[ImageDecodeError]]:
    """Read and score ``files`` in batches; bad files are collected (named), not raised.

    Returns the files read, their ``(N, 14)`` logits (:func:`probabilities` gives the
    probabilities; :meth:`Predictor.calls` the calls), and the errors of the others.
    """
    ok: list[Path] = []
    failed: list[ImageDecodeError] = []
    logits: list[np.ndarray] = []
    for start in range(0, len(files), batch_size):
        chunk, images = [], []
        for path in files[start : start + batch_size]:
            try:
                images.append(predictor.load(path))
                chunk.append(Path(path))
            except ImageDecodeError as exc:
                logger.warning("skipped %s", exc)
                failed.append(exc)
        if images:
            logits.append(predictor.logits(np.stack(images)))
            ok.extend(chunk)
    return ok, (np.concatenate(logits) if logits else np.zeros((0, len(LABELS)), np.float32)), failed


def _export_config(folder: Path) -> tuple[Path, Any]:
    """``folder/config.json`` and its parsed content; a missing or invalid file -> ModelSourceError."""
    import json

    path = folder / "config.json"
    if not path.is_file():
        raise ModelSourceError(
            f"{folder}: not an exported model folder (no config.json); write one with `cxr export`, "
            "or pass a best.pt"
        )
    try:
        return path, json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelSourceError(f"{path}: not valid JSON ({exc})") from None


def read_export_operating(folder: str | os.PathLike) -> Operating | None:
    """The ``operating_points`` of an export's config.json (None when null or absent, as before they existed)."""
    path, cfg = _export_config(Path(folder))
    section = cfg.get("operating_points") if isinstance(cfg, dict) else None
    if section is None:
        return None
    try:
        return Operating.from_mapping(section, f"{path} (operating_points)")
    except ValueError as exc:
        raise ModelSourceError(f"{exc}; export the model again with `cxr export`") from None


def read_export_config(folder: str | os.PathLike) -> tuple[CheckpointMeta, ModelSpec]:
    """The metadata and model spec of a ``cxr export`` folder, checked against what the pipeline feeds."""
    from cxr_core.data.batches import IMAGENET_MEAN, IMAGENET_STD
    from cxr_core.models.registry import get_spec

    folder = Path(folder)
    path, cfg = _export_config(folder)
    pre = cfg.get("pretrained_cfg") if isinstance(cfg, dict) else None
    if not isinstance(pre, dict) or not isinstance(cfg.get("architecture"), str):
        raise ModelSourceError(f"{path}: not timm's hub format (needs 'architecture' and 'pretrained_cfg')")
    if cfg.get("num_classes") != len(LABELS) or list(cfg.get("label_names") or []) != list(LABELS):
        raise ModelSourceError(
            f"{path}: num_classes / label_names are {cfg.get('num_classes')} / {cfg.get('label_names')}, "
            f"not the 14 ChestX-ray14 findings in order {list(LABELS)}"
        )
    size = list(pre.get("input_size") or [])
    if len(size) != 3 or size[0] != 3 or size[1] != size[2]:
        raise ModelSourceError(f"{path}: pretrained_cfg.input_size {size} is not [3, S, S]")
    for key, want in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
        got = pre.get(key)
        if not isinstance(got, list) or not np.allclose(got, want):
            raise ModelSourceError(
                f"{path}: pretrained_cfg.{key} = {got}, not the pipeline's ImageNet {list(want)}; "
                "cxr predict feeds images the pipeline's way and would score this model wrongly"
            )
    info = cfg.get("cxr_pipeline") if isinstance(cfg.get("cxr_pipeline"), dict) else {}
    name = str(info.get("model") or cfg["architecture"])
    try:
        spec = get_spec(name)
    except ValueError as exc:
        raise ModelSourceError(f"{path}: {exc}") from None
    data_source = str(cfg.get("data_source") or "unknown")
    if cfg.get("phantom") is True:
        data_source = "synthetic"
    meta = CheckpointMeta(
        name,
        str(info.get("timm_name") or spec.timm_name),
        int(size[1]),
        tuple(LABELS),
        data_source,
        str(cfg.get("label_file") or "unknown"),
    )
    return meta, spec


@dataclass(frozen=True)
class BestModel:
    """The last run's best model, as the report stage names it in ``metrics/headline.json``."""

    model: str
    seed: int | None
    checkpoint: Path
    macro_auc: float | None


def read_headline(path: str | os.PathLike = HEADLINE, root: str | os.PathLike | None = None) -> BestModel:
    """``best`` of the headline file; ``checkpoint`` is taken relative to ``root`` (default: the cwd)."""
    from cxr_core.report.comparison import HeadlineMetrics

    path = Path(path)
    fix = "run `dvc repro` (its report stage picks the best model) or pass --model / --checkpoint"
    if not path.is_file():
        raise ModelSourceError(f"{path} not found, so there is no best model of a last run to use: {fix}")
    try:
        doc = HeadlineMetrics.read(path)
    except CxrError as exc:
        raise ModelSourceError(f"{exc}; or pass --model / --checkpoint") from None
    best = doc.get("best")
    if not isinstance(best, dict) or not isinstance(best.get("model"), str) or not best.get("checkpoint"):
        raise ModelSourceError(f"{path}: lacks best.model / best.checkpoint; {fix}")
    seed = best.get("seed")
    auc = best.get("macro_auc")
    return BestModel(
        best["model"],
        int(seed) if isinstance(seed, int) else None,
        Path(root or ".") / str(best["checkpoint"]),
        float(auc) if isinstance(auc, int | float) else None,
    )
