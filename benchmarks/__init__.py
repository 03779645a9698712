"""Benchmark scripts (``python -m benchmarks.<name>``); each exposes ``run(...) -> dict``.

Speed is measured here, never with timed assertions in tests.
"""
