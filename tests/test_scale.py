"""The scale check (``python -m benchmarks scale``) runs the stages of ``dvc.yaml``, not a copy of them.

What can fail here: a stage of dvc.yaml that the check skips, a stage added or renamed that it
does not run, a stand-in that no longer writes what its stage declares, a stage output with the
wrong number of rows, a growth flag on the wrong quantity, a traceback for bad input. No time is
asserted: time is what the benchmark measures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from benchmarks import scale
from benchmarks.__main__ import cli

FRACTION = 0.002


def _pipeline(tmp_path: Path, edit: Any) -> Path:
    """A copy of the repository's dvc.yaml with ``edit(stages)`` applied, in tmp_path."""
    doc = yaml.safe_load((scale.REPO / "dvc.yaml").read_text())
    edit(doc["stages"])
    path = tmp_path / "dvc.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _first_stages(stages: dict[str, Any]) -> None:
    """Keep download, preprocess and split only (a pipeline that runs in seconds)."""
    for name in list(stages):
        if name not in ("download", "preprocess", "split"):
            del stages[name]


def test_sizes_are_nih_at_full_size_and_shrink_with_the_fraction() -> None:
    assert scale.sizes(1.0) == scale.FULL
    assert sum(scale.REAL_BOXES.values()) == scale.FULL["boxes"] == 984
    small = scale.sizes(0.1)
    assert small["images"] == 11_212 and small["test_images"] == 2_560 and small["boxes"] == 98
    assert scale.sizes(FRACTION)["boxes"] == scale.MIN_BOXES  # both localisation halves get boxes
    with pytest.raises(ValueError, match="fraction"):
        scale.sizes(1.5)


def test_synthetic_metadata_has_nih_structure() -> None:
    from cxr_core.labels import LABELS

    meta = scale.synthetic_metadata(0.02, seed=1)
    s = scale.sizes(0.02)
    entry = meta["entry"]
    assert len(entry) == s["images"] and entry["Patient ID"].nunique() == s["patients"]
    assert len(meta["test"]) == s["test_images"] and len(meta["boxes"]) == s["boxes"]
    test_patients = {int(n[:8]) for n in meta["test"]}
    assert len(test_patients) == s["test_patients"]
    assert not test_patients & {int(n[:8]) for n in meta["train_val"]}  # patient-disjoint lists
    assert len({b[0] for b in meta["boxes"]}) == s["box_images"]
    findings = dict(zip(entry["Image Index"], entry["Finding Labels"], strict=True))
    for name, label, x, y, w, h in meta["boxes"]:
        assert name in set(meta["test"])
        assert ("Infiltration" if label == "Infiltrate" else label) in findings[name].split("|")
        assert x >= 0 and y >= 0 and x + w <= 1024 and y + h <= 1024
    # every image name is <patient>_<follow-up>.png and follow-ups count up from 0 per patient
    assert (entry["Image Index"].str[9:12].astype(int) == entry["Follow-up #"]).all()
    assert set("|".join(entry["Finding Labels"]).split("|")) <= {*LABELS, "No Finding"}


def test_growth_flags_superlinear_families_only() -> None:
    def fam(seconds: float, extra: float) -> dict:
        return {"runs": 1, "seconds": seconds, "peak_rss_mb": 1.0, "extra_anon_mb": extra}

    names = ("train", "split", "localise")
    fams = {"0.1": {n: fam(1.0, 100.0) for n in names}, "1": {n: fam(10.0, 1000.0) for n in names}}
    fams["1"]["split"] = fam(100.0, 1000.0)  # time grows as size^2
    fams["1"]["localise"] = fam(10.0, 5000.0)  # memory beyond the budget
    sizes = {
        "0.1": {"images": 100, "test_images": 10, "boxes": 10},
        "1": {"images": 1000, "test_images": 100, "boxes": 100},
    }
    g = scale.growth(fams, sizes)
    assert g["train"]["flags"] == [] and g["train"]["seconds_exponent"] == pytest.approx(1.0)
    assert g["split"]["seconds_exponent"] == pytest.approx(2.0)
    assert any("seconds grows" in f for f in g["split"]["flags"])
    assert any("MB >" in f for f in g["localise"]["flags"]) and g["localise"]["unit"] == "boxes"


