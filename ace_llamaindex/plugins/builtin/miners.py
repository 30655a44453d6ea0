"""Built-in miners: dense, bm25 and hybrid retrieval over a real Qdrant collection."""

from __future__ import annotations

from functools import partial

from ...mine.mining import HardNegativeMiner
from ..hookspecs import hookimpl


@hookimpl
def register_miners(register):
    register("dense", partial(HardNegativeMiner, "dense"), "top wrong results of the embedding model (Qdrant dense search)")
    register("bm25", partial(HardNegativeMiner, "bm25"), "top wrong results of BM25 (Qdrant sparse vectors, IDF modifier)")
    register("hybrid", partial(HardNegativeMiner, "hybrid"), "top wrong results of dense + BM25 fused with RRF in Qdrant")
