"""Heatmaps and their scoring: CAM methods, box geometry, localisation metrics."""
