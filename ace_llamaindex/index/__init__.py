"""The corpus index: Qdrant collections (local, server, Edge), BM25, fusion, filters."""
