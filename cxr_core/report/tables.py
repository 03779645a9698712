"""The report's tables: data, training, the paper's Tables 5-8 and the localisation extras.

Every cell is built from :class:`~cxr_core.report.provenance.Number` objects; the literature rows of
Table 6 are labelled as other papers' numbers on the real NIH data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cxr_core.report.inputs import (
    CONTROL_METHOD,
    PHANTOM_BANNER,
    InputFormatError,
    ModelResults,
    cutoff_keys,
    key_value,
    threshold_keys,
)
from cxr_core.report.literature import (
    LITERATURE_TABLE6,
    PAPER_AUC_COLUMNS,
    PAPER_AUC_ORDER,
    PAPER_BOX_COLUMNS,
    PAPER_IOU_TABLES,
)
from cxr_core.report.provenance import Cell, Number, Table, ci_cell, control_cell, number, plain_cell, quoted


def abbreviation_legend(columns: Sequence[tuple[str, str]]) -> str:
    """Which finding each column is (the paper's Pneu1 / Pneu2 are easy to swap)."""
    pairs = [f"{column} = {label.replace('_', ' ')}" for label, column in columns if column != label]
    return "Abbreviations: " + ", ".join(pairs) + "."


def data_table(split: Mapping[str, Any], split_path: Path) -> Table:
    """Images, patients and boxes of the data actually used (``metrics/split.json``)."""
    table = Table("data", "Data used (metrics/split.json)", "split", ["images", "patients", "boxes"])
    for name in ("train", "val", "test", "loc"):
        if name not in split:
            raise InputFormatError(f"{split_path}: no '{name}' entry; re-run stage 'split'")
        table.add_row(
            name,
            [plain_cell(number(split, split_path, (name, col), kind="int")) for col in table.columns],
        )
    table.notes.append("loc = the test images with radiologist boxes (the localisation set).")
    return table


def training_table(models: Sequence[ModelResults]) -> Table:
    """Epochs trained and the best epoch per model (DVCLive summary ``metrics/train/<m>/metrics.json``)."""
    keys = [
        ("epochs_trained", "int"),
        ("best_epoch", "int"),
        ("best_val_loss", "float"),
        ("best_val_macro_auc", "float"),
    ]
    table = Table("training", "Training (DVCLive summaries)", "model", [k for k, _ in keys])
    for m in models:
        table.add_row(
            m.display, [plain_cell(number(m.train, m.train_path, (k,), kind=kind)) for k, kind in keys]
        )
    return table


def auc_table(models: Sequence[ModelResults], vs_best: Callable[[str], Cell] | None = None) -> Table:
    """Table 5: per-class test AUC per model with 95% bootstrap CIs, the macro mean and, given the
    comparison, whether each model is significantly worse than the best (``vs_best(model)``)."""
    columns = [column for _, column in PAPER_AUC_COLUMNS] + ["Macro"] + (["vs best"] if vs_best else [])
    table = Table("table5_auc", "Table 5: test AUC per class [95% CI]", "model", columns)
    for m in models:
        cells = [
            ci_cell(
                number(m.test, m.test_path, ("auc", name)),
                number(m.test, m.test_path, ("auc_ci", name, "0"), role="ci_low"),
                number(m.test, m.test_path, ("auc_ci", name, "1"), role="ci_high"),
            )
            for name in PAPER_AUC_ORDER
        ]
        cells.append(
            ci_cell(
                number(m.test, m.test_path, ("macro_auc",)),
                number(m.test, m.test_path, ("macro_auc_ci", "0"), role="ci_low"),
                number(m.test, m.test_path, ("macro_auc_ci", "1"), role="ci_high"),
            )
        )
        if vs_best:
            cells.append(vs_best(m.name))
        table.add_row(m.display, cells)
    table.notes.append(
        "Columns in the paper's order. Macro = mean over the classes with an AUC; "
        "CIs from a patient-level bootstrap. " + abbreviation_legend(PAPER_AUC_COLUMNS)
    )
    if vs_best:
        table.notes.append(
            "vs best: the model with the highest macro AUC (the mean over its training seeds when `seeds` "
            "lists several), and for every other whether it is significantly worse (worse) or not "
            "separable from it (n.s.), with the Holm-adjusted p of the paired patient bootstrap (pairwise "
            "table below). Each row's numbers are the first training seed's run."
        )
    return table


def summary_table(
    models: Sequence[ModelResults], method: str, vs_best: Callable[[str], Cell] | None
) -> Table:
    """The report's first table: each model's macro AUC, its standing against the best, and the
    pointing game of the headline CAM method (``report.headline_method``) beside the random map."""
    has_control = any(m.method(CONTROL_METHOD) is not None for m in models)
    columns = ["Macro AUC [95% CI]", "vs best", f"Pointing ({method})"]
    table = Table("summary", "Summary: every model at a glance", "model", columns)
    for m in models:
        auc = ci_cell(
            number(m.test, m.test_path, ("macro_auc",)),
            number(m.test, m.test_path, ("macro_auc_ci", "0"), role="ci_low"),
            number(m.test, m.test_path, ("macro_auc_ci", "1"), role="ci_high"),
        )
        pointing = control_cell(
            number(m.localise, m.localise_path, ("methods", method, "pointing", "mean")),
            _control(m, method, has_control, ("pointing", "mean")),
        )
        table.add_row(m.display, [auc, vs_best(m.name) if vs_best else Cell("n/a"), pointing])
    table.notes.append(
        "First training seed's run; vs best as in Table 5 (paired patient bootstrap, Holm); pointing game "
        "class mean over all boxes, with the random map's (rand) when computed. Details in the sections below."
    )
    return table


def literature_table(best: ModelResults | None, phantom: bool) -> Table:
    """Table 6: the best model of this run beside the literature rows the paper quotes."""
    columns = [column for _, column in PAPER_AUC_COLUMNS] + ["Average"]
    table = Table(
        "table6_literature", "Table 6: best model vs. the literature (paper's Table 6)", "model", columns
    )
    if best is not None:
        cells = [plain_cell(number(best.test, best.test_path, ("auc", name))) for name in PAPER_AUC_ORDER]
        cells.append(plain_cell(number(best.test, best.test_path, ("macro_auc",))))
        table.add_row(f"{best.display} (this run, best macro AUC)", cells)
    for row in LITERATURE_TABLE6:
        printed = [*(row.auc[name] for name in PAPER_AUC_ORDER), row.average]
        keys = [*PAPER_AUC_ORDER, "average"]
        cells = [plain_cell(quoted(text, (row.name, key))) for text, key in zip(printed, keys, strict=True)]
        table.add_row(f"{row.name} [other paper, NIH data]", cells)
    where = (
        f"This run used the {PHANTOM_BANNER}: its row is NOT comparable with the literature rows."
        if phantom
        else "The literature rows used the same official test split but their own training set-ups."
    )
    table.notes.append(
        "**Rows marked [other paper, NIH data] are other studies' AUCs on the real NIH ChestX-ray14 "
        "official test split, quoted exactly as the paper's Table 6 prints them.** " + where
    )
    table.notes.append(
        "Sources: " + "; ".join(f"{row.name}: {row.citation}" for row in LITERATURE_TABLE6) + "."
    )
    if best is None:
        table.notes.append("No model of this run has a macro AUC, so no row of ours is shown.")
    return table


def _control(m: ModelResults, method: str, has_control: bool, keys: Sequence[str]) -> Number | None:
    """The RandomCAM value at the same keys for the same model (None when no run has a control)."""
    if method == CONTROL_METHOD or not has_control:
        return None
    return number(m.localise, m.localise_path, ("methods", CONTROL_METHOD, *keys), role="random")


def _method_title(method: str, what: str) -> str:
    paper = PAPER_IOU_TABLES.get(method)
    if what == "paper IoU" and paper:
        return f"{paper}: {method} paper IoU per class x threshold"
    suffix = " (random-map control)" if method == CONTROL_METHOD else " (beyond the paper)"
    return f"{method} {what}{suffix}"


def iou_table(
    models: Sequence[ModelResults], method: str, thresholds: Sequence[str], has_control: bool
) -> Table:
    """Tables 7 / 8 (and the same for any other method): paper IoU per box class and threshold."""
    columns = [column for _, column in PAPER_BOX_COLUMNS] + ["Avg"]
    table = Table(f"iou_{method}", _method_title(method, "paper IoU"), "model - threshold", columns)
    for m in models:
        for t in thresholds:
            cells = [
                control_cell(
                    number(m.localise, m.localise_path, ("methods", method, "iou", t, key)),
                    _control(m, method, has_control, ("iou", t, key)),
                )
                for key in [*(label for label, _ in PAPER_BOX_COLUMNS), "mean"]
            ]
            table.add_row(f"{m.display} - {key_value(t):.2f}", cells)
    table.notes.append(
        "IoU = sum(A*B) / sum(max(A, B)) with A = [heatmap > threshold x 255] and B the radiologist box "
        "(paper section 3.4); per-class mean over boxes, Avg = mean over the box classes. "
        + abbreviation_legend(PAPER_BOX_COLUMNS)
    )
    return table


def box_accuracy_table(
    models: Sequence[ModelResults],
    method: str,
    thresholds: Sequence[str],
    cutoffs: Sequence[str],
    has_control: bool,
) -> Table:
    """Accuracy at T of boxes drawn from the thresholded heatmap, scored by IoU and IoBB (Wang et al.)."""
    metrics = (("box_acc_iou", "IoU"), ("box_acc_iobb", "IoBB"))
    columns = [f"{label}>={key_value(c):.2f}" for _, label in metrics for c in cutoffs]
    table = Table(
        f"box_accuracy_{method}", _method_title(method, "box accuracy"), "model - heatmap threshold", columns
    )
    for m in models:
        for t in thresholds:
            cells = [
                control_cell(
                    number(m.localise, m.localise_path, ("methods", method, metric, t, c)),
                    _control(m, method, has_control, (metric, t, c)),
                )
                for metric, _ in metrics
                for c in cutoffs
            ]
            table.add_row(f"{m.display} - {key_value(t):.2f}", cells)
    table.notes.append(
        "Fraction of radiologist boxes whose best heatmap box (connected components of the thresholded "
        "map) reaches IoU / IoBB >= T (Wang et al. 2017)."
    )
    return table


def pointing_table(models: Sequence[ModelResults], method: str, has_control: bool) -> Table:
    """Pointing game per box class: is the heatmap's maximum inside the box."""
    columns = [column for _, column in PAPER_BOX_COLUMNS] + ["Avg"]
    table = Table(f"pointing_{method}", _method_title(method, "pointing game"), "model", columns)
    for m in models:
        cells = [
            control_cell(
                number(m.localise, m.localise_path, ("methods", method, "pointing", key)),
                _control(m, method, has_control, ("pointing", key)),
            )
            for key in [*(label for label, _ in PAPER_BOX_COLUMNS), "mean"]
        ]
        table.add_row(m.display, cells)
    table.notes.append(
        "Pointing game: is the maximum of the raw map (the CAM at its layer's resolution, upsampled "
        "bilinearly to the box space) inside the box; a plateau of tied maxima points at its pixel nearest "
        "the plateau's centroid, and a flat map is a miss. Class mean over all boxes."
    )
    return table


def degenerate_table(models: Sequence[ModelResults], methods: Sequence[str]) -> Table | None:
    """Fraction of flat (degenerate) heatmaps per model and method; None when every one is 0."""
    table = Table("degenerate", "Degenerate (flat) heatmaps", "model", list(methods))
    flagged: list[str] = []
    for m in models:
        cells = [
            plain_cell(number(m.localise, m.localise_path, ("methods", meth, "degenerate_fraction")))
            for meth in methods
        ]
        flagged += [
            f"{meth} on {m.display}" for meth, c in zip(methods, cells, strict=True) if c.numbers[0].value
        ]
        table.add_row(m.display, cells)
    if not flagged:
        return None
    table.notes.append(
        "**Note:** some heatmaps were flat (constant: they point nowhere, and a flat map is a "
        "miss in the pointing game): "
        + ", ".join(flagged)
        + ". Read those methods' numbers with the fractions above in mind."
    )
    table.notes.append(
        "Why Grad-CAM goes flat: its map is ReLU(sum_c a_c A_c) with a_c the *spatial mean* of the gradient "
        "of the finding's score; where the layer's evidence lowers the score more than it raises it, the sum "
        "is negative at every position and the ReLU leaves zero. HiResCAM drops the averaging (gradient x "
        "activation element-wise), but when the layer is followed only by global average pooling and a "
        "linear classifier (DenseNet's norm5) the gradient is the same at every position, so HiResCAM, "
        "Grad-CAM and CAM (Zhou et al. 2016) are one map and go flat together; Grad-CAM++ weights only "
        "positive gradients and does not go flat this way."
    )
    return table


def localisation_tables(models: Sequence[ModelResults], methods: Sequence[str]) -> list[Table]:
    """Tables 7, 8 and the same for every other method, then box accuracy and pointing game per method."""
    thresholds = threshold_keys(models, "iou")
    box_thresholds = threshold_keys(models, "box_acc_iou")
    cutoffs = cutoff_keys(models)
    has_control = any(m.method(CONTROL_METHOD) is not None for m in models)
    ordered = [meth for meth in PAPER_IOU_TABLES if meth in methods]
    ordered += [meth for meth in methods if meth not in PAPER_IOU_TABLES]
    tables: list[Table] = [iou_table(models, meth, thresholds, has_control) for meth in ordered]
    tables += [box_accuracy_table(models, meth, box_thresholds, cutoffs, has_control) for meth in ordered]
    tables += [pointing_table(models, meth, has_control) for meth in ordered]
    if not has_control:
        tables[0].notes.append(f"No {CONTROL_METHOD} control in the metrics: chance levels are not shown.")
    return tables
