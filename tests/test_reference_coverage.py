"""docs/metrics.md names, for every key of every committed metrics file, a test against independent
code; these tests keep that table complete and true (a new metric without a differential test, or a
renamed test, fails here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "metrics.md"

#: How the table names a reference -> the module its test must import.
REFERENCE_MODULES = {
    "scikit-learn": "sklearn",
    "torchmetrics": "torchmetrics",
    "statsmodels": "statsmodels",
    "Quantus": "quantus",
    "MLstatkit": "MLstatkit",
    "pytorch-grad-cam": "pytorch_grad_cam",
    "SciPy": "scipy",
    "scikit-image": "skimage",
    "torchvision": "torchvision",
    "pandas": "pandas",
    "Python `statistics`": "statistics",
}

#: Each metrics file kind -> how to read its keys (metric keys live one level down in some files).
FILES = {
    "metrics/test": ("metrics/test/*/seed*.json", None),
    "metrics/train": ("metrics/train/*/seed*/metrics.json", None),
    "metrics/clinical": ("metrics/clinical/*/seed*.json", None),
    "metrics/localise": ("metrics/localise/*/seed*.json", "methods"),
    "metrics/sanity": ("metrics/sanity/*/seed*.json", None),
    "metrics/compare.json": ("metrics/compare.json", None),
    "metrics/split.json": ("metrics/split.json", None),
    "metrics/external": ("metrics/external/*.json", None),
    "metrics/headline.json": ("metrics/headline.json", None),
}

#: Keys that describe the run or echo params.yaml: not numbers computed from data.
NOT_METRICS = {
    "metrics/clinical": {"model", "seed"},
    "metrics/localise": set(),
    "metrics/sanity": {
        "model",
        "n_images",
        "subset",
        "steps",
        "modules",
        "max_rank_correlation",
        "faithfulness",
        "road_percentiles",
    },  # fmt: skip
    "metrics/compare.json": {"models", "seeds", "n_boot", "ci", "seed", "alpha"},
    "metrics/external": {
        "dataset",
        "phantom",
        "label_file",
        "settings",
        "bootstrap_group",
        "n_images",
        "n_patients",
        "n_boxes",
        "classes",
        "left_out",
        "leakage",
        "n_boot",
        "ci",
        "seed",
        "min_positives",
    },  # fmt: skip
}


def table_rows() -> list[dict[str, str]]:
    rows = []
    for line in TABLE.read_text().splitlines():
        if not line.startswith("| `metrics"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 5, f"docs/metrics.md row has {len(cells)} cells: {line}"
        rows.append(dict(zip(("file", "keys", "computed", "reference", "test"), cells, strict=True)))
    return rows


def test_the_table_has_rows_for_every_metrics_file():
    files = {row["file"].strip("`") for row in table_rows()}
    assert files == set(FILES)


@pytest.mark.parametrize("row", table_rows(), ids=lambda r: r["test"].strip("`").split("::")[-1])
def test_every_named_test_exists_and_imports_its_reference(row):
    path, name = row["test"].strip("`").split("::")
    source = (ROOT / path).read_text()
    assert re.search(rf"^def {re.escape(name)}\(", source, re.M), f"{path} has no test {name}"
    for label, module in REFERENCE_MODULES.items():
        if label in row["reference"]:
            assert re.search(rf"^(from|import) {module}\b", source, re.M), (
                f"{path} is said to test against {label} but does not import {module}"
            )


@pytest.mark.parametrize("kind", sorted(FILES))
def test_every_key_of_every_metrics_file_is_in_the_table(kind):
    pattern, inner = FILES[kind]
    paths = sorted(ROOT.glob(pattern))
    assert paths, f"no committed file matches {pattern}"
    keys: set[str] = set()
    for path in paths:
        doc = json.loads(path.read_text())
        blocks = list(doc[inner].values()) if inner else [doc]
        if kind == "metrics/localise":  # the held-out numbers one level further down
            blocks += [block["heldout"]["report"] for block in doc[inner].values()]
        for block in blocks:
            keys.update(block)
    listed = {
        k
        for row in table_rows()
        if row["file"].strip("`") == kind
        for k in re.findall(r"`(\w+)`", row["keys"])
    }
    missing = sorted(keys - listed - NOT_METRICS.get(kind, set()))
    assert not missing, f"{kind}: keys with no differential test in docs/metrics.md: {missing}"
