"""Evaluation: tasks, the evaluator and its cache, metrics, significance and comparisons."""
