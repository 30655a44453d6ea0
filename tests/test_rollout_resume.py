"""Rollout at scale (issue #31): a killed rollout is resumed by the next one, encoding only what it lacks, into vectors
equal to an uninterrupted rollout's; several encoding processes give the same vectors as one; a Qdrant cluster's shard
and replica settings reach the collections created; and bad values of these options are each one clear line."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from llama_index.core.schema import TextNode

from ace_llamaindex.cli import cli
from ace_llamaindex.deploy import rollout as rollout_module
from ace_llamaindex.deploy.rollout import RESUME_KEY, rollout
from ace_llamaindex.embeddings import workers as workers_module
from ace_llamaindex.embeddings.models import DEFAULT_MODEL
from ace_llamaindex.embeddings.workers import encoding_workers
from ace_llamaindex.errors import OptionError
from ace_llamaindex.index import edge_store, store
from ace_llamaindex.index.engines import open_index
from ace_llamaindex.serve.embedding import FineTunedEmbedding
from ace_llamaindex.serve.retriever import HybridQdrantRetriever

DOCS = 40
BATCH = 4
ENGINES = [pytest.param("edge", marks=pytest.mark.skipif(not edge_store.edge_available(), reason="Qdrant Edge not installed")),
           "local"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

# A rollout in another process that kills itself (kill -9, nothing cleaned up) once half the documents are written
KILLED_HALFWAY = """
import os, signal, sys
from ace_llamaindex.deploy.rollout import rollout

def halfway(documents_written):
    if documents_written >= int(sys.argv[4]) // 2:
        os.kill(os.getpid(), signal.SIGKILL)

