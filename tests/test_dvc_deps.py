"""dvc.yaml code deps match what each stage really runs, and the layers import only downwards.

Each stage's ``deps:`` must cover every ``cxr_core`` / ``stages`` module its script imports,
transitively and including imports inside functions, and nothing else: a change to a module makes
exactly the stages that run it out of date, so ``dvc repro`` never serves a stale result and never
re-trains for a CAM change.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cxr_core", "stages")


def module_file(name: str) -> Path | None:
    """The file of a project module (``cxr_core.data.splits`` -> cxr_core/data/splits.py), or None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every project module a file imports anywhere in it (``from X import Y``: X.Y if a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if module_file(name) is not None}


def closure(script: Path) -> set[Path]:
    """Files run when ``script`` runs: its project imports, transitively, with their packages."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                file = module_file(".".join(parts[:i]))
                if file is not None and file not in seen:
                    todo.append(file)
    return seen


def has_code(path: Path) -> bool:
    """False for a file that is only a docstring (empty package markers)."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def code_files() -> set[Path]:
    return {p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def stage_deps() -> dict[str, list[str]]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    # a foreach stage keeps its definition under `do:`
    return {name: stage.get("do", stage)["deps"] for name, stage in stages.items()}


def stage_script(name: str) -> Path:
    return ROOT / "stages" / f"{name}.py"


def covered(deps: list[str]) -> set[Path]:
    """Project code files that the ``deps:`` entries name (files, or every file under a folder)."""
    out: set[Path] = set()
    for dep in deps:
        path = ROOT / dep
        if dep.split("/")[0] not in PACKAGES:
            continue
        out.update(p for p in code_files() if p == path or path in p.parents)
    return out


def needed(name: str) -> set[Path]:
    return {p for p in closure(stage_script(name)) if has_code(p)}


@pytest.mark.parametrize("name", sorted(stage_deps()))
def test_stage_deps_cover_exactly_what_the_stage_runs(name: str) -> None:
    deps = stage_deps()[name]
    have, need = covered(deps), needed(name)
    missing = sorted(str(p.relative_to(ROOT)) for p in need - have)
    extra = sorted(str(p.relative_to(ROOT)) for p in have - need if has_code(p))
    assert not missing, f"{name}: runs {missing} but dvc.yaml deps do not cover them"
    assert not extra, f"{name}: dvc.yaml deps cover {extra}, which the stage never runs"


def test_every_stage_script_is_a_stage_and_empty_packages_stay_empty() -> None:
    scripts = {p.stem for p in (ROOT / "stages").glob("*.py") if not p.stem.startswith("_")}
    assert scripts == set(stage_deps())
    # package __init__ files are exempt from deps only while they hold no code
    markers = [p for p in code_files() if p.name == "__init__.py" and not has_code(p)]
    assert ROOT / "cxr_core" / "__init__.py" in markers


def test_closure_follows_function_level_imports() -> None:
    script = ROOT / "stages" / "train.py"
    assert ROOT / "cxr_core" / "train" / "loop.py" in closure(script)
    # the cxr command imports the predictor inside its subcommands only
    source = (ROOT / "cxr_core" / "app" / "cli.py").read_text()
    assert "\nfrom cxr_core.app.predictor" not in source and "    from cxr_core.app.predictor" in source
    assert ROOT / "cxr_core" / "app" / "predictor.py" in closure(ROOT / "cxr_core" / "app" / "cli.py")


def test_a_cam_change_does_not_retrain_and_a_box_parser_change_re_splits() -> None:
    deps = stage_deps()
    cam_code = ROOT / "cxr_core" / "explain" / "cams" / "base_cam.py"
    box_parser = ROOT / "cxr_core" / "data" / "metadata.py"
    assert cam_code not in covered(deps["train"]) and cam_code in covered(deps["cams"])
    assert box_parser in covered(deps["split"])


#: Sub-packages from the bottom up; a package may import only those before it (and top-level modules).
LAYERS = ("data", "models", "train", "evaluate", "explain", "compare", "audit", "report", "devtools", "app")
#: Allowed imports beyond "anything lower": train validates with the evaluate layer's forward.
EXTRA = {"train": {"evaluate"}}
#: Top-level modules: shared by every layer, import no sub-package.
TOP_LEVEL = {"errors", "files", "labels", "logs", "params", "runtime"}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "cxr_core" else None


def test_layers_import_only_downwards() -> None:
    bad = []
    for path in (ROOT / "cxr_core").rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        own = (
            rel.parts[1]
            if len(rel.parts) > 2 or rel.name == "__init__" and len(rel.parts) > 2
            else rel.parts[1]
        )
        for name in imported_modules(path):
            other = _layer(name)
            if other is None or other == own:
                continue
            if own in TOP_LEVEL or own.endswith(".py"):
                allowed = TOP_LEVEL
            elif own in LAYERS:
                allowed = TOP_LEVEL | set(LAYERS[: LAYERS.index(own)]) | EXTRA.get(own, set())
            else:
                continue
            if other not in allowed:
                bad.append(f"{rel} imports {name}")
    assert not bad, "imports that point up the layers: " + "; ".join(sorted(bad))


def test_top_level_modules_are_the_documented_ones() -> None:
    top = {p.stem for p in (ROOT / "cxr_core").glob("*.py") if p.stem != "__init__"}
    packages = {p.name for p in (ROOT / "cxr_core").iterdir() if (p / "__init__.py").is_file()}
    assert top == TOP_LEVEL
    assert packages == set(LAYERS)
