"""Embedding models: loading, identity, encoders with a vector cache, CPU export backends, cards and query adapters."""
