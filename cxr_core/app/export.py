"""``cxr export``: a trained checkpoint as a folder the Hugging Face hub and timm load as they are.

A ``best.pt`` is this project's format (tensors + metadata, read with ``weights_only=True``); to
share a model, people expect a hub model folder instead. :func:`export_model` writes one:

* ``model.safetensors`` and ``config.json``, written by timm's own ``save_for_hf`` (the files
  ``timm.models.push_to_hf_hub`` uploads), so ``timm.create_model("local-dir:OUT",
  pretrained=True)`` or ``"hf-hub:user/repo"`` rebuilds the model with its 14 outputs, its input
  size and timm's nearest description of the pipeline's preprocessing (grey repeated to 3
  channels, /255, ImageNet mean / std, the whole image resized bilinearly to S x S: timm's
  ``crop_mode: squash`` with ``crop_pct: 1.0``). ``pretrained_cfg`` keeps none of the ImageNet
  weights' identity (tag, licence, paper): the exported weights are not them. Beside timm's keys,
  ``config.json`` says what the weights were trained on (``phantom``, ``data_source``,
  ``label_file``), ``operating_points`` (the per-finding thresholds the pipeline chose on the
  validation split, with method, split and temperature; null when none were chosen: probabilities
  only) and ``cxr_pipeline`` (model name, seed, best epoch, initial weights, precision).
* ``preprocess.py``: :mod:`cxr_core.app.hub_preprocess`, copied as it is. timm's transforms only
  approximate the pipeline's decoding and resize (on textured images by 10+ grey levels), so the
  card's recipe feeds the model through this file and at the pipeline's precision (bf16 autocast
  where ``train.amp`` gives it), which reproduces ``cxr predict``'s probabilities.
* ``README.md``: a model card (data, label file, split, recipe, initial weights, test AUCs with
  CIs, the operating points, intended use, "not for clinical use", and a loud warning for a
  phantom-trained model).
* ``predictions.csv``: the test stage's per-image probabilities and 0/1 labels, when known.

A local ``data_source`` path is written as ``local`` so a published card does not leak a path.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_core.data.manifest import PHANTOM_SOURCE
from cxr_core.errors import CxrError
from cxr_core.labels import LABELS
from cxr_core.models.checkpoints import CheckpointMeta

logger = logging.getLogger(__name__)

#: Files an export folder holds (all rewritten by a forced re-export; ``predictions.csv`` is optional).
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
PREPROCESS_FILE = "preprocess.py"
PREDICTIONS_FILE = "predictions.csv"
EXPORT_FILES: tuple[str, ...] = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE, PREPROCESS_FILE, PREDICTIONS_FILE)
#: Version of the ``cxr_pipeline`` section of config.json; bump it when a field changes meaning.
#: 2: ``timm_name`` is the architecture without the ImageNet tag; ``pretrained``, ``base_model``,
#: ``base_model_license`` and ``precision`` added.
EXPORT_FORMAT = 2
#: Column names of predictions.csv beyond ``image`` and ``patient``.
PROB_PREFIX = "prob_"
LABEL_PREFIX = "label_"

#: The pipeline's input transform in timm's data-config terms (``cxr_core.data.decode`` / ``batches``).
INTERPOLATION = "bilinear"
CROP_PCT = 1.0
CROP_MODE = "squash"
#: ``pretrained_cfg`` keys that describe timm's ImageNet weights (which tag, licence, paper), not
#: the exported ones; they are dropped, and a fine-tuned model names its start as ``base_model``.
SOURCE_WEIGHTS_KEYS = frozenset(
    {"tag", "license", "description", "origin_url", "paper_name", "paper_ids", "notes"}
)
#: The placeholders of the card's recipe, which a user (or a test) replaces.
RECIPE_FOLDER = "path/to/this/folder"
RECIPE_IMAGE = "xray.png"

PHANTOM_CARD_WARNING = (
    "> [!WARNING]\n"
    "> **PHANTOM MODEL: TRAINED ON SYNTHETIC IMAGES, NOT ON CHEST X-RAYS.** This checkpoint was trained on\n"
    "> the cxr-pipeline's embedded phantom, computer-drawn images with one artificial sign per finding.\n"
    "> Its outputs and every number on this card say only that the training and evaluation code is wired\n"
    "> correctly. They say nothing about real radiographs: do not run it on real images expecting findings.\n"
)

NOT_CLINICAL = (
    "**Not for clinical use.** This is a research model. It is not a medical device, has not been validated\n"
    "for diagnosis, triage or screening, and must not inform decisions about any patient."
)


class ExportError(CxrError, ValueError):
    """An export cannot be written: the target folder holds other files, or an input is unusable."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote."""

    folder: Path
    files: tuple[str, ...]
    phantom: bool


