"""Evaluation-only data sets: CheXpert, VinDr-CXR and PadChest, read in place, plus a shifted phantom.

Each data set is one module with ``NAME``, ``CLASSES`` (its explicit map to the 14 NIH findings),
``LAYOUT_HINT`` and ``read(root, cfg) -> ExternalTable`` (``base``). A new data set is one module,
one entry in ``registry.READERS`` and its params section.
"""
