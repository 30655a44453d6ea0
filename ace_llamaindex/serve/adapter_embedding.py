"""``AdapterEmbedding``: any LlamaIndex embedding with a trained query adapter; documents untouched.

It declares the *same vector space* as its base (same ``model_name``, same Qdrant named vector), so it searches the
base's existing index: no re-embedding, no re-indexing. With a :class:`~ace_llamaindex.serve.embedding.FineTunedEmbedding`
base that has a fallback, a query the fallback answers is not adapted (the adapter was trained for the primary
space) and is searched in the fallback's own space, as without an adapter.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding
from pydantic import Field, PrivateAttr

from ..embeddings.query_adapter import QueryAdapter, check_base
from ..records.card import TrainingCard
from .embedding import space_label
from .spaces import embedding_spaces, named_vector, query_with_space


class AdapterEmbedding(BaseEmbedding):
    """``AdapterEmbedding(base, "models/adapter")``: queries transformed, documents passed through."""

    adapter_path: str = Field(description="Folder written by `ace train --method adapter`")
    _base: BaseEmbedding = PrivateAttr()
    _adapter: QueryAdapter = PrivateAttr()
    _card: TrainingCard | None = PrivateAttr(default=None)

    def __init__(self, base: BaseEmbedding, adapter_path: str, **kwargs: Any) -> None:
        super().__init__(adapter_path=str(adapter_path), model_name=space_label(base),
                         embed_batch_size=base.embed_batch_size, **kwargs)
        self._base = base
        self._adapter, self._card = QueryAdapter.load(adapter_path)
        check_base(self._card, base, adapter_path)

    @classmethod
    def class_name(cls) -> str:
        return "AdapterEmbedding"

    @property
    def base(self) -> BaseEmbedding:
        return self._base

    # ---- vector spaces: exactly the base's ------------------------------------------------------------------
    def spaces(self) -> list[tuple[str, BaseEmbedding]]:
        return embedding_spaces(self._base)  # a plain base is one space, labelled as self.model_name is

    def named_vector(self, label: str) -> str:
        return named_vector(self._base, label)

    def _adapt(self, vector: list[float]) -> list[float]:
        return self._adapter(np.asarray(vector, dtype=np.float32))[0].tolist()

    def embed_query_with_space(self, query: str) -> tuple[list[float], str]:
        vector, label = query_with_space(self._base, query)
        return (self._adapt(vector), label) if label == self.model_name else (vector, label)

    async def aembed_query_with_space(self, query: str) -> tuple[list[float], str]:
        return await asyncio.to_thread(self.embed_query_with_space, query)

    # ---- BaseEmbedding contract -------------------------------------------------------------------------------
    def _get_query_embedding(self, query: str) -> list[float]:
        return self._adapt(self._base.get_query_embedding(query))

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._adapt(await self._base.aget_query_embedding(query))

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._base.get_text_embedding(text)

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._base.get_text_embedding_batch(texts)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await self._base.aget_text_embedding(text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await self._base.aget_text_embedding_batch(texts)