@dataclass(frozen=True)
class WeightsOrigin:
    """Where the exported weights started, as the card and config.json state it.

    ``pretrained`` is ``train.pretrained`` of the export's params.yaml (None without one: unknown).
    Only a fine-tuned model names ImageNet weights, as ``base_model``; their licence is theirs, so
    it is reported beside them and never becomes the exported model's licence.
    """

    architecture: str  # timm architecture, no pretrained tag: densenet121, not densenet121.tv_in1k
    pretrained: bool | None
    base_model: str | None = None  # hub id of the ImageNet weights it was fine-tuned from
    base_model_license: str | None = None  # their licence as timm lists it

    def to_config(self) -> dict[str, Any]:
        return {
            "pretrained": self.pretrained,
            "base_model": self.base_model,
            "base_model_license": self.base_model_license,
        }


def weights_origin(model: Any, params: Mapping[str, Any] | None) -> WeightsOrigin:
    """The origin of ``model``'s weights from its timm ``pretrained_cfg`` and ``train.pretrained``."""
    cfg = model.pretrained_cfg
    pretrained = None if params is None else bool(params["train"]["pretrained"])
    if not pretrained:
        return WeightsOrigin(cfg["architecture"], pretrained)
    tag = ".".join(x for x in (cfg["architecture"], cfg.get("tag")) if x)
    return WeightsOrigin(cfg["architecture"], True, cfg.get("hf_hub_id") or tag, cfg.get("license"))


