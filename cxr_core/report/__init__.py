"""The report stage: the paper's tables and figures, every number traceable to its JSON."""

from cxr_core.report.inputs import InputFormatError, MissingInputError, ReportPaths
from cxr_core.report.stage import make_report

__all__ = ["InputFormatError", "MissingInputError", "ReportPaths", "make_report"]
