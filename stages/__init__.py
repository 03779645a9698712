"""Thin click commands, one per DVC stage: parse options, call ``cxr_core``, write outputs."""
