"""torchrun + DistributedDataParallel: this process's rank, the process group and the collectives.

Every helper is a no-op for a single process, so the loop reads the same with one rank or many.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env_from_environ() -> DistEnv:
    """Rank, world size and local rank as torchrun sets them (``WORLD_SIZE`` > 1: distributed)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    return DistEnv(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


@contextmanager
def process_group(env: DistEnv, device: torch.device) -> Iterator[None]:
    """Join the job's process group for the block (nccl on CUDA, gloo on CPU) unless already in one.

    A caller that set up the group itself (a test, a notebook) keeps it; one made here is destroyed.
    """
    own_group = env.world_size > 1 and not dist.is_initialized()
    if own_group:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        if own_group:
            dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    """Wait for every rank."""
    if env.world_size > 1:
        dist.barrier()


def sum_over_ranks(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """``value`` summed over every rank, in place."""
    if env.world_size > 1:
        dist.all_reduce(value)
    return value


def broadcast_from_main(values: list[float], env: DistEnv, device: torch.device) -> list[float]:
    """Rank 0's ``values`` on every rank (float64, so a scalar crosses unchanged)."""
    if env.world_size <= 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.tolist()
