"""``cxr known-answer``: the ``-S`` overrides that turn params.yaml into the long config, and the exit rule."""

import json
from pathlib import Path

import pytest
import yaml

from cxr_core.devtools.known_answer_run import KnownAnswerError, overrides, read_verdicts, summary
from cxr_core.errors import ArtifactError

ROOT = Path(__file__).parents[1]


def test_dvc_applies_the_overrides_to_exactly_the_config(tmp_path: Path) -> None:
    """DVC's own override code (what `dvc exp run -S` runs) turns params.yaml into the config."""
    from dvc.utils.hydra import apply_overrides

    config = "configs/known-answer.yaml"
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    target = yaml.safe_load((ROOT / config).read_text())
    sets = overrides(base, target, config)
    assert sets and len(sets) < 20  # only the keys that differ
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    apply_overrides(path, sets)
    assert yaml.safe_load(path.read_text()) == target


def test_overrides_quote_what_hydra_would_misread() -> None:
    base = {"a": {"b": "x", "c": [1], "d": None, "e": True}}
    new = {"a": {"b": "/data/nih chest", "c": ["p", "q"], "d": 0.5, "e": False}}
    assert overrides(base, new, "c.yaml") == ['a.b="/data/nih chest"', "a.c=[p,q]", "a.d=0.5", "a.e=false"]


def test_a_config_with_other_keys_or_an_emptied_list_is_refused_by_name() -> None:
    with pytest.raises(KnownAnswerError, match=r"c\.yaml .*train\.extra"):
        overrides({"train": {"epochs": 3}}, {"train": {"epochs": 3, "extra": 1}}, "c.yaml")
    paper = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    with pytest.raises(KnownAnswerError, match="paper.yaml empties external.datasets"):
        overrides(yaml.safe_load((ROOT / "params.yaml").read_text()), paper, "configs/paper.yaml")


def test_every_run_must_pass() -> None:
    def doc(*verdicts: str) -> str:
        runs = {
            f"m{i}/seed0": {"verdict": v, "macro_auc": 0.9, "target": 0.85} for i, v in enumerate(verdicts)
        }
        return json.dumps({"runs": runs})

    assert summary(read_verdicts(doc("pass", "pass"), "f"))[1] is True
    for other in ("fail", "not judged", "at chance"):
        lines, passed = summary(read_verdicts(doc("pass", other), "f"))
        assert passed is False and other in lines[1]
    assert summary(read_verdicts(doc(), "f"))[1] is False  # nothing judged is not a pass
    with pytest.raises(ArtifactError, match="experiment x: metrics/known_answer.json"):
        read_verdicts('{"runs": {"m/seed0": {}}}', "experiment x: metrics/known_answer.json")


def test_a_bad_value_in_the_config_stops_before_any_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from cxr_core.devtools.known_answer_run import main

    config = yaml.safe_load((ROOT / "configs" / "known-answer.yaml").read_text())
    config["report"]["known_answer"]["pointing_ratio"] = 0.0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, ["--config", str(path), "--name", "never-run"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"{path}: report.known_answer.pointing_ratio = 0.0" in result.output
