"""Rollout and rollback: a new model reaches a serving collection with no downtime, and goes back exactly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from llama_index.core.schema import TextNode

from ace_llamaindex.cli import cli
from ace_llamaindex.deploy.rollout import RolloutOptions, rollback, rollout
from ace_llamaindex.errors import OptionError
from ace_llamaindex.serve.embedding import FineTunedEmbedding
from ace_llamaindex.serve.retriever import SERVED_BY, HybridQdrantRetriever
from ace_llamaindex.serve.serving_record import PREVIOUS_KEY, SERVING_KEY


def _indexed(path: Path, demo, engine: str) -> HybridQdrantRetriever:
    retriever = HybridQdrantRetriever(FineTunedEmbedding(), path=str(path), collection="mem", engine=engine)
    retriever.add_nodes([TextNode(id_=k, text=v) for k, v in demo.corpus.items()], show_progress=False)
    return retriever


def _answers(retriever, queries):
    return [[(n.node.node_id, round(n.score, 5), n.node.metadata[SERVED_BY]) for n in row]
            for row in retriever.batch_retrieve(queries)]


@pytest.mark.parametrize("engine", ["edge", "local"])
def test_rollout_serves_the_new_model_and_rollback_restores_the_old_results_exactly(tmp_path, demo, tuned_model_dir, engine):
    retriever = _indexed(tmp_path / "q", demo, engine)
    queries = [demo.queries[q] for q in sorted(demo.queries)[:12]]
    before = _answers(retriever, queries)
    report = rollout(tuned_model_dir, "mem", index=retriever.index, show_progress=False)
    assert report.documents == len(demo.corpus) and report.checks["documents"] == [len(demo.corpus)] * 2
    after = _answers(retriever, queries)  # the same retriever object, no restart
    assert after != before
    assert {row[0][2] for row in after} == {f"finetuned:{tuned_model_dir}"}
    fresh = HybridQdrantRetriever(FineTunedEmbedding(tuned_model_dir), collection="mem", path=str(tmp_path / "q"),
                                  engine=engine) if engine == "edge" else None
    if fresh is not None:  # a process that opens the alias now gets the new model's answers
        assert [[(d, s) for d, s, _ in row] for row in _answers(fresh, queries)] == [[(d, s) for d, s, _ in r] for r in after]
    assert rollback("mem", index=retriever.index)[1] == report.previous
    assert _answers(retriever, queries) == before
    with pytest.raises(OptionError, match="nothing to roll back to"):
        rollback("mem", index=retriever.index)


def test_queries_during_a_rollout_all_succeed_and_each_comes_from_one_model(tmp_path, demo, tuned_model_dir):
    retriever = _indexed(tmp_path / "q", demo, "edge")
    queries = [demo.queries[q] for q in sorted(demo.queries)[:6]]
    old = _answers(retriever, queries)
    seen, errors, done, passes = [], [], threading.Event(), threading.Condition()

    def serve():
        while not done.is_set():
            try:
                answer = _answers(retriever, queries)
            except Exception as exc:  # noqa: BLE001 - any failure is what the test looks for
                answer = exc
            with passes:
                (errors if isinstance(answer, Exception) else seen).append(answer)
                passes.notify_all()

    def a_whole_pass():
        """Wait until the serving thread has answered every query in a pass that began after this call."""
        with passes:
            count = len(seen) + len(errors)  # one pass may be in flight: the second one after now began after now
            assert passes.wait_for(lambda: len(seen) + len(errors) >= count + 2, timeout=300), "the serving thread stalled"

    def during(documents_written: int) -> None:
        if documents_written == 4:  # the new collection half-written: queries go on meanwhile
            a_whole_pass()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        a_whole_pass()  # before
        rollout(tuned_model_dir, "mem", index=retriever.index, batch_size=4, show_progress=False, on_batch=during)
        a_whole_pass()  # after
    finally:
        done.set()
        thread.join()
    new = _answers(retriever, queries)
    assert not errors
    assert seen.count(old) + seen.count(new) == len(seen) and seen.count(new) >= 2 and seen.count(old) >= 4


# A rollout in another process, held after its third document (batch size 1) until the test kills it.
HELD_ROLLOUT = """
import sys
from ace_llamaindex.deploy.rollout import rollout

def held(documents_written):
    print(f"{documents_written} documents in", flush=True)
    if documents_written == 3:
        sys.stdin.readline()  # the test never writes: held here, mid-rollout, until killed

