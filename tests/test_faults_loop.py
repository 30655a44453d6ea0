"""Faults of the production loop (serve -> feedback log -> mine -> rollout -> rollback), one row per case: each ends
in one clear line naming the file, field or option (exit code 2 on the CLI), or, where the fault must not break
serving (a feedback log that cannot be written), queries keep their answers and the lost records are counted."""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner
from llama_index.core.schema import TextNode

from ace_llamaindex.cli import cli
from ace_llamaindex.deploy.rollout import rollout
from ace_llamaindex.embeddings.models import resolve_model
from ace_llamaindex.errors import DatasetError
from ace_llamaindex.mine.feedback_dataset import load_feedback
from ace_llamaindex.serve.embedding import FineTunedEmbedding
from ace_llamaindex.serve.feedback import QUERY_ID, FeedbackHandler, FeedbackLog, read_log, record_feedback
from ace_llamaindex.serve.retriever import HybridQdrantRetriever
from ace_llamaindex.serve.serving_record import SERVING_KEY

ROOT = os.geteuid() == 0
QUERIES = ["API gives 502 right after deploy", "disk is full on the build box"]


def _nodes(demo):
    return [TextNode(id_=k, text=v) for k, v in demo.corpus.items()]


@pytest.fixture(scope="module")
def served_index(tmp_path_factory, demo):
    """An embedded (Qdrant Edge) folder holding the demo corpus twice: 'mem', written by the retriever, and 'vs',
    written through LlamaIndex's VectorStoreIndex into an AceQdrantVectorStore."""
    from llama_index.core import StorageContext, VectorStoreIndex

    from ace_llamaindex.serve.vector_store import AceQdrantVectorStore

    where = tmp_path_factory.mktemp("served") / "qdrant"
    embed = FineTunedEmbedding()
    HybridQdrantRetriever(embed, path=str(where), collection="mem", engine="edge").add_nodes(_nodes(demo),
                                                                                              show_progress=False)
    store = AceQdrantVectorStore("vs", embed_model=embed, engine="edge", path=str(where))
    VectorStoreIndex(_nodes(demo), storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed)
    return where


# ---- 1. a feedback log that cannot be written never fails a query -------------------------------------------------
def _parent_is_a_file(tmp: Path) -> Path:
    (tmp / "afile").write_text("x")
    return tmp / "afile" / "feedback.jsonl"


def _full_disk(tmp: Path) -> Path:  # /dev/full: every write fails with ENOSPC, for real
    (tmp / "feedback.jsonl").symlink_to("/dev/full")
    return tmp / "feedback.jsonl"


def _read_only_folder(tmp: Path) -> Path:
    (tmp / "ro").mkdir(mode=0o500)
    return tmp / "ro" / "feedback.jsonl"


def _read_only_file(tmp: Path) -> Path:
    (tmp / "feedback.jsonl").write_text("")
    (tmp / "feedback.jsonl").chmod(0o444)
    return tmp / "feedback.jsonl"


def _vanishes(tmp: Path) -> Path:  # the folder is there when the log is opened, and gone when queries come
    (tmp / "logs").mkdir()
    return tmp / "logs" / "feedback.jsonl"


def _row(name: str, *values, root_may_write: bool = False):
    """One case, named; ``root_may_write``: a permission fault, which root (who may write anywhere) cannot meet."""
    marks = [pytest.mark.skipif(ROOT, reason="root may write anywhere")] if root_may_write else []
    return pytest.param(*values, id=name, marks=marks)


BROKEN_LOGS = [
    _row("parent is a file", _parent_is_a_file, "Not a directory"),
    _row("full disk", _full_disk, "No space left on device"),
    _row("folder vanished", _vanishes, "No such file or directory"),
    _row("read-only folder", _read_only_folder, "Permission denied", root_may_write=True),
    _row("read-only file", _read_only_file, "Permission denied", root_may_write=True),
]


def _retriever_path(where, log, tmp):
    retriever = HybridQdrantRetriever(FineTunedEmbedding(), path=str(where), collection="mem", engine="edge",
                                      similarity_top_k=3, feedback_log=log)
    _vanish(tmp)
    answers = [retriever.retrieve(q) for q in QUERIES]
    retriever.record_feedback(answers[0][0].node.metadata[QUERY_ID], answers[0][0].node.node_id, True)
    return answers, retriever.feedback_log, len(QUERIES) + 1


def _vector_store_path(where, log, tmp):
    from llama_index.core import VectorStoreIndex

    from ace_llamaindex.serve.vector_store import AceQdrantVectorStore

    embed = FineTunedEmbedding()
    store = AceQdrantVectorStore("vs", embed_model=embed, engine="edge", path=str(where), feedback_log=log)
    _vanish(tmp)
    retriever = VectorStoreIndex.from_vector_store(store, embed_model=embed).as_retriever(similarity_top_k=3)
    answers = [retriever.retrieve(q) for q in QUERIES]
    store.record_feedback(answers[0][0].node.metadata[QUERY_ID], answers[0][0].node.node_id, False)
    return answers, store.feedback_log, len(QUERIES) + 1


