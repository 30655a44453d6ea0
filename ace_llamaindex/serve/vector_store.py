"""``AceQdrantVectorStore``: a LlamaIndex vector store over Qdrant with BM25 and validated fusion built in.

It is a ``BasePydanticVectorStore``, so it works where LlamaIndex expects one: ``VectorStoreIndex.from_vector_store``,
``IngestionPipeline(vector_store=...)`` (with a docstore, re-ingesting unchanged documents changes nothing and a
changed document replaces its chunks), ``index.insert`` / ``delete_ref_doc``, ``as_retriever(vector_store_query_mode=
"default" | "sparse" | "hybrid", alpha=..., filters=...)`` and ``as_query_engine``. Node <-> payload conversion is
LlamaIndex's own (``node_to_metadata_dict`` / ``metadata_dict_to_node``), so ``ref_doc_id`` and relationships survive.
Points are keyed by node id: upserts are idempotent. Search and fusion go through the same
:class:`~ace_llamaindex.index.store.CorpusIndex` as our retriever and evaluation, on any engine (local, Edge, a server).

Modes: ``default`` is the fusion saved with the embedding model (``fusion.json``; dense without one), ``sparse`` is
BM25, ``hybrid`` is a convex combination with LlamaIndex's ``alpha`` (1 = dense only) when given, else the model's
hybrid fusion, else plain RRF. Hybrid scores are in [0, 1]; the raw dense/BM25/fused scores are in the node metadata
(``ace_scores``) for convex fusion.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import BaseNode, MetadataMode, TextNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
from pydantic import Field, PrivateAttr
from qdrant_client import models

from ..errors import OptionError
from ..index.engines import open_index
from ..index.filters import to_qdrant_filter
from ..index.fusion_choice import DENSE_DEFAULT, FusionChoice
from ..index.store import CorpusIndex, Hit, HybridParams
from .embedding import space_label
from .experiment_arms import CHALLENGER, Challenger, answered_by, running_challenger, serve_query
from .feedback import QUERY_ID, as_sink, new_query_id, record_feedback, served_record
from .spaces import embedding_spaces, named_vector, query_with_space, resolve_fusion

_OURS = {"doc_id", "text"}  # payload keys CorpusIndex writes for itself


class AceQdrantVectorStore(BasePydanticVectorStore):
    """Qdrant (embedded: Qdrant Edge when installed, else qdrant-client's local mode; a server by ``url``) with one
    named dense vector per embedding space and BM25, for ``VectorStoreIndex`` and ``IngestionPipeline``."""

    stores_text: bool = True
    is_embedding_query: bool = True
    flat_metadata: bool = False
    collection_name: str = Field(default="ace_memories", description="Qdrant collection")
    path: str | None = Field(default=None, description="Embedded Qdrant folder (None and no url: in memory)")
    url: str | None = Field(default=None, description="Qdrant server or cluster")
    engine: str = Field(default="auto", description="auto, local (qdrant-client), edge (Qdrant Edge in-process), or a "
                        "registered engine; auto: see ace_llamaindex.index.engines")
    prefetch_limit: int = Field(default=100, description="Candidates per list before fusion")
    feedback_log: Any = Field(default=None, exclude=True, description="A file path (JSON lines) or callable receiving "
                              "what each query served (ace_llamaindex.serve.feedback); None: off")
    _index: CorpusIndex = PrivateAttr()
    _embed_model: BaseEmbedding | None = PrivateAttr(default=None)
    _fusion: FusionChoice = PrivateAttr(default=DENSE_DEFAULT)
    _challengers: dict[tuple[str, str], BaseEmbedding] = PrivateAttr(default_factory=dict)  # online experiments

    def __init__(self, collection_name: str = "ace_memories", *, embed_model: BaseEmbedding | None = None,
                 fusion: str | FusionChoice | None = "auto", api_key: str | None = None, **kwargs: Any) -> None:
        """``embed_model``: the model whose vectors the store holds (and whose folder's ``fusion.json`` sets the
        default mode). Its fallback's space, if any, is indexed too. Without it, nodes must arrive embedded."""
        super().__init__(collection_name=collection_name, **kwargs)
        self._index = open_index(collection_name, path=self.path, url=self.url, api_key=api_key, engine=self.engine)
        target = self._index.alias_target(collection_name)
        if target and target != self._index.collection:
            # LlamaIndex embeds the query before the store sees it, so the store cannot follow a rollout's model
            # switch: it stays on the collection the alias served when it was opened (HybridQdrantRetriever follows).
            self._index = self._index.sibling(target)
        self.feedback_log = as_sink(self.feedback_log)
        self._embed_model = embed_model
        self._fusion = resolve_fusion(embed_model, fusion) if embed_model is not None else DENSE_DEFAULT

    @classmethod
    def class_name(cls) -> str:
        return "AceQdrantVectorStore"

    @property
    def client(self) -> Any:
        return self._index

    @property
    def fusion(self) -> FusionChoice:
        """What ``default`` mode searches with."""
        return self._fusion

    def _primary_vector(self) -> str:
        model = self._embed_model
        return named_vector(model, model.model_name) if model is not None else "dense"

    # ---- writing -------------------------------------------------------------------------------------------------
    def add(self, nodes: list[BaseNode], **kwargs: Any) -> list[str]:
        """Upsert nodes by id: their embedding (or the store's ``embed_model``'s), every other space of that model,
        BM25 of the text, and LlamaIndex's payload (``ref_doc_id``, relationships, metadata)."""
        if not nodes:
            return []
        texts = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        missing = [i for i, n in enumerate(nodes) if n.embedding is None]
        if missing and self._embed_model is None:
            raise OptionError(f"node {nodes[missing[0]].node_id!r} has no embedding and the store has no embed_model")
        dense: dict[str, np.ndarray] = {}
        if self._embed_model is not None:
            for i, (label, model) in enumerate(embedding_spaces(self._embed_model)):
                if i > 0 or missing:
                    try:
                        vectors = model.get_text_embedding_batch(texts)
                    except Exception:  # noqa: BLE001 - a fallback that is down must not block indexing
                        if i == 0:
                            raise
                        continue
                    if i == 0:  # keep embeddings LlamaIndex already computed
                        vectors = [n.embedding if n.embedding is not None else v for n, v in zip(nodes, vectors, strict=True)]
                    dense[named_vector(self._embed_model, label)] = np.asarray(vectors, dtype=np.float32)
        if self._primary_vector() not in dense:
            dense[self._primary_vector()] = np.asarray([n.embedding for n in nodes], dtype=np.float32)
        payloads = [node_to_metadata_dict(n, remove_text=True, flat_metadata=self.flat_metadata) for n in nodes]
        # BM25 reads the text the node shows to an LLM (no excluded keys), as LlamaIndex's text is stored plain.
        self._index.upsert([n.node_id for n in nodes], [n.get_content(metadata_mode=MetadataMode.NONE) for n in nodes],
                           dense, payloads, show_progress=False)
        return [n.node_id for n in nodes]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every chunk of one source document."""
        self._index.delete_documents(where=_ref_doc_filter([ref_doc_id]))

    def delete_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **kwargs: Any) -> None:
        self._index.delete_documents(node_ids, to_qdrant_filter(filters))

    def get_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None) -> list[BaseNode]:
        return [_to_node(h.payload, h.text) for h in self._index.get_documents(node_ids, to_qdrant_filter(filters))]

    def clear(self) -> None:
        self._index.delete()

    # ---- searching -------------------------------------------------------------------------------------------
    def _plan(self, query: VectorStoreQuery) -> tuple[str, HybridParams]:
        mode = query.mode
        if mode == VectorStoreQueryMode.SPARSE:
            return "bm25", HybridParams()
        if mode == VectorStoreQueryMode.HYBRID:
            if query.alpha is not None:
                return "hybrid", HybridParams(method="convex", alpha=float(query.alpha), prefetch_limit=self.prefetch_limit)
            if self._fusion.mode == "hybrid":
                return "hybrid", dataclasses.replace(self._fusion.params, prefetch_limit=self.prefetch_limit)
            return "hybrid", HybridParams(prefetch_limit=self.prefetch_limit)
        if mode == VectorStoreQueryMode.DEFAULT:
            return self._fusion.mode, dataclasses.replace(self._fusion.params, prefetch_limit=self.prefetch_limit)
        raise OptionError(f"query mode {mode!r} is not supported; use default, sparse or hybrid")

    def query(self, query: VectorStoreQuery, user_id: str | None = None, **kwargs: Any) -> VectorStoreQueryResult:
        """Search by the query's own embedding (``QueryBundle.embedding`` and custom embedding strings included)
        and its text for BM25. ``user_id``: the user (or session) asking, the unit an online experiment's split keeps
        on one model and analyses by (LlamaIndex passes it from ``as_retriever(vector_store_kwargs={"user_id": ...})``;
        default: :func:`~ace_llamaindex.serve.experiment_arms.experiment_session`'s)."""
        mode, params = self._plan(query)
        if mode != "bm25" and query.query_embedding is None:
            raise OptionError(f"{mode} search needs a query embedding")
        if mode != "dense" and not query.query_str:
            raise OptionError(f"{mode} search needs the query text")
        limit = query.similarity_top_k
        if mode == "bm25" and query.sparse_top_k:
            limit = query.sparse_top_k
        if mode == "hybrid" and query.hybrid_top_k:
            limit = query.hybrid_top_k
        conditions = [c for c in (to_qdrant_filter(query.filters),
                                  _ref_doc_filter(query.doc_ids) if query.doc_ids else None,
                                  models.Filter(must=[models.HasIdCondition(has_id=_point_ids(query.node_ids))]) if query.node_ids else None)
                      if c is not None]
        qfilter = models.Filter(must=conditions) if conditions else None

        # during an experiment both arms are timed the same way: embedding the query text, then searching
        timed_embedding = self._embed_model is not None and mode != "bm25" and bool(query.query_str)

        def champion() -> tuple[list[Hit], float]:
            started = time.perf_counter()
            if timed_embedding:  # LlamaIndex embedded it before the store saw it: embedded again, for the clock only
                query_with_space(self._embed_model, query.query_str)
            hits = self._index.search(
                mode, vectors=None if mode == "bm25" else np.asarray([query.query_embedding], dtype=np.float32),
                texts=[query.query_str or ""], using=None if mode == "bm25" else self._primary_vector(), limit=limit,
                query_filter=qfilter, hybrid=params)[0]
            return hits, (time.perf_counter() - started) * 1000

        # an online experiment on this collection (read for each query: started, ramped or ended by another process)
        found = running_challenger(self._index, self.collection_name, self._index.collection)
        teams = experiment = None
        query_id = new_query_id()
        collection = self._index.collection
        if found is None:
            hits = champion()[0]
        else:
            hits, teams, experiment = serve_query(
                found.record, query_id, champion,
                lambda: self._challenger_hits(found, query, mode, params, limit, qfilter, timed_embedding),
                lambda h: h.doc_id, limit, session=user_id)
            if answered_by(experiment) == CHALLENGER:  # split: the challenger's collection answered
                collection = found.collection
        nodes = [_to_node(h.payload, h.text) for h in hits]
        if self.feedback_log is not None:
            self._log_served(query, mode, params, nodes, [h.score for h in hits], query_id, collection, teams, experiment)
        return VectorStoreQueryResult(nodes=nodes, similarities=[h.score for h in hits], ids=[n.node_id for n in nodes])

    # ---- online experiments (ace_llamaindex.serve.experiment_arms) ----------------------------------------------
    def _challenger_hits(self, challenger: Challenger, query: VectorStoreQuery, mode: str, params: HybridParams,
                         limit: int, qfilter: models.Filter | None,
                         timed_embedding: bool = True) -> tuple[list[Hit], float]:
        """The challenger's results: LlamaIndex embedded the query with the champion's model, so the challenger's own
        model (its collection's serving plan) embeds the query text here. Its time includes that embedding when the
        champion's does (``timed_embedding``: the store has the champion's model to time), else only the search."""
        from .served_model import model_embedding
        from .serving_record import VECTOR_KEY, collection_plan

        meta = challenger.metadata
        plan = collection_plan(meta)
        key = (challenger.collection, str(plan))
        if key not in self._challengers:  # a model that cannot load raises here: measured, the champion answers
            self._challengers[key] = model_embedding(plan)
        started = time.perf_counter()  # loading the model once is not a query's latency (as in the retriever)
        vector = None
        if mode != "bm25":
            if not query.query_str:
                raise OptionError("an online experiment needs the query text to embed it with the challenger's model")
            vector, _ = query_with_space(self._challengers[key], query.query_str)
        if not timed_embedding:
            started = time.perf_counter()
        hits = self._index.sibling(challenger.collection).search(mode, vectors=None if vector is None else np.asarray([vector], dtype=np.float32),
                                 texts=[query.query_str or ""], using=None if mode == "bm25" else meta.get(VECTOR_KEY),
                                 limit=limit, query_filter=qfilter, hybrid=params)[0]
        return hits, (time.perf_counter() - started) * 1000


    def _log_served(self, query: VectorStoreQuery, mode: str, params: HybridParams, nodes: list[BaseNode],
                    scores: list[float], query_id: str, collection: str, teams: list[str] | None = None,
                    experiment: dict[str, Any] | None = None) -> None:
        for node in nodes:
            node.metadata[QUERY_ID] = query_id
            node.excluded_embed_metadata_keys = [*node.excluded_embed_metadata_keys, QUERY_ID]
            node.excluded_llm_metadata_keys = [*node.excluded_llm_metadata_keys, QUERY_ID]
        self.feedback_log(served_record(
            query_id, query.query_str or "", [(n.node_id, s) for n, s in zip(nodes, scores, strict=True)],
            vector=None if mode == "bm25" else self._primary_vector(),
            model=space_label(self._embed_model) if self._embed_model is not None else None,
            fusion=params.describe() if mode == "hybrid" else mode, collection=collection, teams=teams,
            experiment=experiment))

    def record_feedback(self, query_id: str, doc_id: str, relevant: bool) -> None:
        """Record a user's judgement of a node this store served (``node.metadata["ace_query_id"]``)."""
        if self.feedback_log is None:
            raise OptionError("this vector store has no feedback_log; pass feedback_log=PATH (or a callable)")
        record_feedback(self.feedback_log, query_id, doc_id, relevant)


def _point_ids(node_ids: list[str]) -> list[str]:
    from ..index.store import point_id

    return [point_id(n) for n in node_ids]


def _ref_doc_filter(ref_doc_ids: list[str]) -> models.Filter:
    return models.Filter(must=[models.FieldCondition(key="ref_doc_id", match=models.MatchAny(any=list(ref_doc_ids)))])


def _to_node(payload: dict[str, Any], text: str) -> BaseNode:
    """LlamaIndex's node from its payload; points written by other tools (no ``_node_content``) become TextNodes."""
    if "_node_content" in payload:
        node = metadata_dict_to_node({k: v for k, v in payload.items() if k not in _OURS}, text=text)
    else:
        node = TextNode(id_=str(payload.get("doc_id")), text=text, metadata={k: v for k, v in payload.items() if k not in _OURS})
    if "ace_scores" in payload:
        node.metadata["ace_scores"] = payload["ace_scores"]
        node.excluded_embed_metadata_keys = [*node.excluded_embed_metadata_keys, "ace_scores"]
        node.excluded_llm_metadata_keys = [*node.excluded_llm_metadata_keys, "ace_scores"]
    return node
