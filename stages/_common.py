"""What every stage shares: logging, the params file, path options and clean errors.

A stage is ``@stage_command()`` over a function that parses nothing itself: the decorator sets
up logging and turns every :class:`~cxr_core.errors.CxrError` (bad params, a missing or malformed
input, a corrupt image...) into a one-paragraph message and exit code 1, never a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cxr_core.errors import CxrError
from cxr_core.logs import setup_logging


def stage_command(**command_kwargs: Any) -> Callable[[Callable[..., Any]], click.Command]:
    """``click.command`` whose body runs with logging set up and user errors shown cleanly."""

    def decorate(fn: Callable[..., Any]) -> click.Command:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            setup_logging()
            try:
                return fn(*args, **kwargs)
            except CxrError as exc:
                raise click.ClickException(str(exc)) from None

        return click.command(**command_kwargs)(run)

    return decorate


def path_option(name: str, default: str | None = None, help: str | None = None, **kwargs: Any) -> Callable:
    """``--<name> PATH`` as a :class:`~pathlib.Path` into the parameter ``<name>`` (dashes -> _)."""
    return click.option(
        f"--{name}",
        name.replace("-", "_"),
        default=default,
        required=default is None,
        show_default=default is not None,
        type=click.Path(path_type=Path),
        help=help,
        **kwargs,
    )


params_option = path_option("params", "params.yaml", "the params file (validated before any work)")
model_option = click.option(
    "--model", "model_name", required=True, help="a name from params.yaml `models` (table name or timm name)"
)
cache_option = path_option("cache", "data/cache", "the uint8 image cache (preprocess stage)")
splits_option = path_option("splits", "data/splits", "the split tables (split stage)")
