"""One base class for every error a user can fix.

A stage, ``cxr predict`` and the demo catch :class:`CxrError` and show its message (exit code 1,
no traceback); anything else is a bug and keeps its traceback. Messages name the file, key or value
and say how to fix it. Subclasses keep a builtin base (``ValueError``, ``FileNotFoundError``...)
where callers catch those.
"""

from __future__ import annotations


class CxrError(Exception):
    """A problem with the user's input, files or settings; the message says what to change."""


class ArtifactError(CxrError, ValueError):
    """A file passed between stages is missing, unreadable or not in its contract's format."""
