"""Bad input and faults, one row per case: each ends in one clear line (exit code 2 on the CLI), never a traceback,
and nothing is created or lost. A new case is one more row."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from llama_index.core.schema import TextNode

from ace_llamaindex import FineTunedEmbedding, HybridQdrantRetriever, OpenAICompatibleEmbedding
from ace_llamaindex.cli import cli
from ace_llamaindex.errors import EmbeddingError, OptionError
from ace_llamaindex.index.bm25 import BM25Encoder, tokenize


# ---- CLI: (arguments, files to create first, expected text) ------------------------------------------------------
def _non_utf8(tmp):
    (tmp / "latin1.json").write_bytes('{"queries": {"q1": "café"}}'.encode("latin-1"))


CLI_CASES = [
    ("pipeline --test-fraction 0 --out {tmp}/run", None, "--test-fraction must be between 0 and 1"),
    ("search hello --top-k 0 --qdrant-path {tmp}/q", None, "0 is not in the range x>=1"),
    ("search hello --qdrant-path {tmp}/nothing", None, "no index at"),
    ("mine -o {tmp}", None, "is a directory; expected a file path"),
    ("eval --out-dir {tmp}/afile", lambda t: (t / "afile").write_text("x"), "is a file; expected a directory"),
    ("train {tmp}/data.json -o {tmp}/afile", lambda t: (t / "afile").write_text("x"), "is a file; expected a directory"),
    ("pipeline --out {tmp}/afile/run", lambda t: (t / "afile").write_text("x"), "is a file, so"),
    ("mine {tmp}/latin1.json -o {tmp}/out.json", _non_utf8, "is not UTF-8 text"),
    ("eval {tmp}/missing.json --out-dir {tmp}/r", None, "missing.json: path: does not exist"),
    ("eval --engine nope --max-queries 5 --out-dir {tmp}/r", None, "engine must be 'auto' or one of ['edge', 'local'], got 'nope'"),
    ("mine --engine nope -o {tmp}/o.json", None, "engine must be 'auto' or one of ['edge', 'local'], got 'nope'"),
    # out-of-range options, refused at the boundary with the option and the range
    ("mine --absolute-margin nan -o {tmp}/o.json", None, "'nan' is not a finite number"),
    ("mine --relative-margin 1.5 -o {tmp}/o.json", None, "1.5 is not in the range 0<=x<1"),
    ("mine --min-score 0.9 --max-score 0.1 -o {tmp}/o.json", None, "min_score (0.9) must be below max_score (0.1)"),
    ("mine --num-negatives 0 -o {tmp}/o.json", None, "0 is not in the range x>=1"),
    ("train {tmp}/data.json --warmup-ratio 2", None, "2.0 is not in the range 0<=x<1"),
    ("train {tmp}/data.json --max-seq-length 0", None, "0 is not in the range x>=1"),
    ("train {tmp}/data.json --train-negatives -1", None, "-1 is not in the range x>=0"),
    ("train {tmp}/data.json --early-stopping -1", None, "-1 is not in the range x>=1"),
    ("train {tmp}/data.json --learning-rate nan", None, "'nan' is not a finite number"),
    ("eval --dense-weight -1 --out-dir {tmp}/r", None, "-1.0 is not in the range x>=0"),
    ("eval --rrf-k 0 --out-dir {tmp}/r", None, "0 is not in the range x>=1"),
    ("index --qdrant-path {tmp}/afile", lambda t: (t / "afile").write_text("x"), "is a file"),
    # hostile names and text
    ("index --collection ../../escaped --qdrant-path {tmp}/q", None, "collection name '../../escaped'"),
    ("search hi --collection a/b --qdrant-path {tmp}", None, "collection name 'a/b'"),
    ("mine {tmp}/surrogate.json -o {tmp}/o.json", lambda t: (t / "surrogate.json").write_text(
        '{"queries": {"q1": "bad \\ud800 text"}, "corpus": {"d1": "a memory"}, "relevant_docs": {"q1": ["d1"]}}'),
     "queries['q1']: has a lone surrogate"),
]


@pytest.mark.parametrize(("args", "setup", "expected"), CLI_CASES, ids=[c[0].split()[0] + ":" + c[2][:30] for c in CLI_CASES])
def test_cli_faults_are_one_line(tmp_path, args, setup, expected):
    if setup:
        setup(tmp_path)
    before = set(os.listdir(tmp_path))
    result = CliRunner().invoke(cli, args.format(tmp=tmp_path).split())
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    assert set(os.listdir(tmp_path)) == before  # nothing created by a refused command


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_output_is_refused_before_work(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    result = CliRunner().invoke(cli, ["mine", "-o", str(locked / "out.json")])
    assert result.exit_code == 2 and "no permission to write" in result.output


# ---- the retriever and its engines --------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["local", "edge"])
def test_retrieve_on_a_missing_collection(tmp_path, engine):
    r = HybridQdrantRetriever(FineTunedEmbedding(), engine=engine, path=str(tmp_path / "q"), collection="nope", mode="hybrid")
    with pytest.raises(OptionError, match="collection 'nope' does not exist"):
        r.retrieve("anything")


def test_add_no_nodes_is_a_no_op():
    r = HybridQdrantRetriever(FineTunedEmbedding(), collection="empty")
    r.add_nodes([])
    assert not r.index.exists()


def test_second_process_on_one_edge_folder(tmp_path):
    pytest.importorskip("qdrant_edge")
    from ace_llamaindex.index.edge_store import EdgeCorpusIndex

    first = EdgeCorpusIndex(tmp_path, "c")
    first.upsert(["d"], ["some text"], {"dense-x": np.ones((1, 4), dtype=np.float32)}, show_progress=False)
    with pytest.raises(OptionError, match="in use by another process"):
        EdgeCorpusIndex(tmp_path, "c")


def test_dead_fallback_does_not_block_indexing(tmp_path):
    dead = OpenAICompatibleEmbedding(base_url="http://127.0.0.1:9/v1", model_name="dead", timeout=0.2, max_retries=0)
    r = HybridQdrantRetriever(FineTunedEmbedding(fallback=dead), collection="mem", mode="dense")
    r.add_nodes([TextNode(id_="a", text="rotate the signing key"), TextNode(id_="b", text="money in cents")], show_progress=False)
    assert r.missing_spaces == ["dead"] and r.retrieve("signing key")[0].node.node_id == "a"


# ---- an OpenAI-compatible endpoint that misbehaves (faults a healthy server cannot show: a local fake) ------------
class Endpoint:
    """Answers every POST with ``reply(n_texts)``: bytes, sent in one piece or one byte every ``trickle`` s."""

    def __init__(self, reply, trickle: float = 0.0):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                texts = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))["input"]
                body = reply(len(texts))
                self.send_response(200)
                self.end_headers()
                for i in range(0, len(body), 1 if trickle else len(body)):
                    self.wfile.write(body[i:i + (1 if trickle else len(body))])
                    self.wfile.flush()
                    time.sleep(trickle)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        outer.calls = 0


def _data(vectors):
    return json.dumps({"data": [{"index": i, "embedding": v} for i, v in enumerate(vectors)]}).encode()


ENDPOINT_CASES = [
    ("nulls", lambda n: _data([None] * n), "not a list of finite numbers"),
    ("null inside", lambda n: _data([[0.1, None]] * n), "not a list of finite numbers"),
    ("NaN", lambda n: _data([[float("nan"), 1.0]] * n), "not a list of finite numbers"),
    ("ragged", lambda n: _data([[0.1] * (16 if i % 2 else 384) for i in range(n)]), "different lengths"),
    ("not json", lambda n: b"<html>busy</html>", "malformed response"),
    ("duplicate index", lambda n: json.dumps({"data": [{"index": 0, "embedding": [0.1, 0.2]} for _ in range(n)]}).encode(),
     "each once"),
]


@pytest.mark.parametrize(("name", "reply", "expected"), ENDPOINT_CASES, ids=[c[0] for c in ENDPOINT_CASES])
def test_bad_endpoint_answers_name_the_endpoint(name, reply, expected):
    endpoint = Endpoint(reply)
    client = OpenAICompatibleEmbedding(base_url=endpoint.url, timeout=2, max_retries=0)
    with pytest.raises(EmbeddingError, match=expected) as err:
        client.get_text_embedding_batch(["a", "b"])
    assert endpoint.url in str(err.value)
    endpoint.server.shutdown()


def test_a_changed_dimension_between_calls_is_refused():
    sizes = iter([16, 384])
    endpoint = Endpoint(lambda n: _data([[0.5] * next(sizes)] * n))
    client = OpenAICompatibleEmbedding(base_url=endpoint.url, timeout=2, max_retries=0)
    client.get_query_embedding("a")
    with pytest.raises(EmbeddingError, match=r"different lengths \[16, 384\]"):
        client.get_query_embedding("b")
    endpoint.server.shutdown()


def test_a_trickling_endpoint_meets_an_overall_deadline():
    endpoint = Endpoint(lambda n: _data([[0.5] * 8] * n), trickle=0.2)  # each byte well within the read timeout
    client = OpenAICompatibleEmbedding(base_url=endpoint.url, timeout=0.6, max_retries=0)
    started = time.monotonic()
    with pytest.raises(EmbeddingError, match="no complete response within 0.6 s"):
        client.get_query_embedding("a")
    assert time.monotonic() - started < 5  # the whole body would take ~20 s
    endpoint.server.shutdown()


def test_a_password_in_the_url_never_shows():
    client = OpenAICompatibleEmbedding(base_url="http://user:SECRET@127.0.0.1:9/v1", timeout=0.5, max_retries=0)
    with pytest.raises(EmbeddingError) as err:
        client.get_query_embedding("a")
    assert "SECRET" not in str(err.value) and "user:***@127.0.0.1:9" in str(err.value)
    assert "SECRET" not in repr(client)


def test_api_key_never_shows():
    client = OpenAICompatibleEmbedding(base_url="http://127.0.0.1:9/v1", api_key="sk-very-secret")
    assert "sk-very-secret" not in repr(client) and "sk-very-secret" not in client.to_json()
    assert client._headers()["Authorization"] == "Bearer sk-very-secret"


# ---- BM25 across scripts ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("document", "query"), [
    ("数据库连接失败时先检查连接池", "连接"),
    ("東京タワーの営業時間", "タワー"),
    ("ระบบฐานข้อมูลล่ม", "ฐานข้อมูล"),
])
def test_bm25_matches_inside_unspaced_scripts(document, query):
    encoder = BM25Encoder().fit([document])
    doc_terms, _ = encoder.encode_document(document)
    query_terms, _ = encoder.encode_query(query)
    assert tokenize(query) and set(query_terms) <= set(doc_terms)


def test_sigterm_removes_temporary_edge_shards(tmp_path):
    """A run stopped by SIGTERM (a container stop, a CI cancel) leaves no ace-edge-* folder in the temp dir."""
    import signal
    import subprocess
    import sys

    pytest.importorskip("qdrant_edge")
    # a cache of its own: the run encodes for real after creating its shard, instead of ending moments later
    env = {**os.environ, "TMPDIR": str(tmp_path), "HF_HUB_OFFLINE": "1", "ACE_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "ace_llamaindex.cli", "eval", "--engine", "edge", "--out-dir",
                             str(tmp_path / "r"), "--report", "json"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("ace-edge-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob("ace-edge-*")), "the evaluation never created its temporary shard"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143
    assert not list(tmp_path.glob("ace-edge-*"))


# A stop the code under the handler swallowed is raised again; a cleanup already unwinding is never cut short. Each row
# runs in its own process: SIGTERM to itself inside `stopped_by_sigterm`, then `finished` if the process carried on.
_SPIN = "import time\ndef spin(s):\n    end = time.monotonic() + s\n    while time.monotonic() < end: pass\n"
_STOP_ROWS = {
    "plain": "os.kill(os.getpid(), signal.SIGTERM); spin(5)",
    "swallowed-by-except-baseexception": ("try:\n    os.kill(os.getpid(), signal.SIGTERM); spin(5)\n"
                                          "except BaseException:\n    pass\nspin(5)"),
    "swallowed-in-a-finaliser": ("class Gone:\n    def __del__(self):\n        os.kill(os.getpid(), signal.SIGTERM); "
                                 "spin(1)\nGone()\nspin(5)"),
    "cleanup-outlasting-redelivery": ("try:\n    os.kill(os.getpid(), signal.SIGTERM); spin(5)\nfinally:\n    spin(2.5)\n"
                                      "    open(sys.argv[1] + '.cleaned', 'w').close()"),
}


@pytest.mark.parametrize("row", list(_STOP_ROWS))
def test_sigterm_stops_even_when_the_exit_is_swallowed(tmp_path, row):
    """Every row exits 143 without reaching `finished`; the cleanup row also completes its `finally`."""
    import subprocess
    import sys
    import textwrap

    body = textwrap.indent(_STOP_ROWS[row], "    ")
    code = (f"import os, signal, sys\n{_SPIN}from ace_llamaindex.stopping import stopped_by_sigterm\n"
            f"with stopped_by_sigterm():\n{body}\n    open(sys.argv[1], 'w').close()\n")
    marker = tmp_path / "finished"
    proc = subprocess.run([sys.executable, "-c", code, str(marker)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert not marker.exists()
    assert (tmp_path / "finished.cleaned").exists() == (row == "cleanup-outlasting-redelivery")


# ---- artifacts: corrupt, foreign or mismatched, each refused in one line naming the folder (or dropped if disposable)
def _trained_adapter(tmp_path):
    from ace_llamaindex.mine.mining import TrainingExample
    from ace_llamaindex.train.adapter import adapter_trainer
    from ace_llamaindex.train.training import TrainConfig

    rows = [TrainingExample(f"question number {i}", f"answer text {i}", [f"answer text {i + 1}"]) for i in range(12)]
    adapter_trainer(rows, tmp_path / "adapter", TrainConfig(epochs=2, force=True))
    return tmp_path / "adapter"


def _truncate_weights(folder):
    (folder / "adapter.npz").write_bytes((folder / "adapter.npz").read_bytes()[:100])


def _fine_tuned_base(folder):
    return FineTunedEmbedding(str(folder.parent / "other"))


def _other_base(tmp_path):
    """A model with the base's architecture and other weights (as a fine-tuned model is)."""
    from sentence_transformers import SentenceTransformer

    from ace_llamaindex.embeddings.models import resolve_model

    model = SentenceTransformer(resolve_model(None))
    for p in model.parameters():
        p.data.mul_(0.99)
    model.save(str(tmp_path / "other"))


