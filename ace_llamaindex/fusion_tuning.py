"""Pick RRF fusion weights on held-out queries: hybrid is not free (it can lose to dense alone), so measure it.

Uses :func:`~ace_llamaindex.evaluate.evaluate` itself, one hybrid system per grid point, so the tuned setting is
measured by exactly the code that serves it. Tune on queries that neither trained the model nor test it.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Any

from .dataset import QADataset
from .evaluate import Encoder, System, evaluate
from .store import HybridParams

# Qdrant weights stretch ranks (score 1 / (rank / w + k - 1)), so they matter most when k is small.
DEFAULT_WEIGHTS = ((1.0, 0.0), (1.0, 0.1), (1.0, 0.25), (1.0, 0.5), (1.0, 1.0), (0.5, 1.0), (0.25, 1.0))
DEFAULT_K = (2, 10, 60)


@dataclass
class FusionChoice:
    params: HybridParams
    metric: str
    scores: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        p = self.params
        return {"rrf_k": p.rrf_k, "dense_weight": p.dense_weight, "sparse_weight": p.sparse_weight, "metric": self.metric,
                "grid": self.scores}


def tune_fusion(dataset: QADataset, encoder: Encoder, metric: str = "ndcg@10",
                weights=DEFAULT_WEIGHTS, ks=DEFAULT_K, show_progress: bool = False, engine: str = "auto") -> FusionChoice:
    """Grid-search (dense_weight, sparse_weight) x rrf_k; return the best by ``metric`` (ties: fewer changes)."""
    grid = {f"dense={d},bm25={s},k={k}": HybridParams(rrf_k=k, dense_weight=d, sparse_weight=s)
            for (d, s), k in product(weights, ks)}
    systems = [System(name, "hybrid", encoder, params) for name, params in grid.items()]
    report = evaluate(dataset, systems, comparisons=[], show_progress=show_progress, resamples=1, engine=engine)
    scores = {name: report.overall(name, metric) for name in grid}
    best = max(scores, key=lambda n: scores[n])
    return FusionChoice(grid[best], metric, scores)
