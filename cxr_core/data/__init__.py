"""Data layer: the NIH files, the data sources, the uint8 image cache, splits and device batches.

Imports nothing from the other sub-packages."""