def exported_pretrained_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` without the keys naming the ImageNet weights (:data:`SOURCE_WEIGHTS_KEYS`)."""
    return {k: v for k, v in cfg.items() if k not in SOURCE_WEIGHTS_KEYS}


def inference_precision(params: Mapping[str, Any] | None, spec: Any) -> dict[str, str] | None:
    """The dtype ``cxr predict`` runs this model at with the export's params (``train.amp``), per device.

    bf16 autocast against float32 moves the probabilities of a model with trained-scale logits by
    ~0.1 (tests/test_export.py), so the card's recipe must use the pipeline's dtype. None without
    params.yaml (``cxr predict`` then runs float32).
    """
    if params is None:
        return None
    import torch

    from cxr_core.runtime import resolve_amp

    amp = params["train"]["amp"]
    return {
        device: "bfloat16" if resolve_amp(amp, torch.device(device), spec) else "float32"
        for device in ("cpu", "cuda")
    }


def public_source(data_source: str) -> str:
    """``data_source`` as published: synthetic / nih / unknown kept, a local folder path -> ``local``."""
    return data_source if data_source in (PHANTOM_SOURCE, "nih", "unknown") else "local"


def _meta_of(meta: Mapping[str, Any], path: Path) -> CheckpointMeta:
    return CheckpointMeta.of({**meta, "model": None}, path)


def export_model(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model_name: str | None = None,
    seed: int | None = None,
    params: Mapping[str, Any] | None = None,
    metrics: str | os.PathLike | None = None,
    predictions: str | os.PathLike | None = None,
    operating: str | os.PathLike | None = None,
    split: str | os.PathLike | None = None,
    force: bool = False,
) -> ExportResult:
    """Write the hub folder of ``checkpoint`` into ``out_dir`` (see the module docstring).

    ``metrics`` (the test stage's JSON), ``predictions`` (its ``.npz``), ``operating`` (the
    validation operating points, ``data/operating/<model>/seed<k>.json``) and ``split``
    (``metrics/split.json``) are optional: a path that does not exist is skipped with a warning
    and the card says so; a malformed one is an error naming it. ``params`` (validated params.yaml) fills the recipe section. An
    ``out_dir`` holding files other than an earlier export's is refused; an earlier export is
    replaced only with ``force``.
    """
    from timm.models import save_for_hf

    from cxr_core.data.batches import IMAGENET_MEAN, IMAGENET_STD
    from cxr_core.models.checkpoints import load_model
    from cxr_core.models.registry import get_spec

    checkpoint, out = Path(checkpoint), Path(out_dir)
    _check_target(out, force)
    model, raw_meta = load_model(checkpoint, model_name=model_name, map_location="cpu")
    meta = _meta_of(raw_meta, checkpoint)
    spec = get_spec(meta.model_name)
    size = int(meta.image_size)
    test = _read_metrics(Path(metrics)) if metrics is not None else None
    preds = _read_predictions(Path(predictions)) if predictions is not None else None
    split_counts = _read_split(Path(split)) if split is not None else None
    points = _read_operating(Path(operating), meta.model_name) if operating is not None else None
    origin = weights_origin(model, params)
    precision = inference_precision(params, spec)
    model.pretrained_cfg = exported_pretrained_cfg(model.pretrained_cfg)

    out.mkdir(parents=True, exist_ok=True)
    for name in EXPORT_FILES:
        (out / name).unlink(missing_ok=True)
    extra = {
        "label_names": list(LABELS),
        "phantom": meta.phantom,
        "data_source": public_source(meta.data_source),
        "label_file": meta.label_file,
        "operating_points": points.to_config() if points is not None else None,
        "cxr_pipeline": {
            "format": EXPORT_FORMAT,
            "model": meta.model_name,
            "timm_name": origin.architecture,
            "image_size": size,
            "seed": seed,
            **{k: raw_meta[k] for k in ("epoch", "val_loss", "val_macro_auc") if k in raw_meta},
            **origin.to_config(),
            "precision": precision,
        },
    }
    data_config = {
        "input_size": (3, size, size),
        "mean": tuple(IMAGENET_MEAN),
        "std": tuple(IMAGENET_STD),
        "interpolation": INTERPOLATION,
        "crop_pct": CROP_PCT,
        "crop_mode": CROP_MODE,
    }
    save_for_hf(model, str(out), model_config=extra, safe_serialization=True, data_config=data_config)
    _copy_preprocess(out / PREPROCESS_FILE)
    files = [WEIGHTS_FILE, CONFIG_FILE, PREPROCESS_FILE]
    if preds is not None:
        _write_predictions(out / PREDICTIONS_FILE, preds)
        files.append(PREDICTIONS_FILE)
    card = model_card(
        meta,
        spec,
        seed=seed,
        epoch_scores={k: raw_meta.get(k) for k in ("epoch", "val_loss", "val_macro_auc")},
        n_params=sum(p.numel() for p in model.parameters()),
        params=params,
        test=test,
        split=split_counts,
        has_predictions=preds is not None,
        operating=points,
        origin=origin,
        precision=precision,
    )
    (out / CARD_FILE).write_text(card, encoding="utf-8")
    files.append(CARD_FILE)
    # safetensors writes 0600; a folder to share reads like the card
    for name in (WEIGHTS_FILE, CONFIG_FILE, PREPROCESS_FILE):
        shutil.copymode(out / CARD_FILE, out / name)
    logger.info("exported %s (%s) to %s: %s", meta.model_name, checkpoint, out, ", ".join(files))
    return ExportResult(out, tuple(sorted(files)), meta.phantom)


def _copy_preprocess(path: Path) -> None:
    """The card's preprocessing, :mod:`cxr_core.app.hub_preprocess`, byte for byte (no cxr_core needed)."""
    from cxr_core.app import hub_preprocess

    path.write_bytes(Path(hub_preprocess.__file__).read_bytes())


def _check_target(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder; give a new or empty folder")
    if not out.is_dir():
        return
    present = sorted(p.name for p in out.iterdir())
    foreign = [n for n in present if n not in EXPORT_FILES and not n.startswith(".")]
    if foreign:
        raise ExportError(
            f"{out}: holds files that are not an export's ({foreign[:5]}); give a new or empty folder"
        )
    if present and not force:
        raise ExportError(f"{out}: already holds an export ({present}); pass --force to replace it")


def _read_metrics(path: Path) -> dict[str, Any] | None:
    """The test stage's metrics JSON (macro_auc, macro_auc_ci, auc, auc_ci), or None when absent."""
    from cxr_core.files import malformed, read_json

    if not path.is_file():
        logger.warning("%s not found: the model card will have no test metrics", path)
        return None
    doc = read_json(
        path, "the test stage (test@<model>-<seed>)", ("macro_auc", "macro_auc_ci", "auc", "auc_ci")
    )
    for key in ("auc", "auc_ci"):
        if not isinstance(doc[key], dict):
            raise malformed(
                path, f"{key} is not a mapping of finding -> value", "the test stage (test@<model>-<seed>)"
            )
    return doc


def _read_operating(path: Path, model_name: str) -> Any:
    """The validation operating points (:class:`cxr_core.app.predictor.Operating`), or None when absent."""
    from cxr_core.app.predictor import Operating

    if not path.is_file():
        logger.warning("%s not found: the export will have no operating points (probabilities only)", path)
        return None
    return Operating.read(path, model_name)


def _read_predictions(path: Path) -> Any:
    from cxr_core.evaluate.predictions import Predictions

    if not path.is_file():
        logger.warning("%s not found: the export will have no %s", path, PREDICTIONS_FILE)
        return None
    return Predictions.load(path)


def _read_split(path: Path) -> dict[str, Any] | None:
    from cxr_core.files import read_json

    if not path.is_file():
        return None
    doc = read_json(path, "the split stage")
    return doc if isinstance(doc, dict) else None


def prediction_columns() -> list[str]:
    """predictions.csv's header: image, patient, ``prob_<finding>`` x 14, ``label_<finding>`` x 14."""
    return ["image", "patient", *(PROB_PREFIX + x for x in LABELS), *(LABEL_PREFIX + x for x in LABELS)]


def _write_predictions(path: Path, preds: Any) -> None:
    """One row per test image: probabilities to 6 decimals (as ``cxr predict``), labels 0/1."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(prediction_columns())
        for image, patient, probs, targets in zip(
            preds.images, preds.patients, preds.probs, preds.targets, strict=True
        ):
            writer.writerow(
                [str(image), int(patient), *(f"{float(p):.6f}" for p in probs), *(int(t) for t in targets)]
            )


# ------------------------------------------------------------------------------------------- model card


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(ci: Sequence[Any] | None) -> str:
    if not ci or len(ci) != 2:
        return "n/a"
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _source_text(data_source: str, label_file: str) -> str:
    if data_source == PHANTOM_SOURCE:
        return (
            "the cxr-pipeline **phantom**: synthetic 1024 x 1024 PNGs in NIH ChestX-ray14's layout, one "
            "drawn sign per finding (a known-answer test set, not medical data)"
        )
    if data_source == "nih":
        return "NIH ChestX-ray14 (Wang et al., CVPR 2017), downloaded from NIH's official share"
    if data_source == "unknown":
        return "not recorded in the checkpoint (written before the pipeline recorded it)"
    return "a local copy of NIH ChestX-ray14 (Wang et al., CVPR 2017)"


def _yaml(value: Any) -> str:
    """A params value as params.yaml spells it (true / false / null)."""
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def _recipe_lines(params: Mapping[str, Any] | None, seed: int | None) -> list[str]:
    if params is None:
        return ["Training parameters were not at hand at export time (no params.yaml)."]
    train = params["train"]
    lines = [
        "From `params.yaml` at export time: the checkpoint's own when `dvc status` shows its `train@` "
        "stage up to date (DVC re-trains whenever these change).",
        "",
        "| parameter | value |",
        "|---|---|",
        f"| lr (Adam) | {params.get('lr')} |",
        f"| seed | {seed if seed is not None else params.get('seed')} |",
    ]
    for key, value in train.items():
        if isinstance(value, Mapping):
            for sub, subvalue in value.items():
                lines.append(f"| train.{key}.{sub} | {_yaml(subvalue)} |")
        else:
            lines.append(f"| train.{key} | {_yaml(value)} |")
    return lines


def _init_text(origin: WeightsOrigin) -> str:
    """The initial weights, as the recipe section says them (empty when params.yaml was not at hand)."""
    if origin.pretrained is None:
        return ""
    if origin.pretrained:
        return (
            f"Fine-tuned from timm's ImageNet-1k weights `{origin.base_model}` (`train.pretrained: true`). "
        )
    return "Trained from random initial weights (`train.pretrained: false`): no ImageNet weights are in it. "


def _weights_bullet(origin: WeightsOrigin) -> str:
    """The model-details bullet on the initial weights: scratch, a named base model, or unknown."""
    if origin.pretrained is None:
        return "- Initial weights: not recorded (no params.yaml at export time)"
    if not origin.pretrained:
        return "- Initial weights: random (trained from scratch, `train.pretrained: false`)"
    return f"- Initial weights: timm's ImageNet-1k `{origin.base_model}` (the `base_model`), fine-tuned"


def _precision_text(precision: Mapping[str, str] | None) -> str:
    """How the pipeline ran the model, for the model-details bullet."""
    if precision is None:
        return "not recorded (no params.yaml at export time); `cxr predict` without one runs float32"
    if precision["cpu"] == precision["cuda"]:
        return f"{_dtype_name(precision['cpu'])} on the CPU and on a GPU (`train.amp`)"
    return (
        f"{_dtype_name(precision['cpu'])} on the CPU, {_dtype_name(precision['cuda'])} on a GPU (`train.amp`)"
    )


def _dtype_name(dtype: str) -> str:
    return "bf16 autocast" if dtype == "bfloat16" else "float32"


def _license_text(origin: WeightsOrigin) -> str:
    """The card's licence line: never the ImageNet weights' licence as the model's own."""
    start = (
        f" The starting weights `{origin.base_model}` are under their own licence "
        f"({origin.base_model_license or 'see their model card'}); yours must allow for it."
        if origin.pretrained
        else ""
    )
    return (
        "License: not set by the exporter; choose one and add `license:` to the front matter before "
        f"publishing.{start} NIH asks users of ChestX-ray14 to cite Wang et al. 2017."
    )


def _usage_lines(precision: Mapping[str, str] | None) -> list[str]:
    """The card's "How to use": ``preprocess.py`` + timm at the pipeline's CPU precision.

    The code block runs as it stands once ``RECIPE_FOLDER`` and ``RECIPE_IMAGE`` are replaced (a
    test does exactly that and compares the output with ``cxr predict``).
    """
    bf16 = precision is not None and precision["cpu"] == "bfloat16"
    how = "bf16 autocast" if bf16 else "float32"
    return [
        "## How to use",
        "",
        f"`{PREPROCESS_FILE}` (beside the weights; numpy, Pillow and torch only) turns a file into the model "
        "input exactly as cxr-pipeline's `cxr predict` does: grey (16-bit files mapped linearly), resized with "
        "Pillow's bilinear filter and `reducing_gap=2.0` (JPEGs decoded at reduced scale first), ImageNet "
        f"mean / std. The model then runs in {how}, as the pipeline ran it on the CPU. This recipe gives "
        "`cxr predict`'s probabilities:",
        "",
        "```python",
        "import json",
        "import sys",
        "from pathlib import Path",
        "",
        "import timm",
        "import torch",
        "",
        f'folder = Path("{RECIPE_FOLDER}")  # from the hub: huggingface_hub.snapshot_download("<user>/<repo>")',
        "sys.path.insert(0, str(folder))",
        f"import preprocess  # {PREPROCESS_FILE}, shipped with the weights",
        "",
        'model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()',
        f'files = ["{RECIPE_IMAGE}"]  # PNG / JPEG / TIFF / BMP, 8- or 16-bit grey (or R = G = B), any size',
        'x = preprocess.load_batch(files, model.pretrained_cfg["input_size"][-1])',
        f'with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled={bf16}):  # {how}',
        "    logits = model(x).float()",
        "probs = torch.sigmoid(logits)  # 14 independent probabilities per image, not a softmax",
        "for name, row in zip(files, probs.tolist()):",
        '    print(name, json.dumps(dict(zip(model.pretrained_cfg["label_names"], row))))',
        "```",
        "",
        "timm's own `resolve_data_config` + `create_transform` (`config.json`'s `pretrained_cfg`: bilinear, "
        "squash, no crop) only approximate this: they resize without the reducing gap, clip 16-bit files and "
        "read JPEGs at full scale. On 1024 px images with a radiograph's fine texture the resized pixels then "
        "differ by 10 or more grey levels and a trained model's probabilities by 0.1 or more, enough to flip "
        "calls at an operating point. float32 where the pipeline used bf16 moves them by as much. For DICOM "
        "files, use `cxr predict`.",
    ]