rollout(sys.argv[1], "mem", path=sys.argv[2], engine=sys.argv[3], batch_size=4, show_progress=False, on_batch=halfway)
"""


def _release_everything() -> None:
    """Close what this process holds open (an embedded folder, an Edge shard: one process at a time)."""
    for index in list(edge_store._OPEN.values()):
        index.close()
    store._close_open_clients()
    gc.collect()


def _indexed(where: Path, demo, engine: str, docs: int = DOCS) -> None:
    retriever = HybridQdrantRetriever(FineTunedEmbedding(), path=str(where), collection="mem", engine=engine)
    retriever.add_nodes([TextNode(id_=k, text=v) for k, v in sorted(demo.corpus.items())[:docs]], show_progress=False)
    del retriever
    _release_everything()


def _points(where: Path, engine: str, collection: str) -> dict[str, tuple[dict, dict]]:
    index = open_index(collection, path=str(where), engine=engine)
    points = {pid: (payload, vectors) for pid, payload, vectors in index.sibling(collection).iter_points(64)}
    index.close()
    _release_everything()
    return points


def _assert_same_points(a: dict, b: dict, atol: float = 1e-5) -> None:
    """Point by point: the same payloads, BM25 vectors and dense vectors (within ``atol``: batches differ)."""
    assert sorted(a) == sorted(b)
    for pid, (payload, vectors) in a.items():
        other_payload, other = b[pid]
        assert payload == other_payload, pid
        assert sorted(vectors) == sorted(other), pid
        for name, vector in vectors.items():
            if name == "bm25":
                assert list(vector.indices) == list(other[name].indices), pid
                assert np.allclose(vector.values, other[name].values), pid
            else:
                assert np.allclose(vector, other[name], atol=atol), (pid, name, np.abs(np.subtract(vector, other[name])).max())


class _Counted:
    """Counts the documents that go through the model (FineTunedEmbedding.encode_primary)."""

    def __init__(self, monkeypatch) -> None:
        self.documents = 0
        original = FineTunedEmbedding.encode_primary

        def counted(embedding, texts, kind):
            if kind == "document":
                self.documents += len(texts)
            return original(embedding, texts, kind)

        monkeypatch.setattr(FineTunedEmbedding, "encode_primary", counted)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_rollout_killed_halfway_is_resumed_and_gives_the_vectors_of_an_uninterrupted_one(tmp_path, demo, tuned_model_dir,
                                                                                            engine, monkeypatch):
    where, twin = tmp_path / "q", tmp_path / "twin"
    _indexed(where, demo, engine)
    shutil.copytree(where, twin)  # the same serving collection, rolled out below without a kill

    killed = subprocess.run([sys.executable, "-c", KILLED_HALFWAY, str(tuned_model_dir), str(where), engine, str(DOCS)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-3000:]

    dry = rollout(tuned_model_dir, "mem", path=where, engine=engine, batch_size=BATCH, show_progress=False, dry_run=True)
    assert dry.collection == "mem__v1" and dry.resumed == DOCS // 2, dry  # what it would do: resume, half to embed
    _release_everything()

    counter, written = _Counted(monkeypatch), []
    report = rollout(tuned_model_dir, "mem", path=where, engine=engine, batch_size=BATCH, show_progress=False,
                     on_batch=written.append)
    _release_everything()
    assert report.collection == "mem__v1" and not report.removed and report.notes == [], report
    assert report.resumed == DOCS // 2 and report.embedded == DOCS - DOCS // 2
    assert counter.documents == DOCS - DOCS // 2  # only what the killed rollout had not written went through the model
    assert written[0] == DOCS // 2 + BATCH and written[-1] == DOCS  # on_batch counts the documents in the collection
    assert report.checks["documents"] == [DOCS, DOCS]

    counter.documents = 0
    whole = rollout(tuned_model_dir, "mem", path=twin, engine=engine, batch_size=BATCH, show_progress=False)
    _release_everything()
    assert whole.resumed == 0 and whole.embedded == DOCS and counter.documents == DOCS + 1  # + the vector size probe
    _assert_same_points(_points(where, engine, "mem__v1"), _points(twin, engine, "mem__v1"))
    # what serves is the new collection, the resume's mark kept (a later rollout of the same build reuses it)
    index = open_index("mem", path=str(where), engine=engine)
    assert index.alias_target("mem") == "mem__v1"
    assert index.sibling("mem__v1").metadata()[RESUME_KEY]["written"] == DOCS
    index.close()


class _Killed(Exception):
    pass


@pytest.mark.parametrize("edited", [False, True], ids=["same-source", "source-edited-past-the-checkpoint"])
@pytest.mark.parametrize("engine", ENGINES)
def test_a_batch_written_after_the_last_checkpoint(tmp_path, demo, tuned_model_dir, engine, edited, monkeypatch):
    """Killed between writing a batch and recording it: the batch is in the version, not in its checkpoint. Those are
    the source's next documents, embedded by the same model: the next rollout keeps them and embeds the rest. If the
    source changed there since, the version is not resumed."""
    where, twin = tmp_path / "q", tmp_path / "twin"
    _indexed(where, demo, engine)
    shutil.copytree(where, twin)
    cls = edge_store.EdgeCorpusIndex if engine == "edge" else store.CorpusIndex
    original = cls.set_metadata

    def dies_at_the_third_checkpoint(index, extra):
        if RESUME_KEY in extra and extra[RESUME_KEY]["written"] == 3 * BATCH:
            raise _Killed()
        return original(index, extra)

    monkeypatch.setattr(cls, "set_metadata", dies_at_the_third_checkpoint)
    with pytest.raises(_Killed):
        rollout(tuned_model_dir, "mem", path=where, engine=engine, batch_size=BATCH, show_progress=False)
    monkeypatch.setattr(cls, "set_metadata", original)
    _release_everything()
    assert len(_points(where, engine, "mem__v1")) == 3 * BATCH  # three batches in, two of them checkpointed
    if edited:
        for folder in (where, twin):
            _edit_document(folder, engine, 2 * BATCH + 1)  # one of the batch past the checkpoint

    report = rollout(tuned_model_dir, "mem", path=where, engine=engine, batch_size=BATCH, show_progress=False)
    _release_everything()
    if edited:
        assert report.resumed == 0 and report.embedded == DOCS and "mem__v1" in report.removed, report
        assert any("past its checkpoint are not the serving collection's next ones" in n for n in report.notes)
    else:
        assert report.collection == "mem__v1" and report.resumed == 3 * BATCH and report.embedded == DOCS - 3 * BATCH
        assert any(f"{BATCH} documents written after its last checkpoint are kept" in n for n in report.notes)
    whole = rollout(tuned_model_dir, "mem", path=twin, engine=engine, batch_size=BATCH, show_progress=False)
    _release_everything()
    _assert_same_points(_points(where, engine, report.collection), _points(twin, engine, whole.collection))


def _killed_partial(where: Path, model, engine: str) -> None:
    """A rollout stopped (an exception, as a crash) after 3 batches: mem__v1 is partial."""

    def stop(written):
        if written >= 3 * BATCH:
            raise _Killed()

    with pytest.raises(_Killed):
        rollout(model, "mem", path=where, engine=engine, batch_size=BATCH, show_progress=False, force=True, on_batch=stop)
    _release_everything()


def _edit_document(where: Path, engine: str, position: int = 0) -> None:
    """Change the text of the serving collection's point at ``position`` in scroll order."""
    index = open_index("mem", path=str(where), engine=engine)
    pid, payload, vectors = list(index.iter_points(64))[position]
    index.write_points([rollout_module.models.PointStruct(id=pid, vector=vectors, payload={**payload, "text": "edited"})])
    index.close()
    _release_everything()


