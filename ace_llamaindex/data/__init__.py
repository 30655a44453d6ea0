"""Datasets: the formats ace reads (LlamaIndex finetuning JSON, BEIR, test suites) and the shipped demo data."""
