"""ace-llamaindex: fine-tune embeddings on your own retrieval logs and serve them in LlamaIndex."""

__version__ = "0.1.0"
