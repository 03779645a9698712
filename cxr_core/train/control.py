"""The label-permutation control run (``train.shuffle_labels``): the same images and label rows, paired at random.

The phantom's signs are learnable by construction, so a high phantom AUC proves the wiring only if
the same pipeline scores at chance when the labels carry no information about the images. A test
image leaking into training, labels read from file names, or a metric that ignores the scores would
all survive the permutation; a correct pipeline does not. Whole label rows move together, so the
prevalences and co-occurrences the loss sees stay exactly those of the real run.
"""

from __future__ import annotations

import numpy as np

from cxr_core.data.tables import SplitTable
from cxr_core.labels import LABELS

#: Appended to a control run's ``label_file`` in its checkpoints, so every use of the model says so.
CONTROL_NOTE = "labels permuted across training images by train.shuffle_labels: a control run, not a model"

_STREAM = 3  # the permutation's own random stream (the loop's augmentation / torch streams are 1 and 2)


def permuted_labels(train: SplitTable, seed: int) -> SplitTable:
    """``train`` with its label rows permuted across its images; a function of ``seed`` only."""
    order = np.random.default_rng(np.random.SeedSequence([seed, _STREAM])).permutation(len(train.table))
    table = train.table.copy()
    table[list(LABELS)] = table[list(LABELS)].to_numpy()[order]
    return SplitTable(table)


def control_label_file(label_file: str, shuffled: bool) -> str:
    """The ``label_file`` a checkpoint records: a control run's says that its labels were permuted."""
    return f"{label_file} ({CONTROL_NOTE})" if shuffled else label_file
