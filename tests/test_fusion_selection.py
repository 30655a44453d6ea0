"""Fusion that never loses: candidates, the selection rule, fusion.json carried with the model and used by default."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
from llama_index.core.schema import TextNode

from ace_llamaindex import FineTunedEmbedding, HybridQdrantRetriever
from ace_llamaindex.errors import OptionError
from ace_llamaindex.evaluate.fusion_selection import select_fusion
from ace_llamaindex.index.fusion import convex_scores
from ace_llamaindex.index.fusion_choice import FUSION_FILE, FusionChoice, load_fusion
from ace_llamaindex.index.store import HybridParams


@pytest.mark.parametrize(("dense", "sparse", "alpha", "expected"), [
    # TM2C2: dense normalised by (s + 1) / (max + 1), BM25 by s / max; a missing list contributes 0.
    ([("a", 1.0), ("b", 0.0)], [("b", 4.0), ("a", 2.0)], 0.5, {"a": 0.75, "b": 0.75}),
    ([("a", 0.5), ("b", -1.0)], [("c", 3.0)], 0.8, {"a": 0.8, "b": 0.0, "c": 0.2}),
    ([("a", 0.2)], [], 1.0, {"a": 1.0}),
    ([], [("a", 2.0), ("b", 1.0)], 0.0, {"a": 1.0, "b": 0.5}),
])
def test_convex_scores(dense, sparse, alpha, expected):
    assert convex_scores(dense, sparse, alpha) == pytest.approx(expected)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"method": "sum"}, "fusion method must be one of"),
    ({"method": "convex", "alpha": 1.5}, "alpha must be in [0, 1]"),
    ({"rrf_k": 0}, "rrf_k must be at least 1"),
])
def test_bad_fusion_params(kwargs, message):
    with pytest.raises(OptionError, match=message.replace("[", r"\[").replace("]", r"\]")):
        HybridParams(**kwargs)


class HashEncoder:
    """Vectors that carry no meaning (a hash of the text): dense retrieval is at chance, so BM25 must win."""

    label = "hash-encoder"

    def _encode(self, texts):
        out = np.stack([np.random.default_rng(int(hashlib.sha1(t.encode()).hexdigest()[:8], 16)).normal(size=16) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    encode_queries = encode_documents = _encode


def test_too_few_queries_keep_dense(demo, base_encoder):
    choice = select_fusion(demo.subset(sorted(demo.queries)[:10]), base_encoder, engine="local")
    assert choice.mode == "dense" and "too few" in choice.reason and not choice.scores


def test_a_candidate_must_beat_dense_with_confidence(demo, base_encoder):
    # The base model is far better than BM25 on the demo: dense stays, with the evidence recorded.
    choice = select_fusion(demo, base_encoder, engine="local")
    assert choice.mode == "dense" and choice.vs_dense["bm25"]["verdict"] == "worse"
    assert choice.scores["dense"] > choice.scores["bm25"]
    # Meaningless vectors: BM25 (or a fusion leaning on it) beats dense with confidence and is chosen.
    choice = select_fusion(demo, HashEncoder(), engine="local")
    assert choice.mode in ("bm25", "hybrid") and choice.vs_dense[choice.name]["verdict"] == "better"
    assert choice.scores[choice.name] == max(choice.scores.values())


@pytest.fixture()
def nodes(demo):
    return [TextNode(id_=k, text=v) for k, v in demo.corpus.items()]


def test_model_folder_fusion_is_the_serving_default(tmp_path, tuned_model_dir, nodes, demo):
    model = tmp_path / "model"
    shutil.copytree(tuned_model_dir, model)
    (model / FUSION_FILE).unlink(missing_ok=True)
    plain = HybridQdrantRetriever(FineTunedEmbedding(str(model)), similarity_top_k=5)
    assert plain.mode == "dense" and "no fusion.json" in plain.fusion.reason  # documented default: dense

    FusionChoice("convex(alpha=0.7)", "hybrid", HybridParams(method="convex", alpha=0.7), reason="test").save(model)
    assert load_fusion(model).params.alpha == 0.7
    r = HybridQdrantRetriever(FineTunedEmbedding(str(model)), similarity_top_k=5)
    assert (r.mode, r.hybrid.method, r.hybrid.alpha) == ("hybrid", "convex", 0.7)
    r.add_nodes(nodes, show_progress=False)
    results = r.retrieve(demo.queries[sorted(demo.queries)[0]])
    scores = [n.score for n in results]
    assert all(0 <= s <= 1 for s in scores) and scores == sorted(scores, reverse=True)
    assert set(results[0].node.metadata["ace_scores"]) == {"dense", "bm25", "fused"}
    # An explicit mode still wins over the folder's choice.
    assert HybridQdrantRetriever(FineTunedEmbedding(str(model)), mode="hybrid").hybrid.method == "rrf"


@pytest.mark.parametrize("params", [HybridParams(method="dbsf"), HybridParams(method="convex", alpha=0.6)])
def test_fusions_rank_alike_on_both_engines(demo, nodes, params):
    pytest.importorskip("qdrant_edge")
    queries = [demo.queries[q] for q in sorted(demo.queries)[:8]]
    ranked = {}
    for engine in ("local", "edge"):
        r = HybridQdrantRetriever(FineTunedEmbedding(), engine=engine, mode="hybrid", fusion_method=params.method,
                                  alpha=params.alpha, similarity_top_k=5)
        r.add_nodes(nodes, show_progress=False)
        ranked[engine] = [[(n.node.node_id, n.node.get_content()) for n in res] for res in r.batch_retrieve(queries)]
    assert ranked["local"] == ranked["edge"]
    assert all(text for row in ranked["edge"] for _, text in row)  # payloads fetched for the fused top-k


def test_training_query_evidence_needs_validation_agreement(demo, base_encoder):
    """The base model on training queries says BM25 helps (meaningless vectors there), but the fine-tuned model on
    validation is better without it: dense stays. Where validation agrees, the candidate is taken."""
    train, val = demo.split(0.3, seed=1)
    pair = {"dense": ("dense", HybridParams()), "bm25": ("bm25", HybridParams())}
    choice = select_fusion(val, base_encoder, candidates=pair, engine="local", prior=(train, HashEncoder()))
    assert choice.prior["bm25"]["verdict"] == "better" and choice.vs_dense["bm25"]["delta"] < 0 and choice.mode == "dense"
    choice = select_fusion(val, HashEncoder(), candidates=pair, engine="local", prior=(train, HashEncoder()))
    assert choice.mode == "bm25" and FusionChoice.from_dict(choice.to_dict()).prior == choice.prior
