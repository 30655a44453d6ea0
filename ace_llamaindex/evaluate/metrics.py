"""Ranking metrics for one query: a ranked list of document ids against the set of relevant ids.

Definitions are the standard ones (as in trec_eval / ir_measures with binary relevance): Recall@k is the fraction
of relevant documents in the top k (for a query with one relevant memory it is the hit rate), MRR@k the reciprocal
rank of the first relevant document within k, nDCG@k with gain 1 and log2 discount.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

Metric = Callable[[Sequence[str], set[str]], float]


def recall_at(k: int) -> Metric:
    def recall(ranked: Sequence[str], relevant: set[str]) -> float:
        return len(set(ranked[:k]) & relevant) / len(relevant) if relevant else 0.0

    recall.__doc__ = f"Fraction of the relevant documents found in the top {k}."
    return recall


def mrr_at(k: int) -> Metric:
    def mrr(ranked: Sequence[str], relevant: set[str]) -> float:
        for rank, doc in enumerate(ranked[:k], 1):
            if doc in relevant:
                return 1.0 / rank
        return 0.0

    mrr.__doc__ = f"Reciprocal rank of the first relevant document within the top {k}."
    return mrr


def ndcg_at(k: int) -> Metric:
    def ndcg(ranked: Sequence[str], relevant: set[str]) -> float:
        dcg = sum(1.0 / math.log2(rank + 1) for rank, doc in enumerate(ranked[:k], 1) if doc in relevant)
        ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(k, len(relevant)) + 1))
        return dcg / ideal if ideal else 0.0

    ndcg.__doc__ = f"Normalised discounted cumulative gain at {k} (binary gains)."
    return ndcg


BUILTIN_METRICS: dict[str, Metric] = {
    "recall@1": recall_at(1),
    "recall@5": recall_at(5),
    "recall@10": recall_at(10),
    "mrr@10": mrr_at(10),
    "ndcg@10": ndcg_at(10),
}
