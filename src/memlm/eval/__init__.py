"""Evaluation: tasks, metrics and reports."""
