"""No import cycle in ``cxr_core``: a cycle is how a module ends up importing another inside a function
"to dodge the cycle", and how the layers stop being layers.

The graph has an edge for every project import anywhere in a file (top level, inside functions and
under ``TYPE_CHECKING``: a deferred import is still a dependency). The detector is checked on a planted
cycle in a temporary package, so the test over ``cxr_core`` can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the package rooted at ``package_dir``."""
    names = {}
    for path in package_dir.rglob("*.py"):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _imported(node: ast.AST, package: str) -> list[str]:
    """The dotted names an import statement may load (``from a import b``: ``a`` and ``a.b``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:  # relative: resolved against the importing module's package
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = f"{base}.{node.module}" if node.module else base
        else:
            module = node.module or ""
        return [module, *(f"{module}.{alias.name}" for alias in node.names)]
    return []


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, anywhere in the file."""
    modules = module_names(package_dir)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = {
            target
            for node in ast.walk(ast.parse(path.read_text()))
            for target in _imported(node, package)
            if target in modules and target != name
        }
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / next(iter(files)).split("/")[0]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (  # the shape explain/ had: a top-level import one way, a function-level one back
            {
                "pkg/__init__.py": "",
                "pkg/sub/__init__.py": "",
                "pkg/sub/methods.py": "def get():\n    from pkg.sub import library\n    return library\n",
                "pkg/sub/library.py": "from pkg.sub.methods import get\n",
                "pkg/other.py": "import pkg.sub.methods\n",
            },
            [["pkg.sub.library", "pkg.sub.methods"]],
        ),
        (  # relative imports and a three-module ring under TYPE_CHECKING
            {
                "pkg/__init__.py": "",
                "pkg/a.py": "from . import b\n",
                "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.c import X\n",
                "pkg/c.py": "from .a import *\nX = 1\n",
            },
            [["pkg.a", "pkg.b", "pkg.c"]],
        ),
        (  # a layered package: no cycle
            {
                "pkg/__init__.py": "",
                "pkg/low.py": "import os\n",
                "pkg/high.py": "from pkg import low\nfrom pkg.low import os\n",
            },
            [],
        ),
    ],
    ids=["function-level", "relative-type-checking", "layered"],
)
def test_the_detector_finds_a_planted_cycle(tmp_path: Path, files: dict[str, str], expected: list) -> None:
    assert cycles(import_graph(_write(tmp_path, files))) == expected


def test_cxr_core_has_no_import_cycle() -> None:
    graph = import_graph(ROOT / "cxr_core")
    assert "cxr_core.explain.cams.registry" in graph  # the walk sees the sub-packages
    assert not cycles(graph), "import cycles in cxr_core: " + "; ".join(
        " <-> ".join(c) for c in cycles(graph)
    )
