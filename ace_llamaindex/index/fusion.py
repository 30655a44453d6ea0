"""Reciprocal Rank Fusion, for callers that fuse in Python (LlamaIndex's stock ``QdrantVectorStore``).

Our own retriever fuses with :func:`rrf_scores` over both lists ranked by score then point id (``CorpusIndex``);
this function gives users of the stock store the same fusion: ``QdrantVectorStore(enable_hybrid=True, hybrid_fusion_fn=rrf_fusion, ...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DEFAULT_RRF_K = 60
FUSION_METHODS = ("rrf", "dbsf", "convex")
# Theoretical minimum of each score (Bruch et al.'s TM2C2): cosine similarity is >= -1, a BM25 score >= 0.
DENSE_MIN, BM25_MIN = -1.0, 0.0


def _tmm(scores: Sequence[tuple[str, float]], floor: float) -> dict[str, float]:
    """Theoretical-min-max normalisation: ``(s - floor) / (max - floor)``, in [0, 1]."""
    if not scores:
        return {}
    top = max(s for _, s in scores)
    span = top - floor
    return {d: (s - floor) / span if span > 0 else 0.0 for d, s in scores}


def convex_scores(dense: Sequence[tuple[str, float]], sparse: Sequence[tuple[str, float]], alpha: float) -> dict[str, float]:
    """``alpha * tmm(dense) + (1 - alpha) * tmm(bm25)`` for every document in either list (Bruch, Gai & Ingber,
    "An Analysis of Fusion Functions for Hybrid Retrieval", TOIS 2023). A document missing from one list gets that
    list's theoretical minimum (0 after normalisation). Scores lie in [0, 1]; 1 means top of both lists."""
    d, s = _tmm(dense, DENSE_MIN), _tmm(sparse, BM25_MIN)
    return {doc: alpha * d.get(doc, 0.0) + (1 - alpha) * s.get(doc, 0.0) for doc in d.keys() | s.keys()}


def rrf_scores(rankings: Sequence[Sequence[str]], k: int = DEFAULT_RRF_K, weights: Sequence[float] | None = None) -> dict[str, float]:
    """Weighted RRF exactly as Qdrant computes it, so Python-side and server-side fusion rank alike.

    ``score(d) = sum_i 1 / (rank_i(d) / w_i + k - 1)`` with ranks from 1 (Cormack et al., 2009, with Qdrant's
    weighting: a weight stretches a list's ranks; weight 0 drops the list). With all weights 1 this is
    ``1 / (k - 1 + rank)``.
    """
    weights = list(weights) if weights is not None else [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"got {len(weights)} weights for {len(rankings)} rankings")
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + (1.0 / (rank / weight + k - 1) if weight > 0 else 0.0)
    return scores


def rrf_fusion(dense_result: Any, sparse_result: Any, alpha: float = 0.5, top_k: int = 2, k: int = DEFAULT_RRF_K, **kwargs: Any) -> Any:
    """A ``hybrid_fusion_fn`` for LlamaIndex's ``QdrantVectorStore``: weighted RRF of dense and sparse results.

    ``alpha`` keeps LlamaIndex's meaning (1 = dense only, 0 = sparse only); the list weights are
    ``(2 * alpha, 2 * (1 - alpha))``, so the default 0.5 is plain RRF, the same as :class:`HybridQdrantRetriever`.
    """
    from llama_index.core.vector_stores.types import VectorStoreQueryResult

    nodes = {}
    rankings = []
    for result in (dense_result, sparse_result):
        ids = list(result.ids or [])
        rankings.append(ids)
        for node_id, node in zip(ids, result.nodes or [], strict=False):
            nodes.setdefault(node_id, node)
    fused = rrf_scores(rankings, k=k, weights=[2 * alpha, 2 * (1.0 - alpha)])
    top = sorted(fused, key=fused.get, reverse=True)[:top_k]
    return VectorStoreQueryResult(nodes=[nodes[i] for i in top], similarities=[fused[i] for i in top], ids=top)
