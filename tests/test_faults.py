"""Bad input and faults, one row per case: each ends in one clear line (exit code 2 on the CLI), never a traceback,
and nothing is created or lost. A new case is one more row."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from click.testing import CliRunner
from llama_index.core.schema import TextNode

from ace_llamaindex import FineTunedEmbedding, HybridQdrantRetriever, OpenAICompatibleEmbedding
from ace_llamaindex.bm25 import BM25Encoder, tokenize
from ace_llamaindex.cli import cli
from ace_llamaindex.errors import EmbeddingError, OptionError


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
    from ace_llamaindex.edge_store import EdgeCorpusIndex

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
    env = {**os.environ, "TMPDIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ace_llamaindex.cli", "eval", "--engine", "edge", "--out-dir",
                             str(tmp_path / "r"), "--report", "json"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("ace-edge-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob("ace-edge-*")), "the evaluation never created its temporary shard"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143
    assert not list(tmp_path.glob("ace-edge-*"))
