"""cxr_core: the shared core of the cxr-pipeline DVC project.

Stages in ``stages/`` are thin click wrappers; every piece of logic lives here once. The folders
are the layers, from the bottom up: ``data``, ``models``, ``train``, ``evaluate``, ``explain``,
``compare``, ``report`` and ``app``; each imports only the layers below it and the top-level modules
(``errors``, ``files``, ``labels``, ``logs``, ``params``, ``runtime``).
"""
