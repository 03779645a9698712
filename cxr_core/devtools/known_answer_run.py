"""``cxr known-answer`` (``make known-answer``): the long phantom run, exit 1 unless every model passes.

The shipped default trains too few epochs for the EfficientNets and Swins to learn the phantom's
signs, so its report leaves them "not judged". ``configs/known-answer.yaml`` trains long enough for
all six. This runs it as a DVC experiment in a temporary workspace (``dvc exp run --temp``, with
``-S`` for every key where the config differs from ``params.yaml``): the workspace and its results
stay as they are, and the DVC cache is shared, so an unchanged repeat is restored, not retrained.
It then reads the experiment's ``metrics/known_answer.json`` (written by the report stage), prints
one line per run and exits 1 unless every verdict is ``pass``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
import yaml

from cxr_core.devtools.tools import find_tool
from cxr_core.errors import CxrError
from cxr_core.params import load_params

#: The experiment's name (one per baseline commit: a rerun replaces it).
EXPERIMENT = "known-answer"
VERDICTS = "metrics/known_answer.json"


class KnownAnswerError(CxrError):
    """The known-answer run could not be started or read; the message says which file or command."""


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _hydra_value(value: Any) -> str:
    """``value`` in DVC's ``-S`` (Hydra override) syntax."""
    if isinstance(value, list):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value) if not value.replace("_", "").replace("-", "").isalnum() else value
    return repr(value)


def overrides(base: Mapping[str, Any], config: Mapping[str, Any], config_name: str) -> list[str]:
    """``key=value`` for every key whose value differs; the two files must have the same keys."""
    flat_base, flat_config = _flatten(base), _flatten(config)
    if set(flat_base) != set(flat_config):
        odd = sorted(set(flat_base) ^ set(flat_config))
        raise KnownAnswerError(
            f"{config_name} and params.yaml have different keys ({', '.join(odd[:5])}): "
            "the known-answer run changes values only"
        )
    changed = [k for k in flat_base if flat_config[k] != flat_base[k]]
    emptied = [k for k in changed if flat_config[k] == []]
    if emptied:
        raise KnownAnswerError(
            f"{config_name} empties {', '.join(emptied)}: DVC's -S writes an invalid params.yaml for an "
            "empty list; run that config in the workspace instead (cp it to params.yaml && dvc repro)"
        )
    return [f"{k}={_hydra_value(flat_config[k])}" for k in changed]


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise KnownAnswerError(f"{path}: cannot read it ({exc})") from None
    if not isinstance(doc, dict):
        raise KnownAnswerError(f"{path}: not a YAML mapping of params")
    return doc


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise KnownAnswerError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def read_verdicts(text: str, where: str) -> dict[str, Mapping[str, Any]]:
    """The ``runs`` of a ``metrics/known_answer.json`` (model/seed -> verdict, numbers)."""
    from cxr_core.report.known_answer import KnownAnswerMetrics

    return KnownAnswerMetrics.parse(text, where)


def summary(runs: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], bool]:
    """One line per run, and whether every one passed."""
    lines = []
    for key, run in runs.items():
        auc, target = run.get("macro_auc"), run.get("target")
        numbers = f"macro AUC {auc:.3f} (target {target})" if isinstance(auc, float) else "no AUC"
        lines.append(f"{key:28s} {run['verdict']:12s} {numbers}")
    return lines, bool(runs) and all(run["verdict"] == "pass" for run in runs.values())


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=Path("configs/known-answer.yaml"),
    show_default=True,
    help="the long configuration (same keys as params.yaml)",
)
@click.option(
    "--params", "params_path", type=click.Path(path_type=Path), default=Path("params.yaml"), show_default=True
)
@click.option("--name", default=EXPERIMENT, show_default=True, help="the DVC experiment's name")
def main(config: Path, params_path: Path, name: str) -> None:
    """Run the known-answer configuration as a DVC experiment and exit 1 unless every model passes."""
    try:
        dvc = find_tool("dvc", "install the project (make install) or put dvc on PATH")
        load_params(config)  # a bad value stops here, naming the file, not after an hour of training
        sets = overrides(_read_yaml(params_path), _read_yaml(config), str(config))
        baseline = _git("rev-parse", "HEAD").strip()
        subprocess.run([dvc, "exp", "remove", name], capture_output=True, check=False)  # a rerun replaces it
        args = [dvc, "exp", "run", "--temp", "-n", name, *(a for s in sets for a in ("-S", s))]
        click.echo(f"known answer: {' '.join(args[1:])}", err=True)
        if subprocess.run(args, check=False).returncode != 0:
            raise KnownAnswerError(f"`{' '.join(args[1:])}` failed (its output is above)")
        rev = _git("rev-parse", f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}").strip()
        runs = read_verdicts(_git("show", f"{rev}:{VERDICTS}"), f"experiment {name}: {VERDICTS}")
    except CxrError as exc:
        raise click.ClickException(str(exc)) from None
    lines, passed = summary(runs)
    click.echo("\n".join(lines))
    click.echo(
        f"known answer: {'every run passes' if passed else 'NOT every run passes'} "
        f"(experiment {name}; `dvc exp show`, or `dvc exp apply {name}` for its report)"
    )
    raise SystemExit(0 if passed else 1)


if __name__ == "__main__":
    main()