def _split_lines(params: Mapping[str, Any] | None, split: Mapping[str, Any] | None) -> list[str]:
    lines = ["Test: NIH's official `test_list.txt` (patient-disjoint from training)."]
    if params is not None:
        s = params["split"]
        by = "patient-disjoint" if s.get("group_by") == "patient" else "per image"
        lines.append(
            f"Validation: {s.get('val_fraction')} of `train_val_list.txt`, stratified on the 14 labels, "
            f"{by}; it picks the best epoch."
        )
    if split:
        parts = [
            f"{part} {split[part].get('images')} images / {split[part].get('patients')} patients"
            for part in ("train", "val", "test")
            if isinstance(split.get(part), Mapping)
        ]
        if parts:
            lines.append("Sizes: " + "; ".join(parts) + ".")
    return lines


def _metric_lines(
    test: Mapping[str, Any] | None, has_predictions: bool, params: Mapping[str, Any] | None
) -> list[str]:
    if test is None:
        return ["No test metrics were found at export time (the test stage's JSON was absent)."]
    ci = params.get("test", {}).get("ci") if params is not None else None
    level = f"{100 * float(ci):g}% " if isinstance(ci, int | float) else ""
    lines = [
        f"Macro AUC over the 14 findings: **{_fmt(test['macro_auc'])}** {_ci(test['macro_auc_ci'])} "
        f"({level}patient-level bootstrap CI; {test.get('n_images', '?')} images, "
        f"{test.get('n_patients', '?')} patients).",
        "",
        "| finding | ROC AUC | CI | positives |",
        "|---|---|---|---|",
    ]
    positives = test.get("positives") or {}
    for label in LABELS:
        lines.append(
            f"| {label} | {_fmt(test['auc'].get(label))} | {_ci(test['auc_ci'].get(label))} "
            f"| {positives.get(label, 'n/a')} |"
        )
    if has_predictions:
        lines += ["", f"Per-image test probabilities and labels: `{PREDICTIONS_FILE}`."]
    return lines


