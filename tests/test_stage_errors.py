"""Every stage answers bad params, a missing input and a corrupt file with one message and exit code 1.

Runs each stage's click command in-process on the tiny phantom set; a traceback (an exception that
is not click's clean exit) fails the test, and the message must name the key or file.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

STAGES = (
    "download",
    "preprocess",
    "split",
    "train",
    "test",
    "cams",
    "localise",
    "sanity",
    "adjudicated",
    "clinical",
    "compare",
    "external_data",
    "external",
    "report",
)


def run(stage: str, args: list[str]) -> tuple[int, str]:
    main = importlib.import_module(f"stages.{stage}").main
    result = CliRunner().invoke(main, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"stages.{stage} raised {type(result.exception).__name__}: {result.exception}"
    )
    return result.exit_code, result.output


def _args(stage: str, params: Path, d: dict[str, Path]) -> list[str]:
    common = ["--params", str(params)]
    model = ["--model", "test_resnet"]
    return {
        "download": [*common, "--out", str(d["raw"])],
        "preprocess": [*common, "--raw", str(d["raw"]), "--out", str(d["out"] / "cache")],
        "split": [
            *common,
            "--raw",
            str(d["raw"]),
            "--cache",
            str(d["cache"]),
            "--out",
            str(d["out"] / "s"),
            "--metrics",
            str(d["out"] / "split.json"),
        ],
        "train": [
            *model,
            "--seed",
            "0",
            *common,
            "--raw",
            str(d["raw"]),
            "--cache",
            str(d["cache"]),
            "--splits",
            str(d["splits"]),
            "--out",
            str(d["out"] / "m"),
            "--live",
            str(d["out"] / "live"),
            "--timings",
            str(d["out"] / "t.tsv"),
        ],
        "test": [
            *model,
            *common,
            "--checkpoint",
            str(d["checkpoint"]),
            "--cache",
            str(d["cache"]),
            "--splits",
            str(d["splits"]),
            "--metrics",
            str(d["out"] / "m.json"),
            "--roc",
            str(d["out"] / "roc.csv"),
            "--predictions",
            str(d["out"] / "p.npz"),
        ],
        "cams": [
            *model,
            *common,
            "--checkpoint",
            str(d["checkpoint"]),
            "--cache",
            str(d["cache"]),
            "--splits",
            str(d["splits"]),
            "--out",
            str(d["out"] / "h.npz"),
        ],
        "localise": [
            *model,
            *common,
            "--heatmaps",
            str(d["heatmaps"]),
            "--predictions",
            str(d["predictions"]),
            "--splits",
            str(d["splits"]),
            "--records",
            str(d["out"] / "b.csv"),
            "--metrics",
            str(d["out"] / "l.json"),
        ],
        "sanity": [
            *model,
            *common,
            "--checkpoint",
            str(d["checkpoint"]),
            "--cache",
            str(d["cache"]),
            "--splits",
            str(d["splits"]),
            "--out",
            str(d["out"] / "sanity.json"),
        ],
        "adjudicated": [
            *common,
            "--raw",
            str(d["raw"]),
            "--splits",
            str(d["splits"]),
            "--out",
            str(d["out"] / "adj.csv.gz"),
        ],
        "clinical": [
            *model,
            "--seed",
            "0",
            *common,
            "--checkpoint",
            str(d["checkpoint"]),
            "--predictions",
            str(d["predictions"]),
            "--cache",
            str(d["cache"]),
            "--splits",
            str(d["splits"]),
            "--raw",
            str(d["raw"]),
            "--adjudicated",
            str(d["out"] / "adj.csv.gz"),
            "--operating",
            str(d["out"] / "op.json"),
            "--metrics",
            str(d["out"] / "c.json"),
            "--reliability",
            str(d["out"] / "r.csv"),
        ],
        "compare": [
            *common,
            "--predictions",
            str(d["out"] / "predictions"),
            "--localisation",
            str(d["out"] / "localisation"),
            "--splits",
            str(d["splits"]),
            "--out",
            str(d["out"] / "compare.json"),
        ],
        "external_data": [
            "--name",
            "phantom",
            *common,
            "--cache",
            str(d["cache"]),
            "--splits",
            str(d["splits"]),
            "--out",
            str(d["out"] / "ext"),
        ],
        "external": [
            *common,
            "--data",
            str(d["out"] / "ext"),
            "--models",
            str(d["out"] / "models"),
            "--predictions",
            str(d["out"] / "predictions"),
            "--localise",
            str(d["out"] / "localise"),
            "--out",
            str(d["out"] / "external.json"),
        ],
        "report": [
            *common,
            "--metrics",
            str(d["metrics"]),
            "--plots",
            str(d["out"] / "plots"),
            "--splits",
            str(d["splits"]),
            "--cache",
            str(d["cache"]),
            "--heatmaps",
            str(d["out"]),
            "--predictions",
            str(d["out"]),
            "--raw",
            str(d["raw"]),
            "--out",
            str(d["out"] / "reports"),
        ],
    }[stage]


@pytest.fixture
def inputs(phantom_data, tmp_path: Path) -> dict[str, Path]:
    """Copies of the tiny phantom's folders (tests corrupt them) and paths of files that do not exist."""
    d = {name: tmp_path / name for name in ("raw", "cache", "splits")}
    for name, src in (
        ("raw", phantom_data.raw),
        ("cache", phantom_data.cache),
        ("splits", phantom_data.splits),
    ):
        shutil.copytree(src, d[name], ignore=shutil.ignore_patterns("images") if name == "raw" else None)
    (d["raw"] / "images").symlink_to(phantom_data.raw / "images")
    from cxr_core.data.rawdata import write_manifest

    write_manifest(d["raw"], "synthetic", d["raw"], label_file="Data_Entry_2017_v2020.csv (phantom)")
    d["out"] = tmp_path / "out"
    d["checkpoint"] = tmp_path / "best.pt"
    d["predictions"] = tmp_path / "test.npz"
    d["heatmaps"] = tmp_path / "h.npz"
    d["metrics"] = tmp_path / "metrics"
    return d


