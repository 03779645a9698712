"""``python -m benchmarks scale``: the stages of ``dvc.yaml``, run as they are, at NIH's full size.

Why: a scale check with its own copy of the step sequence goes on describing code that no longer
runs once a stage changes. This one builds a workspace per fraction (``dvc.yaml`` as it is, a
``params.yaml`` at the paper's image size, ``data/raw``, ``data/cache``), asks DVC for the stages
in DAG order (``foreach`` / ``matrix`` expanded over the workspace's params) and runs each stage's
own click command with the arguments of its ``cmd``, each in a fresh process.

Stand-ins, because their cost is images, not size (``STAND_INS``): ``download`` and
``preprocess``. Their outputs are written directly: NIH's four metadata files (synthetic, with
NIH's structure -- 112,120 images of 30,805 patients, 25,596 official test images of 2,797
patients, 984 boxes on 880 test images -- or NIH's own with ``--meta``) and a uint8
``images.npy`` written straight into a memmap (5.6 GB at full size, no PNGs). The models are
``PROBES``: tiny CNNs registered with timm, so that every model stage runs its real code (batches,
augmentation, loop, checkpoints, inference, CAMs) without model compute, which the GPU estimates
in ``docs/scale-check.md`` cover, drowning the rest.

Memory per stage: the child resets the kernel's RSS high-water mark (``/proc/self/clear_refs``)
once the stage's module is imported and samples its anonymous RSS while the command runs. Memmap
pages count in RSS but are file-backed and reclaimable, so anonymous memory is the number that
says whether a peak is bounded. Time and anonymous memory per stage family are compared with the
size ratio across fractions: growth faster than the size is flagged.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_core.errors import CxrError

REPO = Path(__file__).resolve().parents[1]
#: The real set: images, patients, official test images / patients, boxes and box images (NIH 2017).
FULL = {
    "images": 112_120,
    "patients": 30_805,
    "test_images": 25_596,
    "test_patients": 2_797,
    "boxes": 984,
    "box_images": 880,
}
#: Boxes per finding in ``BBox_List_2017.csv`` (984 in all).
REAL_BOXES = {
    "Atelectasis": 180,
    "Cardiomegaly": 146,
    "Effusion": 153,
    "Infiltration": 123,
    "Mass": 85,
    "Nodule": 79,
    "Pneumonia": 120,
    "Pneumothorax": 98,
}
#: Fewest boxes at any fraction: the localisation set's tune and report halves both need some.
MIN_BOXES = 16
SIZE = 224
#: Stages not run, by the module of their ``cmd``, and why; the workspace holds their outputs.
STAND_INS = {
    "stages.download": "fetches 42 GB of PNGs (or draws the phantom's); its metadata outputs are "
    "written directly, in NIH's formats",
    "stages.preprocess": "decodes PNGs (measured by `python -m benchmarks preprocess`); the cache is "
    "written straight into a memmap",
}
#: The size a stage family's work grows with (any other family: ``images``).
UNITS = {
    "test": "test_images",
    "cams": "boxes",
    "localise": "boxes",
    "adjudicated": "test_images",
    "clinical": "test_images",
    "compare": "test_images",
}
#: Model names registered with timm by :func:`register_probes` (six: the paper's count).
PROBES = tuple(f"scale_probe_{k}" for k in range(1, 7))
#: params.yaml keys changed from the repository's (``dvc exp run -S`` spelling); the rest as shipped.
PARAMS = {
    "seeds": [0],
    "data.source": "synthetic",
    "preprocess.image_size": SIZE,
    "train.pretrained": False,
    "train.epochs": 1,
    "train.batch_size": 32,
    "train.device": "cpu",
    "train.nproc_per_node": 1,
}
#: Flag growth when time or memory grows faster than size**SUPERLINEAR between the smallest and
#: the largest fraction (fixed start-up costs make small runs look sub-linear, never super-linear).
SUPERLINEAR = 1.15
#: Below these, a ratio is noise (a step of a few tenths of a second, a few MB of heap).
MIN_SECONDS = 0.5
MIN_EXTRA_MB = 256.0
#: Anonymous memory a stage may take beyond its imports before its peak counts as unbounded.
PEAK_BUDGET_MB = 4096.0
#: Rows of the base noise images the synthetic cache repeats (content does not matter here).
POOL = 64


class ScaleError(CxrError, RuntimeError):
    """A stage failed, cannot be run, or ``--meta`` lacks a file; the message names it and what to do."""


# --------------------------------------------------------------------------------------------
# sizes and NIH's metadata files


def sizes(fraction: float) -> dict[str, int]:
    """The real counts scaled by ``fraction`` (at least 2 patients per side and ``MIN_BOXES`` boxes)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction!r} must be in (0, 1]")
    s = {k: max(1, round(v * fraction)) for k, v in FULL.items()}
    s["test_patients"] = max(2, s["test_patients"])
    s["patients"] = max(s["test_patients"] + 2, s["patients"])
    s["test_images"] = max(s["test_patients"], s["test_images"])
    s["images"] = max(s["test_images"] + s["patients"] - s["test_patients"], s["images"])
    s["box_images"] = min(max(s["box_images"], MIN_BOXES), s["test_images"])
    s["boxes"] = min(max(s["boxes"], s["box_images"]), s["box_images"] * len(REAL_BOXES))
    return s


