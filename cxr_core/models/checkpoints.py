"""Tensor-only checkpoints: atomic writes, and loads that never run code from the file.

A checkpoint is a pickle, and an ordinary ``torch.load`` of a pickle can execute arbitrary code
(DESIGN "Bad input": a checkpoint from elsewhere). Every load here goes through
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
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Scalar types a checkpoint may hold besides tensors (``weights_only=True`` rebuilds these).
PLAIN_SCALARS: tuple[type, ...] = (bool, int, float, str, type(None))


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or holds more than tensors and plain values."""


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` naming the first value that is not a tensor, number, string, list or dict."""
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
    check_plain(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(dict(state), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a tensor checkpoint with ``torch.load(weights_only=True)``; code-carrying pickles are refused."""
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
    missing = [k for k in ("model", "model_name", "image_size") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a train-stage checkpoint (missing {missing})")
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