ADAPTER_CASES = [
    ("truncated weights", _truncate_weights, lambda f: FineTunedEmbedding(), "the adapter is unreadable"),
    ("garbage card", lambda f: (f / "ace_adapter.json").write_text("{not json"), lambda f: FineTunedEmbedding(),
     "the adapter is unreadable"),
    ("another base", lambda f: _other_base(f.parent), _fine_tuned_base, "this adapter was trained over the model"),
]


@pytest.mark.parametrize(("name", "spoil", "base", "expected"), ADAPTER_CASES, ids=[c[0] for c in ADAPTER_CASES])
def test_a_bad_or_foreign_adapter_is_refused(tmp_path, name, spoil, base, expected):
    from ace_llamaindex import AdapterEmbedding

    folder = _trained_adapter(tmp_path)
    spoil(folder)
    with pytest.raises(OptionError, match=expected) as err:
        AdapterEmbedding(base(folder), str(folder))
    assert str(folder) in str(err.value) or name == "another base"


def test_an_adapter_of_another_dimension_says_so(tmp_path):
    from ace_llamaindex.embeddings.query_adapter import QueryAdapter

    adapter, _ = QueryAdapter.load(_trained_adapter(tmp_path))
    with pytest.raises(OptionError, match="maps 384-d query vectors, the base gives 768-d"):
        adapter(np.ones((1, 768), dtype=np.float32))


