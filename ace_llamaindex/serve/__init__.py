"""Serving in LlamaIndex: the embedding with fallback, the vector store, the hybrid retriever, feedback, rollout."""
