"""Device selection: one GPU per process on a many-GPU machine (faked: no GPU here), the CPU as before.

The multi-process tests start real processes that each resolve ``train.device`` against a fake
driver (``visible_gpus`` replaced: GPU ids, renumbered by ``CUDA_VISIBLE_DEVICES`` as CUDA does)
and hold what they got until the test closes their stdin, so the locks are contended as
``dvc queue start -j N`` workers contend for them.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

from cxr_core import runtime as rt
from cxr_core.params import ParamsError, validate

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import os, sys
import cxr_core.runtime as rt
rt._POLL_S = 0.05
seen = os.environ.get("CUDA_VISIBLE_DEVICES")
ids = [f"GPU-{k}" for k in (map(int, seen.split(",")) if seen else range(int(os.environ["FAKE_GPUS"])))]
rt.visible_gpus = lambda: ids
try:
    device = rt.resolve_device(sys.argv[1])
except rt.DeviceError as exc:
    print(f"DeviceError: {exc}", file=sys.stderr, flush=True)
    sys.exit(3)
print(device, ids[device.index], flush=True)
sys.stdin.read()  # hold the GPU until the test closes stdin (or kills the process)
"""


def _start(tmp_path: Path, gpus: int, device: str = "auto", **env: str) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", rt.BUSY_ENV)}
    environ.update(FAKE_GPUS=str(gpus), PYTHONPATH=str(ROOT), **{rt.LOCK_DIR_ENV: str(tmp_path / "locks")})
    environ.update(env)
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, device],
        env=environ,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _readline(stream, timeout: float = 120.0) -> str:
    """The child's next line, or "" after ``timeout`` s (a broken lock must fail the test, not hang it)."""
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else ""


def _held(proc: subprocess.Popen) -> tuple[str, str]:
    """(cuda:K, GPU id) a started child holds; fails with its stderr if it did not get one."""
    line = _readline(proc.stdout).split()
    if len(line) != 2:
        proc.kill()
        pytest.fail(f"child got no GPU (rc {proc.wait()}): {proc.stderr.read()[-2000:]}")
    return line[0], line[1]