rollout(sys.argv[1], "mem", path=sys.argv[2], batch_size=1, show_progress=False, on_batch=held)
"""


def test_a_rollout_killed_midway_leaves_the_old_collection_serving(tmp_path, demo, tuned_model_dir):
    where = tmp_path / "q"
    retriever = _indexed(where, demo, "edge")
    queries = [demo.queries[q] for q in sorted(demo.queries)[:6]]
    before = _answers(retriever, queries)
    retriever.index.close()  # the rollout below is another process: Edge lets one process open a shard
    proc = subprocess.Popen([sys.executable, "-c", HELD_ROLLOUT, str(tuned_model_dir), str(where)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    for line in proc.stdout:  # held after its third document: the new collection is half-written
        if line.startswith("3 documents in"):
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    assert not (where / "mem.alias.json").exists()  # the alias never moved
    reopened = HybridQdrantRetriever(FineTunedEmbedding(), path=str(where), collection="mem", engine="edge")
    assert _answers(reopened, queries) == before
    report = rollout(tuned_model_dir, "mem", index=reopened.index, show_progress=False)  # the next one resumes it
    assert report.collection == "mem__v1" and not report.removed  # (issue #31: it was removed and built again)
    assert report.resumed == 3 and report.embedded == len(demo.corpus) - 3
    assert _answers(reopened, queries) != before


def test_a_first_local_rollout_keeps_the_plain_collection_as_the_previous_version(tmp_path, demo, tuned_model_dir):
    retriever = _indexed(tmp_path / "q", demo, "local")
    rollout(tuned_model_dir, "mem", index=retriever.index, show_progress=False)
    client = retriever.index.client
    assert {a.alias_name: a.collection_name for a in client.get_aliases().aliases} == {"mem": "mem__v1"}
    meta = client.get_collection("mem__v1").config.metadata
    assert meta[PREVIOUS_KEY] == "mem__v0" and Path(meta[SERVING_KEY]["model"]) == Path(tuned_model_dir).resolve()
    assert client.count("mem__v0").count == client.count("mem").count == len(demo.corpus)


def test_the_cli_dry_run_changes_nothing_and_rollout_rollback_switch(tmp_path, demo, tuned_model_dir):
    where = tmp_path / "q"
    _indexed(where, demo, "edge").index.close()
    runner = CliRunner()
    base = ["--collection", "mem", "--qdrant-path", str(where)]
    result = runner.invoke(cli, ["rollout", str(tuned_model_dir), *base, "--dry-run"])
    assert result.exit_code == 0 and f"would embed {len(demo.corpus)} documents" in result.output, result.output
    assert sorted(p.name for p in where.iterdir()) == ["mem"]
    result = runner.invoke(cli, ["rollout", str(tuned_model_dir), *base])
    assert result.exit_code == 0 and "now serves 'mem__v1'" in result.output, result.output
    result = runner.invoke(cli, ["search", "deploy failed", *base, "--model", str(tuned_model_dir), "--json"])
    assert result.exit_code == 0 and "finetuned:" in result.output, result.output
    result = runner.invoke(cli, ["rollback", *base])
    assert result.exit_code == 0 and "serves 'mem' again" in result.output, result.output


# (arguments to `ace rollout`/`ace rollback` after the location, what the one line must say)
BAD = [
    (["rollout", "MODEL", "--collection", "nope"], "collection 'nope' does not exist"),
    (["rollback", "--collection", "mem"], "nothing to roll back to"),
    (["rollout", "MODEL", "--batch-size", "0"], "0 is not in the range x>=1"),
    (["rollout", "MODEL", "--qdrant-path", "{missing}"], "no index at"),
    (["rollout", "{garbled}", "--collection", "mem"], "unreadable"),
    (["rollout", "{not-better}", "--collection", "mem"], "on its validation queries: no clear difference"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_rollouts_are_one_clear_line(tmp_path, demo, tuned_model_dir, args, message):
    where = tmp_path / "q"
    if not where.exists():
        _indexed(where, demo, "edge").index.close()
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "ace_training_card.json").write_text("{not json")
    not_better = tmp_path / "not-better"
    shutil.copytree(tuned_model_dir, not_better)
    card = json.loads((not_better / "ace_training_card.json").read_text())
    (not_better / "ace_training_card.json").write_text(json.dumps({**card, "gate": {"verdict": "no clear difference"}}))
    args = [a.replace("MODEL", str(tuned_model_dir)).replace("{missing}", str(tmp_path / "none"))
            .replace("{garbled}", str(garbled)).replace("{not-better}", str(not_better)) for a in args]
    if "--qdrant-path" not in args:
        args += ["--qdrant-path", str(where)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_a_garbled_pointer_is_one_clear_line(tmp_path, demo):
    where = tmp_path / "q"
    _indexed(where, demo, "edge").index.close()
    (where / "mem.alias.json").write_text("{oops")
    result = CliRunner().invoke(cli, ["search", "x", "--collection", "mem", "--qdrant-path", str(where)])
    assert result.exit_code == 2 and "mem.alias.json: unreadable alias pointer" in result.output, result.output


def test_the_production_loop_example_rolls_a_better_model_out_and_back(tmp_path, capsys):
    """examples/production_loop.py on the shipped team memories (its default data; the query adapter, for time): the
    log trains a model the gate calls better, the rollout serves it, and the rollback serves the old results again."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "examples" / "production_loop.py"
    spec = importlib.util.spec_from_file_location("production_loop", script)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    happened = example.main(["--method", "adapter", "--out", str(tmp_path / "loop")])
    out = capsys.readouterr().out
    assert "negatives users rejected" in out and "'queries without an accepted document': 0" in out, out
    assert happened["gate"] == "better" and happened["rolled_out"] and happened["rolled_back"], happened
    assert happened["after"] > happened["before"], happened  # the new model answers more future queries first
    assert happened["after_rollback"] == happened["before"] and happened["restored"], happened  # exactly as before
    assert "rollout: 300 memories into 'memories__v1'" in out and "(unseen documents): better" in out, out
    assert "rollback: 'memories__v1' -> " in out, out


def test_rollout_takes_one_options_record_and_its_fields_as_keywords():
    """Issue #39: rollout() takes a RolloutOptions (what `ace rollout` builds); a keyword replaces a field of it, and a
    keyword that is no option is a TypeError, as before."""
    base = RolloutOptions(dry_run=True)
    assert RolloutOptions.given(base, {"force": True}) == RolloutOptions(dry_run=True, force=True)
    assert base.force is False                                           # the caller's record is not changed
    assert RolloutOptions.given(None, {}) == RolloutOptions()
    with pytest.raises(TypeError, match="unexpected keyword argument 'forse'"):
        rollout("model", "memories", forse=True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'forse'"):
        rollout("model", "memories", RolloutOptions(), forse=True)