# (what happens between the stopped rollout and the next one, what the next one is, the note it gives)
NOT_RESUMED = [
    ("another model", {"model": DEFAULT_MODEL}, "was built for another rollout (plan"),
    ("edited source", {"edit": True}, "the documents it was built from have changed"),
    ("resume=False", {"resume": False}, "resume=False"),
]


@pytest.mark.parametrize("case,change,note", NOT_RESUMED, ids=[c[0] for c in NOT_RESUMED])
def test_another_model_a_changed_source_or_no_resume_starts_again(tmp_path, demo, tuned_model_dir, case, change, note):
    where = tmp_path / "q"
    _indexed(where, demo, "local", docs=24)
    _killed_partial(where, tuned_model_dir, "local")
    if change.get("edit"):
        _edit_document(where, "local")
    report = rollout(change.get("model", tuned_model_dir), "mem", path=where, engine="local", batch_size=BATCH,
                     show_progress=False, force=True, resume=change.get("resume", True))
    _release_everything()
    assert report.resumed == 0 and report.embedded == 24 and "mem__v1" in report.removed, report
    assert report.collection == "mem__v2" and any(note in n for n in report.notes), report.notes


def test_workers_2_give_the_same_vectors_as_1(tmp_path, demo, tuned_model_dir, monkeypatch):
    """The same tiny corpus indexed and rolled out with 2 encoding processes and with 1: the same vectors."""
    started = []
    start_pool = workers_module.start_pool
    monkeypatch.setattr(workers_module, "start_pool", lambda model, devices: started.append(devices) or start_pool(model, devices))
    one, two = tmp_path / "one", tmp_path / "two"
    _indexed(one, demo, "edge" if edge_store.edge_available() else "local", docs=24)
    with encoding_workers(2):
        _indexed(two, demo, "edge" if edge_store.edge_available() else "local", docs=24)
    assert started == [["cpu", "cpu"]]  # indexing went through a pool of 2 CPU processes (no GPU here)
    engine = "edge" if edge_store.edge_available() else "local"
    _assert_same_points(_points(one, engine, "mem"), _points(two, engine, "mem"))

    first = rollout(tuned_model_dir, "mem", path=one, engine=engine, batch_size=8, show_progress=False)
    _release_everything()
    second = rollout(tuned_model_dir, "mem", path=two, engine=engine, batch_size=8, show_progress=False, workers=2)
    _release_everything()
    assert (first.workers, second.workers) == (1, 2) and len(started) == 2
    _assert_same_points(_points(one, engine, first.collection), _points(two, engine, second.collection))


