"""Load and validate ``params.yaml`` before any stage does work.

The schema below is the single list of every knob: an unknown key or a bad value stops with a
message naming the key, the value and what is allowed. Stages read the validated dict; defaults
live in ``params.yaml`` itself, not in code.

Names that live in a registry next to their code (models, losses, CAM methods, devices...) are
:class:`Named` fields: the schema checks their shape, and a stage passes the lookups of the
registries it uses to :func:`load_params`. So this module imports no other layer, and a stage's
import graph (its DVC ``deps:``) holds only the code it runs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cxr_core.errors import CxrError

DEFAULT_PATH = Path("params.yaml")


class ParamsError(CxrError, ValueError):
    """A key or value in params.yaml is not allowed."""


def _fail(path: str, value: Any, allowed: str) -> ParamsError:
    return ParamsError(f"params.yaml: {path} = {value!r} is not allowed; expected {allowed}")


@dataclass(frozen=True)
class Int:
    lo: int | None = None
    hi: int | None = None
    nullable: bool = False

    def check(self, value: Any, path: str) -> int | None:
        if value is None and self.nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(path, value, self.describe())
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise _fail(path, value, self.describe())
        return value

    def describe(self) -> str:
        lo = "-inf" if self.lo is None else self.lo
        hi = "inf" if self.hi is None else self.hi
        return f"an integer in [{lo}, {hi}]" + (" or null" if self.nullable else "")


@dataclass(frozen=True)
class Float:
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    decimals: int | None = None  # at most this many decimals (values that become metric keys)

    def check(self, value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _fail(path, value, self.describe())
        too_low = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        too_high = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if too_low or too_high:
            raise _fail(path, value, self.describe())
        if self.decimals is not None and not math.isclose(value, round(value, self.decimals), abs_tol=1e-12):
            raise _fail(path, value, self.describe())
        return float(value)

    def describe(self) -> str:
        left = "(" if self.lo_open else "["
        right = ")" if self.hi_open else "]"
        lo = "-inf" if self.lo is None else self.lo
        hi = "inf" if self.hi is None else self.hi
        places = f" with at most {self.decimals} decimals" if self.decimals is not None else ""
        return f"a number in {left}{lo}, {hi}{right}{places}"


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


#: ``host[:port]`` of a rendezvous (``[v6 address]:port`` for IPv6): torchrun's ``--rdzv_endpoint``.
ENDPOINT_PATTERN = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?")


@dataclass(frozen=True)
class Endpoint:
    """``host:port`` (or ``host``; ``[v6 address]:port``) that torchrun's rendezvous listens on, or null."""

    def check(self, value: Any, path: str) -> str | None:
        allowed = "host:port every node reaches (e.g. node01:29500), or empty"
        if value is None:
            return None
        text = value if isinstance(value, str) else ""
        match = ENDPOINT_PATTERN.fullmatch(text)
        if match is None or (match.group(2) is not None and not 0 < int(match.group(2)) < 65536):
            raise _fail(path, value, allowed)
        return value


