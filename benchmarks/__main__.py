"""``python -m benchmarks all [--quick] [--out benchmarks/results]``: every benchmark, one report.

Sub-commands ``loader``, ``models``, ``preprocess``, ``cams``, ``compare`` run one section each.
``stages`` profiles ``dvc repro`` stage by stage (``benchmarks.stages``). Two more stand apart and
are not part of ``all``: ``scale`` (every stage of ``dvc.yaml`` run as it is at
the real data set's size, ``benchmarks.scale``) and ``gpu-check`` (one GPU's training speed per
model and a phantom epoch on it, ``benchmarks.gpu_check``; it refuses to run without CUDA unless
``--allow-cpu``).
``all`` writes ``results.json`` and ``results.md`` in ``--out``; a sub-command writes
``<name>.json`` / ``<name>.md`` there, so a single-section run never overwrites the full report.
Every section times its contenders against a baseline in the same process and prints the ratios.

``--quick`` (a few minutes on a 2-core CPU) uses fewer images, models, steps and repeats, still at
224 px.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import torch

from benchmarks import cams as cams_bench
from benchmarks import compare as compare_bench
from benchmarks import loader as loader_bench
from benchmarks import models as models_bench
from benchmarks import preprocess as preprocess_bench
from benchmarks.report import machine_info, section_md, to_markdown
from benchmarks.timing import pick_device
from cxr_core.errors import CxrError
from cxr_core.files import write_json
from cxr_core.models.registry import get_spec
from cxr_core.runtime import DEVICES

SHARED_NOTE = (
    "Numbers come from the machine above; when it is shared with other jobs (the 2-core dev VM is) "
    "absolute images/s move with their load: compare the ratios, each measured against its "
    "baseline in the same process with interleaved repeats."
)

QUICK_MODELS = ("efficientnet_b0", "densenet121")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of every section for one run."""

    loader: loader_bench.LoaderSettings
    models: models_bench.ModelSettings
    preprocess: dict[str, int]
    cams: dict[str, Any]
    compare: dict[str, int]


def make_plan(quick: bool, models: tuple[str, ...] | None, compile_: str, cam_model: str) -> Plan:
    """Quick: small counts and 2 models; full: the paper's batch of 16 and all six models."""
    if quick:
        return Plan(
            loader=loader_bench.LoaderSettings(images=64, repeats=3),
            models=models_bench.ModelSettings(
                models=models or QUICK_MODELS, batch_size=8, steps=2, repeats=3, compile=compile_
            ),
            preprocess={"images": 32, "workers": 2, "size": 224, "repeat": 2},
            cams={"model": cam_model, "images": 8, "size": 224, "batch_size": 8, "repeats": 3},
            compare={"naive_replicates": 3, "metrics_replicates": 50, "repeats": 2},
        )
    return Plan(
        loader=loader_bench.LoaderSettings(images=256, repeats=5),
        models=models_bench.ModelSettings(
            models=models or models_bench.ModelSettings.models,
            batch_size=16,
            steps=3,
            repeats=5,
            compile=compile_,
        ),
        preprocess={"images": 200, "workers": 2, "size": 224, "repeat": 3},
        cams={"model": cam_model, "images": 32, "size": 224, "batch_size": 16, "repeats": 3},
        compare={"naive_replicates": 10, "metrics_replicates": 100, "repeats": 3},
    )


def _run_sections(names: tuple[str, ...], plan: Plan, device: torch.device) -> dict[str, Any]:
    """Run the named sections in order, printing each one's table as soon as it is done."""
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "loader": lambda: loader_bench.run(plan.loader, device, progress=True),
        "models": lambda: models_bench.run(plan.models, device, progress=True),
        "preprocess": lambda: preprocess_bench.run(**plan.preprocess),
        "cams": lambda: cams_bench.run(**plan.cams, device=str(device), threads=torch.get_num_threads()),
        "compare": lambda: compare_bench.run(**plan.compare),
    }
    shown = {
        "loader": ("loader",),
        "models": ("efficiency", "models"),
        "preprocess": ("preprocess",),
        "cams": ("cams",),
        "compare": ("compare",),
    }
    sections: dict[str, Any] = {}
    for name in names:
        click.echo(f"\n== {name} ==", err=True)
        t0 = time.perf_counter()
        sections[name] = runners[name]()
        sections[name]["section_seconds"] = time.perf_counter() - t0
        for key in shown[name]:
            click.echo(section_md(key, sections))
    return sections