def test_a_cmd_that_is_not_a_python_module_is_refused() -> None:
    stage = scale.Stage("hello", "echo hi", ())
    with pytest.raises(scale.ScaleError, match="stage hello: cmd 'echo hi'"):
        scale.command(stage)
    split = scale.Stage("split", "python -m stages.split --params params.yaml --out 'data/my splits'", ())
    assert scale.command(split) == ("stages.split", ["--params", "params.yaml", "--out", "data/my splits"])


def test_an_added_and_a_renamed_stage_run_as_dvc_yaml_spells_them(tmp_path: Path) -> None:
    """The stage list is dvc.yaml's: a renamed stage runs under its new name, an added one runs too."""

    def edit(stages: dict[str, Any]) -> None:
        _first_stages(stages)
        stages["make_splits"] = stages.pop("split")
        again = yaml.safe_load(yaml.safe_dump(stages["make_splits"]))
        again["cmd"] = (
            again["cmd"]
            .replace("data/splits", "data/splits_again")
            .replace("metrics/split.json", "metrics/split_again.json")
        )
        again["outs"] = ["data/splits_again", {"metrics/split_again.json": {"cache": False}}]
        stages["split_again"] = again

    result = scale.run(
        [FRACTION], workdir=tmp_path, keep=True, isolate=False, pipeline=_pipeline(tmp_path, edit)
    )
    steps = result["steps"][f"{FRACTION:g}"]
    assert list(steps) == ["download", "preprocess", "make_splits", "split_again"]
    assert "stand_in" in steps["download"] and "stand_in" in steps["preprocess"]
    assert steps["split_again"]["family"] == "split_again" and steps["split_again"]["seconds"] > 0
    folder = Path(result["workdir"]) / f"f{FRACTION:g}"
    again = json.loads((folder / "metrics" / "split_again.json").read_text())
    assert again == json.loads((folder / "metrics" / "split.json").read_text())  # same command, same split


def test_a_stand_in_that_misses_a_declared_output_is_refused(tmp_path: Path) -> None:
    def edit(stages: dict[str, Any]) -> None:
        _first_stages(stages)
        stages["download"]["outs"].append("data/raw/new_metadata.csv")

    with pytest.raises(scale.ScaleError, match=r"download declares \['data/raw/new_metadata.csv'\]"):
        scale.run([FRACTION], workdir=tmp_path, isolate=False, pipeline=_pipeline(tmp_path, edit))
    assert not list(tmp_path.glob("cxr-scale-*"))  # the work folder is deleted on failure too


def test_a_failing_stage_is_named_without_a_traceback(tmp_path: Path) -> None:
    def edit(stages: dict[str, Any]) -> None:
        _first_stages(stages)
        stages["split"]["cmd"] += " --cache data/no-such-cache"

    with pytest.raises(scale.ScaleError, match=r"stage split failed: .*no-such-cache"):
        scale.run([FRACTION], workdir=tmp_path, isolate=False, pipeline=_pipeline(tmp_path, edit))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--fractions", "0,1"], "--fractions '0,1': every fraction must be in (0, 1]"),
        (["--fractions", "half"], "--fractions 'half': expected comma-separated numbers"),
        (["--meta", "missing"], "no such folder"),
    ],
)
def test_bad_input_is_one_message_and_exit_1(tmp_path: Path, args: list[str], expected: str) -> None:
    result = CliRunner().invoke(
        cli, ["scale", *args, "--out", str(tmp_path / "out"), "--workdir", str(tmp_path)]
    )
    assert result.exit_code == 1 and expected in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("cxr-scale-*"))


