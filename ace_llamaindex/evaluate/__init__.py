"""Evaluation: metrics, statistics, systems and comparisons, reports, fusion selection."""
