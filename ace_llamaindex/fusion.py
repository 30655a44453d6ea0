"""Reciprocal Rank Fusion, for callers that fuse in Python (LlamaIndex's stock ``QdrantVectorStore``).

Our own retriever fuses inside Qdrant (``prefetch`` + ``RrfQuery``); this function gives users of the stock store
the same fusion: ``QdrantVectorStore(enable_hybrid=True, hybrid_fusion_fn=rrf_fusion, ...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DEFAULT_RRF_K = 60


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
