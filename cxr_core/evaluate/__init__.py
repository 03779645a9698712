"""Scoring a trained model: batched inference and the classification metrics."""