def test_a_metadata_folder_without_nih_files_is_named(tmp_path: Path) -> None:
    meta = tmp_path / "meta"
    meta.mkdir()
    result = CliRunner().invoke(
        cli, ["scale", "--fractions", "0.01", "--meta", str(meta), "--out", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "Data_Entry" in result.output and "gzipped" in result.output
    assert not (tmp_path / "scale.json").exists()


def test_nih_metadata_files_are_cut_to_the_fraction_and_split(tmp_path: Path) -> None:
    """``--meta``: NIH's gzipped files (here synthetic ones in NIH's formats) drive the real split."""
    import gzip

    src, meta = tmp_path / "src", tmp_path / "meta"
    scale.write_metadata(src, scale.synthetic_metadata(0.02, seed=3))
    meta.mkdir()
    for path in src.iterdir():
        (meta / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
    result = scale.run(
        [0.5, 1.0], workdir=tmp_path, meta=meta, isolate=False, pipeline=_pipeline(tmp_path, _first_stages)
    )
    full, half = result["sizes"]["1"], result["sizes"]["0.5"]
    s = scale.sizes(0.02)
    assert full["images"] == s["images"] and full["test_images"] == s["test_images"]
    assert full["train"] + full["val"] + full["test_images"] == full["images"]
    assert full["test_patients"] == s["test_patients"] and half["test_patients"] == round(
        s["test_patients"] / 2
    )
    assert result["data"].startswith("NIH metadata") and set(result["growth"]) == {"split"}


def _rows(path: Path) -> int:
    return len(pd.read_csv(path))


def test_every_stage_of_dvc_yaml_runs_at_a_tiny_fraction(tmp_path: Path) -> None:
    """The whole pipeline of the repository, in-process, two probe models: real outputs, right sizes."""
    out = tmp_path / "out"
    args = ["scale", "--fractions", f"{FRACTION}", "--out", str(out), "--workdir", str(tmp_path)]
    result = CliRunner().invoke(cli, [*args, "--in-process", "--keep", "--models", "2", "--threads", "1"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "scale.json").read_text())
    steps, models = doc["steps"][f"{FRACTION:g}"], doc["params"]["models"]
    assert models == list(scale.PROBES[:2])

    declared = yaml.safe_load((scale.REPO / "dvc.yaml").read_text())["stages"]
    assert {name.split("@")[0] for name in steps} == set(declared)  # nothing skipped, nothing extra
    stand_ins = {n for n, r in steps.items() if "stand_in" in r}
    assert stand_ins == {"download", "preprocess"}
    datasets = yaml.safe_load((scale.REPO / "params.yaml").read_text())["external"]["datasets"]
    for name, spec in declared.items():
        runs = [n for n in steps if n.split("@")[0] == name]
        expected = len(models) if "matrix" in spec else len(datasets) if "foreach" in spec else 1
        assert len(runs) == expected, name
    for name, r in steps.items():
        assert name in stand_ins or (r["seconds"] > 0 and r["peak_rss_mb"] > 0), name

    folder = Path(doc["workdir"]) / f"f{FRACTION:g}"
    s, measured = scale.sizes(FRACTION), doc["sizes"][f"{FRACTION:g}"]
    splits = folder / "data" / "splits"
    assert _rows(splits / "test.csv") == measured["test_images"] == s["test_images"]
    assert _rows(splits / "train.csv") + _rows(splits / "val.csv") + s["test_images"] == s["images"]
    assert _rows(splits / "loc.csv") == measured["boxes"] == s["boxes"]
    compare = json.loads((folder / "metrics" / "compare.json").read_text())
    assert compare["models"] == models and compare["seeds"] == [0]
    for m in models:
        test = json.loads((folder / "metrics" / "test" / m / "seed0.json").read_text())
        assert (
            test["n_images"] == s["test_images"]
            and (folder / "data" / "predictions" / m / "seed0.npz").is_file()
        )
        methods = json.loads((folder / "metrics" / "localise" / m / "seed0.json").read_text())["methods"]
        assert _rows(folder / "data" / "localisation" / m / "seed0.csv") == len(methods) * s["boxes"]
        clinical = json.loads((folder / "metrics" / "clinical" / m / "seed0.json").read_text())
        assert clinical["operating"]["chosen_on"] == "val"
    assert set(json.loads((folder / "metrics" / "external" / "phantom.json").read_text())["models"]) == set(
        models
    )
    assert "scale_probe_1" in (folder / "reports" / "report.md").read_text()
    md = (out / "scale.md").read_text()
    assert "| report | 1 |" in md and "| train | 2 | images |" in md and "download, preprocess" in md
