"""Paired comparisons: is one model (or CAM method, or seed) really better than another?

Patient-clustered bootstrap of differences, scored on one shared resample per replicate, DeLong
as an image-level second opinion, and Holm adjustment; above ``evaluate`` and ``explain``, whose
outputs it compares."""
