"""Hybrid retrieval ranks the same in every process.

Documents that score exactly alike in a list (here: the same text, so the same vector and the same BM25 weights, as
templated memories often nearly are) reach the fusion in an order the engine does not fix: Qdrant Edge's RRF ranked
them differently from one process to the next (benchmarks/results/hybrid-ties-demo.json). Each row searches one
collection in fresh processes and requires the same ranking, scores included, from each."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_SEARCH = """
import json, sys
import numpy as np
from ace_llamaindex.index.engines import open_index
from ace_llamaindex.index.store import HybridParams
method, engine, folder = sys.argv[1], sys.argv[2], sys.argv[3]
rng = np.random.default_rng(7)
topics = ["deploy rollback", "database failover", "queue consumer", "cache eviction", "token rotation",
          "disk pressure", "dns outage", "cert expiry", "pod restart", "rate limit"]
ids, texts, vectors = [], [], []
for t, topic in enumerate(topics):
    v = rng.normal(size=16)
    for copy in range(3):  # three documents with one text: exact ties in both lists
        ids.append(f"d{t:02d}-{copy}")
        texts.append(f"the {topic} runbook: page the on-call and follow the {topic} steps")
        vectors.append(v)
vectors = np.asarray(vectors, dtype=np.float32)
vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
index = open_index("ties", path=folder, engine=engine)
index.upsert(ids, texts, {"m": vectors})
queries = [f"{topic} runbook on-call steps" for topic in topics]
qv = vectors[::3] + 0.3 * rng.normal(size=(len(topics), 16)).astype(np.float32)
hits = index.search("hybrid", vectors=qv, texts=queries, using="m", limit=12, hybrid=HybridParams(method=method))
print(json.dumps([[(h.doc_id, round(h.score, 6)) for h in row] for row in hits]))
"""


@pytest.mark.parametrize("method", ["rrf", "convex", "dbsf"])
def test_hybrid_ranks_alike_in_every_process(tmp_path, method):
    rankings = []
    for run in range(4):
        done = subprocess.run([sys.executable, "-c", _SEARCH, method, "auto", str(tmp_path / f"q{run}")],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        rankings.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert all(len(row) == 12 for row in rankings[0])
    for other in rankings[1:]:
        assert other == rankings[0]
