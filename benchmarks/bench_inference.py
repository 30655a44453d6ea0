"""CPU inference backends, one run: torch vs ONNX, ONNX int8, OpenVINO, OpenVINO int8 of the same model.

    python benchmarks/bench_inference.py scifact [--queries 200] [--docs 1000]

The model (the bundled all-MiniLM-L6-v2, copied to a scratch folder) is exported with ``ace export``'s function,
checked on every *train* query (809) over 500 sampled documents plus theirs (so the test queries below are unseen by the
check). Then, for each backend served through ``FineTunedEmbedding(backend=...)``, each in a fresh process: single-query latency p50/p95 over the test queries
(two passes in fresh processes, the second in reverse order, pooled); raw batch
encoding throughput (docs/s, timed before and after the indexing run); ``ace index`` end-to-end throughput (``HybridQdrantRetriever.add_nodes`` on the
default engine: encode + BM25 + upsert) on the same documents; nDCG@10 of exact dense search on the whole test
split. Also what ``backend="auto"`` picks and its ratios to torch. Writes benchmarks/results/inference-<dataset>.json.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

from common import RESULTS, dataset_dir, save

from ace_llamaindex.data.beir import load_beir
from ace_llamaindex.embeddings.backends import choose_export, read_exports
from ace_llamaindex.embeddings.models import resolve_model
from ace_llamaindex.serve.embedding import FineTunedEmbedding
from ace_llamaindex.serve.retriever import HybridQdrantRetriever
from ace_llamaindex.train.exports import dense_ndcg, export_model

EXPORTS = [("onnx", None), ("onnx", "int8"), ("openvino", None), ("openvino", "int8")]


def check_set(train, n_docs: int = 500, seed: int = 7):
    """Every train query over its relevant documents plus a random sample of the corpus (100 queries, as before,
    could not tell a 0.005 nDCG@10 loss from noise)."""
    qids = sorted(train.queries)
    subset = train.subset(qids)
    keep = {d for q in qids for d in train.relevant_docs[q]}
    keep |= set(random.Random(seed).sample(sorted(train.corpus), n_docs))
    subset.corpus = {d: t for d, t in train.corpus.items() if d in keep}
    return subset


def query_times(model_dir: str, backend: str, queries: list[str]) -> list[float]:
    """Seconds per single-query ``get_query_embedding`` call, after one warm-up query."""
    embed = FineTunedEmbedding(model_dir, backend=backend)
    embed.get_query_embedding(queries[0])
    times = []
    for q in queries:
        started = time.perf_counter()
        embed.get_query_embedding(q)
        times.append(time.perf_counter() - started)
    return times


def latency(times: list[float]) -> dict:
    """p50/p95 in ms and queries per second from per-query seconds."""
    ms = sorted(1000 * t for t in times)
    return {"query_p50_ms": round(statistics.median(ms), 2), "query_p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 2),
            "queries_per_s": round(len(ms) / sum(times), 1)}


def measure(model_dir: str, backend: str, test, queries: list[str], docs: list[tuple[str, str]]) -> dict:
    from llama_index.core.schema import TextNode

    embed = FineTunedEmbedding(model_dir, backend=backend)
    model = embed._load()
    times = query_times(model_dir, backend, queries)
    texts = [t for _, t in docs]
    model.encode(texts[:64], batch_size=32)

    def encode_seconds() -> float:
        started = time.perf_counter()
        model.encode(texts, batch_size=32)
        return time.perf_counter() - started

    before = encode_seconds()
    retriever = HybridQdrantRetriever(embed, collection=f"bench-{backend}")
    started = time.perf_counter()
    retriever.add_nodes([TextNode(id_=d, text=t) for d, t in docs], show_progress=False)
    indexed = len(docs) / (time.perf_counter() - started)
    # raw encoding timed before and after the indexing run (A-B-A), so drift of the machine does not count as cost
    raw = len(texts) / ((before + encode_seconds()) / 2)
    return {"backend": backend, "served": model.ace_backend, **latency(times),
            "encode_docs_per_s": round(raw, 1), "index_docs_per_s": round(indexed, 1),
            "index_over_encode": round(indexed / raw, 3), "engine": type(retriever.index).__name__,
            "ndcg@10": round(dense_ndcg(model, test), 4), "_times": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--reuse-exports", action="store_true", help="keep the exports of an interrupted run")
    args = parser.parse_args()
    folder = dataset_dir(args.dataset)
    train, test = load_beir(folder, "train"), load_beir(folder, "test")
    model_dir = RESULTS / ".inference-run" / "model"
    check = check_set(train)
    if not (args.reuse_exports and read_exports(model_dir)):
        shutil.rmtree(model_dir.parent, ignore_errors=True)
        shutil.copytree(resolve_model(None), model_dir)
        for backend, quantize in EXPORTS:
            export_model(model_dir, backend, quantize, check=check)
            print("exported", backend, quantize, flush=True)
    records = {r.name: r for r in read_exports(model_dir)}
    auto = choose_export(model_dir, "auto")
    queries = list(test.queries.values())[: args.queries]
    docs = list(test.corpus.items())[: args.docs]
    rows = []
    spawn = multiprocessing.get_context("spawn")
    for backend in ["torch", *records]:  # each backend in a fresh process: no other runtime's threads beside it
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            rows.append(pool.submit(measure, str(model_dir), backend, test, queries, docs).result())
        print({k: v for k, v in rows[-1].items() if k != "_times"}, flush=True)
    # Latency again, each backend in a fresh process in the reverse order: single queries are a few ms, and this
    # machine drifts between processes; the table pools both passes (the order effects cancel).
    for row in reversed(rows):
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            again = pool.submit(query_times, str(model_dir), row["backend"], queries).result()
        row.update(latency(row.pop("_times") + again), latency_passes=2)
    torch_row = rows[0]
    auto_row = next(r for r in rows if r["served"] == (auto.name if auto else "torch"))
    result = {
        "dataset": args.dataset, "model": "all-MiniLM-L6-v2 (bundled)", "test_queries": len(test.queries),
        "test_documents": len(test.corpus), "latency_queries": len(queries), "throughput_documents": len(docs),
        "check": {"queries": len(check.queries), "documents": len(check.corpus), "split": "train"},
        "exports": {name: {**r.__dict__, "same_space": r.same_space, "auto_skips_because": r.why_not_auto()}
                    for name, r in records.items()},
        "auto_choice": auto.name if auto else "torch",
        "auto_vs_torch": {
            "query_throughput_ratio": round(auto_row["queries_per_s"] / torch_row["queries_per_s"], 2),
            "index_throughput_ratio": round(auto_row["index_docs_per_s"] / torch_row["index_docs_per_s"], 2),
            "ndcg@10_delta": round(auto_row["ndcg@10"] - torch_row["ndcg@10"], 4),
        },
        "rows": rows,
    }
    save(f"inference-{args.dataset}", result)  # the exports stay in .inference-run (ignored) for --reuse-exports
    print(result["auto_choice"], result["auto_vs_torch"])


if __name__ == "__main__":
    main()