def _release(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.stdin.close()
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_concurrent_processes_get_distinct_gpus_and_an_extra_one_fails_saying_why(tmp_path: Path) -> None:
    procs = [_start(tmp_path, 4) for _ in range(4)]
    try:
        held = [_held(p) for p in procs]
        assert sorted(held) == [(f"cuda:{k}", f"GPU-{k}") for k in range(4)]  # today: all on cuda:0
        extra = _start(tmp_path, 4, **{rt.BUSY_ENV: "fail"})
        _out, err = extra.communicate(timeout=120)
        assert extra.returncode == 3, err
        message = err.strip()
        assert message.startswith("DeviceError: no free GPU") and message.count("\n") == 0  # one paragraph
        assert f"{rt.BUSY_ENV}=fail" in message and "dvc queue start -j N" in message
        assert all(f"pid {p.pid} " in message for p in procs), message  # names who holds each GPU
    finally:
        _release(*procs)


def test_an_extra_process_waits_until_a_gpu_is_freed_by_a_killed_holder(tmp_path: Path) -> None:
    holder = _start(tmp_path, 1)
    waiter = None
    try:
        assert _held(holder) == ("cuda:0", "GPU-0")
        waiter = _start(tmp_path, 1)  # CXR_GPU_BUSY unset: wait
        warning = _readline(waiter.stderr)
        assert "no free GPU" in warning and "waiting for one to be free" in warning, warning
        assert waiter.poll() is None  # still waiting: never shares the held GPU
        holder.kill()  # the kernel drops a killed process's flock
        holder.wait(timeout=60)
        assert _held(waiter) == ("cuda:0", "GPU-0")
    finally:
        _release(holder, *([waiter] if waiter else []))


def test_locks_name_the_physical_gpu_whatever_cuda_visible_devices_renumbers(tmp_path: Path) -> None:
    """A process that sees only GPU 1 (as its cuda:0) keeps another from taking GPU 1 as cuda:1."""
    only_second = _start(tmp_path, 2, CUDA_VISIBLE_DEVICES="1")
    procs = [only_second]
    try:
        assert _held(only_second) == ("cuda:0", "GPU-1")
        procs.append(everything := _start(tmp_path, 2))
        assert _held(everything) == ("cuda:0", "GPU-0")
        late = _start(tmp_path, 2, CUDA_VISIBLE_DEVICES="1", **{rt.BUSY_ENV: "fail"})
        _out, err = late.communicate(timeout=120)
        assert late.returncode == 3 and f"pid {only_second.pid} " in err, err
    finally:
        _release(*procs)


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """This process on a fake machine with ``n`` GPUs, a fresh lock folder and no GPU held yet."""

    def make(n: int) -> list[str]:
        ids = [f"GPU-{k}" for k in range(n)]
        monkeypatch.setattr(rt, "visible_gpus", lambda: ids)
        return ids

    monkeypatch.setattr(rt, "_LOCKS", {})
    monkeypatch.setenv(rt.LOCK_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.delenv(rt.BUSY_ENV, raising=False)
    return make


def test_explicit_cuda_k_is_that_gpu_and_one_past_the_visible_ones_is_an_error(fake_gpus) -> None:
    fake_gpus(3)
    assert str(rt.resolve_device("cuda:2")) == "cuda:2"
    assert str(rt.resolve_device("auto")) == "cuda:2"  # a process keeps the GPU it holds
    with pytest.raises(rt.DeviceError, match=r"train.device = cuda:3 but this process sees 3 GPU\(s\)"):
        rt.resolve_device("cuda:3")


def test_another_process_takes_the_next_free_gpu(fake_gpus, tmp_path: Path) -> None:
    ids = fake_gpus(2)
    assert str(rt.resolve_device("cuda")) == "cuda:0"
    other = rt.GpuLocks(tmp_path / "locks")  # flock locks are per open file: another process, in effect
    assert str(other.claim(ids, [0, 1])) == "cuda:1"


def test_a_ddp_rank_takes_its_local_gpu_and_never_waits_for_it(fake_gpus, tmp_path: Path) -> None:
    ids = fake_gpus(2)
    rt.GpuLocks(tmp_path / "locks").claim(ids, [1])  # a one-GPU experiment holds GPU 1
    assert str(rt.resolve_device("auto", local_rank=0)) == "cuda:0"
    with pytest.raises(rt.DeviceError, match="DDP rank with LOCAL_RANK=1 needs cuda:1"):
        rt.resolve_device("auto", local_rank=1)  # at once, although CXR_GPU_BUSY is wait


def test_on_the_cpu_selection_is_unchanged_and_takes_no_lock(fake_gpus, tmp_path: Path) -> None:
    fake_gpus(0)
    assert str(rt.resolve_device("auto")) == "cpu" and str(rt.resolve_device("cpu")) == "cpu"
    for name in ("cuda", "cuda:0"):
        with pytest.raises(rt.DeviceError, match=f"train.device = {name} but no CUDA device is available"):
            rt.resolve_device(name)
    fake_gpus(2)
    assert str(rt.resolve_device("cpu")) == "cpu"
    assert not (tmp_path / "locks").exists()


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cuda:-1", "cuda:", "cuda0"])
def test_a_bad_device_names_the_key_and_what_is_allowed(name: str) -> None:
    with pytest.raises(rt.DeviceError, match="expected one of .* or cuda:K"):
        rt.check_device(name)
    raw = __import__("yaml").safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["device"] = name
    with pytest.raises(ParamsError, match=f"train.device = '{name}'"):
        validate(raw, {"device": rt.check_device})
    assert rt.check_device("cuda:1") == "cuda:1"


def test_a_bad_busy_policy_names_the_variable(fake_gpus, tmp_path: Path, monkeypatch) -> None:
    ids = fake_gpus(1)
    rt.GpuLocks(tmp_path / "locks").claim(ids, [0])
    monkeypatch.setenv(rt.BUSY_ENV, "queue")
    with pytest.raises(
        rt.DeviceError, match=r"CXR_GPU_BUSY='queue' is not allowed; expected one of \['wait', 'fail'\]"
    ):
        rt.resolve_device("auto")