def _images_per_patient(rng: np.random.Generator, patients: int, images: int) -> np.ndarray:
    """Heavy-tailed image counts (>= 1 each) summing to ``images``, as NIH's follow-up series."""
    weights = rng.lognormal(0.0, 1.3, patients)
    return 1 + rng.multinomial(images - patients, weights / weights.sum())


def synthetic_metadata(fraction: float, seed: int = 0) -> dict[str, Any]:
    """Data_Entry rows, both official lists and the box list, with NIH's structure at ``fraction``.

    Test patients are a disjoint set with more images each (as in NIH's split: 9.2 vs 3.1 images
    per patient); labels are drawn at the real per-finding prevalences; every box's image has the
    box's finding among its labels.
    """
    from cxr_core.labels import LABELS, REAL_COUNTS, REAL_IMAGES

    s = sizes(fraction)
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.arange(1, s["patients"] + 1))
    test_ids, tv_ids = np.sort(ids[: s["test_patients"]]), np.sort(ids[s["test_patients"] :])
    counts = np.concatenate(
        [
            _images_per_patient(rng, len(test_ids), s["test_images"]),
            _images_per_patient(rng, len(tv_ids), s["images"] - s["test_images"]),
        ]
    )
    patient = np.repeat(np.concatenate([test_ids, tv_ids]), counts)
    follow = np.concatenate([np.arange(c) for c in counts])
    names = np.array([f"{p:08d}_{k:03d}.png" for p, k in zip(patient, follow, strict=True)])
    is_test = np.repeat(np.r_[np.ones(len(test_ids), bool), np.zeros(len(tv_ids), bool)], counts)
    prevalence = np.array([REAL_COUNTS[lab] / REAL_IMAGES for lab in LABELS])
    onehot = rng.random((len(names), len(LABELS))) < prevalence

    test_rows = np.flatnonzero(is_test)
    box_rows = rng.choice(test_rows, s["box_images"], replace=False)
    box_pool = np.repeat(list(REAL_BOXES), list(REAL_BOXES.values()))
    box_labels = rng.choice(box_pool, s["boxes"], replace=False)
    # every box image gets one box, the rest go to random box images (one box per (image, label))
    owners = np.r_[box_rows, rng.choice(box_rows, s["boxes"] - s["box_images"])]
    boxes, seen = [], set()
    for row, label in zip(owners, box_labels, strict=True):
        lab = str(label)
        while (row, lab) in seen:
            lab = str(rng.choice(list(REAL_BOXES)))
        seen.add((row, lab))
        onehot[row, LABELS.index(lab)] = True
        w, h = rng.uniform(30, 400, 2)
        x, y = rng.uniform(0, 1024 - w), rng.uniform(0, 1024 - h)
        boxes.append((names[row], "Infiltrate" if lab == "Infiltration" else lab, x, y, w, h))
    findings = ["|".join(LABELS[j] for j in np.flatnonzero(r)) or "No Finding" for r in onehot]
    entry = pd.DataFrame(
        {
            "Image Index": names,
            "Finding Labels": findings,
            "Follow-up #": follow,
            "Patient ID": patient,
            "Patient Age": rng.integers(1, 95, len(names)),
            "Patient Gender": rng.choice(["M", "F"], len(names)),  # the v2020 header
            "View Position": rng.choice(["PA", "AP"], len(names)),
            "OriginalImage[Width": 2500,
            "Height]": 2048,
            "OriginalImagePixelSpacing[x": 0.143,
            "y]": 0.143,
        }
    )
    order = rng.permutation(len(entry))  # NIH's file is not sorted
    return {
        "entry": entry.iloc[order].reset_index(drop=True),
        "train_val": sorted(names[~is_test]),
        "test": sorted(names[is_test]),
        "boxes": boxes,
    }


