"""How cost grows with the corpus: hybrid query latency and indexing time per engine at 10k, 100k and 1M documents.

    python benchmarks/bench_scale.py [--sizes 10000,100000,1000000] [--local-max 100000] [--queries 50]

Documents are two sentences drawn at random from the shipped datasets' corpora (real text, so BM25 has real term
statistics); dense vectors are random unit vectors (384-d, like MiniLM): the engine's cost does not depend on
what the vectors mean. Queries are the datasets' real queries with random vectors. Each engine indexes into a
fresh folder in bulk (``CorpusIndex.upsert`` in chunks of 50k, then ``optimize()``: Edge builds its HNSW index),
then answers single hybrid (RRF) queries one at a time, top 10. qdrant-client's local mode is run up to
``--local-max`` documents (it searches by brute force in Python). Writes benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import time

import numpy as np
from common import DATA, RESULTS, save

from ace_llamaindex.index.engines import open_index

DIM, CHUNK = 384, 50_000


def sentences() -> list[str]:
    found = []
    for corpus in sorted(DATA.glob("*/corpus.jsonl")):
        for line in corpus.open(encoding="utf-8"):
            text = json.loads(line).get("text", "")
            found += [s for s in re.split(r"(?<=[.!?])\s+", text) if 20 <= len(s) <= 300]
    return found


def queries(n: int, seed: int) -> list[str]:
    found = [json.loads(line)["text"] for q in sorted(DATA.glob("*/queries.jsonl")) for line in q.open(encoding="utf-8")]
    return random.Random(seed).sample(found, n)


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def run(engine: str, size: int, pool: list[str], query_texts: list[str], seed: int) -> dict:
    rng, pick = np.random.default_rng(seed), random.Random(seed)
    folder = RESULTS / f".scale-{engine}-run"
    shutil.rmtree(folder, ignore_errors=True)
    index = open_index("scale", path=str(folder), engine=engine)
    written = 0.0
    for start in range(0, size, CHUNK):
        n = min(CHUNK, size - start)
        texts = [f"{pick.choice(pool)} {pick.choice(pool)}" for _ in range(n)]
        vectors = unit_vectors(rng, n)
        began = time.perf_counter()
        index.upsert([str(i) for i in range(start, start + n)], texts, {"dense": vectors}, show_progress=False, optimize=False)
        written += time.perf_counter() - began
        print(f"  {engine} {start + n}/{size} written, {written:.0f} s", flush=True)
    began = time.perf_counter()
    index.optimize()
    optimized = time.perf_counter() - began
    qv = unit_vectors(rng, len(query_texts))
    index.search("hybrid", vectors=qv[:1], texts=query_texts[:1], using="dense", limit=10)  # warm-up
    times = []
    for i, text in enumerate(query_texts):
        began = time.perf_counter()
        index.search("hybrid", vectors=qv[i : i + 1], texts=[text], using="dense", limit=10)
        times.append(1000 * (time.perf_counter() - began))
    index.close()
    shutil.rmtree(folder, ignore_errors=True)
    times.sort()
    return {"engine": engine, "documents": size, "write_s": round(written, 1), "optimize_s": round(optimized, 1),
            "index_s": round(written + optimized, 1), "hybrid_p50_ms": round(statistics.median(times), 2),
            "hybrid_p95_ms": round(times[int(0.95 * (len(times) - 1))], 2), "queries": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--engines", default="edge,local")
    parser.add_argument("--local-max", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    pool, query_texts = sentences(), queries(args.queries, args.seed)
    rows = []
    path = RESULTS / "scale.json"
    for size in [int(s) for s in args.sizes.split(",")]:
        for engine in args.engines.split(","):
            if engine == "local" and size > args.local_max:
                continue
            rows.append(run(engine, size, pool, query_texts, args.seed))
            print(rows[-1], flush=True)
            save("scale", {"sentences": len(pool), "dim": DIM, "fusion": "rrf k=60", "top_k": 10, "rows": rows,
                           "local_max": args.local_max})  # after every row: a long run keeps what it measured
    print(path)


if __name__ == "__main__":
    main()
