"""Built-in miners: dense, bm25 and hybrid retrieval over a real Qdrant collection."""

from __future__ import annotations

from functools import partial

from ...mine.mining import HardNegativeMiner
from ..hookspecs import hookimpl


def _sparse_only(miner):
    """Declare that ``miner`` searches a collection's sparse vectors alone (``dense = False``; see the hook's doc)."""
    miner.dense = False
    return miner


@hookimpl
def register_miners(register):
    register("dense", partial(HardNegativeMiner, "dense"), "top wrong results of the embedding model (Qdrant dense search)")
    register("bm25", _sparse_only(partial(HardNegativeMiner, "bm25")),
             "top wrong results of BM25 (Qdrant sparse vectors, IDF modifier)")
    register("hybrid", partial(HardNegativeMiner, "hybrid"), "top wrong results of dense + BM25 fused with RRF in Qdrant")