def write_metadata(folder: Path, meta: dict[str, Any]) -> Path:
    """NIH's four files (split bracketed headers, 9-field box header) in ``folder``; the label table's path."""
    from cxr_core.data import metadata as md

    folder.mkdir(parents=True, exist_ok=True)
    meta["entry"].to_csv(folder / md.DATA_ENTRY_V2020, index=False)
    lines = ["Image Index,Finding Label,Bbox [x,y,w,h],,,"]
    lines += [f"{n},{lab},{x:.4f},{y:.4f},{w:.4f},{h:.4f}" for n, lab, x, y, w, h in meta["boxes"]]
    (folder / md.BBOX_LIST).write_text("\n".join(lines) + "\n")
    md.write_image_list(folder / md.TRAIN_VAL_LIST, meta["train_val"])
    md.write_image_list(folder / md.TEST_LIST, meta["test"])
    return folder / md.DATA_ENTRY_V2020


def meta_files(meta_dir: Path) -> dict[str, Path]:
    """The gzipped NIH metadata file in ``meta_dir`` for each name the pipeline reads, or ScaleError."""
    from cxr_core.data import metadata as md

    if not Path(meta_dir).is_dir():
        raise ScaleError(
            f"--meta {meta_dir}: no such folder (it should hold NIH's four metadata files, gzipped)"
        )
    candidates = {
        md.DATA_ENTRY: [f"{n}.gz" for n in (*md.DATA_ENTRY_NAMES, md.DATA_ENTRY)],
        **{n: [f"{n}.gz"] for n in md.METADATA_FILES if n != md.DATA_ENTRY},
    }
    out: dict[str, Path] = {}
    for name, names in candidates.items():
        found = [Path(meta_dir) / c for c in names if (Path(meta_dir) / c).is_file()]
        if not found:
            raise ScaleError(f"--meta {meta_dir}: none of {names} found (NIH's four metadata files, gzipped)")
        out[name] = found[0]
    return out