def _operating_summary(operating: Any) -> str:
    """The model-details bullet on decision thresholds."""
    if operating is None:
        return (
            "- Operating points: none. The model gives probabilities; no decision threshold has been chosen "
            "or validated (`config.json` `operating_points` is null)."
        )
    return (
        f"- Operating points: one threshold per finding, chosen on the {operating.split_name} split "
        f"({operating.method}), never on the test split; see *Operating points* below and `config.json` "
        "`operating_points`."
    )


def _operating_lines(operating: Any) -> list[str]:
    """The card's table of thresholds (none when the export has no operating points)."""
    if operating is None:
        return []
    temperature = (
        f"they apply to the temperature-scaled probabilities `sigmoid(logit / T)` with T = "
        f"{_fmt(operating.temperature)}, fitted on the same split"
        if operating.temperature is not None
        else "they apply to the model's sigmoid probabilities (no temperature scaling)"
    )
    lines = [
        "## Operating points",
        "",
        f"Thresholds chosen on the {operating.split_name} split by `{operating.method}`; {temperature}. "
        "A finding is called positive when that probability is at or above its threshold. `cxr predict "
        "--model-dir` writes these calls next to the probabilities. They were chosen on the validation split; "
        "their test sensitivity and specificity are in the pipeline's metrics/clinical/ files. They were not "
        "validated on any clinical population: a research operating point, not a diagnostic cut-off.",
        "",
        "| finding | threshold |",
        "|---|---|",
    ]
    for label, threshold in zip(LABELS, operating.thresholds, strict=True):
        lines.append(f"| {label} | {_fmt(threshold, 4) if threshold is not None else 'none chosen'} |")
    return [*lines, ""]


