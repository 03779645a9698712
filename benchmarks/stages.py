"""``python -m benchmarks stages``: where ``dvc repro`` of the current params spends its time.

Every stage runs as ``dvc repro --force --single-item <stage>``, in the DAG's order, timed whole
(its outputs come out byte-identical, so the workspace and ``dvc.lock`` end as they were; a
stage's ``persist`` outputs, train's resumable ``last.pt``, are removed first so that it really
trains). Apart,
once per entry point, ``python -c "import stages.X"`` is timed against a bare interpreter, so each
stage's wall time splits into:

* ``start``: the interpreter and the entry point's imports (torch, timm, ...), paid by every stage;
* ``dvc``: DVC's own work around the command (a no-op ``dvc repro --single-item`` of the stage:
  loading the pipeline, hashing deps and outputs);
* ``work``: the rest, the stage's own compute and I/O.

The summary gives each part as a share of the total (the ratios to compare between runs and CPUs)
and per stage family (``train``, ``test``, ...). Run on a quiet machine after ``dvc repro``.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DVC = str(Path(sys.executable).parent / "dvc")


@dataclass(frozen=True)
class StageTime:
    stage: str
    family: str
    wall_s: float
    start_s: float
    dvc_s: float

    @property
    def work_s(self) -> float:
        return max(0.0, self.wall_s - self.start_s - self.dvc_s)


def _timed(cmd: Sequence[str] | str, cwd: Path, shell: bool = False) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, shell=shell, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{done.stderr[-2000:]}")
    return seconds


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str
    persist: tuple[str, ...]  # outputs DVC keeps across runs (train's last.pt folder)


def stage_order(root: Path) -> list[Stage]:
    """Every stage, upstream first (DVC's own graph)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        order = reversed(list(nx.topological_sort(repo.index.graph)))  # edges point downstream -> upstream
        return [
            Stage(s.addressing, s.cmd, tuple(str(o.def_path) for o in s.outs if o.persist))
            for s in order
            if getattr(s, "cmd", None)
        ]


def entry_point(cmd: str) -> str | None:
    """``stages.train`` of ``python -m stages.train ...``."""
    found = re.search(r"python -m ([\w.]+)", cmd)
    return found.group(1) if found else None


def import_seconds(module: str, root: Path, repeats: int = 3) -> float:
    """Median wall time of ``python -c "import module"`` (interpreter start included)."""
    return statistics.median(_timed([sys.executable, "-c", f"import {module}"], root) for _ in range(repeats))


def profile(root: Path, only: Sequence[str] = ()) -> list[StageTime]:
    stages = [s for s in stage_order(root) if not only or s.name.split("@")[0] in only]
    starts: dict[str, float] = {}
    results = []
    for stage in stages:
        name, module = stage.name, entry_point(stage.cmd)
        if module and module not in starts:
            starts[module] = import_seconds(module, root)
        dvc_s = _timed([DVC, "repro", "--single-item", name], root)  # up to date: DVC's overhead alone
        for kept in stage.persist:  # else a forced train@ resumes its finished last.pt: no epoch to run
            shutil.rmtree(root / kept, ignore_errors=True)
        wall = _timed([DVC, "repro", "--force", "--single-item", name], root)
        results.append(StageTime(name, name.split("@")[0], wall, starts.get(module, 0.0), dvc_s))
        print(
            f"{name:32s} {wall:7.1f} s  (start {starts.get(module, 0.0):4.1f}, dvc {dvc_s:4.1f})", flush=True
        )
    return results


def summary(results: Sequence[StageTime]) -> dict[str, Any]:
    total = sum(r.wall_s for r in results)
    families: dict[str, dict[str, float]] = {}
    for r in results:
        f = families.setdefault(r.family, {"stages": 0, "wall_s": 0.0, "start_s": 0.0, "dvc_s": 0.0})
        f["stages"] += 1
        f["wall_s"] += r.wall_s
        f["start_s"] += r.start_s
        f["dvc_s"] += r.dvc_s
    parts = {
        "start": sum(r.start_s for r in results) / total,
        "dvc": sum(r.dvc_s for r in results) / total,
        "work": sum(r.work_s for r in results) / total,
    }
    return {"total_s": total, "stages": len(results), "share": parts, "families": families}


def to_markdown(results: Sequence[StageTime], machine: str) -> str:
    s = summary(results)
    lines = [
        f"# Stage profile of `dvc repro` ({s['stages']} stages, {s['total_s'] / 60:.1f} min) on {machine}",
        "",
        "Share of the total: "
        + ", ".join(f"{k} {v:.0%}" for k, v in s["share"].items())
        + " (start = interpreter + imports, dvc = DVC around the command, work = the stage's own).",
        "",
        "| family | stages | wall s | share | start s | dvc s | work s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, f in sorted(s["families"].items(), key=lambda kv: -kv[1]["wall_s"]):
        work = f["wall_s"] - f["start_s"] - f["dvc_s"]
        lines.append(
            f"| {name} | {f['stages']} | {f['wall_s']:.1f} | {f['wall_s'] / s['total_s']:.0%} | "
            f"{f['start_s']:.1f} | {f['dvc_s']:.1f} | {work:.1f} |"
        )
    lines += ["", "| stage | wall s | start s | dvc s | work s |", "|---|---|---|---|---|"]
    lines += [
        f"| {r.stage} | {r.wall_s:.1f} | {r.start_s:.1f} | {r.dvc_s:.1f} | {r.work_s:.1f} |" for r in results
    ]
    return "\n".join(lines) + "\n"


def run(root: Path, out: Path, only: Sequence[str] = ()) -> dict[str, Any]:
    from benchmarks.report import machine_info

    results = profile(root, only)
    import torch

    machine = machine_info(torch.device("cpu"))
    text = to_markdown(results, machine["cpu"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "stages.md").write_text(text)
    print(text)
    return {
        "machine": machine,
        "stages": [asdict(r) | {"work_s": r.work_s} for r in results],
        **summary(results),
    }