def real_metadata(meta_dir: Path, folder: Path, fraction: float, seed: int = 0) -> Path:
    """NIH's gzipped files from ``meta_dir`` in ``folder``, cut to ``fraction`` of each side's patients."""
    from cxr_core.data import metadata as md

    folder.mkdir(parents=True, exist_ok=True)
    for name, found in meta_files(meta_dir).items():
        with gzip.open(found, "rb") as fin, open(folder / name, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    entry_path = folder / md.DATA_ENTRY
    if fraction >= 1:
        return entry_path
    rng = np.random.default_rng(seed)
    test = md.read_image_list(folder / md.TEST_LIST)
    train_val = md.read_image_list(folder / md.TRAIN_VAL_LIST)
    keep: set[str] = set()
    for names in (test, train_val):
        patients = np.unique([int(n[:8]) for n in names])
        chosen = set(rng.choice(patients, max(2, round(fraction * len(patients))), replace=False).tolist())
        keep |= {n for n in names if int(n[:8]) in chosen}
    entry = pd.read_csv(entry_path, dtype=str, keep_default_na=False, index_col=False)
    entry[entry["Image Index"].isin(keep)].to_csv(entry_path, index=False)
    md.write_image_list(folder / md.TEST_LIST, [n for n in test if n in keep])
    md.write_image_list(folder / md.TRAIN_VAL_LIST, [n for n in train_val if n in keep])
    box_lines = (folder / md.BBOX_LIST).read_text().splitlines()
    kept = [line for line in box_lines[1:] if line.split(",", 1)[0].strip() in keep]
    (folder / md.BBOX_LIST).write_text("\n".join([box_lines[0], *kept]) + "\n")
    return entry_path


# --------------------------------------------------------------------------------------------
# the workspace: what download and preprocess would leave, params at full size


def write_raw(entry: Path, nih: Path, raw: Path) -> list[str]:
    """``data/raw`` as the download stage leaves a local copy (label table normalised, lists copied).

    The manifest says ``synthetic`` so that ``adjudicated`` writes its stand-in of Google's labels
    rather than needing torchxrayvision's file. Returns every image name, sorted.
    """
    from cxr_core.data import metadata as md
    from cxr_core.data.manifest import MANIFEST, Manifest
    from cxr_core.files import write_json

    raw.mkdir(parents=True, exist_ok=True)
    md.normalise_data_entry(entry, raw / md.DATA_ENTRY)
    for name in (md.BBOX_LIST, md.TRAIN_VAL_LIST, md.TEST_LIST):
        shutil.copyfile(nih / name, raw / name)
    names = sorted(md.read_image_list(raw / md.TRAIN_VAL_LIST) + md.read_image_list(raw / md.TEST_LIST))
    label_file = f"{entry.name} (scale check)"
    manifest = Manifest("synthetic", label_file, "official", "images", len(names), [], "0" * 64)
    write_json(raw / MANIFEST, dataclasses.asdict(manifest))
    return names


def write_cache(cache: Path, names: Sequence[str], seed: int) -> int:
    """``data/cache`` as preprocess leaves it: ``N x 224 x 224`` noise written straight to the memmap."""
    from cxr_core.data.cache import IMAGES_FILE, INDEX_FILE, REPORT_FILE
    from cxr_core.data.preprocess import CacheReport
    from cxr_core.files import write_json

    cache.mkdir(parents=True, exist_ok=True)
    n = len(names)
    images = np.lib.format.open_memmap(cache / IMAGES_FILE, mode="w+", dtype=np.uint8, shape=(n, SIZE, SIZE))
    pool = np.random.default_rng(seed).integers(0, 256, (POOL, SIZE, SIZE), dtype=np.uint8)
    for lo in range(0, n, 2048):
        hi = min(lo + 2048, n)
        images[lo:hi] = pool[np.arange(lo, hi) % POOL]
        images.flush()  # write back as we go: the dirty pages of a 5.6 GB map never pile up
    del images
    pd.DataFrame({"row": np.arange(n), "image": list(names)}).to_csv(cache / INDEX_FILE, index=False)
    write_json(cache / REPORT_FILE, CacheReport(SIZE, n).to_json())
    return (cache / IMAGES_FILE).stat().st_size


def write_params(path: Path, models: Sequence[str]) -> None:
    """The repository's params.yaml with ``PARAMS`` and the probe models set."""
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted, value in {**PARAMS, "models": list(models)}.items():
        *parents, last = dotted.split(".")
        node = params
        for part in parents:
            node = node[part]
        node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def build_workspace(
    folder: Path, fraction: float, pipeline: Path, models: Sequence[str], **data: Any
) -> dict:
    """dvc.yaml, params.yaml, ``data/raw`` and ``data/cache`` in ``folder``; setup seconds and cache bytes.

    ``data``: ``meta`` (NIH's metadata folder, or None for synthetic metadata) and ``seed``.
    """
    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pipeline, folder / "dvc.yaml")
    write_params(folder / "params.yaml", models)
    nih = folder / "nih"
    if data.get("meta"):
        entry = real_metadata(Path(data["meta"]), nih, fraction, data.get("seed", 0))
    else:
        entry = write_metadata(nih, synthetic_metadata(fraction, data.get("seed", 0)))
    names = write_raw(entry, nih, folder / "data" / "raw")
    shutil.rmtree(nih)
    cache_bytes = write_cache(folder / "data" / "cache", names, data.get("seed", 0))
    return {"setup_seconds": time.perf_counter() - t0, "cache_bytes": cache_bytes}


# --------------------------------------------------------------------------------------------
# the stages: DVC's list, each stage's command


@dataclasses.dataclass(frozen=True)
class Stage:
    """One expanded stage of dvc.yaml: its address (``train@m-0``), ``cmd`` and declared outputs."""

    name: str
    cmd: str | list[str]  # DVC allows a list of commands; the scale check runs one
    outs: tuple[str, ...]

    @property
    def family(self) -> str:
        return self.name.split("@", 1)[0]


def pipeline_stages(folder: Path) -> list[Stage]:
    """Every stage of ``folder/dvc.yaml``, as DVC expands them, upstream first, else in the file's order."""
    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    (folder / ".dvc").mkdir(exist_ok=True)  # what `dvc init --no-scm` writes, without its messages
    (folder / ".dvc" / "config").write_text("[core]\n    no_scm = True\n")
    try:
        with Repo(str(folder)) as repo:
            listed = {s: i for i, s in enumerate(repo.index.stages)}
            upstream_first = repo.index.graph.reverse(copy=False)  # DVC's edges point upstream
            order = nx.lexicographical_topological_sort(upstream_first, key=lambda s: listed.get(s, -1))
            return [
                Stage(s.name, s.cmd, tuple(str(o.def_path) for o in s.outs))
                for s in order
                if getattr(s, "cmd", None)
            ]
    except DvcException as exc:
        raise ScaleError(f"{folder / 'dvc.yaml'}: DVC cannot read the pipeline: {exc}") from None


