"""``HybridQdrantRetriever``: dense + BM25 fused with RRF inside Qdrant, as a LlamaIndex ``BaseRetriever``."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle, TextNode
from llama_index.core.vector_stores.types import MetadataFilters
from qdrant_client import QdrantClient

from ..errors import EmbeddingError, OptionError
from ..index.bm25 import BM25Encoder
from ..index.engines import open_index
from ..index.filters import to_qdrant_filter
from ..index.fusion_choice import FusionChoice
from ..index.store import MODES, CorpusIndex, Hit, HybridParams
from ..records.experiment import ExperimentRecord
from .experiment_arms import CHALLENGER, answered_by, running_challenger, serve_query
from .feedback import QUERY_ID, as_sink, new_query_id, record_feedback, served_record
from .spaces import aquery_with_space, embedding_spaces, model_folder, named_vector, query_with_space, resolve_fusion

log = logging.getLogger(__name__)
SERVED_BY = "ace_served_by"
_INTERNAL = {"doc_id", "text"}


class HybridQdrantRetriever(BaseRetriever):
    """Retrieve nodes from a Qdrant collection by dense, BM25, or hybrid search.

    By default (``mode=None, fusion="auto"``) it searches the way the model's validation chose: the ``fusion.json``
    that ``ace train``/``ace pipeline`` saved in the model folder (dense, BM25, RRF, DBSF or a convex combination),
    and dense when there is none, because plain RRF loses to dense on many collections. ``mode="hybrid"`` asks for
    hybrid explicitly (``fusion_method``: ``rrf`` by default, ``dbsf`` or ``convex`` with ``alpha``).

    Embedded Qdrant by default (``path=`` a folder, or a throwaway one when ``path`` and ``url`` are None): Qdrant
    Edge, the Qdrant engine in-process, when installed, else qdrant-client's local mode (``engine="auto"``, see
    :mod:`~ace_llamaindex.index.engines`); ``url=`` for a server or cluster. Each result's metadata says which embedding
    model served the query
    (``ace_served_by``): after a fallback, the baseline's named vector is searched, never the fine-tuned one.

    ``user_id=``: the user (or session) this retriever serves, as LlamaIndex's chat engines keep one per user: while
    an online experiment runs, a split keeps the user on one model and analyses by user (also
    ``batch_retrieve(queries, user_id=...)`` or :func:`~ace_llamaindex.serve.experiment_arms.experiment_session`).
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
        feedback_log: str | Path | Callable[[dict], None] | None = None,
        follow_rollouts: bool = True,
        user_id: str | None = None,
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
        self._explicit_mode, self._fusion_arg, self._prefetch_limit = mode, fusion, prefetch_limit
        if mode is None:  # the model's own validated choice
            self.fusion = resolve_fusion(embed_model, fusion)
            self.mode, self.hybrid = self.fusion.mode, dataclasses.replace(self.fusion.params, prefetch_limit=prefetch_limit)
        else:
            self.mode = mode
            self.hybrid = HybridParams(rrf_k=rrf_k, dense_weight=dense_weight, sparse_weight=sparse_weight,
                                       prefetch_limit=prefetch_limit, method=fusion_method, alpha=alpha)
            self.fusion = FusionChoice(self.hybrid.describe() if mode == "hybrid" else mode, mode, self.hybrid,
                                       reason="set explicitly")
        self.collection_name, self.follow_rollouts = collection, follow_rollouts
        self.user_id = None if user_id is None else str(user_id)  # an online experiment's unit (experiment_arms)
        self.feedback_log = as_sink(feedback_log)
        self._served = _Served(None, self.index, self.embed_model, self.mode, self.hybrid, self.fusion)  # the last one used
        self._by_target: dict[str, _Served] = {}

    # ---- rollouts: which collection (and model) serves now --------------------------------------------------
    def _current(self) -> _Served:
        """The collection the alias serves now and the model it was built with (resolved for each query, so a
        rollout or rollback reaches a running retriever; a query uses one pair from start to end)."""
        target = self.index.alias_target(self.collection_name) if self.follow_rollouts else None
        if target is None:  # not a rollout's alias: the retriever's own attributes, as set now
            return _Served(None, self.index, self.embed_model, self.mode, self.hybrid, self.fusion)
        if target == self._served.target:
            return self._served
        served = self._by_target.get(target)
        if served is None:
            served = self._open_target(target)
            self._by_target[target] = served
        self._served = served
        self.index = served.index
        return served

    def _open_target(self, target: str) -> _Served:
        from .served_model import model_embedding
        from .serving_record import collection_plan

        index = self.index.sibling(target)
        plan = collection_plan(index)
        embed = self.embed_model
        if plan and not _serves(embed, plan):
            embed = model_embedding(plan, fallback=getattr(self.embed_model, "fallback", None))
        if self._explicit_mode is not None:
            return _Served(target, index, embed, self.mode, self.hybrid, self.fusion)
        fusion = resolve_fusion(embed, self._fusion_arg if isinstance(self._fusion_arg, FusionChoice) else "auto")
        return _Served(target, index, embed, fusion.mode,
                       dataclasses.replace(fusion.params, prefetch_limit=self._prefetch_limit), fusion)

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
    def _search(self, served: _Served, queries: Sequence[str], vectors: list[list[float]] | None,
                labels: list[str] | None, log_served: bool = True) -> list[list[NodeWithScore]]:
        results: list[list[NodeWithScore]] = [[] for _ in queries]
        qfilter = to_qdrant_filter(self.filters)
        groups: dict[str | None, list[int]] = {}
        for i in range(len(queries)):
            groups.setdefault(labels[i] if labels else None, []).append(i)
        for label, idx in groups.items():  # one batch per vector space
            using = named_vector(served.embed_model, label) if label else None
            hits = served.index.search(
                served.mode, vectors=np.asarray([vectors[i] for i in idx], dtype=np.float32) if label else None,
                texts=[queries[i] for i in idx], using=using,
                limit=self.similarity_top_k, query_filter=qfilter, hybrid=served.hybrid, score_threshold=self.score_threshold,
            )
            for i, row in zip(idx, hits, strict=True):
                results[i] = [_to_node(h, label) for h in row]
                if self.feedback_log is not None and log_served:
                    self._log_served(served, queries[i], results[i], using, label or "bm25")
        return results

    def _log_served(self, served: _Served, query: str, nodes: list[NodeWithScore], using: str | None, label: str | None,
                    query_id: str | None = None, **experiment: Any) -> None:
        query_id = query_id or new_query_id()
        for n in nodes:
            n.node.metadata[QUERY_ID] = query_id
            n.node.excluded_embed_metadata_keys.append(QUERY_ID)
            n.node.excluded_llm_metadata_keys.append(QUERY_ID)
        if self.feedback_log is not None:
            self.feedback_log(served_record(query_id, query, [(n.node.node_id, n.score) for n in nodes], vector=using,
                                            model=label, fusion=served.fusion.name, collection=served.index.collection,
                                            **experiment))

    # ---- online experiments: the champion and a challenger, interleaved or split (serve.experiment_arms) ---------
    def _trial(self, served: _Served) -> tuple[_Served | Exception, ExperimentRecord] | None:
        """The challenger and its experiment while one runs on this collection (read for each query), else None."""
        found = running_challenger(self.index, self.collection_name, served.index.collection) \
            if self.follow_rollouts else None
        if found is None:
            return None
        arm = self._by_target.get(found.collection)
        if arm is None:
            try:
                arm = self._by_target[found.collection] = self._open_target(found.collection)
            except Exception as exc:  # noqa: BLE001 - a challenger that cannot load is measured (a guardrail), not shown
                return exc, found.record
        return arm, found.record

    def _ranked(self, served: _Served | Exception, query: str) -> tuple[list[NodeWithScore], float]:
        """One arm's results for a query (nothing logged) and the milliseconds it took."""
        if isinstance(served, Exception):  # the challenger's model could not be loaded
            raise served
        started = time.perf_counter()
        vectors, labels = self._embed(served, [query])
        results = self._search(served, [query], vectors, labels, log_served=False)[0]
        return results, (time.perf_counter() - started) * 1000

    def _experiment(self, champion: _Served, challenger: _Served | Exception, record: ExperimentRecord,
                    queries: Sequence[str], user_id: str | None = None) -> list[list[NodeWithScore]]:
        results = []
        for query in queries:  # one at a time: each query has its own unit, arm and coin flips
            query_id = new_query_id()
            nodes, teams, info = serve_query(record, query_id, lambda q=query: self._ranked(champion, q),
                                             lambda q=query: self._ranked(challenger, q), lambda n: n.node.node_id,
                                             self.similarity_top_k, session=user_id or self.user_id)
            if self.feedback_log is not None:
                label = "interleaved" if teams else (nodes[0].node.metadata.get(SERVED_BY) if nodes else None)
                served = challenger if answered_by(info) == CHALLENGER else champion  # split: the arm's collection
                self._log_served(served, query, nodes, None, label, query_id,
                                 **({"teams": teams, "experiment": info} if info else {}))
            results.append(nodes)
        return results

    def _answer(self, served: _Served, queries: Sequence[str]) -> list[list[NodeWithScore]]:
        vectors, labels = self._embed(served, queries)
        return self._search(served, queries, vectors, labels)

    def record_feedback(self, query_id: str, doc_id: str, relevant: bool) -> None:
        """Record a user's judgement of a result this retriever served (``node.metadata["ace_query_id"]``)."""
        if self.feedback_log is None:
            raise OptionError("this retriever has no feedback_log; pass feedback_log=PATH (or a callable)")
        record_feedback(self.feedback_log, query_id, doc_id, relevant)

    def _embed(self, served: _Served, queries: Sequence[str]) -> tuple[list[list[float]] | None, list[str] | None]:
        if served.mode == "bm25":
            return None, None
        pairs = [query_with_space(served.embed_model, q) for q in queries]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self.batch_retrieve([query_bundle.query_str])[0]

    def batch_retrieve(self, queries: Sequence[str], user_id: str | None = None) -> list[list[NodeWithScore]]:
        """Retrieve for many queries; Qdrant receives them as batched requests. While an online experiment runs on
        the collection, the challenger takes part as the experiment says (:mod:`~ace_llamaindex.serve.experiment_arms`);
        ``user_id`` (else the retriever's ``user_id=``, else :func:`~ace_llamaindex.serve.experiment_arms.experiment_session`'s)
        is the unit a split keeps on one model and analyses by."""
        served = self._current()
        trial = self._trial(served)
        if trial is not None:
            return self._experiment(served, *trial, queries, user_id)
        return self._answer(served, queries)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        served = await asyncio.to_thread(self._current)
        trial = await asyncio.to_thread(self._trial, served)
        if trial is not None:
            return (await asyncio.to_thread(self._experiment, served, *trial, [query_bundle.query_str]))[0]
        labels = vectors = None
        if served.mode != "bm25":
            vector, label = await aquery_with_space(served.embed_model, query_bundle.query_str)
            vectors, labels = [vector], [label]
        return (await asyncio.to_thread(self._search, served, [query_bundle.query_str], vectors, labels))[0]