@dataclass(frozen=True)
class Named:
    """A name from a registry that lives with its code (``"model"``, ``"loss"``, ``"cam method"``...).

    The schema checks the shape (a non-empty string); :func:`load_params` looks the name up when
    the calling stage passes that registry's lookup (a function that raises ``ValueError`` naming
    what is allowed).
    """

    registry: str

    def check(self, value: Any, path: str) -> str:
        return Text().check(value, path)


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

    def check(self, value: Any, path: str) -> list:
        if not isinstance(value, list) or len(value) < self.min_len:
            raise _fail(path, value, f"a list of at least {self.min_len} item(s)")
        items = [self.item.check(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if self.unique and len(set(map(str, items))) != len(items):
            raise _fail(path, value, "a list without repeated items")
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


PROB = Float(0.0, 1.0)
#: The model families of ``cxr_core.models.registry.FAMILY_DEFAULTS`` (a test keeps them equal; this
#: module stays free of torch imports).
MODEL_FAMILIES: tuple[str, ...] = ("densenet", "efficientnet", "swin", "other")

SCHEMA = Section(
    {
        "lr": Float(0.0, 10.0, lo_open=True),
        "seed": Int(0),
        "seeds": ListOf(Int(0)),
        "models": ListOf(Named("model")),
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
                "loc_tune_fraction": Float(0.0, 1.0, lo_open=True, hi_open=True),
            }
        ),
        "train": Section(
            {
                "pretrained": Bool(),
                "weights": Text(nullable=True),
                "epochs": Int(1, 1000),
                "epochs_by_family": Section(
                    {family: Int(1, 1000, nullable=True) for family in MODEL_FAMILIES}
                ),
                "batch_size": Int(1, 4096),
                "loss": Named("loss"),
                "plateau_factor": Float(0.0, 1.0, lo_open=True, hi_open=True),  # ReduceLROnPlateau needs < 1
                "plateau_patience": Int(0, 1000),
                "early_stop_patience": Int(1, 1000),
                "lr_scale": Section({family: Float(0.0, 1000.0, lo_open=True) for family in MODEL_FAMILIES}),
                "warmup_epochs": Int(0, 1000),
                "shuffle_labels": Bool(),
                "augment": Section({"hflip_p": PROB, "rotate_p": PROB, "max_degrees": Float(0.0, 180.0)}),
                "device": Named("device"),
                "amp": Named("amp"),
                "channels_last": Bool(),
                "compile": Bool(),
                "nproc_per_node": Int(1, 64),
                "nnodes": Int(1, 1024),
                "rdzv_endpoint": Endpoint(),
                "eval_batch_size": Int(1, 4096),
            }
        ),
        "test": Section(
            {
                "bootstrap": Int(0, 100_000),
                "ci": Float(0.5, 1.0, hi_open=True),
                "roc_points": Int(2, 10_000),
            }
        ),
        "cam": Section(
            {
                "methods": ListOf(Named("cam method")),
                # metric keys are t + round(100 a): two decimals keep them distinct
                "thresholds": ListOf(Float(0.0, 1.0, decimals=2)),
                "box_thresholds": ListOf(Float(0.0, 1.0, decimals=2)),
                "batch_size": Int(1, 4096),
                "eigen_sign": Named("eigen sign"),
                "random_stride": Int(1, 1024),
                "positive_threshold": PROB,
            }
        ),
        "localise": Section(
            {
                "sweep_step": Float(0.0, 0.5, lo_open=True, decimals=2),
                "maxboxacc_iou": ListOf(Float(0.0, 1.0, lo_open=True, decimals=2)),
            }
        ),
        "sanity": Section(
            {
                "images": Int(1, 100_000),
                "stages": Int(0, 16),
                "max_rank_correlation": Float(-1.0, 1.0, lo_open=True),
                "faithfulness": Named("faithfulness metric"),
                "road_percentiles": ListOf(Int(1, 99)),
            }
        ),
        "external": Section(
            {
                "datasets": ListOf(Named("external dataset"), min_len=0),
                "leakage": Choice(("refuse", "drop")),
                "leakage_correlation": Float(0.5, 1.0, lo_open=True),
                "min_positives": Int(1, 100_000),
                "chexpert": Section(
                    {
                        "path": Text(nullable=True),
                        "csv": Choice(("valid.csv", "train.csv")),
                        "uncertain": Choice(("missing", "positive", "negative")),
                        "frontal_only": Bool(),
                    }
                ),
                "vindr": Section({"path": Text(nullable=True), "min_readers": Int(1, 17)}),
                "padchest": Section({"path": Text(nullable=True), "projections": ListOf(Text())}),
                "phantom": Section(
                    {
                        "images": Int(20, 100_000),
                        "image_px": Int(64, 4096),
                        "seed": Int(0),
                        "contrast": Float(0.1, 2.0),
                        "noise": Float(0.0, 100.0),
                        "jpeg_quality": Int(10, 100),
                        "uncertain_fraction": PROB,
                        "blank_fraction": PROB,
                        "lateral_fraction": PROB,
                        "prevalence_floor": Float(0.0, 0.5),
                        "uncertain": Choice(("missing", "positive", "negative")),
                    }
                ),
            }
        ),
        "compare": Section(
            {
                "alpha": Float(0.0, 0.5, lo_open=True),
                "min_auc_difference": Float(0.0, 1.0),
                "min_rate_difference": Float(0.0, 1.0),
                "box_threshold": Float(0.0, 1.0, decimals=2),
                "box_cutoff": Float(0.0, 1.0, decimals=2),
            }
        ),
        "clinical": Section(
            {
                "operating_point": Named("threshold rule"),
                "target_sensitivity": Float(0.0, 1.0, lo_open=True),
                "calibration_bins": Int(1, 1000),
                "temperature_scaling": Bool(),
                "temperature_min": Float(0.0, 1.0, lo_open=True, hi_open=True),
                "temperature_max": Float(1.0, 1000.0, lo_open=True),
                "temperature_tol": Float(0.0, 1.0, lo_open=True),
                "age_bands": ListOf(Int(0, 150)),
                "adjudicated": Text(nullable=True),
                "adjudicated_flip_rate": Float(0.0, 0.5),
                "adjudicated_fraction": Float(0.0, 1.0, lo_open=True),
            }
        ),
        "report": Section(
            {
                "examples": Int(0, 100),
                "example_methods": ListOf(Named("cam method"), min_len=0),
                "headline_method": Named("cam method"),
                "known_answer": Section(
                    {
                        "cnn_auc": PROB,
                        "transformer_auc": PROB,
                        "pointing_ratio": Float(0.0, 1000.0, lo_open=True),
                        "min_epochs": Section(
                            {
                                family: Int(0, 10000)
                                for family in ("densenet", "efficientnet", "swin", "other")
                            }
                        ),
                    }
                ),
            }
        ),
    }
)