def test_a_corrupt_cache_entry_is_dropped_and_recomputed(tmp_path):
    from ace_llamaindex.embeddings.encoding import CachedEncoder

    first = CachedEncoder(cache_dir=tmp_path / "c", show_progress=False).encode_documents(["a memory", "another"])
    entry = next((tmp_path / "c").glob("*.npz"))
    entry.write_bytes(b"PK\x03\x04 not a zip")
    again = CachedEncoder(cache_dir=tmp_path / "c", show_progress=False)
    assert np.allclose(again.encode_documents(["a memory", "another"]), first, atol=1e-5) and again.encoded["document"] == 2


def test_a_cache_folder_that_is_a_file_is_one_line(tmp_path):
    from ace_llamaindex.embeddings.encoding import CachedEncoder

    (tmp_path / "c").write_text("x")
    with pytest.raises(OptionError, match="cannot use it as the embedding cache folder"):
        CachedEncoder(cache_dir=tmp_path / "c", show_progress=False).encode_documents(["text"])


def test_filters_of_the_wrong_type_are_refused_at_once():
    with pytest.raises(OptionError, match="filters must be llama_index MetadataFilters, got dict"):
        HybridQdrantRetriever(FineTunedEmbedding(), collection="f", filters={"category": "debugging"})


def test_negatives_equal_to_the_positive_are_dropped_and_counted(tmp_path):
    from ace_llamaindex.mine.mining import TrainingExample
    from ace_llamaindex.train.adapter import adapter_trainer
    from ace_llamaindex.train.training import TrainConfig

    rows = [TrainingExample(f"question {i}", f"answer {i}", [f"answer  {i}", f"answer {i + 1}"]) for i in range(12)]
    card = adapter_trainer(rows, tmp_path / "a", TrainConfig(epochs=1, force=True)).card
    assert card.data_checks["negatives_equal_to_positive"] == 12