def command(stage: Stage) -> tuple[str, list[str]]:
    """``(module, args)`` of a ``python -m <module> <args>`` cmd; any other cmd is refused."""
    cmds = [stage.cmd] if isinstance(stage.cmd, str) else list(stage.cmd)
    argv = shlex.split(cmds[0]) if len(cmds) == 1 else []
    if len(argv) < 3 or not Path(argv[0]).name.startswith("python") or argv[1] != "-m":
        raise ScaleError(
            f"stage {stage.name}: cmd {stage.cmd!r} is not `python -m <module> ...`; the scale check "
            "runs a stage's click command (the module's `main`) with the cmd's arguments"
        )
    return argv[2], argv[3:]


# --------------------------------------------------------------------------------------------
# the probe models


def _probe_block(c_in: int, c_out: int, stride: int, kernel: int = 3) -> Any:
    from torch import nn

    pad = kernel // 2 if stride < kernel else 0
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=pad), nn.BatchNorm2d(c_out), nn.ReLU()
    )


def _probe(num_classes: int = 1000, in_chans: int = 3, width: int = 8, **_: Any) -> Any:
    """A CNN of 8-40k parameters with timm's interface (``feature_info``, ``get_classifier``).

    Stride 8 patchify stem, then two stride-2 stages: a 7 x 7 map at 224 px, as a real CNN's last
    stage, which is where the CAMs and the sanity cascade hook. Each probe has its own ``width``,
    so the models differ and the comparisons between them are not all ties.
    """
    from torch import nn

    class ScaleProbe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = _probe_block(in_chans, width, 8, kernel=8)
            self.stages = nn.Sequential(
                _probe_block(width, 2 * width, 2), _probe_block(2 * width, 4 * width, 2)
            )
            self.fc = nn.Linear(4 * width, num_classes)
            self.feature_info = [
                {"num_chs": width * 2**i, "reduction": 8 * 2**i, "module": m}
                for i, m in enumerate(("stem", "stages.0", "stages.1"))
            ]

        def get_classifier(self) -> nn.Module:
            return self.fc

        def forward(self, x: Any) -> Any:
            return self.fc(self.stages(self.stem(x)).mean((2, 3)))

    return ScaleProbe()


def register_probes() -> None:
    """Register ``PROBES`` with timm in this process (idempotent), so ``models:`` can name them."""
    import timm
    from timm.models import register_model

    for k, name in enumerate(PROBES):
        if timm.is_model(name):
            continue

        def entry(pretrained: bool = False, _width: int = 8 + 2 * k, **kwargs: Any) -> Any:
            if pretrained:
                raise ScaleError("the scale check's probe models have no pretrained weights")
            return _probe(width=_width, **kwargs)

        entry.__name__ = entry.__qualname__ = name
        register_model(entry)


# --------------------------------------------------------------------------------------------
# the child: one stage, its time and its memory


def _status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in kB (0 where the kernel has no such file)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class _AnonSampler:
    """Peak anonymous RSS while a stage runs, polled every ``interval`` s in a daemon thread."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_kb = _status_kb("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_kb = max(self.peak_kb, _status_kb("RssAnon"))

    def __enter__(self) -> _AnonSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, _status_kb("RssAnon"))


def measure(prepare: Callable[[], Any], work: Callable[[Any], Any]) -> dict[str, Any]:
    """Run ``prepare`` (timed apart), then ``work(prepared)`` timed, with its RSS peaks (MB)."""
    t0 = time.perf_counter()
    prepared = prepare()
    import_seconds = time.perf_counter() - t0
    reset = _reset_peak()
    base_rss, base_anon = _status_kb("VmRSS"), _status_kb("RssAnon")
    with _AnonSampler() as sampler:
        t0 = time.perf_counter()
        work(prepared)
        seconds = time.perf_counter() - t0
    peak_rss = _status_kb("VmHWM") if reset else max(_status_kb("VmHWM"), _status_kb("VmRSS"))
    return {
        "seconds": seconds,
        "import_seconds": import_seconds,
        "base_rss_mb": base_rss / 1024,
        "peak_rss_mb": max(peak_rss, base_rss) / 1024,
        "base_anon_mb": base_anon / 1024,
        "peak_anon_mb": max(sampler.peak_kb, base_anon) / 1024,
        "extra_anon_mb": max(sampler.peak_kb - base_anon, 0) / 1024,
        "peak_reset": reset,
    }


@dataclasses.dataclass(frozen=True)
class Job:
    """One stage's run: its name, the module and arguments of its cmd, the workspace, threads."""

    stage: str
    module: str
    args: tuple[str, ...]
    workdir: str
    threads: int = 1


