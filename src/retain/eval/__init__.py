"""Evaluation and continual-learning metrics."""
