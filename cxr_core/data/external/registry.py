"""The table of external data sets: name -> reader module, and the one call a stage makes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from cxr_core.data.external import chexpert, padchest, vindr
from cxr_core.data.external import phantom as external_phantom
from cxr_core.data.external.base import ExternalDataError, ExternalTable

#: Data set name -> its reader module (the params section of the same name holds its settings).
READERS: dict[str, ModuleType] = {m.NAME: m for m in (chexpert, vindr, padchest)}
#: ``external.datasets`` may also list ``phantom``: a shifted phantom written in CheXpert's layout.
PHANTOM = "phantom"
DATASETS: tuple[str, ...] = (PHANTOM, *READERS)


def check_dataset(name: str) -> str:
    """The ``external dataset`` registry's lookup (``external.datasets`` entries)."""
    if name not in DATASETS:
        raise ValueError(f"one of {list(DATASETS)}")
    return name


def _settings(section: Mapping[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in section[name].items() if k != "path"}


def read_dataset(external: Mapping[str, Any], name: str, workdir: Path) -> tuple[ExternalTable, str]:
    """Read the external set ``name`` configured in the validated ``external`` section.

    Returns its table and where it was read from (``synthetic`` for the phantom, which is written
    into ``workdir/source`` first and then read by the CheXpert reader like a real copy).
    """
    if name == PHANTOM:
        root = Path(workdir) / "source"
        cfg = external_phantom.ExternalPhantomConfig.from_params(external[PHANTOM])
        external_phantom.generate(cfg, root)
        settings = {**_settings(external, chexpert.NAME), "csv": external_phantom.CSV}
        table = chexpert.read(root, settings)
        table.dataset = PHANTOM
        return table, "synthetic"
    if name not in READERS:
        raise ExternalDataError(f"external.datasets: unknown data set {name!r}; known: {list(DATASETS)}")
    path = external[name]["path"]
    if path is None:
        raise ExternalDataError(
            f"params.yaml: external.datasets lists {name} but external.{name}.path is null; "
            f"set it to the folder of your copy ({READERS[name].LAYOUT_HINT})"
        )
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ExternalDataError(
            f"params.yaml: external.{name}.path = {path!r}: no such folder ({READERS[name].LAYOUT_HINT})"
        )
    return READERS[name].read(root, _settings(external, name)), str(path)