def model_card(
    meta: CheckpointMeta,
    spec: Any,
    *,
    seed: int | None,
    epoch_scores: Mapping[str, Any],
    n_params: int,
    params: Mapping[str, Any] | None,
    test: Mapping[str, Any] | None,
    split: Mapping[str, Any] | None,
    has_predictions: bool,
    origin: WeightsOrigin,
    precision: Mapping[str, str] | None,
    operating: Any = None,
) -> str:
    """The README.md of an export: hub front matter, then what the model is, was trained on and scores.

    ``origin`` decides the model's name, the front matter's ``base_model`` and the licence line;
    ``precision`` (:func:`inference_precision`) the recipe's dtype.
    """
    size = meta.image_size
    seed_text = f"seed {seed}" if seed is not None else ""
    names = ", ".join(
        x for x in (meta.model_name if spec.display_name != meta.model_name else "", seed_text) if x
    )
    tags = ["image-classification", "timm", "chest-x-ray", "multi-label-classification", "cxr-pipeline"]
    if meta.phantom:
        tags.append("synthetic-data")
    front = [
        "---",
        "tags:",
        *(f"- {t}" for t in tags),
        "library_name: timm",
        "pipeline_tag: image-classification",
    ]
    if meta.data_source not in (PHANTOM_SOURCE, "unknown"):
        front += ["datasets:", "- nih-chest-xrays"]
    if origin.base_model:
        front += [f"base_model: {origin.base_model}", "base_model_relation: finetune"]
    front.append("---")
    body = [f"# {spec.display_name}{f' ({names})' if names else ''}: 14 ChestX-ray14 findings", ""]
    if meta.phantom:
        body += [PHANTOM_CARD_WARNING]
    body += [NOT_CLINICAL, ""]
    body += [
        f"A timm `{origin.architecture}` classifier with 14 sigmoid outputs (multi-label: one probability per "
        "finding, not a softmax), trained by cxr-pipeline, a DVC re-run of Crawley's Durham MEng study "
        '*"Evaluating the Localisation and Classification Performance of Deep Learning Architectures in the '
        'Context of Multi Pathology Chest X-Ray Classification"*.',
        "",
        "## Model details",
        "",
        f"- Architecture: timm `{origin.architecture}` ({n_params / 1e6:.2f} M parameters)",
        _weights_bullet(origin),
        f"- Input: {size} x {size} px; the grey image resized to the square (Pillow bilinear, "
        "`reducing_gap=2.0`, no crop), repeated to 3 channels, scaled to 0..1 and normalised with ImageNet "
        f"mean / std: `{PREPROCESS_FILE}` does exactly this (see *How to use*)",
        f"- Precision: {_precision_text(precision)}",
        "- Outputs, in order: " + ", ".join(f"`{x}`" for x in LABELS),
        _operating_summary(operating),
        "",
        "## Training data",
        "",
        f"- Data source: {_source_text(meta.data_source, meta.label_file)}",
        f"- Label file: `{meta.label_file}`"
        + (" (NIH's 2020 re-release of the labels)" if "v2020" in meta.label_file else ""),
        "- Labels are 14 findings mined from radiology reports by NLP (Wang et al. 2017), not read from the "
        "images; they are noisy.",
        *(f"- {line}" for line in _split_lines(params, split)),
        "",
        "## Training recipe",
        "",
        _init_text(origin)
        + "Adam, ReduceLROnPlateau on the validation loss, early stopping; the best-validation-loss epoch "
        "is kept; random horizontal flip and rotation on the fly; loss as `train.loss` below.",
        "",
        f"Kept epoch: {_fmt(epoch_scores.get('epoch'))}; validation loss "
        f"{_fmt(epoch_scores.get('val_loss'), 4)}, validation macro AUC "
        f"{_fmt(epoch_scores.get('val_macro_auc'))}.",
        "",
        *_recipe_lines(params, seed),
        "",
        "## Evaluation (official test split)",
        "",
        *_metric_lines(test, has_predictions, params),
        "",
        *_operating_lines(operating),
        "## Intended use",
        "",
        "- Research and teaching: reproducing the study, comparing architectures, studying CAM heatmaps.",
        "- Out of scope: any clinical use, and any use on images unlike ChestX-ray14's frontal radiographs.",
        "",
        *_usage_lines(precision),
        "",
        _license_text(origin),
    ]
    return "\n".join(front + body) + "\n"
