"""Evaluation: metric values agree with ir_measures on the same run; breakdowns; bootstrap; reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ace_llamaindex.embeddings.encoding import CachedEncoder
from ace_llamaindex.evaluate.evaluate import System, evaluate, standard_systems
from ace_llamaindex.evaluate.metrics import BUILTIN_METRICS
from ace_llamaindex.evaluate.stats import paired_bootstrap
from ace_llamaindex.index.store import CorpusIndex, make_client


def test_metrics_agree_with_ir_measures_on_a_real_run(demo, base_encoder):
    """Retrieve with the bundled model over embedded Qdrant, score the same run with ours and with ir_measures."""
    import ir_measures
    from ir_measures import MRR, R, ScoredDoc, nDCG

    ds = demo.subset(sorted(demo.queries)[:60])
    # Give some queries two relevant documents, so Recall@k is not just a hit rate.
    relevant = {q: list(docs) for q, docs in ds.relevant_docs.items()}
    corpus_ids = sorted(ds.corpus)
    for i, q in enumerate(sorted(relevant)[::3]):
        relevant[q].append(corpus_ids[(i * 7) % len(corpus_ids)]) if corpus_ids[(i * 7) % len(corpus_ids)] not in relevant[q] else None
    index = CorpusIndex(make_client(), "m")
    index.upsert(corpus_ids, [ds.corpus[d] for d in corpus_ids], {"v": base_encoder.encode_documents([ds.corpus[d] for d in corpus_ids])},
                 show_progress=False)
    qids = sorted(ds.queries)
    hits = index.search("dense", vectors=base_encoder.encode_queries([ds.queries[q] for q in qids]), using="v", limit=20)
    run = [ScoredDoc(q, h.doc_id, h.score) for q, row in zip(qids, hits, strict=True) for h in row]
    qrels = [ir_measures.Qrel(q, d, 1) for q in qids for d in relevant[q]]
    theirs = {m: {} for m in ("R@1", "R@5", "R@10", "RR@10", "nDCG@10")}
    for row in ir_measures.iter_calc([R @ 1, R @ 5, R @ 10, MRR @ 10, nDCG @ 10], qrels, run):
        theirs[str(row.measure)][row.query_id] = row.value
    names = {"recall@1": "R@1", "recall@5": "R@5", "recall@10": "R@10", "mrr@10": "RR@10", "ndcg@10": "nDCG@10"}
    checked = 0
    for q, row in zip(qids, hits, strict=True):
        ranked = [h.doc_id for h in row]
        for ours, their in names.items():
            assert BUILTIN_METRICS[ours](ranked, set(relevant[q])) == pytest.approx(theirs[their].get(q, 0.0), abs=1e-9), (q, ours)
            checked += 1
    assert checked == 5 * len(qids)
    assert 0 < np.mean(list(theirs["R@1"].values())) < 1


def test_bootstrap_verdicts():
    rng = np.random.default_rng(0)
    base = rng.random(200)
    assert paired_bootstrap(base, base).verdict == "no clear difference"
    assert paired_bootstrap(base, base + 0.1).verdict == "better"
    d = paired_bootstrap(base, base - 0.05 + rng.normal(0, 0.01, 200))
    assert d.verdict == "worse" and d.ci_low < d.delta < d.ci_high < 0


def test_report_has_breakdowns_cosine_and_verdicts(small, base_encoder, tuned_model_dir, tmp_path):
    from ace_llamaindex.evaluate.reporting import write_reports

    tuned = CachedEncoder(str(tuned_model_dir), cache_dir=False, show_progress=False)
    report = evaluate(small, standard_systems(base_encoder, tuned), show_progress=False, max_queries=30)
    data = report.data
    assert data["n_queries"] == 30
    assert set(data["overall"]) == {"bm25", "base", "base+hybrid", "finetuned", "finetuned+hybrid"}
    assert "cosine" in data["overall"]["base"] and "cosine" not in data["overall"]["bm25"]
    assert set(data["by_difficulty"]) <= {"easy", "medium", "hard"} and len(data["by_category"]) >= 2
    assert sum(v["n"] for v in data["by_category"].values()) == 30
    pairs = {(c["baseline"], c["candidate"]) for c in data["comparisons"]}
    assert ("base", "finetuned") in pairs and ("base", "base+hybrid") in pairs
    # cosine of correct pairs is the mean query-positive cosine under the base model
    q = sorted(small.queries)[0]
    expected = float(base_encoder.encode_documents([small.corpus[small.relevant_docs[q][0]]])[0] @ base_encoder.encode_queries([small.queries[q]])[0])
    assert data["per_query"][q]["base"]["cosine"] == pytest.approx(expected, abs=1e-5)
    written = write_reports(report, tmp_path, ["json", "md", "png"])
    assert json.loads(written["json"].read_text())["n_queries"] == 30
    md = written["md"].read_text()
    assert "| finetuned vs base | recall@1 |" in md and "by difficulty" in md
    assert written["png"].read_bytes()[:4] == b"\x89PNG"


def test_hybrid_and_bm25_systems_differ_from_dense(small, base_encoder):
    systems = [System("bm25", "bm25"), System("dense", "dense", base_encoder), System("hybrid", "hybrid", base_encoder)]
    report = evaluate(small, systems, show_progress=False, comparisons=[("dense", "hybrid")])
    rows = report.data["per_query"]
    assert any(rows[q]["bm25"]["mrr@10"] != rows[q]["dense"]["mrr@10"] for q in rows)


def test_baseline_from_an_openai_compatible_endpoint(embedding_server, small, base_encoder):
    """The nomic-via-LM-Studio case, with a real server: the endpoint serves the bundled model, so it must score
    like the local copy of that model."""
    from ace_llamaindex.embeddings.encoding import LlamaIndexEncoder
    from ace_llamaindex.serve.http_embedding import OpenAICompatibleEmbedding

    endpoint = LlamaIndexEncoder(OpenAICompatibleEmbedding(base_url=embedding_server, model_name="minilm"), label="endpoint")
    systems = [System("endpoint", "dense", endpoint), System("local", "dense", base_encoder)]
    report = evaluate(small, systems, show_progress=False, comparisons=[("local", "endpoint")])
    assert report.overall("endpoint", "mrr@10") == pytest.approx(report.overall("local", "mrr@10"), abs=0.02)
    assert report.data["systems"]["endpoint"]["model"] == "endpoint"


def test_max_queries_is_a_seeded_sample_in_file_order(demo):
    from ace_llamaindex.errors import OptionError
    from ace_llamaindex.evaluate.evaluate import sample_queries

    qids = list(demo.queries)
    picked = sample_queries(qids, 20, seed=1)
    assert picked == sample_queries(qids, 20, seed=1) != sample_queries(qids, 20, seed=2)
    assert len(set(picked)) == 20 and picked == sorted(picked, key=qids.index)
    assert len({demo.category(q) for q in picked}) > 3
    assert sample_queries(qids, len(qids) + 5) == qids
    with pytest.raises(OptionError, match="max_queries must be at least 1"):
        sample_queries(qids, 0)