# ---- a full disk: refused before the work, or one line mid-write, the previous output intact ----------------------
@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    """A 128 MB tmpfs holding a copy of the base model (~90 MB): too small for an Edge shard, a training run or an
    export of that model. Needs root (mount); skipped elsewhere."""
    import shutil
    import subprocess

    from ace_llamaindex.embeddings.models import resolve_model

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where = tmp_path_factory.mktemp("small-disk")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("this machine does not let us mount a tmpfs")
    shutil.copytree(resolve_model(None), where / "model")
    (where / "previous.json").write_text('{"examples": [{"query": "q", "positive": "p", "negatives": []}]}')
    yield where
    subprocess.run(["umount", str(where)], check=False)


def _fill(disk, leave: int) -> None:
    import shutil

    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))


DISK_FULL_CASES = [
    ("index " + str(Path(__file__).parents[1] / "ace_llamaindex/data/agent_memories.json") + " --qdrant-path {disk}/q",
     "Qdrant Edge maps"),
    ("train {disk}/previous.json -o {disk}/tuned --method full --epochs 1", "training (the new model and a checkpoint) needs"),
    ("export {disk}/model --backend onnx", "the onnx export needs about"),
    ("mine " + str(Path(__file__).parents[1] / "ace_llamaindex/data/agent_memories.json") + " -o {disk}/previous.json "
     "--fill", "no space left on the device"),
]


