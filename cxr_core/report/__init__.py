"""The report stage: the paper's tables and figures, every number traceable to its JSON."""