def _serves(embed_model: BaseEmbedding, plan: dict) -> bool:
    """Whether ``embed_model`` is what a collection's serving plan describes (same model folder, same adapter)."""
    from ..embeddings.models import resolve_model
    from ..records.plan import ServingPlan

    folder = model_folder(getattr(embed_model, "base", None) or embed_model)
    path = getattr(embed_model, "model_path", None)
    name = folder or (resolve_model(path) if path else None)
    adapter = getattr(embed_model, "adapter_path", None)
    same = lambda a, b: (a is None and b is None) or (a and b and Path(a).resolve() == Path(b).resolve())  # noqa: E731
    plan = ServingPlan.from_dict(plan)
    return bool(same(name, plan.model)) and bool(same(adapter, plan.adapter))


@dataclass(frozen=True)
class _Served:
    """What serves a query: the collection (its alias target), its model, and how to search it."""

    target: str | None
    index: CorpusIndex
    embed_model: BaseEmbedding
    mode: str
    hybrid: HybridParams
    fusion: FusionChoice


def _to_node(hit: Hit, served_by: str | None) -> NodeWithScore:
    metadata = {k: v for k, v in hit.payload.items() if k not in _INTERNAL}
    metadata[SERVED_BY] = served_by or "bm25"
    node = TextNode(id_=hit.doc_id, text=hit.text, metadata=metadata, excluded_embed_metadata_keys=[SERVED_BY],
                    excluded_llm_metadata_keys=[SERVED_BY])
    return NodeWithScore(node=node, score=hit.score)
