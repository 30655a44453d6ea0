"""Feedback capture and mining from it: what users accepted becomes training data, rejections its hard negatives."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner
from llama_index.core.schema import TextNode

from ace_llamaindex.cli import cli
from ace_llamaindex.errors import AceError, OptionError
from ace_llamaindex.mine.feedback_dataset import load_feedback
from ace_llamaindex.serve.embedding import FineTunedEmbedding
from ace_llamaindex.serve.feedback import QUERY_ID, FeedbackLog, read_log, record_feedback
from ace_llamaindex.serve.retriever import HybridQdrantRetriever


@pytest.fixture(scope="module")
def served(tmp_path_factory, demo):
    """A collection served by the base model with a feedback log; users judge every shown result by the qrels
    (a query whose answer was not shown gets only rejections)."""
    where = tmp_path_factory.mktemp("served")
    log = where / "feedback.jsonl"
    retriever = HybridQdrantRetriever(FineTunedEmbedding(), path=str(where / "qdrant"), collection="mem", engine="edge",
                                      similarity_top_k=5, feedback_log=log)
    retriever.add_nodes([TextNode(id_=k, text=v) for k, v in demo.corpus.items()], show_progress=False)
    qids = sorted(demo.queries)[:40]
    asked = [demo.queries[q] for q in qids] + [demo.queries[qids[0]]]  # the first query asked twice
    shown = {}
    for text, results in zip(asked, retriever.batch_retrieve(asked), strict=True):
        qid = next(q for q in qids if demo.queries[q] == text)
        for node in results:
            retriever.record_feedback(node.node.metadata[QUERY_ID], node.node.node_id,
                                      node.node.node_id in demo.relevant_docs[qid])
        shown.setdefault(qid, []).append([n.node.node_id for n in results])
    retriever.index.close()
    return {"where": where, "log": log, "qids": qids, "shown": shown}


def test_a_served_log_becomes_training_data_with_the_rejected_results_as_negatives(served, demo, tmp_path):
    out = tmp_path / "training_data.json"
    result = CliRunner().invoke(cli, ["mine", "--from-feedback", str(served["log"]), "--collection", "mem", "--qdrant-path",
                                      str(served["where"] / "qdrant"), "--num-negatives", "3", "--test-fraction", "0.25",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    examples = json.loads(out.read_text())["examples"]
    test = json.loads(out.with_suffix(".test.json").read_text())
    accepted = {q: docs for q, docs in ((q, [d for d in served["shown"][q][0] if d in demo.relevant_docs[q]])
                                        for q in served["qids"]) if docs}
    qid_of = {demo.queries[q]: q for q in served["qids"]}  # the log's query ids are the served ones; match by text
    trained, held = {qid_of[e["query"]] for e in examples}, {qid_of[t] for t in test["queries"].values()}
    assert trained | held == set(accepted) and not trained & held  # queries with no accepted result are dropped
    by_time = [q for q in served["qids"][1:] + served["qids"][:1] if q in accepted]  # the first was asked again, last
    assert held == set(by_time[-len(held):])  # the most recent ones held out
    assert "queries without an accepted document" in result.output or len(accepted) == len(served["qids"])
    assert "1 repeated queries merged" in result.output
    with_rejections = 0
    for e in examples:
        qid, meta = qid_of[e["query"]], e["metadata"]
        first_shown = served["shown"][qid][0]
        lowest = max(first_shown.index(d) for d in accepted[qid])
        rejected_above = [d for d in first_shown[:lowest] if d not in demo.relevant_docs[qid]][:3]
        assert meta["positive_id"] in accepted[qid]
        assert meta["negative_ids"][:len(rejected_above)] == rejected_above
        assert meta["negative_sources"][:len(rejected_above)] == ["feedback"] * len(rejected_above)
        assert not set(meta["negative_ids"]) & set(demo.relevant_docs[qid])
        assert len(meta["negative_ids"]) == 3  # topped up by the miner
        with_rejections += bool(rejected_above)
    assert with_rejections > 0


def test_two_processes_appending_lose_no_line(tmp_path):
    log = tmp_path / "feedback.jsonl"
    writer = textwrap.dedent(f"""
        import sys
        from ace_llamaindex.serve.feedback import FeedbackLog
        sink = FeedbackLog({str(log)!r})
        for i in range(400):
            sink({{"type": "judgement", "query_id": sys.argv[1] + str(i), "doc_id": "d" * 6000, "relevant": True, "ts": i}})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", writer, name]) for name in ("a", "b")]
    assert [p.wait(120) for p in procs] == [0, 0]
    ids = [r["query_id"] for _, r in read_log(log)]
    assert sorted(ids) == sorted([f"{n}{i}" for n in "ab" for i in range(400)])


