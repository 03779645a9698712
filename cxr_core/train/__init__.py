"""The paper's training recipe: losses and the resumable, reproducible loop."""