def _snapshot(disk) -> dict:
    """Every file on the disk (the model's weights too) by content hash, but the filler."""
    import hashlib

    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in disk.rglob("*") if p.is_file() and p.name != "filler"}


@pytest.mark.parametrize(("args", "expected"), DISK_FULL_CASES, ids=[c[0].split()[0] for c in DISK_FULL_CASES])
def test_a_full_disk_is_one_line_and_loses_nothing(small_disk, args, expected):
    fill = args.endswith("--fill")
    if fill:  # leave a few KB: the write itself runs out of space
        _fill(small_disk, 8 * 1024)
    args = args.removesuffix(" --fill").format(disk=small_disk)
    before = _snapshot(small_disk)
    try:
        result = CliRunner().invoke(cli, args.split())
    finally:
        (small_disk / "filler").unlink(missing_ok=True)
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    after = _snapshot(small_disk)
    assert after == before  # the previous output is intact, nothing half-written is left


def _index_then_spoil(tmp_path, engine, spoil):
    from ace_llamaindex.index.engines import open_index

    index = open_index("c", path=tmp_path / "q", engine=engine)
    index.upsert(["d"], ["some text"], {"dense-x": np.ones((1, 4), dtype=np.float32)}, show_progress=False)
    index.close()
    spoil(tmp_path / "q")


