"""A trained classifier on user files: 14 probabilities and heatmaps, as the pipeline computes them.

The forward is the pipeline's own (:func:`cxr_core.evaluate.predict.predict_probs`) with the
runtime settings of params.yaml, so ``cxr predict`` and the demo give the test stage's
probabilities for the same image. Reading files is :mod:`cxr_core.app.imaging`.
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
from cxr_core.evaluate.predict import predict_probs
from cxr_core.explain.methods import compute_heatmaps
from cxr_core.labels import LABEL_INDEX, LABELS
from cxr_core.runtime import Runtime

if TYPE_CHECKING:
    from torch import nn

    from cxr_core.models.registry import ModelSpec

logger = logging.getLogger(__name__)


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
    ) -> None:
        self.settings = settings
        self.runtime = settings.runtime(spec)
        self.model = self.runtime.prepare(model).eval()
        self.spec = spec
        self.image_size = int(image_size)
        self.limits = limits
        self.checkpoint = checkpoint
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        model_name: str | None = None,
        *,
        settings: InferenceSettings = FALLBACK_SETTINGS,
        limits: ImageLimits = DEFAULT_LIMITS,
    ) -> Predictor:
        """Load ``best.pt`` (``weights_only=True``); architecture and image size come from the file."""
        from cxr_core.models.checkpoints import load_model
        from cxr_core.models.registry import get_spec

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
        )

    @property
    def name(self) -> str:
        return self.spec.name

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

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``(B, S, S)`` (or one ``S x S``) -> float32 ``(B, 14)`` sigmoid probabilities.

        The pipeline's own forward (``cxr_core.evaluate.predict``), in batches of ``eval_batch_size``.
        """
        batch = self._check(images)
        if len(batch) == 0:
            return np.zeros((0, len(LABELS)), np.float32)
        with self._lock:
            return predict_probs(self.model, batch, runtime=self.runtime, batch_size=self.settings.batch_size)

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

    Returns the files read, their ``(N, 14)`` probabilities, and the errors of the others.
    """
    ok: list[Path] = []
    failed: list[ImageDecodeError] = []
    probs: list[np.ndarray] = []
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
            probs.append(predictor.predict(np.stack(images)))
            ok.extend(chunk)
    return ok, (np.concatenate(probs) if probs else np.zeros((0, len(LABELS)), np.float32)), failed
