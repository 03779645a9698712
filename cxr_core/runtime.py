"""Where and how a model runs: device, bf16 autocast and memory format, decided once from params.

Training, validation, the test stage, the CAMs, ``cxr predict`` and the demo all build a
:class:`Runtime` from the ``train`` section, so the same checkpoint gives the same numbers on the
same machine whichever of them runs it.

On a machine with several GPUs every process that is not a DDP rank takes a GPU no other process
holds: an advisory lock per GPU (``flock`` on a file in a folder all processes on the machine
share) that the kernel releases when the process ends, however it ends. So ``dvc queue start -j N``
spreads N experiments over N GPUs instead of stacking them on ``cuda:0``. The folder and what to do
when every GPU is held describe the machine and its job runner, not an experiment, so they are
environment variables (:data:`LOCK_DIR_ENV`, :data:`BUSY_ENV`), like ``CUDA_VISIBLE_DEVICES``: as
params they would be a DVC dependency of every model and retrain it when changed.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from cxr_core.errors import CxrError

logger = logging.getLogger(__name__)

#: ``train.device`` values: ``auto`` takes a free GPU when CUDA is available, else the CPU;
#: ``cuda`` a free GPU; ``cuda:K`` GPU K of those this process sees (``CUDA_VISIBLE_DEVICES``).
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
_CUDA_INDEX = re.compile(r"cuda:(\d+)")
#: ``train.amp`` values: ``auto`` autocasts to bf16 on CUDA, and on the CPU for the families whose
#: measured CPU speed-up is real (the model table's ``cpu_bf16``); ``bf16`` autocasts everywhere;
#: ``none`` runs in float32 everywhere.
AMP_MODES: tuple[str, ...] = ("auto", "bf16", "none")

#: The folder of the per-GPU lock files (default: ``cxr-gpu-locks`` in the system's temp folder).
#: Every process that may use the same GPUs must see the same folder.
LOCK_DIR_ENV = "CXR_GPU_LOCK_DIR"
#: What a process does when every GPU it may use is held by another: ``wait`` until one is free
#: (the default: extra queue workers queue for a GPU) or ``fail`` at once with a message.
BUSY_ENV = "CXR_GPU_BUSY"
BUSY_POLICIES: tuple[str, ...] = ("wait", "fail")
_POLL_S = 2.0  # how often a waiting process tries the locks again


class DeviceError(CxrError, ValueError):
    """The device asked for in params is not available on this machine."""


class _ModelPolicy(Protocol):
    """What the model table says about running a family (a ``ModelSpec``)."""

    channels_last: bool
    cpu_bf16: bool


def check_device(name: str) -> str:
    """``train.device`` is one of :data:`DEVICES` or ``cuda:K`` (availability is checked when a model runs)."""
    if name not in DEVICES and not _CUDA_INDEX.fullmatch(str(name)):
        raise DeviceError(
            f"unknown device {name!r}; expected one of {list(DEVICES)} or cuda:K for GPU K (e.g. cuda:1)"
        )
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


def visible_gpus() -> list[str]:
    """A machine-wide id (the UUID) of each GPU this process sees, in ``cuda:K`` order.

    ``CUDA_VISIBLE_DEVICES`` renumbers GPUs per process; the UUID names the same GPU in every one.
    """
    if not torch.cuda.is_available():
        return []
    return [str(torch.cuda.get_device_properties(k).uuid) for k in range(torch.cuda.device_count())]


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``train.device`` for this process: the CPU, or a GPU it holds (see :class:`GpuLocks`).

    ``local_rank``: a DDP rank's ``LOCAL_RANK``; it takes GPU ``local_rank`` (torchrun starts one
    rank per GPU). Any other process (``None``) takes ``cuda:K`` when named, else a free GPU.
    """
    check_device(name)
    if name == "cpu":
        return torch.device("cpu")
    gpus = visible_gpus()
    if not gpus:
        if name == "auto":
            return torch.device("cpu")
        raise DeviceError(
            f"train.device = {name} but no CUDA device is available; set train.device to auto or cpu"
        )
    if local_rank is not None:
        if local_rank >= len(gpus):
            raise DeviceError(
                f"process {local_rank} has no GPU of its own: {len(gpus)} visible; "
                "lower train.nproc_per_node to the number of GPUs"
            )
        return _process_locks().claim(gpus, [local_rank], rank=local_rank)
    wanted = _CUDA_INDEX.fullmatch(name)
    if wanted is None:
        return _process_locks().claim(gpus, list(range(len(gpus))))
    index = int(wanted.group(1))
    if index >= len(gpus):
        seen = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise DeviceError(
            f"train.device = {name} but this process sees {len(gpus)} GPU(s) (cuda:0 to cuda:{len(gpus) - 1}"
            f"{f', CUDA_VISIBLE_DEVICES={seen}' if seen is not None else ''}); "
            "name one of them, or set train.device to auto to take any free one"
        )
    return _process_locks().claim(gpus, [index])


def busy_policy() -> str:
    """:data:`BUSY_ENV` (``wait`` when unset)."""
    policy = os.environ.get(BUSY_ENV, "wait")
    if policy not in BUSY_POLICIES:
        raise DeviceError(f"{BUSY_ENV}={policy!r} is not allowed; expected one of {list(BUSY_POLICIES)}")
    return policy