#: Keys whose values must be among another key's, checked by the callers that use that registry:
#: (key, the key that lists the allowed values, registry). Cross-section rules of one stage live
#: with that stage's settings (e.g. ``compare.box_threshold`` in ``cxr_core.compare.study``).
SUBSET_RULES: tuple[tuple[str, str, str], ...] = (
    ("report.example_methods", "cam.methods", "cam method"),
    ("report.headline_method", "cam.methods", "cam method"),
)


def get_dotted(checked: Mapping[str, Any], dotted: str) -> Any:
    """``get_dotted(params, "cam.thresholds")``."""
    value: Any = checked
    for part in dotted.split("."):
        value = value[part]
    return value


def train_epochs(checked: Mapping[str, Any], family: str) -> int:
    """The epochs a model of ``family`` trains for: ``train.epochs_by_family`` where set, else ``train.epochs``."""
    train = checked["train"]
    own = train["epochs_by_family"].get(family)
    return int(train["epochs"] if own is None else own)


def check_among(checked: Mapping[str, Any], key: str, among: str) -> None:
    """``key``'s value (or every item of it) is one of the values listed at ``among``."""
    value, allowed = get_dotted(checked, key), get_dotted(checked, among)
    outside = [v for v in (value if isinstance(value, list) else [value]) if v not in allowed]
    if outside:
        raise ParamsError(f"params.yaml: {key} = {value!r}: {outside} not in {among} = {allowed}")


#: A registry lookup: returns (or raises ``ValueError`` naming what is allowed) for one name.
Lookup = Callable[[str], Any]


def _named_fields(spec: Any, value: Any, path: str) -> list[tuple[str, str, str]]:
    """(registry, dotted key, value) of every :class:`Named` value in a checked params dict."""
    if isinstance(spec, Named):
        return [(spec.registry, path, value)]
    if isinstance(spec, ListOf):
        return [hit for i, v in enumerate(value) for hit in _named_fields(spec.item, v, f"{path}[{i}]")]
    if isinstance(spec, Section):
        return [
            hit
            for k, sub in spec.fields.items()
            for hit in _named_fields(sub, value[k], f"{path}.{k}" if path else k)
        ]
    return []


def registries(spec: Any = None) -> set[str]:
    """Names of the registries the schema refers to."""
    spec = SCHEMA if spec is None else spec
    if isinstance(spec, Named):
        return {spec.registry}
    if isinstance(spec, ListOf):
        return registries(spec.item)
    if isinstance(spec, Section):
        return set().union(*(registries(s) for s in spec.fields.values()))
    return set()


def validate(raw: Any, lookups: Mapping[str, Lookup] | None = None) -> dict:
    """Validate a parsed params mapping against :data:`SCHEMA`, then look up its registry names.

    ``lookups`` maps registry names (``"model"``, ``"cam method"``...) to their lookup; names of
    other registries are only checked for shape.
    """
    lookups = dict(lookups or {})
    unknown = sorted(set(lookups) - registries())
    if unknown:
        raise ValueError(f"no params field refers to registr{'y' if len(unknown) == 1 else 'ies'} {unknown}")
    checked = SCHEMA.check(raw, "")
    for registry, key, value in _named_fields(SCHEMA, checked, ""):
        if registry in lookups:
            try:
                lookups[registry](value)
            except ValueError as exc:
                raise ParamsError(f"params.yaml: {key} = {value!r}: {exc}") from None
    for key, among, registry in SUBSET_RULES:
        if registry in lookups:
            check_among(checked, key, among)
    return checked


def load_params(path: str | Path = DEFAULT_PATH, lookups: Mapping[str, Lookup] | None = None) -> dict:
    """Read and validate a params file; every error names the file, the key and the value.

    ``lookups``: the registries the caller uses (see :func:`validate`).
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the project root, or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return validate(raw, lookups)
    except ParamsError as exc:
        raise ParamsError(str(exc).replace("params.yaml:", f"{path}:", 1)) from None
