"""Checkpoints: atomic tensor-only files, loaded with weights_only=True; code-carrying pickles refused."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_core.models.checkpoints import CheckpointError, load_checkpoint, load_model, save_checkpoint
from cxr_core.models.registry import create_model


def _touch(path: str) -> None:
    Path(path).write_text("code ran")


class Payload:
    """Unpickling this runs ``_touch``: the classic malicious-checkpoint shape."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


@dataclass
class Custom:
    value: int = 1


def _state() -> dict:
    return {
        "model": {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.tensor(3)},
        "epoch": 4,
        "best": float("inf"),
        "name": "densenet121",
        "weights": None,
        "history": [{"epoch": 1, "loss": 0.5}],
        "betas": (0.9, 0.999),
        "rng": torch.ByteTensor(torch.get_rng_state()),
    }


def test_round_trip_is_exact_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "last.pt"
    state = _state()
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert sorted(os.listdir(path.parent)) == ["last.pt"]
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["rng"].dtype == torch.uint8 and torch.equal(loaded["rng"], state["rng"])
    assert {k: loaded[k] for k in ("epoch", "best", "name", "weights", "history", "betas")} == {
        k: state[k] for k in ("epoch", "best", "name", "weights", "history", "betas")
    }


def test_load_always_passes_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "best.pt"
    save_checkpoint(path, _state())
    calls: list[dict] = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)  # checkpoints imports torch where it loads
    load_checkpoint(path)
    assert calls and all(c.get("weights_only") is True for c in calls)


def test_code_carrying_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": Payload(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "only tensor checkpoints are accepted" in message.lower()
    assert not marker.exists()


def test_custom_class_instance_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "custom.pt"
    torch.save({"cfg": Custom()}, path)
    with pytest.raises(CheckpointError, match="only tensor checkpoints are accepted"):
        load_checkpoint(path)


def test_save_refuses_values_that_would_not_load(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"checkpoint\['auc'\] is a float64"):
        save_checkpoint(tmp_path / "x.pt", {"auc": np.float64(0.5)})
    with pytest.raises(TypeError, match="Custom"):
        save_checkpoint(tmp_path / "x.pt", {"cfg": [Custom()]})
    assert not list(tmp_path.iterdir())


def test_missing_truncated_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    good = tmp_path / "good.pt"
    save_checkpoint(good, _state())
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_checkpoint(cut)
    tensor_only = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), tensor_only)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(tensor_only)


def test_load_model_rebuilds_the_architecture_and_checks_the_name(tmp_path: Path, single_thread) -> None:
    torch.manual_seed(0)
    model = create_model("test_resnet", image_size=64)
    path = tmp_path / "best.pt"
    save_checkpoint(
        path, {"model": model.state_dict(), "model_name": "test_resnet", "image_size": 64, "epoch": 2}
    )
    loaded, meta = load_model(path, model_name="test_resnet")
    assert not loaded.training and meta == {"model_name": "test_resnet", "image_size": 64, "epoch": 2}
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(CheckpointError, match="not 'densenet121'"):
        load_model(path, model_name="densenet121")
