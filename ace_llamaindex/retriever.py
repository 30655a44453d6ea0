"""``HybridQdrantRetriever``: dense + BM25 fused with RRF inside Qdrant, as a LlamaIndex ``BaseRetriever``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle, TextNode
from llama_index.core.vector_stores.types import MetadataFilters
from qdrant_client import QdrantClient

from .bm25 import BM25Encoder
from .embedding import space_label
from .errors import EmbeddingError, OptionError
from .fusion_selection import DENSE_DEFAULT, FUSION_FILE, FusionChoice, load_fusion
from .filters import to_qdrant_filter
from .models import vector_name
from .engines import open_index
from .store import MODES, CorpusIndex, Hit, HybridParams

log = logging.getLogger(__name__)
SERVED_BY = "ace_served_by"
_INTERNAL = {"doc_id", "text"}


def embedding_spaces(embed_model: BaseEmbedding) -> list[tuple[str, BaseEmbedding]]:
    """(label, model) for each vector space the embedding may answer in; one for a plain embedding."""
    spaces = getattr(embed_model, "spaces", None)
    return spaces() if callable(spaces) else [(space_label(embed_model), embed_model)]


def named_vector(embed_model: BaseEmbedding, label: str) -> str:
    """The Qdrant named vector holding documents of the space ``label`` (the embedding may name its own)."""
    own = getattr(embed_model, "named_vector", None)
    return own(label) if callable(own) else vector_name(label)


def query_with_space(embed_model: BaseEmbedding, query: str) -> tuple[list[float], str]:
    embed = getattr(embed_model, "embed_query_with_space", None)
    return embed(query) if callable(embed) else (embed_model.get_query_embedding(query), space_label(embed_model))


def model_folder(embed_model: BaseEmbedding) -> str | None:
    """The local folder an embedding's model lives in, if any (where ``fusion.json`` is looked for)."""
    for attr in ("model_path", "model_name", "model_dir"):
        value = getattr(embed_model, attr, None)
        if isinstance(value, str) and Path(value).is_dir():
            return value
    base = getattr(embed_model, "base", None)  # an AdapterEmbedding searches its base's space
    return model_folder(base) if isinstance(base, BaseEmbedding) else None


def resolve_fusion(embed_model: BaseEmbedding, fusion: str | FusionChoice | None) -> FusionChoice:
    """``"auto"``: the fusion saved with the model (``fusion.json``), else dense (which never loses to dense);
    a path to a ``fusion.json`` or a model folder; or a :class:`FusionChoice`."""
    if isinstance(fusion, FusionChoice):
        return fusion
    if fusion in (None, "auto"):
        return load_fusion(model_folder(embed_model)) or DENSE_DEFAULT
    path = Path(fusion)
    if path.is_file():
        return load_fusion(path.parent) if path.name == FUSION_FILE else FusionChoice.from_dict(json.loads(path.read_text()), str(path))
    choice = load_fusion(path)
    if choice is None:
        raise OptionError(f"fusion={fusion!r}: expected 'auto', a FusionChoice, or a model folder / file with {FUSION_FILE}")
    return choice


