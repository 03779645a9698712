"""The table of external data sets: name -> reader module, and the one call a stage makes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ReadSet:
    """An external set as read: its table, where it came from and the reading settings used."""

    table: ExternalTable
    source: str  # ``synthetic`` for the phantom, else the folder
    settings: dict[str, Any]


def read_dataset(external: Mapping[str, Any], name: str, workdir: Path) -> ReadSet:
    """Read the external set ``name`` configured in the validated ``external`` section.

    The phantom is written into ``workdir/source`` first and then read by the CheXpert reader like
    a real copy (its own ``uncertain`` setting; its laterals are always dropped).
    """
    if name == PHANTOM:
        root = Path(workdir) / "source"
        external_phantom.generate(external_phantom.ExternalPhantomConfig.from_params(external[PHANTOM]), root)
        settings = {
            "csv": external_phantom.CSV,
            "uncertain": external[PHANTOM]["uncertain"],
            "frontal_only": True,
        }
        table = chexpert.read(root, settings)
        table.dataset = PHANTOM
        return ReadSet(table, "synthetic", settings)
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
    settings = _settings(external, name)
    return ReadSet(READERS[name].read(root, settings), str(path), settings)
