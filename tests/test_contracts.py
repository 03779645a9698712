"""Every file passed between stages has one registered type, and docs/architecture.md lists them all."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest
import yaml

import cxr_core
from cxr_core.files import CONTRACTS

ROOT = Path(__file__).resolve().parents[1]


def _import_all() -> None:
    for module in pkgutil.walk_packages(cxr_core.__path__, "cxr_core."):
        importlib.import_module(module.name)


def _documented() -> dict[str, tuple[str, str, tuple[str, ...]]]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Files between stages", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        path, writer, type_name, fields = cells
        rows[path.strip("`")] = (
            writer,
            type_name.strip("`"),
            tuple(f.strip("`") for f in re.split(r",\s*(?=`)", fields)),
        )
    return rows


def test_docs_table_is_the_registered_contracts() -> None:
    _import_all()
    docs = _documented()
    assert set(docs) == set(CONTRACTS), "docs/architecture.md and the @contract registry list different files"
    for path, contract in CONTRACTS.items():
        assert docs[path] == (contract.writer, contract.type_name, contract.fields), path


def test_every_contract_type_can_be_imported_and_reads() -> None:
    _import_all()
    for contract in CONTRACTS.values():
        module, _, name = contract.type_name.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        assert any(hasattr(cls, attr) for attr in ("read", "load", "of")), contract.type_name


def test_every_stage_output_file_has_a_contract() -> None:
    """Files in dvc.yaml outs / metrics / plots that a later stage or the report reads."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    declared = set()
    for stage in stages.values():
        stage = stage.get("do", stage)  # a foreach stage keeps its definition under `do:`
        for key in ("outs", "metrics"):
            for entry in stage.get(key, []):
                declared.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    normalised = {
        d.replace("${item.model}", "<model>").replace("${item.seed}", "<k>").replace("${item}", "<name>")
        for d in declared
    }
    consumed_elsewhere = {  # what the next stage reads, mapped to its contract path
        "data/raw/manifest.json",
        "data/cache",
        "data/splits",
        "metrics/split.json",
        "data/models/<model>/seed<k>",
        "data/predictions/<model>/seed<k>.npz",
        "metrics/test/<model>/seed<k>.json",
        "plots/roc/<model>/seed<k>.csv",
        "data/heatmaps/<model>/seed<k>.npz",
        "data/localisation/<model>/seed<k>.csv",
        "metrics/localise/<model>/seed<k>.json",
        "metrics/compare.json",
        "metrics/headline.json",
        "data/adjudicated/google2019_nih-chest-xray-labels.csv.gz",
        "data/operating/<model>/seed<k>.json",
        "metrics/clinical/<model>/seed<k>.json",
        "plots/reliability/<model>/seed<k>.csv",
        "data/external/<name>",
        "metrics/external/<name>.json",
    }
    assert consumed_elsewhere <= normalised
    _import_all()
    covered = {path.rstrip("/") for path in CONTRACTS}
    for out in consumed_elsewhere:
        assert any(c == out or c.startswith(out + "/") for c in covered), f"{out}: no contract type"


def test_run_files_follow_the_registered_layout() -> None:
    """A per-run file's place comes from its contract's path, under any folder a stage is given."""
    _import_all()
    runs = {p: c for p, c in CONTRACTS.items() if "<model>" in p}
    assert len(runs) >= 10
    for path, c in runs.items():
        want = path.replace("<model>", "densenet121").replace("<k>", "3").rstrip("/")
        folder, _, tail = want.partition("/densenet121/")
        assert c.run_file(folder, "densenet121", 3).as_posix() == f"{folder}/densenet121/{tail}", path
        top, _, _ = path.partition("/")
        assert c.run_file_under(top, "densenet121", 3).as_posix() == want, path
        assert c.run_file_under("/elsewhere", "densenet121", 3).as_posix() == "/elsewhere" + want[len(top) :]
    with pytest.raises(ValueError, match="not a per-run file"):
        CONTRACTS["metrics/compare.json"].run_file("metrics", "densenet121", 0)