def test_the_instrumentation_handler_marks_the_source_nodes_a_response_used(served, demo, tmp_path):
    from llama_index.core.llms import MockLLM
    from llama_index.core.postprocessor import SimilarityPostprocessor
    from llama_index.core.query_engine import RetrieverQueryEngine

    from ace_llamaindex.serve.feedback import FeedbackHandler

    log = tmp_path / "fb.jsonl"
    retriever = HybridQdrantRetriever(FineTunedEmbedding(), path=str(served["where"] / "qdrant"), collection="mem",
                                      engine="edge", similarity_top_k=5, feedback_log=log)
    query = demo.queries[served["qids"][1]]
    scores = [n.score for n in retriever.retrieve(query)]
    handler = FeedbackHandler.attach(log)
    try:
        cutoff = SimilarityPostprocessor(similarity_cutoff=(scores[1] + scores[2]) / 2)  # keeps the best two
        engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(), node_postprocessors=[cutoff])
        response = engine.query(query)
    finally:
        from llama_index.core.instrumentation import get_dispatcher

        get_dispatcher().event_handlers.remove(handler)
        retriever.index.close()
    records = [r for _, r in read_log(log)]
    shown = [r for r in records if r["type"] == "served"][-1]
    judged = [r for r in records if r["type"] == "judgement"]
    used = {n.node.node_id for n in response.source_nodes}
    assert {r["doc_id"] for r in judged} == used and all(r["relevant"] and r["query_id"] == shown["query_id"] for r in judged)
    assert len(used) == 2 < len(shown["results"])  # the cutoff dropped some: only what the answer used is accepted


def test_no_secret_reaches_the_log(tmp_path, demo):
    seen = []
    retriever = HybridQdrantRetriever(FineTunedEmbedding(), path=str(tmp_path / "q"), collection="c", engine="edge",
                                      feedback_log=seen.append, api_key="s3cret-key")
    retriever.add_nodes([TextNode(id_=k, text=v) for k, v in list(demo.corpus.items())[:10]], show_progress=False)
    retriever.retrieve("deploy failed")
    assert seen and "s3cret" not in json.dumps(seen)
    assert set(seen[0]) == {"type", "query_id", "query", "results", "vector", "model", "fusion", "collection", "ts"}


def _log(tmp_path, lines):
    path = tmp_path / "log.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


SERVED = json.dumps({"type": "served", "query_id": "q1", "query": "disk full", "results": [
    {"doc_id": "d1", "score": 0.9, "rank": 1}, {"doc_id": "d2", "score": 0.5, "rank": 2}], "ts": 1})
CORPUS = {"d1": "disk cleanup runbook", "d2": "the disk is full: rotate logs"}

# (log lines, what the one-line error must say)
BAD_LOGS = [
    (["not json", SERVED], "log.jsonl: line 1: a JSON record"),
    ([SERVED, '{"type": "clicked"}', SERVED], "log.jsonl: line 2: a JSON record with type"),
    ([SERVED], "no served query has an accepted document"),
    ([SERVED, json.dumps({"type": "judgement", "query_id": "q1", "doc_id": "d2", "relevant": False, "ts": 2})],
     "no served query has an accepted document"),
    ([json.dumps({"type": "judgement", "query_id": "q9", "doc_id": "d2", "relevant": True, "ts": 2})],
     "no served query has an accepted document"),
]


@pytest.mark.parametrize("lines,message", BAD_LOGS)
def test_a_bad_log_is_one_clear_error(tmp_path, lines, message):
    with pytest.raises(AceError, match=message):
        load_feedback(_log(tmp_path, lines), CORPUS)


def test_a_torn_last_line_is_skipped_and_judgements_override(tmp_path):
    lines = [SERVED, json.dumps({"type": "judgement", "query_id": "q1", "doc_id": "d1", "relevant": True, "ts": 2}),
             json.dumps({"type": "judgement", "query_id": "q1", "doc_id": "d1", "relevant": False, "ts": 3}),
             json.dumps({"type": "judgement", "query_id": "q1", "doc_id": "d2", "relevant": True, "ts": 3})]
    path = _log(tmp_path, lines)
    path.write_text(path.read_text() + '{"type": "judgement", "query_id": "q1", "doc_')  # a torn final write
    data = load_feedback(path, CORPUS)
    assert data.dataset.relevant_docs == {"q1": ["d2"]} and data.rejected == {"q1": ["d1"]}


BAD_CALLS = [
    (lambda p: record_feedback(p / "f.jsonl", "q1", "d1", "yes"), "relevant must be True or False"),
    (lambda p: record_feedback(p / "f.jsonl", "", "d1", True), "needs the query_id and the doc_id"),
    (lambda p: FeedbackLog(p), "is a folder"),
    (lambda p: HybridQdrantRetriever(FineTunedEmbedding(), engine="edge", feedback_log=42), "feedback_log must be"),
    (lambda p: HybridQdrantRetriever(FineTunedEmbedding(), engine="edge").record_feedback("q", "d", True), "no feedback_log"),
]


@pytest.mark.parametrize("call,message", BAD_CALLS)
def test_bad_feedback_calls_are_refused(tmp_path, call, message):
    with pytest.raises(OptionError, match=message):
        call(tmp_path)


def test_mine_from_feedback_needs_a_collection(tmp_path):
    log = _log(tmp_path, [SERVED])
    result = CliRunner().invoke(cli, ["mine", "--from-feedback", str(log)])
    assert result.exit_code == 2 and "--from-feedback needs --collection" in result.output