def test_cluster_settings_reach_create_collection_and_a_rollout_copies_them(tmp_path, demo, tuned_model_dir, monkeypatch):
    """No Qdrant server here: qdrant-client's local mode stands in for one (it accepts the settings and ignores them), and
    what create_collection is asked is recorded. ``ace index`` gives them; a rollout's new version (and a first rollout's
    copy of the plain collection) copies the serving collection's unless given."""
    monkeypatch.setattr(store.CorpusIndex, "serves_cluster", lambda self: True)
    created: dict[str, dict] = {}
    original = store.CorpusIndex._create

    def recorded(index, dense, metadata):
        created[index.collection] = dict(index.cluster)
        kwargs = {}
        real = index.client.create_collection

        def spy(name, **kw):
            kwargs.update({k: kw.get(k) for k in store.CLUSTER_KEYS})
            return real(name, **kw)

        index.client.create_collection = spy
        try:
            original(index, dense, metadata)
        finally:
            del index.client.create_collection
        assert kwargs == {k: index.cluster.get(k) for k in store.CLUSTER_KEYS}  # exactly these reached qdrant-client

    monkeypatch.setattr(store.CorpusIndex, "_create", recorded)
    retriever = HybridQdrantRetriever(FineTunedEmbedding(), path=str(tmp_path / "q"), collection="mem", engine="local")
    assert retriever.index.set_cluster(3, 2, 2) == {"shard_number": 3, "replication_factor": 2, "write_consistency_factor": 2}
    retriever.add_nodes([TextNode(id_=k, text=v) for k, v in sorted(demo.corpus.items())[:12]], show_progress=False)
    assert created["mem"] == {"shard_number": 3, "replication_factor": 2, "write_consistency_factor": 2}

    settings = {"mem": {"shard_number": 3, "replication_factor": 2, "write_consistency_factor": 2}}
    monkeypatch.setattr(store.CorpusIndex, "cluster_settings", lambda self: settings.get(self.collection, {}))
    first = rollout(tuned_model_dir, "mem", index=retriever.index, show_progress=False)
    assert created["mem__v0"] == created["mem__v1"] == settings["mem"] and first.cluster == settings["mem"]
    settings["mem__v1"] = settings["mem"]
    second = rollout(DEFAULT_MODEL, "mem", index=retriever.index, show_progress=False, force=True, shard_number=6,
                     replication_factor=3)
    assert created[second.collection] == {"shard_number": 6, "replication_factor": 3} == second.cluster


# (command line, what its one line says): bad values of the scale-out options
BAD = [
    (["rollout", "MODEL", "--workers", "0"], "0 is not in the range x>=1"),
    (["rollout", "MODEL", "--workers", "100000"], "workers=100000: this machine has"),
    (["index", "--workers", "0"], "0 is not in the range x>=1"),
    (["index", "--workers", "100000"], "workers=100000: this machine has"),
    (["mine", "--workers", "0"], "0 is not in the range x>=1"),
    (["eval", "--workers", "-1"], "-1 is not in the range x>=1"),
    (["rollout", "MODEL", "--shards", "2"], "--shards 2: shards and replicas are a Qdrant server's (--qdrant-url)"),
    (["index", "--shards", "2"], "--shards 2: shards and replicas are a Qdrant server's (--qdrant-url)"),
    (["index", "--replication-factor", "2", "--engine", "local"], "--replication-factor 2: shards and replicas are"),
    (["rollout", "MODEL", "--write-consistency", "2"], "--write-consistency 2: shards and replicas are"),
    (["rollout", "MODEL", "--shards", "0"], "0 is not in the range x>=1"),
    (["index", "--replication-factor", "2", "--write-consistency", "3"], "--write-consistency 3 is more than --replication-factor 2"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a).replace("MODEL", "m") for a, _ in BAD])
def test_bad_scale_out_options_are_one_clear_line(tmp_path, demo, tuned_model_dir, args, message):
    where = tmp_path / "q"
    if args[0] == "rollout":
        _indexed(where, demo, "edge" if edge_store.edge_available() else "local", docs=8)
    args = [a.replace("MODEL", str(tuned_model_dir)) for a in args] + (["--qdrant-path", str(where)] if args[0] in
                                                                        ("rollout", "index") else [])
    result = CliRunner().invoke(cli, args)
    _release_everything()
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if message in line]
    assert lines and "Traceback" not in result.output, result.output
    if args[0] == "index" and "--workers" not in args:
        assert not where.exists()  # refused before anything was opened or created


def test_bad_scale_out_arguments_of_the_library_are_one_clear_error(tmp_path, demo):
    where = tmp_path / "q"
    _indexed(where, demo, "local", docs=8)
    for kwargs, message in [({"workers": 0}, "workers must be a whole number of at least 1"),
                            ({"workers": 1.5}, "workers must be a whole number"),
                            ({"shard_number": 0}, "--shards must be a whole number of at least 1"),
                            ({"replication_factor": 2}, "shards and replicas are a Qdrant server's")]:
        with pytest.raises(OptionError, match=message):
            rollout(DEFAULT_MODEL, "mem", path=where, engine="local", show_progress=False, force=True, **kwargs)
        _release_everything()
