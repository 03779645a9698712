"""``cxr leaderboard``: ``dvc exp show`` cut to what tells experiments apart.

DVC's default table shows every key of ``params.yaml`` and every dependency's hash as a column
(about 260 here) and has no setting to hide any of them, so in a terminal it is all ellipses. This
keeps the experiment, ``lr`` and each model's test macro AUC from ``metrics/headline.json`` (about
190 columns of text for the six models); any other ``dvc exp show`` option passes through
(``--sort-by``, ``--md``, ``-A`` ...), and ``--keep`` adds columns back.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import click

from cxr_core.devtools.tools import ToolNotFoundError, find_tool

#: DVC column names kept (a regex, matched from the start); everything else is dropped.
KEEP = r"^(Experiment|lr|models\.[^.]+\.auc)$"


def exp_show_command(dvc: str, extra: Sequence[str] = ()) -> list[str]:
    """The ``dvc exp show`` command line of the leaderboard, ``extra`` options appended."""
    return [dvc, "exp", "show", "--drop", ".*", "--keep", KEEP, *extra]


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]})
@click.argument("dvc_options", nargs=-1, type=click.UNPROCESSED)
def main(dvc_options: tuple[str, ...]) -> None:
    """The experiments as a leaderboard: name, lr and each model's test macro AUC (dvc exp show)."""
    try:
        dvc = find_tool("dvc", "install the project (make install) or put dvc on PATH")
    except ToolNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    done = subprocess.run(exp_show_command(dvc, dvc_options), check=False)
    raise SystemExit(done.returncode)