def lock_dir() -> Path:
    """:data:`LOCK_DIR_ENV`, else ``cxr-gpu-locks`` in the temp folder (shared by every user)."""
    given = os.environ.get(LOCK_DIR_ENV)
    return Path(given) if given else Path(tempfile.gettempdir()) / "cxr-gpu-locks"


class GpuLocks:
    """The GPUs one process holds: an exclusive ``flock`` on ``<folder>/<gpu id>.lock`` each.

    ``flock`` locks belong to the open file, so the kernel drops them when the process exits or is
    killed: nothing is left to clean up. A process keeps the GPUs it took until it ends, and asking
    again gives it the same one (the stages build their runtime more than once).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.held: dict[int, int] = {}  # cuda:K -> file descriptor of its lock

    def claim(self, gpus: list[str], candidates: list[int], *, rank: int | None = None) -> torch.device:
        """The first of ``candidates`` (``cuda:K`` of this process) that is or becomes free.

        A DDP rank (``rank``) never waits: the other ranks would time out in the process group.
        """
        for index in candidates:
            if index in self.held:
                return torch.device("cuda", index)
        policy = "fail" if rank is not None else busy_policy()
        announced = False
        while True:
            for index in candidates:
                if self._try(gpus[index], index):
                    return torch.device("cuda", index)
            message = self._busy_message(gpus, candidates, rank)
            if policy == "fail":
                raise DeviceError(message)
            if not announced:
                logger.warning("%s; waiting for one to be free (%s=wait)", message, BUSY_ENV)
                announced = True
            time.sleep(_POLL_S)

    def _path(self, gpu: str) -> Path:
        return self.folder / f"{re.sub(r'[^A-Za-z0-9._-]', '_', gpu)}.lock"

    def _try(self, gpu: str, index: int) -> bool:
        """Take the lock of ``gpu`` unless another process holds it; record who holds it."""
        import fcntl  # POSIX only; GPU machines are Linux

        self._make_folder()
        path = self._path(gpu)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise DeviceError(
                f"cannot open the GPU lock file {path} ({exc.strerror}); set {LOCK_DIR_ENV} to a folder "
                "every process on this machine can write"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        _share(path, 0o666)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv)[:200]}\n".encode())
        self.held[index] = fd
        logger.debug("holding cuda:%d (GPU %s) through %s", index, gpu, path)
        return True

    def _make_folder(self) -> None:
        if self.folder.is_dir():
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            _share(self.folder, 0o1777)  # sticky and world-writable, as the temp folder itself
        except OSError as exc:
            raise DeviceError(
                f"cannot create the GPU lock folder {self.folder} ({exc.strerror}); set {LOCK_DIR_ENV} "
                "to a folder every process on this machine can write"
            ) from None

    def _busy_message(self, gpus: list[str], candidates: list[int], rank: int | None) -> str:
        holders = "; ".join(f"cuda:{k} by {self._holder(gpus[k])}" for k in candidates)
        if rank is not None:
            return (
                f"DDP rank with LOCAL_RANK={rank} needs cuda:{rank}, which another process holds ({holders}); "
                "a DDP job needs train.nproc_per_node GPUs nobody else uses: wait for that process, or set "
                "CUDA_VISIBLE_DEVICES to free GPUs"
            )
        which = "the GPU asked for is" if len(candidates) == 1 else f"all {len(candidates)} visible GPUs are"
        return (
            f"no free GPU for this process: {which} held by other processes ({holders}). With more "
            f"experiments than GPUs (dvc queue start -j N, N above {len(gpus)}) the extra ones wait when "
            f"{BUSY_ENV}=wait, stop when {BUSY_ENV}=fail; never two on one GPU"
        )

    def _holder(self, gpu: str) -> str:
        try:
            return self._path(gpu).read_text().strip() or "another process"
        except OSError:
            return "another process"


def _share(path: Path, mode: int) -> None:
    """Let every user's processes use the lock folder and files (best effort: another user's stay theirs)."""
    with suppress(OSError):
        os.chmod(path, mode)


_LOCKS: dict[Path, GpuLocks] = {}


def _process_locks() -> GpuLocks:
    """This process's :class:`GpuLocks` for the current lock folder."""
    folder = lock_dir()
    return _LOCKS.setdefault(folder, GpuLocks(folder))


@dataclass(frozen=True)
class Runtime:
    """The execution policy for one model in one process."""

    device: torch.device
    amp: bool  # bf16 autocast (on the CPU only where the model table says it pays: see resolve_amp)
    channels_last: bool  # channels_last memory format (the model table says where it pays: CNNs)

    @classmethod
    def from_params(
        cls, train: Mapping[str, Any], spec: _ModelPolicy | None = None, *, local_rank: int | None = None
    ) -> Runtime:
        """From the validated ``train`` section; ``spec`` (a ``ModelSpec``) vetoes channels_last and
        decides CPU bf16 under ``amp: auto``; ``local_rank`` for a DDP rank (see :func:`resolve_device`)."""
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