def _handler_path(where, log, tmp):
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine

    retriever = HybridQdrantRetriever(FineTunedEmbedding(), path=str(where), collection="mem", engine="edge",
                                      similarity_top_k=3, feedback_log=log)
    handler = FeedbackHandler.attach(log)
    _vanish(tmp)
    try:
        engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM())
        answers = [engine.query(q).source_nodes for q in QUERIES]
    finally:
        get_dispatcher().event_handlers.remove(handler)
    assert handler.sink.lost == sum(len(a) for a in answers)  # every source node's acceptance, counted
    return answers, retriever.feedback_log, len(QUERIES)


def _vanish(tmp: Path) -> None:
    if (tmp / "logs").is_dir():
        shutil.rmtree(tmp / "logs")


@pytest.mark.parametrize("breaks,reason", BROKEN_LOGS)
@pytest.mark.parametrize("serve", [_retriever_path, _vector_store_path, _handler_path],
                         ids=["retriever", "vector-store", "handler"])
def test_an_unwritable_feedback_log_never_fails_a_query(served_index, tmp_path, caplog, breaks, reason, serve):
    log = breaks(tmp_path)
    with caplog.at_level(logging.WARNING, logger="ace_llamaindex.serve.feedback"):
        answers, sink, records = serve(served_index, log, tmp_path)
    assert all(len(a) == 3 for a in answers)  # every query answered in full
    assert "m001" in [n.node.node_id for n in answers[0]]  # the runbook for a 502 after a deploy
    assert isinstance(sink, FeedbackLog) and sink.lost == records  # each record not written is counted
    warnings = [r.getMessage() for r in caplog.records if r.name == "ace_llamaindex.serve.feedback"]
    assert len(warnings) == 1 and reason in warnings[0] and str(log) in warnings[0], warnings  # warned once


def test_a_log_that_works_again_loses_nothing_more(tmp_path):
    log = FeedbackLog(tmp_path / "logs" / "feedback.jsonl")
    shutil.rmtree(tmp_path / "logs")
    log({"type": "judgement", "query_id": "q", "doc_id": "d", "relevant": True, "ts": 1})
    (tmp_path / "logs").mkdir()
    log({"type": "judgement", "query_id": "q", "doc_id": "d", "relevant": True, "ts": 2})
    assert log.lost == 1 and [r["ts"] for _, r in read_log(log.path)] == [2]


# ---- 2. a malformed log is one line naming the file, the line and the field ----------------------------------------
SERVED = {"type": "served", "query_id": "q1", "query": "disk full", "ts": 1,
          "results": [{"doc_id": "d1", "score": 0.9, "rank": 1}, {"doc_id": "d2", "score": 0.5, "rank": 2}]}
JUDGED = {"type": "judgement", "query_id": "q1", "doc_id": "d2", "relevant": True, "ts": 2}
CORPUS = {"d1": "disk cleanup runbook", "d2": "the disk is full: rotate logs"}


def _without(record, key):
    return {k: v for k, v in record.items() if k != key}


# (records of the log, what the one line must say)
BAD_LOGS = [
    ([SERVED, _without(JUDGED, "doc_id")], "log.jsonl: line 2: judgement record: field 'doc_id' must be a non-empty string"),
    ([SERVED, {**JUDGED, "relevant": "false"}], "log.jsonl: line 2: judgement record: field 'relevant' must be true or false"),
    ([SERVED, {**JUDGED, "relevant": 1}], "line 2: judgement record: field 'relevant' must be true or false"),
    ([SERVED, _without(JUDGED, "query_id")], "line 2: judgement record: field 'query_id' must be a non-empty string"),
    ([_without(SERVED, "query"), JUDGED], "line 1: served record: field 'query' must be the query text"),
    ([{**SERVED, "results": "d1"}, JUDGED], "line 1: served record: field 'results' must be a list"),
    ([{**SERVED, "results": [{"doc_id": "d1"}]}, JUDGED], "line 1: served record: field 'results[0]' must be"),
    ([{**SERVED, "ts": "yesterday"}, JUDGED], "line 1: served record: field 'ts' must be a number"),
]


@pytest.mark.parametrize("records,message", BAD_LOGS, ids=[m.split(": ", 2)[-1][:40] for _, m in BAD_LOGS])
def test_a_malformed_record_is_one_line_naming_the_line_and_field(tmp_path, records, message):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(DatasetError) as caught:
        load_feedback(log, CORPUS)
    assert message in str(caught.value) and str(log) in str(caught.value) and "\n" not in str(caught.value)


