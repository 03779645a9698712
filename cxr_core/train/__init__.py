"""The paper's training recipe: ``loop`` (fit and the epoch), ``config``, ``resume``, ``distributed``, ``live``, ``losses``."""
