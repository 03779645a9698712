"""Tensor-only checkpoints: atomic writes, and loads that never run code from the file.

A checkpoint is a pickle, and an ordinary ``torch.load`` of a pickle can execute arbitrary code
(think of a checkpoint downloaded from elsewhere). Every load here goes through
``torch.load(weights_only=True)``, whose unpickler only rebuilds tensors and plain containers; a
file that asks for anything else (a custom class, a ``__reduce__`` payload) is refused with a
:class:`CheckpointError`. Writes go to a temporary file renamed over the target, so a run killed
mid-save leaves the previous checkpoint intact, never half a file.

What a checkpoint may hold is checked at save time too (:func:`check_plain`), so a stray numpy
scalar fails when written instead of making the file unloadable later.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a checkpoint is read or written: the file type stays light
    import torch
    from torch import nn

from cxr_core.data.manifest import PHANTOM_SOURCE
from cxr_core.errors import CxrError
from cxr_core.files import contract
from cxr_core.labels import LABELS

logger = logging.getLogger(__name__)

#: Version of the metadata layout below; bump it when a field changes meaning.
CHECKPOINT_FORMAT = 1
#: Metadata every train-stage checkpoint carries beside its weights (``best.pt`` adds the epoch's scores).
META_FIELDS: tuple[str, ...] = (
    "format",
    "model_name",
    "timm_name",
    "image_size",
    "labels",
    "num_classes",
    "data_source",
    "label_file",
)
#: Where the train stage writes a run's best checkpoint (dvc.yaml), relative to the project root.
CHECKPOINT_PATTERN = "data/models/{model}/seed{seed}/best.pt"
#: What ``best.pt`` records of the epoch it was saved at.
BEST_FIELDS: tuple[str, ...] = ("epoch", "val_loss", "val_macro_auc")

#: Scalar types a checkpoint may hold besides tensors (``weights_only=True`` rebuilds these).
PLAIN_SCALARS: tuple[type, ...] = (bool, int, float, str, type(None))


class CheckpointError(CxrError, RuntimeError):
    """A checkpoint file is missing, unreadable, or holds more than tensors and plain values."""


@contract(
    "data/models/<model>/seed<k>/best.pt",
    writer="train@<model>-<k>",
    fields=("model", *META_FIELDS, *BEST_FIELDS),
)
@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about its model, so it loads without the params that trained it."""

    model_name: str
    timm_name: str
    image_size: int
    labels: tuple[str, ...] = tuple(LABELS)
    data_source: str = "unknown"  # the raw manifest's source: synthetic (phantom) | nih | a local copy
    label_file: str = "unknown"  # the Data_Entry file the labels came from (NIH re-released them in 2020)

    @property
    def phantom(self) -> bool:
        """Trained on the embedded phantom: its probabilities mean nothing on real radiographs."""
        return self.data_source == PHANTOM_SOURCE

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model_name": self.model_name,
            "timm_name": self.timm_name,
            "image_size": int(self.image_size),
            "labels": list(self.labels),
            "num_classes": len(self.labels),
            "data_source": self.data_source,
            "label_file": self.label_file,
        }

    @classmethod
    def of(cls, state: Mapping[str, Any], path: str | os.PathLike) -> CheckpointMeta:
        """The metadata of a loaded checkpoint; one without it is not a train-stage checkpoint."""
        absent = [k for k in ("model", "model_name", "image_size") if k not in state]
        if absent:
            raise CheckpointError(f"{path}: not a train-stage checkpoint (missing {absent})")
        labels = tuple(state.get("labels", LABELS))
        if labels != tuple(LABELS):
            raise CheckpointError(
                f"{path}: trained on labels {list(labels)}, not the 14 of ChestX-ray14 in order"
            )
        return cls(
            str(state["model_name"]),
            str(state.get("timm_name", "")),
            int(state["image_size"]),
            labels,
            str(state.get("data_source", "unknown")),
            str(state.get("label_file", "unknown")),
        )


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` naming the first value that is not a tensor, number, string, list or dict."""
    import torch

    if isinstance(obj, torch.Tensor) or type(obj) in PLAIN_SCALARS:  # exact: np.float64 is a float subclass
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, str | int):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}; use str or int keys")
            check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__name__}; a checkpoint holds only tensors, numbers, strings, "
        "lists and dicts (convert numpy values with float()/int() or torch.as_tensor())"
    )


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file + ``os.replace``)."""
    import torch

    check_plain(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(_canonical(dict(state)), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _canonical(obj: Any) -> Any:
    """Equal strings as one object: pickle memoises by identity, so the bytes then depend only on
    values (a resumed run's ``last.pt``, whose keys were read back from a file, matches a fresh one)."""
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):
        return type(obj)((_canonical(k), _canonical(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_canonical(v) for v in obj)
    return obj


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a tensor checkpoint with ``torch.load(weights_only=True)``; code-carrying pickles are refused."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found (train the model first: `dvc repro train`)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: only tensor checkpoints are accepted (torch.load(weights_only=True)). This "
            f"file holds Python objects beyond tensors, numbers, strings, lists and dicts, and unpickling "
            f"them could run code ({_unpickler_reason(exc)}). If you trust its source, load it yourself "
            "and re-save its state_dict() alone."
        ) from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)}); it may be truncated or "
            "another format: re-run training to rewrite it"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: expected a dict checkpoint, found {type(state).__name__}; "
            "checkpoints of this project are written by the train stage"
        )
    return state


def _unpickler_reason(exc: BaseException) -> str:
    """The line of torch's long weights-only message that names what was refused."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    for line in text.splitlines():
        if "WeightsUnpickler error" in line or "Unsupported global" in line:
            return line.strip().removeprefix("WeightsUnpickler error:").strip()
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_model(
    path: str | os.PathLike, *, model_name: str | None = None, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained classifier in ``best.pt`` / ``last.pt`` (in eval mode) and the checkpoint's metadata.

    The architecture and input size come from the checkpoint itself; ``model_name`` (e.g. the
    stage's ``--model``) is checked against it so a checkpoint of another model is not scored
    under the wrong name.
    """
    from cxr_core.models.registry import create_model

    state = load_checkpoint(path, map_location=map_location)
    CheckpointMeta.of(state, path)
    if model_name is not None and state["model_name"] != model_name:
        raise CheckpointError(
            f"{path}: checkpoint is for model {state['model_name']!r}, not {model_name!r}; "
            "pass the checkpoint of that model"
        )
    model = create_model(state["model_name"], image_size=int(state["image_size"]), pretrained=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not fit {state['model_name']!r} ({_first_line(exc)}); "
            "the checkpoint was written by another version of the model"
        ) from exc
    meta = {k: v for k, v in state.items() if k not in ("model", "optimizer", "scheduler")}
    return model.eval(), meta
