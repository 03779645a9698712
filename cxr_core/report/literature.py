"""The paper's table layouts and quoted numbers: Tables 5-8 column orders, Table 6 literature rows.

Data only. "The paper" is the replicated study (Crawley, Durham MEng thesis).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cxr_core.labels import ABBREVIATIONS, BOX_LABELS

#: Methods with a table number in the paper (section 4.2.3); others are "beyond the paper".
PAPER_IOU_TABLES: dict[str, str] = {"GradCAM": "Table 7", "EigenCAM": "Table 8"}

#: The paper's Tables 5-6 header, in its order, as (label, column). Its text says "'pneumothorax'
#: and 'pneumonia' are abbreviated as 'pneul' and 'pneu2'", and the quoted literature values agree
#: (Yan et al.'s pneumothorax AUC 0.8759 sits under Pneu1), so Pneu1 = Pneumothorax here.
PAPER_AUC_ORDER: tuple[str, ...] = (
    "Atelectasis",
    "Consolidation",
    "Infiltration",
    "Pneumothorax",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Effusion",
    "Pneumonia",
    "Pleural_Thickening",
    "Cardiomegaly",
    "Nodule",
    "Hernia",
    "Mass",
)
PAPER_AUC_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (label, ABBREVIATIONS[label]) for label in PAPER_AUC_ORDER
)
#: The paper's Tables 7-8 header for the 8 box classes, in label order.
PAPER_BOX_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    # Tables 7-8 spell out the two findings that Tables 5-6 abbreviate as Pneu1 / Pneu2.
    (label, label if label in ("Pneumonia", "Pneumothorax") else ABBREVIATIONS[label])
    for label in BOX_LABELS
)


@dataclass(frozen=True)
class LiteratureRow:
    """One row of the paper's Table 6: AUCs another study reports on the real NIH test split."""

    name: str
    citation: str
    auc: Mapping[str, str]  # full label name -> AUC exactly as the paper prints it ("0.8470", "0.78")
    average: str


def _paper_order(printed: str) -> dict[str, str]:
    """A Table 6 row as the paper prints it (14 AUCs in :data:`PAPER_AUC_ORDER`) -> label -> text."""
    return dict(zip(PAPER_AUC_ORDER, printed.split(), strict=True))


#: Copied verbatim from the paper (Crawley, Durham MEng thesis), Table 6, "Comparison of AUCs with
#: literature and our best model" (columns in :data:`PAPER_AUC_ORDER`, then "Average"), kept as the
#: printed strings so trailing zeros survive. References are the paper's [36], [10], [33]; the first
#: row is the paper's own best model. All four were measured on the real NIH ChestX-ray14 official
#: test split, never on this pipeline's outputs.
LITERATURE_TABLE6: tuple[LiteratureRow, ...] = (
    LiteratureRow(
        "Original study: DenseNet-169",
        "the replicated paper (Crawley, Durham MEng thesis), Tables 5-6",
        _paper_order("0.76 0.74 0.69 0.84 0.84 0.90 0.81 0.83 0.71 0.76 0.89 0.74 0.91 0.81"),
        "0.8024",
    ),
    LiteratureRow(
        "Yan et al. [36] (SOTA)",
        "C. Yan, J. Yao, R. Li, Z. Xu, J. Huang. Weakly supervised deep learning for thoracic disease "
        "classification and localization on chest X-rays. ACM BCB 2018",
        _paper_order(
            "0.792 0.7598 0.7095 0.8759 0.8478 0.9422 0.8326 0.8415 0.7397 0.8083 0.8814 0.8105 0.9341 0.8470"
        ),
        "0.8302",
    ),
    LiteratureRow(
        "Guendel et al. [10]",
        "S. Guendel, S. Grbic, B. Georgescu, S. Liu, A. Maier, D. Comaniciu. Learning to recognize "
        "abnormalities in chest X-rays with location-aware dense networks. CIARP 2018",
        _paper_order("0.767 0.745 0.709 0.846 0.835 0.895 0.818 0.828 0.731 0.761 0.883 0.758 0.896 0.821"),
        "0.807",
    ),
    LiteratureRow(
        "Taslimi et al. [33]",
        "S. Taslimi, S. Taslimi, N. Fathi, M. Salehi, M. H. Rohban. SwinCheX: Multi-label classification "
        "on chest X-ray images with transformers. arXiv 2022",
        _paper_order("0.781 0.748 0.701 0.871 0.848 0.914 0.826 0.824 0.713 0.778 0.875 0.78 0.855 0.822"),
        "0.81",
    ),
)