def run_command(job: Job) -> dict[str, Any]:
    """Import the stage's module, then invoke its click ``main`` with the cmd's arguments, measured."""
    import click

    def prepare() -> Any:
        register_probes()
        return importlib.import_module(job.module).main

    def work(main: Any) -> None:
        try:
            main.main(args=list(job.args), prog_name=f"python -m {job.module}", standalone_mode=False)
        except click.ClickException as exc:
            raise ScaleError(f"stage {job.stage} failed: {exc.format_message()}") from None

    return measure(prepare, work)


def child_main(argv: Sequence[str]) -> int:
    """``python -m benchmarks.scale JOB_JSON OUT_JSON`` in the workspace: run one stage, write its numbers."""
    import torch

    job = Job(**json.loads(argv[0]))
    torch.set_num_threads(job.threads)
    try:
        result = run_command(job)
    except CxrError as exc:  # a fixable problem: its message, no traceback
        print(exc, file=sys.stderr)
        return 1
    Path(argv[1]).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------------------------
# the parent: every stage at every fraction, then how each family grows


def run_isolated(job: Job, out: Path) -> dict[str, Any]:
    """One stage in a fresh interpreter in its workspace, the repository on ``PYTHONPATH``."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        **os.environ,
        "PYTHONPATH": path,
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": str(job.threads),
    }
    cmd = [sys.executable, "-m", "benchmarks.scale", json.dumps(dataclasses.asdict(job)), str(out)]
    proc = subprocess.run(cmd, cwd=job.workdir, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise ScaleError(f"stage {job.stage} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(out.read_text())


def run_in_process(job: Job) -> dict[str, Any]:
    """One stage in this process (tests): same code, memory peaks on top of what ran before."""
    import torch

    threads, cwd = torch.get_num_threads(), Path.cwd()
    torch.set_num_threads(job.threads)
    os.chdir(job.workdir)
    try:
        return run_command(job)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)


def check_stand_in(stage: Stage, folder: Path) -> dict[str, Any]:
    """A stand-in stage's record, once every output it declares is in the workspace."""
    missing = [o for o in stage.outs if not (folder / o).exists()]
    if missing:
        raise ScaleError(
            f"stage {stage.name} declares {missing} in dvc.yaml, which the scale check's stand-in for it "
            "does not write; teach benchmarks/scale.py's workspace to write them"
        )
    return {"stand_in": STAND_INS[command(stage)[0]]}


def run_stages(folder: Path, threads: int, isolate: bool, say: Callable[[str], None]) -> dict[str, Any]:
    """Every stage of the workspace's pipeline in DAG order: stand-ins checked, the rest measured."""
    results: dict[str, Any] = {}
    for stage in pipeline_stages(folder):
        module, args = command(stage)
        if module in STAND_INS:
            results[stage.name] = check_stand_in(stage, folder)
            say(f"  {stage.name:34s} stand-in (outputs written directly)")
            continue
        job = Job(stage.name, module, tuple(args), str(folder), threads)
        t0 = time.perf_counter()
        r = run_isolated(job, folder / f".scale-{stage.name}.json") if isolate else run_in_process(job)
        results[stage.name] = {**r, "family": stage.family, "process_seconds": time.perf_counter() - t0}
        say(
            f"  {stage.name:34s} {r['seconds']:8.2f} s  peak RSS {r['peak_rss_mb']:7.0f} MB  "
            f"anon +{r['extra_anon_mb']:6.0f} MB (peak {r['peak_anon_mb']:.0f})"
        )
    return results


def measured_sizes(folder: Path) -> dict[str, int]:
    """Images, split sizes and boxes the stages ran on, from the split stage's own metrics."""
    path = folder / "metrics" / "split.json"
    if not path.is_file():
        raise ScaleError(f"{path}: no split metrics after the pipeline ran; the sizes are read from it")
    doc = json.loads(path.read_text())
    images = int(pd.read_csv(folder / "data" / "cache" / "index.csv").shape[0])
    return {
        "images": images,
        "train": doc["train"]["images"],
        "val": doc["val"]["images"],
        "test_images": doc["test"]["images"],
        "test_patients": doc["test"]["patients"],
        "boxes": doc["loc"]["boxes"],
    }


