"""torchrun + DistributedDataParallel: how the train stage launches, this process's rank, the
process group and the collectives.

Every helper is a no-op for a single process, so the loop reads the same with one rank or many.
:class:`Launch` is the torchrun command line of one node, from params (``train.nnodes``,
``train.nproc_per_node``, ``train.rdzv_endpoint``) and, for what differs per node, from the
environment: SLURM's variables when ``srun`` started the stage, else ``NODE_RANK`` and
``MASTER_ADDR`` / ``MASTER_PORT`` as torchrun and its launchers spell them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cxr_core.errors import CxrError
from cxr_core.params import ENDPOINT_PATTERN

#: torchrun's default rendezvous / master port.
DEFAULT_PORT = 29500


class LaunchError(CxrError, ValueError):
    """The multi-process or multi-node settings do not fit together; the message names the key or variable."""


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed).

    ``local_rank`` is ``None`` outside torchrun: such a process is no DDP rank and takes any free GPU.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env_from_environ() -> DistEnv:
    """Rank, world size and local rank as torchrun sets them (``WORLD_SIZE`` > 1: distributed)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    return DistEnv(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def parse_endpoint(text: str, where: str) -> tuple[str, int]:
    """``host[:port]`` (``[v6]:port`` for IPv6) -> (host, port); ``where`` names the setting in errors."""
    match = ENDPOINT_PATTERN.fullmatch(text.strip())
    port = int(match.group(2)) if match and match.group(2) else DEFAULT_PORT
    if match is None or not 0 < port < 65536:
        raise LaunchError(
            f"{where} = {text!r} is not a rendezvous endpoint; expected host:port that every node reaches "
            f"(e.g. node01:{DEFAULT_PORT} or 10.0.0.5:{DEFAULT_PORT}; the port defaults to {DEFAULT_PORT})"
        )
    return match.group(1), port


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[07-08,10],cpu1`` -> ``gpu07``."""
    match = re.match(r"([^,\[]+)(?:\[(\d+))?", nodelist.strip())
    if match is None:
        raise LaunchError(f"SLURM_JOB_NODELIST = {nodelist!r}: cannot read its first host")
    return match.group(1) + (match.group(2) or "")


def _env_int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise LaunchError(f"{name} = {environ[name]!r} is not an integer") from None


@dataclass(frozen=True)
class Launch:
    """The torchrun command line of this node (torchrun's option names).

    One node: ``--standalone``. Several: with this node's ``node_rank`` known, torchrun's static
    rendezvous at ``rdzv_endpoint`` (node 0 hosts it and holds global rank 0, which writes the
    checkpoints); without it, the elastic c10d rendezvous, where ranks are handed out as nodes
    join, so rank 0 may be on any node and the workspace must be on a filesystem they all share.
    """

    nnodes: int = 1
    nproc_per_node: int = 1
    node_rank: int | None = None
    rdzv_endpoint: tuple[str, int] | None = None
    rdzv_id: str = "cxr"

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def torchrun_args(self) -> list[str]:
        per_node = ["--nproc_per_node", str(self.nproc_per_node)]
        if self.nnodes == 1:
            return ["--standalone", *per_node]
        assert self.rdzv_endpoint is not None
        host, port = self.rdzv_endpoint
        nodes = ["--nnodes", str(self.nnodes), *per_node]
        if self.node_rank is not None:
            where = ["--node_rank", str(self.node_rank), "--master_addr", host, "--master_port", str(port)]
        else:
            where = ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"{host}:{port}", "--rdzv_id", self.rdzv_id]
        return [*nodes, *where]

    @classmethod
    def from_params(cls, train: Mapping, environ: Mapping[str, str], run: str) -> Launch:
        """This node's launch for the validated ``train`` section; ``run`` names the job (rdzv_id).

        ``srun`` (``SLURM_STEP_NUM_NODES`` set) gives the node rank (``SLURM_PROCID``, one task per
        node), the job id and, without an endpoint in params or ``MASTER_ADDR``, the first node of
        the job as the host.
        """
        nnodes, nproc = int(train["nnodes"]), int(train["nproc_per_node"])
        if nnodes == 1:
            return cls(1, nproc)
        slurm = _srun_node(environ, nnodes)
        node_rank = slurm if slurm is not None else _node_rank(environ, nnodes)
        job = environ.get("SLURM_JOB_ID") if slurm is not None else None
        return cls(
            nnodes,
            nproc,
            node_rank,
            _endpoint(train.get("rdzv_endpoint"), environ, slurm is not None),
            f"{job or 'cxr'}-{run}",
        )


def _srun_node(environ: Mapping[str, str], nnodes: int) -> int | None:
    """This task's node rank when ``srun`` started the stage, one task per node; None otherwise."""
    if "SLURM_STEP_NUM_NODES" not in environ:
        return None
    nodes = _env_int(environ, "SLURM_STEP_NUM_NODES")
    tasks = _env_int(environ, "SLURM_STEP_NUM_TASKS") if "SLURM_STEP_NUM_TASKS" in environ else nodes
    if nodes != nnodes or tasks != nnodes:
        raise LaunchError(
            f"srun started {tasks} task(s) on {nodes} node(s) (SLURM_STEP_NUM_TASKS, SLURM_STEP_NUM_NODES) "
            f"but train.nnodes = {nnodes}: start one task per node, srun --nodes={nnodes} "
            "--ntasks-per-node=1; torchrun starts train.nproc_per_node processes on each"
        )
    return _env_int(environ, "SLURM_PROCID")


def _node_rank(environ: Mapping[str, str], nnodes: int) -> int | None:
    """``NODE_RANK`` when set (0 .. nnodes - 1), else None (c10d hands out the ranks)."""
    if "NODE_RANK" not in environ:
        return None
    rank = _env_int(environ, "NODE_RANK")
    if not 0 <= rank < nnodes:
        raise LaunchError(f"NODE_RANK = {rank} but train.nnodes = {nnodes}: expected 0 to {nnodes - 1}")
    return rank


def _endpoint(param: str | None, environ: Mapping[str, str], srun: bool) -> tuple[str, int]:
    """``train.rdzv_endpoint``, else ``MASTER_ADDR[:MASTER_PORT]``, else under srun the job's first node."""
    if param:
        return parse_endpoint(param, "train.rdzv_endpoint")
    port = environ.get("MASTER_PORT", str(DEFAULT_PORT))
    if environ.get("MASTER_ADDR"):
        return parse_endpoint(f"{environ['MASTER_ADDR']}:{port}", "MASTER_ADDR:MASTER_PORT")
    if srun and environ.get("SLURM_JOB_NODELIST"):
        host = first_slurm_host(environ["SLURM_JOB_NODELIST"])
        return parse_endpoint(f"{host}:{port}", "the first node of SLURM_JOB_NODELIST:MASTER_PORT")
    raise LaunchError(
        "train.nnodes > 1 needs a rendezvous endpoint every node reaches: set train.rdzv_endpoint "
        f"(host:port, e.g. node01:{DEFAULT_PORT}) or MASTER_ADDR (and MASTER_PORT) on every node, "
        "or start the stage with srun inside a SLURM job"
    )


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