@pytest.mark.parametrize("stage", STAGES)
def test_bad_params_name_the_key(stage: str, inputs: dict[str, Path], write_params) -> None:
    code, out = run(stage, _args(stage, write_params({"train.epochs": 0}), inputs))
    assert code == 1 and "train.epochs = 0" in out and "Traceback" not in out


#: stage -> (what to remove / corrupt, the file name the message must contain)
MISSING: dict[str, tuple[str, str]] = {
    "download": ("raw-source", "missing metadata file(s)"),
    "preprocess": ("raw/Data_Entry.csv", "Data_Entry.csv"),
    "split": ("cache/index.csv", "index.csv"),
    "train": ("splits/val.csv", "val.csv"),
    "test": ("checkpoint", "best.pt"),
    "cams": ("checkpoint", "best.pt"),
    "localise": ("heatmaps", "h.npz"),
    "sanity": ("checkpoint", "best.pt"),
    "adjudicated": ("splits/test.csv", "test.csv"),
    "clinical": ("checkpoint", "best.pt"),
    "compare": ("predictions", "test_resnet/seed0.npz"),
    "external_data": ("splits/val.csv", "val.csv"),
    "external": ("data", "manifest.json"),
    "report": ("metrics", "split.json"),
}


@pytest.mark.parametrize("stage", STAGES)
def test_a_missing_input_is_named(stage: str, inputs: dict[str, Path], tmp_path: Path, write_params) -> None:
    what, named = MISSING[stage]
    overrides: dict[str, object] = {"models": ["test_resnet"]}
    if what == "raw-source":
        empty = tmp_path / "empty_copy"
        empty.mkdir()
        overrides["data.source"] = str(empty)
    elif "/" in what:
        folder, name = what.split("/")
        (inputs[folder] / name).unlink()
    code, out = run(stage, _args(stage, write_params(overrides), inputs))
    assert code == 1 and named in out and "Traceback" not in out, out


def _corrupt(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x01 this is not the file you expected \xff\n")


CORRUPT: dict[str, Callable[[dict[str, Path]], Path]] = {
    "download": lambda d: d["raw"] / "copy" / "Data_Entry_2017_v2020.csv",
    "preprocess": lambda d: d["raw"] / "Data_Entry.csv",
    "split": lambda d: d["cache"] / "images.npy",
    "train": lambda d: d["splits"] / "train.csv",
    "test": lambda d: d["checkpoint"],
    "cams": lambda d: d["checkpoint"],
    "localise": lambda d: d["heatmaps"],
    "sanity": lambda d: d["checkpoint"],
}


@pytest.mark.parametrize("stage", sorted(CORRUPT))  # the report's case: tests/test_reports.py
def test_a_corrupt_file_is_named(stage: str, inputs: dict[str, Path], write_params) -> None:
    target = CORRUPT[stage](inputs)
    overrides: dict[str, object] = {"models": ["test_resnet"]}
    if stage == "download":  # a local copy whose Data_Entry is garbage
        copy = target.parent
        copy.mkdir(parents=True)
        for f in ("BBox_List_2017.csv", "train_val_list.txt", "test_list.txt"):
            shutil.copy(inputs["raw"] / f, copy / f)
        (copy / "images").symlink_to(inputs["raw"] / "images")
        overrides["data.source"] = str(copy)
    _corrupt(target)
    code, out = run(stage, _args(stage, write_params(overrides), inputs))
    assert code == 1 and target.name in out and "Traceback" not in out, out
