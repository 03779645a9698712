"""The external commands the app runs (git, dvc), found the same way by every command that runs them."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from cxr_core.errors import CxrError


class ToolNotFoundError(CxrError):
    """A command this one runs is not installed where it is looked for; the message says how to get it."""


def find_tool(name: str, hint: str, given: str | None = None) -> str:
    """Path of an executable: ``given`` (a name or path), else PATH, else next to this Python.

    The sibling lookup finds ``.venv/bin/dvc`` when the command runs as ``.venv/bin/python -m ...``
    without the venv activated.
    """
    candidates = [given] if given else [name, str(Path(sys.executable).parent / name)]
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    where = f"{given!r} is not an executable" if given else f"not on PATH nor next to {sys.executable}"
    raise ToolNotFoundError(f"{name} not found ({where}): {hint}")
