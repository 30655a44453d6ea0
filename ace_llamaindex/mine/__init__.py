"""Hard-negative mining, from a dataset or from a feedback log."""