def test_the_checks_keep_a_good_log_and_its_seen_share(tmp_path):
    log = tmp_path / "log.jsonl"
    second = {**SERVED, "query_id": "q2", "query": "disk still full", "ts": 3}
    log.write_text("".join(json.dumps(r) + "\n" for r in [SERVED, JUDGED, second, {**JUDGED, "query_id": "q2", "ts": 4}]))
    data = load_feedback(log, CORPUS)
    assert data.dataset.relevant_docs == {"q1": ["d2"], "q2": ["d2"]}
    assert data.seen_share(0.5)[0] == 1.0


# ---- 1 and 3. `ace feedback`: an unwritable log, an unknown query id, a bad log: one line, exit 2 ----------------
def _served_log(tmp: Path) -> Path:
    log = tmp / "feedback.jsonl"
    log.write_text(json.dumps(SERVED) + "\n")
    return log


def _malformed_log(tmp: Path) -> Path:
    log = _served_log(tmp)
    log.write_text(log.read_text() + json.dumps({**JUDGED, "relevant": "no"}) + "\n")
    return log


def _file_size_limit(tmp: Path):
    """The log is readable, and no write may grow it (RLIMIT_FSIZE: write(2) fails with EFBIG, for real, root too)."""
    log = _served_log(tmp)
    before = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (log.stat().st_size, before[0][1]))

    def undo():
        resource.setrlimit(resource.RLIMIT_FSIZE, before[0])
        signal.signal(signal.SIGXFSZ, before[1])

    return log, undo


def _read_only_log(tmp: Path):
    log = _served_log(tmp)
    log.chmod(0o444)
    return log, None


FEEDBACK_CASES = [
    _row("unwritable: parent is a file", lambda t: (_parent_is_a_file(t), None), "q1",
         "afile/feedback.jsonl: file: a readable feedback log (Not a directory)"),
    _row("unwritable: file size limit", _file_size_limit, "q1",
         "feedback.jsonl: file: a writable feedback log (File too large); nothing was recorded"),
    _row("unwritable: read-only file", _read_only_log, "q1",
         "feedback.jsonl: file: a writable feedback log (Permission denied); nothing was recorded", root_may_write=True),
    _row("missing log", lambda t: (t / "nope.jsonl", None), "q1", "nope.jsonl: file: a readable feedback log"),
    _row("a device", lambda t: (Path("/dev/zero"), None), "q1", "/dev/zero: file: a feedback log file, not a device"),
    _row("unknown query id", lambda t: (_served_log(t), None), "q-never-served",
         "feedback.jsonl: query id 'q-never-served' was never served there (1 served queries)"),
    _row("malformed log", lambda t: (_malformed_log(t), None), "q1",
         "feedback.jsonl: line 2: judgement record: field 'relevant' must be true or false (a JSON boolean), got 'no'"),
]


@pytest.mark.parametrize("setup,query_id,message", FEEDBACK_CASES)
def test_ace_feedback_refuses_in_one_line(tmp_path, setup, query_id, message):
    log, undo = setup(tmp_path)
    before = log.read_bytes() if log.is_file() and log.stat().st_size < 1 << 20 and not log.is_char_device() else None
    try:
        result = CliRunner().invoke(cli, ["feedback", str(log), query_id, "d1", "--accept"])
    finally:
        if undo:
            undo()
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    if before is not None:
        assert log.read_bytes() == before  # nothing half-written


def test_ace_feedback_records_a_served_query(tmp_path):
    log = _served_log(tmp_path)
    result = CliRunner().invoke(cli, ["feedback", str(log), "q1", "d2", "--reject"])
    assert result.exit_code == 0, result.output
    assert [r for _, r in read_log(log)][-1] | {"ts": 0} == {"type": "judgement", "query_id": "q1", "doc_id": "d2",
                                                             "relevant": False, "ts": 0}


def test_record_feedback_to_a_full_disk_says_so(tmp_path):
    with pytest.raises(DatasetError, match=r"feedback.jsonl: file: a writable feedback log \(No space left on device\)"):
        record_feedback(_full_disk(tmp_path), "q1", "d1", True)


# ---- 4 and 5. a collection another model indexed: mine with its model or refuse; rollout needs --previous-model ----
def _indexed_by(where: Path, model, demo, log: Path | None = None) -> None:
    """`ace index`-like: the demo corpus under 'mem', embedded by ``model``; queries served and judged by the qrels."""
    retriever = HybridQdrantRetriever(FineTunedEmbedding(model), path=str(where), collection="mem", engine="edge",
                                      similarity_top_k=5, feedback_log=log)
    retriever.add_nodes(_nodes(demo), show_progress=False)
    if log is not None:
        qids = sorted(demo.queries)[:16]
        for qid, results in zip(qids, retriever.batch_retrieve([demo.queries[q] for q in qids]), strict=True):
            for node in results:
                retriever.record_feedback(node.node.metadata[QUERY_ID], node.node.node_id,
                                          node.node.node_id in demo.relevant_docs[qid])
    retriever.index.close()


