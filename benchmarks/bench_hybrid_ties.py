"""Is hybrid (RRF) retrieval the same in every process? The demo's test split, indexed and searched (dense, BM25,
hybrid) in ``--runs`` fresh processes on the embedded engine; counts the queries whose top 10 differ between runs,
and the exact BM25 ties in the single lists with how far apart ``bm25.tie_breaker`` puts their documents.

    python benchmarks/bench_hybrid_ties.py --runs 3 --name hybrid-ties-demo

Writes benchmarks/results/<name>.json (hybrid-ties-demo.json: fused inside Qdrant, before; hybrid-ties-demo-after.json:
fused in ``CorpusIndex``, ranked lists with ties in point-id order).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import commit, save  # noqa: E402

_CHILD = """
import json, sys
from ace_llamaindex.data.loading import load_dataset
from ace_llamaindex.embeddings.encoding import CachedEncoder
from ace_llamaindex.embeddings.models import vector_name
from ace_llamaindex.index.engines import open_index
from ace_llamaindex.index.store import HybridParams
test = load_dataset(sys.argv[1]).split(0.25, 42, by="document")[1]
encoder = CachedEncoder(cache_dir=False, show_progress=False)
ids = list(test.corpus)
index = open_index("ties", path=sys.argv[3])
index.upsert(ids, [test.corpus[i] for i in ids], {vector_name(encoder.label): encoder.encode_documents([test.corpus[i] for i in ids])})
qids = list(test.queries)
texts = [test.queries[q] for q in qids]
vectors = encoder.encode_queries(texts)
out = {}
for mode in ("dense", "bm25", "hybrid"):
    hits = index.search(mode, vectors=vectors, texts=texts, using=vector_name(encoder.label), limit=100,
                        hybrid=HybridParams())
    out[mode] = {q: [[h.doc_id, h.score] for h in row] for q, row in zip(qids, hits)}
json.dump({"engine": type(index).__name__, "rankings": out}, open(sys.argv[2], "w"))
"""


def _top10_differs(a: dict, b: dict) -> int:
    return sum(1 for q in a if [d for d, _ in a[q][:10]] != [d for d, _ in b[q][:10]])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--name", default="hybrid-ties-demo", help="result file name (without .json)")
    a = p.parse_args()
    from ace_llamaindex.index.bm25 import tie_breaker

    data = Path(__file__).resolve().parent.parent / "ace_llamaindex" / "data" / "team_memories.json"
    work = Path(tempfile.mkdtemp(prefix="hybrid-ties-"))
    runs = []
    for i in range(a.runs):
        out = work / f"run{i}.json"
        subprocess.run([sys.executable, "-c", _CHILD, str(data), str(out), str(work / f"q{i}")], check=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
        runs.append(json.loads(out.read_text()))
    texts = {m["id"]: m["text"] for m in json.loads(data.read_text())["memories"]}
    result = {"engine": runs[0]["engine"], "runs": a.runs, "queries": len(runs[0]["rankings"]["hybrid"]),
              "top10_differs_between_runs": {}, "exact_ties_in_one_list": {}}
    for mode in ("dense", "bm25", "hybrid"):
        result["top10_differs_between_runs"][mode] = [
            _top10_differs(runs[x]["rankings"][mode], runs[y]["rankings"][mode])
            for x, y in itertools.combinations(range(a.runs), 2)]
        gaps = []
        for row in runs[0]["rankings"][mode].values():
            by_score = collections.defaultdict(list)
            for doc, score in row:
                by_score[score].append(doc)
            gaps += [max(tie_breaker(texts[d]) for d in docs) - min(tie_breaker(texts[d]) for d in docs)
                     for docs in by_score.values() if len(docs) > 1]
        result["exact_ties_in_one_list"][mode] = {"groups": len(gaps),
                                                  "largest_tie_breaker_gap": max(gaps) if gaps else None}
    print(json.dumps(result, indent=1))
    print(save(a.name, {"commit": commit(), **result}))


if __name__ == "__main__":
    main()
