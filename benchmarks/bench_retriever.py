"""Our HybridQdrantRetriever vs LlamaIndex's stock QdrantVectorStore hybrid (with our BM25 functions and RRF), same
model, same document vectors, same embedded Qdrant, one run: nDCG@10, per-query latency p50/p95, and our
retrieval overhead relative to the model's own forward pass for one query.

    python benchmarks/bench_retriever.py scifact [--queries 300]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import numpy as np
from common import CACHE, dataset_dir, save

from ace_llamaindex.data.beir import load_beir
from ace_llamaindex.embeddings.encoding import CachedEncoder
from ace_llamaindex.evaluate.metrics import ndcg_at
from ace_llamaindex.index.bm25 import BM25Encoder
from ace_llamaindex.index.fusion import rrf_fusion
from ace_llamaindex.serve.embedding import FineTunedEmbedding
from ace_llamaindex.serve.retriever import HybridQdrantRetriever

NDCG10 = ndcg_at(10)


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = sorted(1000 * s for s in samples)
    return {"p50_ms": round(statistics.median(ms), 2), "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 2)}


def run(name, retrieve, ds, qids, key):
    latencies, scores = [], []
    for q in qids:
        started = time.perf_counter()
        nodes = retrieve(ds.queries[q])
        latencies.append(time.perf_counter() - started)
        scores.append(NDCG10([key(n) for n in nodes], set(ds.relevant_docs[q])))
    return {"system": name, "ndcg@10": round(float(np.mean(scores)), 4), **percentiles(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset")
    parser.add_argument("--split", default="test")
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--name", default=None, help="result file name (default retriever-<dataset>)")
    args = parser.parse_args()
    ds = load_beir(dataset_dir(args.dataset), args.split)
    qids = list(ds.queries)[: args.queries or None]
    ids, texts = list(ds.corpus), list(ds.corpus.values())
    vectors = CachedEncoder(cache_dir=CACHE).encode_documents(texts)  # shared by both stores (cached on disk)
    embed = FineTunedEmbedding()  # real forward pass for every query, in both systems

    named = {embed.named_vector(embed.model_name): vectors}
    ours = HybridQdrantRetriever(embed, similarity_top_k=10, mode="hybrid", engine="local")
    ours.index.upsert(ids, texts, named, show_progress=True)
    edge = HybridQdrantRetriever(embed, similarity_top_k=10, engine="edge", mode="hybrid")
    edge.index.upsert(ids, texts, named, show_progress=True)
    # The other fusions serving may pick (fusion.json), on the same Edge shard.
    edge_convex = HybridQdrantRetriever(embed, similarity_top_k=10, engine="edge", mode="hybrid", fusion_method="convex", alpha=0.7)
    edge_convex.index = edge.index
    edge_dbsf = HybridQdrantRetriever(embed, similarity_top_k=10, engine="edge", mode="hybrid", fusion_method="dbsf")
    edge_dbsf.index = edge.index

    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.vector_stores.qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient, models

    bm25 = BM25Encoder().fit(texts)
    store = QdrantVectorStore("stock", client=QdrantClient(":memory:"), enable_hybrid=True, sparse_doc_fn=bm25.sparse_doc_fn,
                              sparse_query_fn=bm25.sparse_query_fn, hybrid_fusion_fn=rrf_fusion, batch_size=256,
                              sparse_config=models.SparseVectorParams(modifier=models.Modifier.IDF))
    uid = {d: str(uuid.uuid5(uuid.NAMESPACE_URL, d)) for d in ids}
    back = {v: k for k, v in uid.items()}
    nodes = [TextNode(id_=uid[d], text=t, embedding=v.tolist()) for d, t, v in zip(ids, texts, vectors, strict=True)]
    stock_index = VectorStoreIndex(nodes, embed_model=embed, storage_context=StorageContext.from_defaults(vector_store=store),
                                   show_progress=True)
    stock = stock_index.as_retriever(vector_store_query_mode="hybrid", similarity_top_k=10, sparse_top_k=100, hybrid_top_k=10)
    stock_dense = stock_index.as_retriever(similarity_top_k=10)

    for q in qids[:5]:  # warm up every path
        ours.retrieve(ds.queries[q]), edge.retrieve(ds.queries[q]), stock.retrieve(ds.queries[q])
    forward = []
    for q in qids:
        started = time.perf_counter()
        embed.get_query_embedding(ds.queries[q])
        forward.append(time.perf_counter() - started)
    rows = [
        run("ours, edge engine: HybridQdrantRetriever (RRF k=60, fused in CorpusIndex over 2 x 100 candidates)", edge.retrieve, ds, qids, lambda n: n.node.node_id),
        run("ours, edge engine: convex(alpha=0.7), fused in Python over 2 x 100 candidates", edge_convex.retrieve, ds, qids,
            lambda n: n.node.node_id),
        run("ours, edge engine: DBSF, fused in CorpusIndex over 2 x 100 candidates", edge_dbsf.retrieve, ds, qids, lambda n: n.node.node_id),
        run("ours, local mode: HybridQdrantRetriever (RRF k=60, fused in CorpusIndex over 2 x 100 candidates)", ours.retrieve, ds, qids, lambda n: n.node.node_id),
        run("stock: QdrantVectorStore hybrid + our BM25 + rrf_fusion", stock.retrieve, ds, qids, lambda n: back[n.node.node_id]),
        run("stock: QdrantVectorStore dense only", stock_dense.retrieve, ds, qids, lambda n: back[n.node.node_id]),
    ]
    ours.mode = edge.mode = "dense"
    rows.append(run("ours, local mode: dense only", ours.retrieve, ds, qids, lambda n: n.node.node_id))
    rows.append(run("ours, edge engine: dense only", edge.retrieve, ds, qids, lambda n: n.node.node_id))
    fwd = percentiles(forward)
    for row in rows:
        row["overhead_over_forward_p50"] = round((row["p50_ms"] - fwd["p50_ms"]) / fwd["p50_ms"], 3)
    result = {"dataset": args.dataset, "split": args.split, "queries": len(qids), "documents": len(ids),
              "model_forward_one_query": fwd, "systems": rows,
              "note": "local mode = qdrant-client's embedded mode (brute force in Python; the stock store uses it too); "
                      "edge = Qdrant Edge, Qdrant's engine in-process"}
    save(args.name or f"retriever-{args.dataset}", result)
    for row in rows:
        print(row)
    print("forward", fwd)


if __name__ == "__main__":
    main()