@pytest.fixture(scope="module")
def other_model(tuned_model_dir):
    """A model other than the base (its vectors are a space of their own), by its resolved path (rollouts record that)."""
    return str(Path(tuned_model_dir).resolve())


def _rolled_out(where: Path, model: str) -> None:
    """'mem' (indexed by the base model) now served by ``model``: its serving record names it."""
    retriever = HybridQdrantRetriever(FineTunedEmbedding(), path=str(where), collection="mem", engine="edge")
    rollout(model, "mem", index=retriever.index, show_progress=False, force=True)
    assert retriever.index.sibling("mem__v1").metadata()[SERVING_KEY]["model"] == model
    retriever.index.close()


@pytest.fixture(scope="module")
def collections(tmp_path_factory, demo, other_model):
    """Each mining scenario's folder and feedback log, built once: 'other' (`ace index` by another model), 'base'
    (by the base model), 'base+rollout' (by the base model, then rolled out to the other: its serving record)."""
    built = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in built:
            where = tmp_path_factory.mktemp(name.replace("+", "-"))
            _indexed_by(where / "q", other_model if name == "other" else None, demo, where / "feedback.jsonl")
            if name.endswith("+rollout"):
                _rolled_out(where / "q", other_model)
            built[name] = where / "q", where / "feedback.jsonl"
        return built[name]

    return get


BASE = resolve_model(None)
# (how 'mem' was made, --model, exit code, what the output says)
MINE_CASES = [
    _row("other:refused", "other", None, 2, ["none of them the base model's (dense-ft-",
                                             "records no model serving it: pass --model with the model that indexed it"]),
    _row("other:--model=other", "other", "OTHER", 0, ["examples"]),
    _row("rolled-out:its-model", "base+rollout", None, 0,
         ["mining with OTHER: what collection 'mem' is served by (its ace_serving record"]),
    _row("rolled-out:--model=base:refused", "base+rollout", BASE, 2,
         ["is served by OTHER (its ace_serving record), not by --model", "mine with --model OTHER"]),
    _row("base", "base", None, 0, ["examples"]),
]


@pytest.mark.parametrize("scenario,model,code,expected", MINE_CASES)
def test_mining_from_feedback_uses_the_collections_model_or_refuses(tmp_path, collections, other_model, scenario, model,
                                                                    code, expected):
    where, log = collections(scenario)
    args = ["mine", "--from-feedback", str(log), "--collection", "mem", "--qdrant-path", str(where), "--engine", "edge",
            "--num-negatives", "2", "--test-fraction", "0", "-o", str(tmp_path / "data.json")]
    if model:
        args += ["--model", model.replace("OTHER", other_model)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code, result.output
    assert all(e.replace("OTHER", other_model) in " ".join(result.output.split()) for e in expected), result.output
    assert "Traceback" not in result.output
    assert (tmp_path / "data.json").exists() == (code == 0)


# (--previous-model, what `ace rollout` says, exit code)
ROLLOUT_CASES = [
    (None, ["records no model serving it, and its dense vectors ['dense-ft-",
            "pass --previous-model (previous_model=) with the model that indexed it"], 2),
    ("OTHER", ["now serves 'mem__v1'"], 0),
]


@pytest.mark.parametrize("previous,expected,code", ROLLOUT_CASES, ids=["refused", "previous-given"])
def test_a_rollout_over_another_models_collection_needs_the_previous_model(tmp_path, demo, other_model, previous,
                                                                           expected, code):
    where = tmp_path / "q"
    _indexed_by(where, other_model, demo)
    location = ["--collection", "mem", "--qdrant-path", str(where), "--engine", "edge"]
    args = ["rollout", BASE, *location, "--force"]
    if previous:
        args += ["--previous-model", previous.replace("OTHER", other_model)]
    runner = CliRunner()
    result = runner.invoke(cli, args)
    assert result.exit_code == code and all(e in " ".join(result.output.split()) for e in expected), result.output
    assert "Traceback" not in result.output
    if code:  # refused: nothing created
        assert sorted(p.name for p in where.iterdir()) == ["mem"]
    else:  # rolled out with --previous-model: a rollback serves the model that indexed it again
        result = runner.invoke(cli, ["rollback", *location])
        assert result.exit_code == 0, result.output
        result = runner.invoke(cli, ["search", "API gives 502 right after deploy", *location, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)[0]["served_by"] == f"finetuned:{other_model}"