def choose_threads(requested: int | None) -> tuple[int, str]:
    """Torch intra-op threads and why: ``--threads``, else 1 on an oversubscribed CPU, else torch's default.

    When other jobs already keep every core busy, each multi-threaded op waits at its barrier for
    a descheduled thread: on the shared 2-core dev VM a train step ran 2-13x slower (and far
    noisier) with 2 threads than with 1.
    """
    if requested:
        return requested, "--threads"
    default = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if default > 1 and load >= cores:
        return 1, f"auto: 1-min load {load:.1f} >= {cores} cores (oversubscribed), so 1 thread"
    return default, "torch default"


def _execute(command: str, names: tuple[str, ...], opts: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    threads, why = choose_threads(opts["threads"])
    torch.set_num_threads(threads)
    click.echo(f"torch threads: {threads} ({why})", err=True)
    device = pick_device(opts["device"])
    models = tuple(m.strip() for m in opts["models"].split(",") if m.strip()) if opts["models"] else None
    plan = make_plan(opts["quick"], models, opts["compile"], opts["cam_model"])
    machine = {**machine_info(device), "threads_choice": why}
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    t0 = time.perf_counter()
    sections = _run_sections(names, plan, device)
    results = {
        "command": command,
        "quick": opts["quick"],
        "started": started,
        "seconds": time.perf_counter() - t0,
        "machine": machine,
        "note": SHARED_NOTE,
        "plan": dataclasses.asdict(plan),
        "sections": sections,
    }
    out = Path(opts["out"])
    out.mkdir(parents=True, exist_ok=True)
    stem = "results" if command == "all" else command
    write_json(out / f"{stem}.json", results)
    (out / f"{stem}.md").write_text(to_markdown(results))
    click.echo(
        f"wrote {out / f'{stem}.json'} and {out / f'{stem}.md'} ({results['seconds']:.0f} s)", err=True
    )


def common_options(fn: Callable[..., None]) -> Callable[..., None]:
    options = [
        click.option("--quick", is_flag=True, help="small counts, 2 models: a few minutes on a 2-core CPU"),
        click.option(
            "--out", default="benchmarks/results", show_default=True, type=click.Path(file_okay=False)
        ),
        click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICES)),
        click.option(
            "--threads",
            type=click.IntRange(min=1),
            default=None,
            help="torch intra-op threads (default: torch's, or 1 when the CPU is already fully loaded)",
        ),
        click.option(
            "--models", "models", default=None, help="comma-separated model names (default: quick 2, full 6)"
        ),
        click.option(
            "--compile",
            "compile",
            default="auto",
            show_default=True,
            type=click.Choice(["auto", "on", "off"]),
            help="time torch.compile (auto: on CUDA only)",
        ),
        click.option(
            "--cam-model", default="densenet121", show_default=True, help="model for the CAM benchmark"
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.group()
def cli() -> None:
    """Speed benchmarks of the pipeline: loader, models, preprocess, CAMs, model comparison."""


@cli.command("all")
@common_options
def all_(**opts: Any) -> None:
    """Every section; writes results.json and results.md."""
    _execute("all", ("loader", "models", "preprocess", "cams", "compare"), opts)


def _single(name: str, doc: str) -> None:
    @common_options
    def command(**opts: Any) -> None:
        _execute(name, (name,), opts)

    command.__doc__ = doc
    cli.command(name)(command)


_single("loader", "Cache loader vs the paper-style PNG DataLoader (images/s, ratio).")
_single("models", "Train / inference images/s per model and the input-pipeline efficiency.")
_single("preprocess", "build_cache vs the decode-only limit (benchmarks.preprocess).")
_single("cams", "Heatmaps/s per CAM method vs pytorch-grad-cam (benchmarks.cams).")
_single("compare", "paired_auc_bootstrap vs a per-replicate sklearn loop (benchmarks.compare).")


def _fractions(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[float, ...]:
    """``--fractions`` as numbers; a bad value is a one-line message and exit 1, before any work."""
    try:
        fractions = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.ClickException(
            f"--fractions {value!r}: expected comma-separated numbers such as 0.1,0.5,1.0"
        ) from None
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise click.ClickException(f"--fractions {value!r}: every fraction must be in (0, 1]")
    return fractions


@cli.command("stages")
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True)
@click.option(
    "--only", multiple=True, help="stage families to time (e.g. --only test --only cams); default all"
)
def stages(out: Path, only: tuple[str, ...]) -> None:
    """Where `dvc repro` spends its time: every stage forced in DAG order, split into start / dvc / work."""
    from benchmarks import stages as stages_bench

    result = stages_bench.run(Path.cwd(), out, only)
    write_json(out / "stages.json", result)


@cli.command("scale")
@click.option(
    "--fractions",
    default="0.1,0.5,1.0",
    show_default=True,
    callback=_fractions,
    help="sizes, of 112,120 images",
)
@click.option("--out", default="benchmarks/results", show_default=True, type=click.Path(file_okay=False))
@click.option(
    "--workdir",
    default=None,
    type=click.Path(file_okay=False),
    help="where the workspaces (and their 5.6 GB cache at 100%) go (default: the system's temp folder)",
)
@click.option(
    "--meta",
    default=None,
    type=click.Path(file_okay=False),
    help="folder with NIH's four metadata files gzipped (default: synthetic metadata)",
)
@click.option(
    "--keep",
    is_flag=True,
    help="keep the workspaces (cache, splits, models, metrics) instead of deleting them",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads of every stage")
@click.option(
    "--in-process",
    is_flag=True,
    help="run the stages in this process (faster start; memory peaks not isolated)",
)
@click.option(
    "--models",
    type=click.IntRange(1, 6),
    default=6,
    show_default=True,
    help="probe models in every model stage's matrix (6: the paper's count)",
)
def scale(
    fractions: tuple[float, ...],
    out: str,
    workdir: str | None,
    meta: str | None,
    keep: bool,
    threads: int | None,
    in_process: bool,
    models: int,
) -> None:
    """Every stage of dvc.yaml at 10%, 50%, 100% of NIH's size, as the stages run: time, memory, growth."""
    from benchmarks import scale as scale_bench

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    n_threads, why = choose_threads(threads)
    click.echo(f"torch threads: {n_threads} ({why})", err=True)
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    try:
        result = scale_bench.run(
            fractions,
            workdir=Path(workdir) if workdir else None,
            meta=Path(meta) if meta else None,
            keep=keep,
            threads=n_threads,
            progress=lambda msg: click.echo(msg, err=True),
            isolate=not in_process,
            models=models,
        )
    except (CxrError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    machine = {**machine_info(torch.device("cpu")), "threads_choice": why}
    result = {"command": "scale", "started": started, "machine": machine, **result}
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "scale.json", result)
    markdown = scale_bench.to_markdown(result, machine)
    (folder / "scale.md").write_text(markdown)
    click.echo(markdown)
    click.echo(
        f"wrote {folder / 'scale.json'} and {folder / 'scale.md'} ({result['seconds']:.0f} s)", err=True
    )


@cli.command("gpu-check")
@click.option("--out", default="benchmarks/results", show_default=True, type=click.Path(file_okay=False))
@click.option(
    "--allow-cpu", is_flag=True, help="without CUDA, a tiny smoke run (efficientnet_b0, 64 px, 2 steps)"
)
@click.option(
    "--budget-s", type=click.FloatRange(min=0), default=None, help="time budget; compiles past it are skipped"
)
@click.option("--models", "models", default=None, help="comma-separated model names (default: the six)")
@click.option("--no-compile", is_flag=True, help="skip the torch.compile measurements")
def gpu_check(
    out: str, allow_cpu: bool, budget_s: float | None, models: str | None, no_compile: bool
) -> None:
    """On one CUDA GPU: train images/s per model (fp32, bf16, compile) and a phantom epoch end to end."""
    from benchmarks import gpu_check as gpu_bench

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        device = gpu_bench.require_cuda(allow_cpu)
    except gpu_bench.GpuCheckError as exc:
        raise click.ClickException(str(exc)) from None
    settings = gpu_bench.CheckSettings() if device.type == "cuda" else gpu_bench.CheckSettings.smoke()
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(choose_threads(None)[0])
    changes: dict[str, Any] = {}
    if budget_s is not None:
        changes["budget_s"] = budget_s
    if models:
        names = tuple(m.strip() for m in models.split(",") if m.strip())
        changes.update(models=names, compile_models=tuple(m for m in settings.compile_models if m in names))
    if no_compile:
        changes["compile"] = False
    settings = dataclasses.replace(settings, **changes)
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    try:
        for name in settings.models:
            get_spec(name)  # an unknown --models name fails here, with suggestions, before any timing
        result = gpu_bench.run(settings, device, progress=lambda msg: click.echo(msg, err=True))
    except CxrError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        torch.set_num_threads(threads)
    result = {"command": "gpu-check", "started": started, "smoke": device.type != "cuda", **result}
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "gpu_check.json", result)
    markdown = gpu_bench.to_markdown(result)
    (folder / "gpu_check.md").write_text(markdown)
    click.echo(markdown)
    click.echo(
        f"wrote {folder / 'gpu_check.json'} and {folder / 'gpu_check.md'} ({result['seconds']:.0f} s)",
        err=True,
    )


if __name__ == "__main__":
    cli()
