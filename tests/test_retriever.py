"""HybridQdrantRetriever over embedded Qdrant: modes, filters, batches, async, and the vector-space rule."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters

from ace_llamaindex.serve.embedding import FineTunedEmbedding
from ace_llamaindex.serve.retriever import SERVED_BY, HybridQdrantRetriever


@pytest.fixture(scope="module")
def nodes(demo):
    cats = {}
    for q in demo.queries:
        cats[demo.relevant_docs[q][0]] = demo.category(q)
    return [TextNode(id_=k, text=v, metadata={"category": cats.get(k, "none"), "length": len(v)}) for k, v in demo.corpus.items()]


@pytest.fixture(scope="module")
def retriever(nodes):
    r = HybridQdrantRetriever(FineTunedEmbedding(), similarity_top_k=5)
    r.add_nodes(nodes, show_progress=False)
    return r


def easy_queries(demo, n=10):
    return [q for q in sorted(demo.queries) if demo.difficulty(q) == "easy"][:n]


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_modes_find_the_memory(demo, nodes, mode):
    r = HybridQdrantRetriever(FineTunedEmbedding(), mode=mode, similarity_top_k=5)
    r.add_nodes(nodes, show_progress=False)
    qids = easy_queries(demo)
    results = r.batch_retrieve([demo.queries[q] for q in qids])
    hits = sum(demo.relevant_docs[q][0] in [n.node.node_id for n in res] for q, res in zip(qids, results, strict=True))
    assert hits >= 8
    assert all(n.node.metadata[SERVED_BY] == ("bm25" if mode == "bm25" else "finetuned:bundled:all-MiniLM-L6-v2")
               for res in results for n in res)


def test_batch_equals_single(retriever, demo):
    qs = [demo.queries[q] for q in easy_queries(demo, 4)]
    batch = retriever.batch_retrieve(qs)
    for q, res in zip(qs, batch, strict=True):
        assert [n.node.node_id for n in retriever.retrieve(q)] == [n.node.node_id for n in res]


async def test_async_equals_sync(retriever):
    sync = retriever.retrieve("celery tasks never run")
    async_ = await retriever.aretrieve("celery tasks never run")
    assert [n.node.node_id for n in sync] == [n.node.node_id for n in async_]


def test_metadata_filters_and_threshold(nodes):
    r = HybridQdrantRetriever(FineTunedEmbedding(), mode="dense", similarity_top_k=10,
                              filters=MetadataFilters(filters=[MetadataFilter(key="category", value="security")]))
    r.add_nodes(nodes, show_progress=False)
    res = r.retrieve("how do we deploy")
    assert res and all(n.node.metadata["category"] == "security" for n in res)
    r.filters = MetadataFilters(filters=[MetadataFilter(key="length", operator=FilterOperator.LT, value=80)])
    assert all(n.node.metadata["length"] < 80 for n in r.retrieve("how do we deploy"))
    r.filters, r.score_threshold = None, 0.5
    res = r.retrieve("rotate the service account keys")
    assert res and all(n.score >= 0.5 for n in res) and len(res) < 10


def test_query_engine_without_llm(retriever):
    from llama_index.core.llms import MockLLM
    from llama_index.core.response_synthesizers.no_text import NoText

    # NoText: the engine returns the retrieved nodes; the LLM slot is filled but never called
    synth = NoText(llm=MockLLM())
    engine = RetrieverQueryEngine(retriever=retriever, response_synthesizer=synth)
    response = engine.query("where are feature flags defined")
    assert response.source_nodes[0].node.node_id == "m021"


REOPEN = """
import json, sys
from ace_llamaindex.serve.embedding import FineTunedEmbedding
from ace_llamaindex.serve.retriever import HybridQdrantRetriever
r = HybridQdrantRetriever(FineTunedEmbedding(sys.argv[1]), path=sys.argv[2], collection="mem", mode="hybrid")
print(json.dumps({"engine": type(r.index).__name__, "ids": [[n.node.node_id for n in r.retrieve(q)] for q in sys.argv[3:]]}))
"""


@pytest.mark.parametrize("engine", ["local", "edge"])
def test_reopened_in_a_new_process_with_the_path_spelled_differently(tmp_path, nodes, tuned_model_dir, engine):
    """Built with an absolute model path on one engine; reopened in another process with a relative spelling and
    the default engine ("auto"): the same engine is found, the same named vector, the same results."""
    if engine == "edge":
        pytest.importorskip("qdrant_edge")
    model = tuned_model_dir.resolve()
    r = HybridQdrantRetriever(FineTunedEmbedding(str(model)), path=str(tmp_path / "q"), collection="mem", mode="hybrid",
                              engine=engine)
    r.add_nodes(nodes, show_progress=False)
    queries = [n.text for n in nodes[:3]]
    expected = [[n.node.node_id for n in r.retrieve(q)] for q in queries]
    r.index.close()
    relative = os.path.relpath(model, tmp_path) + "/"
    done = subprocess.run([sys.executable, "-c", REOPEN, relative, str(tmp_path / "q"), *queries], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=True)
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["engine"] == type(r.index).__name__
    assert got["ids"] == expected and expected[0][0] == nodes[0].node_id


def test_after_fallback_results_come_from_the_baseline_named_vector(embedding_server, tuned_model_dir, nodes):
    """The vector-space rule: a baseline query vector is only ever compared with baseline document vectors."""
    from ace_llamaindex.embeddings.models import vector_name
    from ace_llamaindex.serve.http_embedding import OpenAICompatibleEmbedding

    baseline = OpenAICompatibleEmbedding(base_url=embedding_server, model_name="minilm")
    emb = FineTunedEmbedding(str(tuned_model_dir), fallback=baseline)
    r = HybridQdrantRetriever(emb, mode="dense", similarity_top_k=3)
    r.add_nodes(nodes, show_progress=False)
    assert set(r.index.dense_vectors()) == {emb.named_vector(emb.model_name), vector_name("minilm")}

    query = "how do we roll back a bad deploy"
    primary = r.retrieve(query)
    assert {n.node.metadata[SERVED_BY] for n in primary} == {emb.model_name}

    emb._model = None
    emb._load_error = "simulated: model files gone"  # the fine-tuned model can no longer encode...
    emb._failed_at = __import__("time").monotonic()  # ...and is not due for another load attempt yet
    fallen = r.retrieve(query)
    assert {n.node.metadata[SERVED_BY] for n in fallen} == {"minilm"}
    # The scores are cosines against the baseline's own document vectors...
    q = np.array(baseline.get_query_embedding(query))
    q /= np.linalg.norm(q)
    d = np.array(baseline.get_text_embedding_batch([n.node.text for n in fallen]))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    assert [n.score for n in fallen] == pytest.approx((d @ q).tolist(), abs=1e-3)
    # ...and not against the fine-tuned vectors, which would score differently.
    wrong = r.index.search("dense", vectors=q[None, :].astype(np.float32), using=emb.named_vector(emb.model_name), limit=3)[0]
    assert [h.score for h in wrong] != pytest.approx([n.score for n in fallen], abs=1e-3)


@pytest.fixture(scope="module")
def both_engines(nodes):
    pytest.importorskip("qdrant_edge")
    engines = {}
    for engine in ("local", "edge"):
        engines[engine] = HybridQdrantRetriever(FineTunedEmbedding(), engine=engine, similarity_top_k=5)
        engines[engine].add_nodes(nodes, show_progress=False)
    return engines


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_edge_engine_scores_like_local_mode(both_engines, demo, mode):
    """Qdrant Edge (the engine in-process) and qdrant-client's local mode answer the same requests alike."""
    qs = [demo.queries[q] for q in sorted(demo.queries)[:25]]
    results = {}
    for engine, r in both_engines.items():
        r.mode = mode
        results[engine] = r.batch_retrieve(qs)
    if mode != "hybrid":
        for local, edge in zip(results["local"], results["edge"], strict=True):
            assert [n.score for n in edge] == pytest.approx([n.score for n in local], rel=1e-4, abs=1e-6)
    else:  # float-level near-ties inside a prefetch list may flip between engines and shift an RRF rank
        overlap = [len({n.node.node_id for n in a} & {n.node.node_id for n in b}) / 5
                   for a, b in zip(results["local"], results["edge"], strict=True)]
        assert sum(overlap) / len(overlap) >= 0.9


def test_edge_engine_filters_and_persistence(tmp_path, nodes):
    pytest.importorskip("qdrant_edge")
    r = HybridQdrantRetriever(FineTunedEmbedding(), engine="edge", path=str(tmp_path / "edge"), collection="mem",
                              filters=MetadataFilters(filters=[MetadataFilter(key="category", value="security")]))
    r.add_nodes(nodes, show_progress=False)
    res = r.retrieve("how do we deploy")
    assert res and all(n.node.metadata["category"] == "security" for n in res)
    r.index.close()
    again = HybridQdrantRetriever(FineTunedEmbedding(), engine="edge", path=str(tmp_path / "edge"), collection="mem")
    assert again.retrieve(nodes[0].text)[0].node.node_id == nodes[0].node_id
    assert again.index.bm25.avgdl is None and again.index._stored_metadata()["bm25_avgdl"] > 0