def families(stages: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per stage family (``train``, ``cams``...): runs, summed time, the largest peaks."""
    out: dict[str, dict[str, Any]] = {}
    for r in stages.values():
        if "family" not in r:
            continue
        f = out.setdefault(r["family"], {"runs": 0, "seconds": 0.0, "peak_rss_mb": 0.0, "extra_anon_mb": 0.0})
        f["runs"] += 1
        f["seconds"] += r["seconds"]
        f["peak_rss_mb"] = max(f["peak_rss_mb"], r["peak_rss_mb"])
        f["extra_anon_mb"] = max(f["extra_anon_mb"], r["extra_anon_mb"])
    return out


def _exponent(small: float, large: float, size_ratio: float) -> float:
    """``log(large / small) / log(size_ratio)``: 1 is linear; NaN when undefined."""
    if size_ratio <= 1 or small <= 0 or large <= 0:
        return float("nan")
    return math.log(large / small) / math.log(size_ratio)


def _growth_of(small: dict, middle: dict, large: dict, ratios: tuple[float, float]) -> dict[str, Any]:
    """Ratios, exponents and flags of one family between three fractions (see :func:`growth`)."""
    size_ratio, last_ratio = ratios
    entry: dict[str, Any] = {"size_ratio": size_ratio, "flags": []}
    for key, floor in (("seconds", MIN_SECONDS), ("extra_anon_mb", MIN_EXTRA_MB)):
        a, b = small[key], large[key]
        entry[f"{key}_ratio"] = b / a if a > 0 else float("nan")
        exp = _exponent(a, b, size_ratio)
        exp_last = _exponent(middle[key], b, last_ratio) if middle is not small else exp
        entry[f"{key}_exponent"], entry[f"{key}_exponent_last"] = exp, exp_last
        both = [e for e in (exp, exp_last) if math.isfinite(e)]
        if both and min(both) > SUPERLINEAR and b >= floor:
            entry["flags"].append(f"{key} grows as size^{min(both):.2f}")
    return entry


def growth(fams: dict[str, dict[str, Any]], sizes_of: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Per family: time and anonymous-memory growth against its size, with exponents and flags.

    Exponents are taken from the smallest to the largest fraction and between the two largest
    (the pair least distorted by fixed start-up costs). A quantity is flagged as super-linear only
    when both exceed ``SUPERLINEAR`` and its largest value is above the noise floor
    (``MIN_SECONDS``, ``MIN_EXTRA_MB``): on a shared machine one loaded run must not raise a flag.
    A peak above ``PEAK_BUDGET_MB`` at any fraction is flagged as unbounded for this machine.
    """
    keys = sorted(fams, key=float)
    lo, mid, hi = keys[0], keys[-2], keys[-1]
    out: dict[str, Any] = {}
    for family in fams[hi]:
        unit = UNITS.get(family, "images")
        ratios = (
            sizes_of[hi][unit] / max(sizes_of[lo][unit], 1),
            sizes_of[hi][unit] / max(sizes_of[mid][unit], 1),
        )
        small, middle, large = fams[lo][family], fams[mid][family], fams[hi][family]
        entry = {"from": lo, "to": hi, "unit": unit, **_growth_of(small, middle, large, ratios)}
        peak = max(fams[k][family]["extra_anon_mb"] for k in keys)
        if peak > PEAK_BUDGET_MB:
            entry["flags"].append(f"anonymous memory beyond imports {peak:.0f} MB > {PEAK_BUDGET_MB:.0f} MB")
        out[family] = entry
    return out


def run(
    fractions: Sequence[float],
    workdir: Path | None = None,
    meta: Path | None = None,
    keep: bool = False,
    threads: int = 1,
    progress: Callable[[str], None] | None = None,
    isolate: bool = True,
    models: int = len(PROBES),
    pipeline: Path = REPO / "dvc.yaml",
) -> dict[str, Any]:
    """Every stage of ``pipeline`` at every fraction (smallest first); the JSON-ready result.

    ``isolate=False`` runs the stages in this process (no interpreter start per stage, for tests):
    the same code runs, but a stage's memory peak then sits on top of what earlier stages left.
    """
    fractions = sorted(set(fractions))
    for f in fractions:
        sizes(f)  # a bad fraction fails here, before any work
    if meta is not None:
        meta_files(meta)  # so does a missing metadata file
    say = progress or (lambda _msg: None)
    base = Path(workdir) if workdir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    top = Path(tempfile.mkdtemp(prefix="cxr-scale-", dir=base))
    names = PROBES[: max(1, min(models, len(PROBES)))]
    steps, setup, measured = {}, {}, {}
    t_all = time.perf_counter()
    try:
        for fraction in fractions:
            key, folder = f"{fraction:g}", top / f"f{fraction:g}"
            setup[key] = build_workspace(folder, fraction, Path(pipeline), names, meta=meta)
            say(f"fraction {key}: workspace in {setup[key]['setup_seconds']:.1f} s ({folder})")
            steps[key] = run_stages(folder, threads, isolate, say)
            measured[key] = measured_sizes(folder)
            if not keep:
                shutil.rmtree(folder)
    finally:
        if not keep:
            shutil.rmtree(top, ignore_errors=True)
    fams = {k: families(v) for k, v in steps.items()}
    return {
        "fractions": list(steps),
        "full": FULL,
        "sizes": measured,
        "data": f"NIH metadata from {meta}" if meta else "synthetic metadata with NIH's structure",
        "pipeline": str(pipeline),
        "params": {**PARAMS, "models": list(names)},
        "stand_ins": STAND_INS,
        "threads": threads,
        "isolated": isolate,
        "workdir": str(top) if keep else None,
        "setup": setup,
        "steps": steps,
        "families": fams,
        "growth": growth(fams, measured) if len(fractions) > 1 else {},
        "seconds": time.perf_counter() - t_all,
    }


def to_markdown(result: dict[str, Any], machine: dict[str, Any] | None = None) -> str:
    """The measured table (time and memory per stage family and fraction) and the growth table."""
    fr = result["fractions"]
    lines = ["# Scale check: the stages of dvc.yaml at NIH's size", ""]
    if machine:
        load = machine.get("load_average_1m")
        lines += [f"Machine: {machine.get('cpu')}, {machine.get('usable_cores')} cores, torch threads "
                  f"{result['threads']}, 1-min load {load if load is None else round(load, 1)}.", ""]  # fmt: skip
    sizes_text = "; ".join(
        f"{f}: {s['images']} images ({s['train']} train / {s['val']} val / {s['test_images']} test), "
        f"{s['boxes']} boxes"
        for f, s in result["sizes"].items()
    )
    stand_ins = ", ".join(n for n, r in result["steps"][fr[-1]].items() if "stand_in" in r)
    lines += [
        f"Data: {result['data']}; {sizes_text}. Models: {', '.join(result['params']['models'])}. "
        f"Stand-ins (outputs written directly): {stand_ins or 'none'}.",
        "",
        "Time in s (summed over a family's runs); memory in MB: largest peak RSS (incl. memmap pages) / "
        "anonymous RSS beyond the stage's imports.",
        "",
        "| stage | runs | size | " + " | ".join(f"{f}: s" for f in fr) + " | "
        + " | ".join(f"{f}: RSS / +anon" for f in fr) + " |",
        "|" + "---|" * (3 + 2 * len(fr)),
    ]  # fmt: skip
    fams = result["families"]
    lines.append(
        "| (setup: metadata + cache) | | images | "
        + " | ".join(f"{result['setup'][f]['setup_seconds']:.2f}" for f in fr)
        + " |" * (len(fr) + 1)
    )
    for family, last in fams[fr[-1]].items():
        cells = [f"{fams[f][family]['seconds']:.2f}" for f in fr]
        mem = [f"{fams[f][family]['peak_rss_mb']:.0f} / +{fams[f][family]['extra_anon_mb']:.0f}" for f in fr]
        unit = UNITS.get(family, "images")
        lines.append(f"| {family} | {last['runs']} | {unit} | " + " | ".join(cells + mem) + " |")
    if result["growth"]:
        g0 = next(iter(result["growth"].values()))
        lines += [
            "",
            f"Growth from {g0['from']} to {g0['to']} (exponent 1 = linear in the family's size; in brackets: "
            "between the two largest fractions):",
            "",
            "| stage | size ratio | time ratio | time exponent | +anon ratio | +anon exponent | flags |",
            "|---|---|---|---|---|---|---|",
        ]
        for family, g in result["growth"].items():
            lines.append(
                f"| {family} | {g['size_ratio']:.1f} | {g['seconds_ratio']:.2f} | {g['seconds_exponent']:.2f} "
                f"({g['seconds_exponent_last']:.2f}) | {g['extra_anon_mb_ratio']:.2f} | "
                f"{g['extra_anon_mb_exponent']:.2f} ({g['extra_anon_mb_exponent_last']:.2f}) | "
                f"{'; '.join(g['flags']) or 'ok'} |"
            )
    lines += ["", f"Total {result['seconds']:.0f} s (including setup and process start-ups)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