def _garbage(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2] + b"\x00garbage")


STORAGE_CASES = [
    ("edge", lambda q: _garbage(next(q.rglob("edge_config.json"))), "the Qdrant Edge folder is unreadable"),
    ("local", lambda q: _garbage(next(q.rglob("storage.sqlite"))), "the embedded Qdrant storage is unreadable"),
]


@pytest.mark.parametrize(("engine", "spoil", "expected"), STORAGE_CASES, ids=[c[0] for c in STORAGE_CASES])
def test_a_corrupt_index_folder_is_one_line(tmp_path, engine, spoil, expected):
    if engine == "edge":
        pytest.importorskip("qdrant_edge")
    _index_then_spoil(tmp_path, engine, spoil)
    from ace_llamaindex.index.engines import open_index

    with pytest.raises(OptionError, match=expected):
        index = open_index("c", path=tmp_path / "q", engine=engine)
        index.search("bm25", texts=["some"], limit=1, show_progress=False)


def test_two_creators_of_one_new_collection_the_loser_gets_one_line(tmp_path):
    pytest.importorskip("qdrant_edge")
    import qdrant_edge as q

    from ace_llamaindex.index.edge_store import EdgeCorpusIndex, _creating

    loser = EdgeCorpusIndex(tmp_path, "c")  # sees no collection yet
    config = q.EdgeConfig(vectors={"dense-x": q.EdgeVectorParams(size=4, distance=q.Distance.Cosine)})
    (tmp_path / "c").mkdir()
    with _creating(tmp_path / "c"):  # the other creator, mid-creation: it holds the creation lock until its metadata
        winner = q.EdgeShard.create(str(tmp_path / "c"), config)
        with pytest.raises(OptionError, match="in use by another process"):
            loser.upsert(["d"], ["text"], {"dense-x": np.ones((1, 4), dtype=np.float32)}, show_progress=False)
        winner.close()


def test_a_script_that_never_closes_its_retriever_exits_quietly(tmp_path):
    import subprocess
    import sys

    script = ("from ace_llamaindex import HybridQdrantRetriever, FineTunedEmbedding\n"
              "from llama_index.core.schema import TextNode\n"
              f"r = HybridQdrantRetriever(FineTunedEmbedding(), engine='local', path={str(tmp_path / 'q')!r}, collection='c')\n"
              "r.add_nodes([TextNode(id_='a', text='hello world')])\n"
              "print(r.retrieve('hello')[0].node.text)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "hello world" in done.stdout
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr


def test_a_local_mode_rollout_on_a_full_disk_is_one_line_and_the_collection_still_serves(small_disk, tuned_model_dir):
    """qdrant-client's local mode stores points in SQLite: a full disk there was a raw sqlite3.OperationalError and
    a partial ``__v0`` left behind. Each command in its own process (an embedded folder is one process's)."""
    import subprocess
    import sys

    def ace(*args):
        return subprocess.run([sys.executable, "-m", "ace_llamaindex.cli", *args], capture_output=True, text=True)

    where = ["--qdrant-path", str(small_disk / "local-q"), "--collection", "mem", "--engine", "local"]
    assert ace("index", str(Path(__file__).parents[1] / "ace_llamaindex/data/agent_memories.json"), *where).returncode == 0
    _fill(small_disk, 64 * 1024)
    try:
        result = ace("rollout", str(tuned_model_dir), *where)
    finally:
        (small_disk / "filler").unlink(missing_ok=True)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output, output
    assert "no space left on the device" in output and "'mem' still serves" in output, output
    assert not list((small_disk / "local-q").rglob("mem__v*"))  # nothing partial left
    search = ace("search", "deploy", "--mode", "bm25", "--json", *where)
    assert search.returncode == 0 and json.loads(search.stdout), search.stdout + search.stderr  # it still answers
