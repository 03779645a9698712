"""Where and how a model runs: device, bf16 autocast and memory format, decided once from params.

Training, validation, the test stage, the CAMs, ``cxr predict`` and the demo all build a
:class:`Runtime` from the ``train`` section, so the same checkpoint gives the same numbers on the
same machine whichever of them runs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from cxr_core.errors import CxrError

#: ``train.device`` values: ``auto`` takes this process's GPU when CUDA is available, else the CPU.
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
#: ``train.amp`` values: ``auto`` autocasts to bf16 on CUDA, and on the CPU for the families whose
#: measured CPU speed-up is real (the model table's ``cpu_bf16``); ``bf16`` autocasts everywhere;
#: ``none`` runs in float32 everywhere.
AMP_MODES: tuple[str, ...] = ("auto", "bf16", "none")


class DeviceError(CxrError, ValueError):
    """The device asked for in params is not available on this machine."""


class _ModelPolicy(Protocol):
    """What the model table says about running a family (a ``ModelSpec``)."""

    channels_last: bool
    cpu_bf16: bool


def check_device(name: str) -> str:
    """``train.device`` is one of :data:`DEVICES` (availability is checked when a model runs)."""
    if name not in DEVICES:
        raise DeviceError(f"unknown device {name!r}; expected one of {list(DEVICES)}")
    return name


def check_amp(name: str) -> str:
    """``train.amp`` is one of :data:`AMP_MODES`."""
    if name not in AMP_MODES:
        raise DeviceError(f"unknown amp mode {name!r}; expected one of {list(AMP_MODES)}")
    return name


def resolve_amp(mode: str, device: torch.device, spec: _ModelPolicy | None = None) -> bool:
    """Whether to autocast to bf16: ``train.amp`` on this device for this model (see :data:`AMP_MODES`)."""
    check_amp(mode)
    if mode == "none":
        return False
    if mode == "bf16" or device.type == "cuda":
        return True
    return spec is not None and bool(spec.cpu_bf16)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``train.device``: ``auto`` -> this process's GPU if CUDA is available, else the CPU."""
    check_device(name)
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise DeviceError(
                f"process {local_rank} has no GPU of its own: {torch.cuda.device_count()} visible; "
                "lower train.nproc_per_node to the number of GPUs"
            )
        return torch.device("cuda", local_rank)
    if name == "cuda":
        raise DeviceError(
            "train.device = cuda but no CUDA device is available; set train.device to auto or cpu"
        )
    return torch.device("cpu")


@dataclass(frozen=True)
class Runtime:
    """The execution policy for one model in one process."""

    device: torch.device
    amp: bool  # bf16 autocast (on the CPU only where the model table says it pays: see resolve_amp)
    channels_last: bool  # channels_last memory format (the model table says where it pays: CNNs)

    @classmethod
    def from_params(
        cls, train: Mapping[str, Any], spec: _ModelPolicy | None = None, *, local_rank: int = 0
    ) -> Runtime:
        """From the validated ``train`` section; ``spec`` (a ``ModelSpec``) vetoes channels_last and
        decides CPU bf16 under ``amp: auto``."""
        device = resolve_device(train["device"], local_rank)
        return cls(
            device=device,
            amp=resolve_amp(train["amp"], device, spec),
            channels_last=bool(train["channels_last"]) and (spec is None or bool(spec.channels_last)),
        )

    @classmethod
    def cpu(cls) -> Runtime:
        """float32, default memory format, on the CPU."""
        return cls(torch.device("cpu"), amp=False, channels_last=False)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.preserve_format

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.amp else None

    def autocast(self) -> AbstractContextManager[Any]:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device in this runtime's memory format (in place; returned for chaining)."""
        return model.to(self.device, memory_format=self.memory_format)
