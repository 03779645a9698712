"""Load and validate ``params.yaml`` before any stage does work.

The schema below is the single list of every knob: an unknown key or a bad value stops with a
message naming the key, the value and what is allowed (DESIGN "Bad input"). Stages read the
validated dict; defaults live in ``params.yaml`` itself, not in code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PATH = Path("params.yaml")


class ParamsError(ValueError):
    """A key or value in params.yaml is not allowed."""


def _fail(path: str, value: Any, allowed: str) -> ParamsError:
    return ParamsError(f"params.yaml: {path} = {value!r} is not allowed; expected {allowed}")


@dataclass(frozen=True)
class Int:
    lo: int | None = None
    hi: int | None = None

    def check(self, value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(path, value, self.describe())
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise _fail(path, value, self.describe())
        return value

    def describe(self) -> str:
        lo = "-inf" if self.lo is None else self.lo
        hi = "inf" if self.hi is None else self.hi
        return f"an integer in [{lo}, {hi}]"


@dataclass(frozen=True)
class Float:
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False

    def check(self, value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _fail(path, value, self.describe())
        too_low = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        if too_low or (self.hi is not None and value > self.hi):
            raise _fail(path, value, self.describe())
        return float(value)

    def describe(self) -> str:
        left = "(" if self.lo_open else "["
        lo = "-inf" if self.lo is None else self.lo
        hi = "inf" if self.hi is None else self.hi
        return f"a number in {left}{lo}, {hi}]"


@dataclass(frozen=True)
class Bool:
    def check(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise _fail(path, value, "true or false")
        return value


@dataclass(frozen=True)
class Choice:
    options: tuple[str, ...]

    def check(self, value: Any, path: str) -> str:
        if value not in self.options:
            raise _fail(path, value, f"one of {list(self.options)}")
        return value


@dataclass(frozen=True)
class Text:
    nullable: bool = False

    def check(self, value: Any, path: str) -> str | None:
        if value is None and self.nullable:
            return None
        if not isinstance(value, str) or not value:
            raise _fail(path, value, "a non-empty string" + (" or null" if self.nullable else ""))
        return value


@dataclass(frozen=True)
class DataSource:
    """``synthetic``, ``nih``, or a folder holding an official or Kaggle copy of the dataset."""

    def check(self, value: Any, path: str) -> str:
        if value in ("synthetic", "nih"):
            return value
        allowed = "'synthetic', 'nih', or the path of an existing folder with the dataset"
        if not isinstance(value, str) or not value:
            raise _fail(path, value, allowed)
        if not Path(value).expanduser().is_dir():
            raise ParamsError(f"params.yaml: {path} = {value!r}: no such folder; expected {allowed}")
        return value


@dataclass(frozen=True)
class ListOf:
    item: Any
    min_len: int = 1
    unique: bool = True
    validate: Callable[[str], Any] | None = None  # extra check per item (e.g. a registry lookup)

    def check(self, value: Any, path: str) -> list:
        if not isinstance(value, list) or len(value) < self.min_len:
            raise _fail(path, value, f"a list of at least {self.min_len} item(s)")
        items = [self.item.check(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if self.unique and len(set(map(str, items))) != len(items):
            raise _fail(path, value, "a list without repeated items")
        if self.validate is not None:
            for i, v in enumerate(items):
                try:
                    self.validate(v)
                except ValueError as exc:
                    raise ParamsError(f"params.yaml: {path}[{i}] = {v!r}: {exc}") from exc
        return items


@dataclass(frozen=True)
class Section:
    fields: Mapping[str, Any] = field(default_factory=dict)

    def check(self, value: Any, path: str) -> dict:
        where = path or "the top level"
        if not isinstance(value, Mapping):
            raise _fail(path, value, f"a mapping with keys {sorted(self.fields)}")
        unknown = sorted(set(value) - set(self.fields))
        if unknown:
            raise ParamsError(
                f"params.yaml: unknown key(s) {unknown} in {where}; allowed keys: {sorted(self.fields)}"
            )
        missing = sorted(set(self.fields) - set(value))
        if missing:
            raise ParamsError(f"params.yaml: missing key(s) {missing} in {where}")
        return {k: spec.check(value[k], f"{path}.{k}" if path else k) for k, spec in self.fields.items()}


def _check_model(name: str) -> None:
    from cxr_core.models.registry import get_spec  # timm import: only when a models list is validated

    get_spec(name)


def _check_cam_method(name: str) -> None:
    from cxr_core.explain.methods import get_cam_method

    get_cam_method(name)


PROB = Float(0.0, 1.0)

SCHEMA = Section(
    {
        "lr": Float(0.0, 10.0, lo_open=True),
        "seed": Int(0),
        "models": ListOf(Text(), validate=_check_model),
        "data": Section(
            {
                "source": DataSource(),
                "phantom": Section(
                    {
                        "images": Int(40, 200_000),
                        "image_px": Int(64, 4096),
                        "seed": Int(0),
                        "test_patient_fraction": Float(0.05, 0.95),
                        "prevalence_floor": Float(0.0, 0.5),
                        "rgba_fraction": PROB,
                        "box_fraction": PROB,
                        "workers": Int(1, 256),
                    }
                ),
                "nih": Section(
                    {
                        "archives": ListOf(Int(1, 12)),
                        "bbox_url": Text(nullable=True),
                        "timeout_s": Float(0.0, 3600.0, lo_open=True),
                        "retries": Int(0, 20),
                        "keep_archives": Bool(),
                    }
                ),
            }
        ),
        "preprocess": Section(
            {
                "image_size": Int(32, 1024),
                "workers": Int(1, 256),
                "on_error": Choice(("fail", "skip")),
            }
        ),
        "split": Section(
            {
                "val_fraction": Float(0.0, 0.5, lo_open=True),
                "group_by": Choice(("patient", "image")),
                "seed": Int(0),
            }
        ),
        "train": Section(
            {
                "pretrained": Bool(),
                "weights": Text(nullable=True),
                "epochs": Int(1, 1000),
                "batch_size": Int(1, 4096),
                "loss": Choice(("class_averaged_bce", "bce")),
                "plateau_factor": Float(0.0, 1.0, lo_open=True),
                "plateau_patience": Int(0, 1000),
                "early_stop_patience": Int(1, 1000),
                "augment": Section({"hflip_p": PROB, "rotate_p": PROB, "max_degrees": Float(0.0, 180.0)}),
                "device": Choice(("auto", "cpu", "cuda")),
                "amp": Choice(("bf16", "none")),
                "channels_last": Bool(),
                "compile": Bool(),
                "nproc_per_node": Int(1, 64),
                "eval_batch_size": Int(1, 4096),
            }
        ),
        "test": Section(
            {
                "bootstrap": Int(0, 100_000),
                "ci": Float(0.5, 1.0, lo_open=False),
                "roc_points": Int(2, 10_000),
            }
        ),
        "cam": Section(
            {
                "methods": ListOf(Text(), validate=_check_cam_method),
                "thresholds": ListOf(Float(0.0, 1.0)),
                "box_thresholds": ListOf(Float(0.0, 1.0)),
                "batch_size": Int(1, 4096),
            }
        ),
        "report": Section({"examples": Int(0, 100)}),
    }
)


def validate(raw: Any) -> dict:
    """Validate a parsed params mapping against :data:`SCHEMA`; returns the checked dict."""
    return SCHEMA.check(raw, "")


def load_params(path: str | Path = DEFAULT_PATH) -> dict:
    """Read and validate a params file; every error names the file, the key and the value."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the project root, or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return validate(raw)
    except ParamsError as exc:
        raise ParamsError(str(exc).replace("params.yaml:", f"{path}:", 1)) from None
