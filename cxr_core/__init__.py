"""cxr_core: the shared core of the cxr-pipeline DVC project.

Stages in ``stages/`` are thin click wrappers; every piece of logic lives here once.
"""

__version__ = "0.1.0"