class HybridQdrantRetriever(BaseRetriever):
    """Retrieve nodes from a Qdrant collection by dense, BM25, or hybrid search.

    By default (``mode=None, fusion="auto"``) it searches the way the model's validation chose: the ``fusion.json``
    that ``ace train``/``ace pipeline`` saved in the model folder (dense, BM25, RRF, DBSF or a convex combination),
    and dense when there is none, because plain RRF loses to dense on many collections. ``mode="hybrid"`` asks for
    hybrid explicitly (``fusion_method``: ``rrf`` by default, ``dbsf`` or ``convex`` with ``alpha``).

    Embedded Qdrant by default (``path=`` a folder, or a throwaway one when ``path`` and ``url`` are None): Qdrant
    Edge, the Qdrant engine in-process, when installed, else qdrant-client's local mode (``engine="auto"``, see
    :mod:`~ace_llamaindex.engines`); ``url=`` for a server or cluster. Each result's metadata says which embedding
    model served the query
    (``ace_served_by``): after a fallback, the baseline's named vector is searched, never the fine-tuned one.
    """

    def __init__(
        self,
        embed_model: BaseEmbedding,
        *,
        collection: str = "ace_memories",
        path: str | None = None,
        url: str | None = None,
        api_key: str | None = None,
        client: QdrantClient | None = None,
        mode: str | None = None,
        fusion: str | FusionChoice | None = "auto",
        similarity_top_k: int = 10,
        score_threshold: float | None = None,
        filters: MetadataFilters | None = None,
        rrf_k: int = 60,
        dense_weight: float = 1.0,
        sparse_weight: float = 1.0,
        fusion_method: str = "rrf",
        alpha: float = 0.5,
        prefetch_limit: int = 100,
        bm25: BM25Encoder | None = None,
        engine: str = "auto",
        **kwargs: Any,
    ) -> None:
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        super().__init__(**kwargs)
        self.embed_model = embed_model
        self.index = (CorpusIndex(client, collection, bm25) if client is not None
                      else open_index(collection, path=path, url=url, api_key=api_key, engine=engine, bm25=bm25))
        if similarity_top_k < 1:
            raise OptionError(f"similarity_top_k must be at least 1, got {similarity_top_k}")
        self.similarity_top_k = similarity_top_k
        self.missing_spaces: list[str] = []
        self.score_threshold = score_threshold
        to_qdrant_filter(filters)  # a filter of the wrong type is refused here, not at the first query
        self.filters = filters
        if mode is None:  # the model's own validated choice
            self.fusion = resolve_fusion(embed_model, fusion)
            self.mode, self.hybrid = self.fusion.mode, dataclasses.replace(self.fusion.params, prefetch_limit=prefetch_limit)
        else:
            self.mode = mode
            self.hybrid = HybridParams(rrf_k=rrf_k, dense_weight=dense_weight, sparse_weight=sparse_weight,
                                       prefetch_limit=prefetch_limit, method=fusion_method, alpha=alpha)
            self.fusion = FusionChoice(self.hybrid.describe() if mode == "hybrid" else mode, mode, self.hybrid,
                                       reason="set explicitly")

    # ---- indexing ------------------------------------------------------------------------------------------
    def add_nodes(self, nodes: Sequence[BaseNode], show_progress: bool = True) -> None:
        """Index LlamaIndex nodes or documents: one named dense vector per embedding space, plus BM25.

        The fine-tuned space must encode; a fallback that is down is skipped with a warning (its space is listed
        in ``missing_spaces``) rather than blocking indexing."""
        if not nodes:
            return
        texts = [n.get_content() for n in nodes]
        dense = {}
        for i, (label, model) in enumerate(embedding_spaces(self.embed_model)):  # every mode: the fusion may change
            try:
                dense[named_vector(self.embed_model, label)] = np.asarray(model.get_text_embedding_batch(texts, show_progress=show_progress),
                                                       dtype=np.float32)
            except EmbeddingError as exc:
                if i == 0:
                    raise
                log.warning("indexing without the fallback's vector space %r: %s", label, exc)
                self.missing_spaces.append(label)
        payloads = [dict(n.metadata) for n in nodes]
        self.index.upsert([n.node_id for n in nodes], texts, dense, payloads, show_progress=show_progress)

    # ---- retrieval -----------------------------------------------------------------------------------------
    def _search(self, queries: Sequence[str], vectors: list[list[float]] | None, labels: list[str] | None) -> list[list[NodeWithScore]]:
        results: list[list[NodeWithScore]] = [[] for _ in queries]
        qfilter = to_qdrant_filter(self.filters)
        groups: dict[str | None, list[int]] = {}
        for i in range(len(queries)):
            groups.setdefault(labels[i] if labels else None, []).append(i)
        for label, idx in groups.items():  # one batch per vector space
            hits = self.index.search(
                self.mode, vectors=np.asarray([vectors[i] for i in idx], dtype=np.float32) if label else None,
                texts=[queries[i] for i in idx], using=named_vector(self.embed_model, label) if label else None,
                limit=self.similarity_top_k, query_filter=qfilter, hybrid=self.hybrid, score_threshold=self.score_threshold,
            )
            for i, row in zip(idx, hits, strict=True):
                results[i] = [_to_node(h, label) for h in row]
        return results

    def _embed(self, queries: Sequence[str]) -> tuple[list[list[float]] | None, list[str] | None]:
        if self.mode == "bm25":
            return None, None
        pairs = [query_with_space(self.embed_model, q) for q in queries]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self.batch_retrieve([query_bundle.query_str])[0]

    def batch_retrieve(self, queries: Sequence[str]) -> list[list[NodeWithScore]]:
        """Retrieve for many queries; Qdrant receives them as batched requests."""
        vectors, labels = self._embed(queries)
        return self._search(queries, vectors, labels)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        labels = vectors = None
        if self.mode != "bm25":
            aembed = getattr(self.embed_model, "aembed_query_with_space", None)
            if callable(aembed):
                vector, label = await aembed(query_bundle.query_str)
            else:
                vector, label = await self.embed_model.aget_query_embedding(query_bundle.query_str), space_label(self.embed_model)
            vectors, labels = [vector], [label]
        return (await asyncio.to_thread(self._search, [query_bundle.query_str], vectors, labels))[0]


def _to_node(hit: Hit, served_by: str | None) -> NodeWithScore:
    metadata = {k: v for k, v in hit.payload.items() if k not in _INTERNAL}
    metadata[SERVED_BY] = served_by or "bm25"
    node = TextNode(id_=hit.doc_id, text=hit.text, metadata=metadata, excluded_embed_metadata_keys=[SERVED_BY],
                    excluded_llm_metadata_keys=[SERVED_BY])
    return NodeWithScore(node=node, score=hit.score)
