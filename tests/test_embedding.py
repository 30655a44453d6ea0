"""FineTunedEmbedding in LlamaIndex, the OpenAI-compatible client against a real server, and faults."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from llama_index.core import Settings, VectorStoreIndex
from llama_index.core.schema import TextNode

from ace_llamaindex.errors import EmbeddingError
from ace_llamaindex.serve.embedding import FineTunedEmbedding
from ace_llamaindex.serve.http_embedding import OpenAICompatibleEmbedding


def test_settings_embed_model_with_vector_store_index(demo):
    Settings.embed_model = FineTunedEmbedding()
    try:
        nodes = [TextNode(id_=k, text=v) for k, v in list(demo.corpus.items())[:30]]
        retriever = VectorStoreIndex(nodes).as_retriever(similarity_top_k=1)
        qid = next(q for q in demo.queries if demo.relevant_docs[q][0] in {n.node_id for n in nodes} and demo.difficulty(q) == "easy")
        assert retriever.retrieve(demo.queries[qid])[0].node.node_id == demo.relevant_docs[qid][0]
    finally:
        Settings.embed_model = None


async def test_sync_async_batched_and_normalised():
    emb = FineTunedEmbedding(embed_batch_size=2)
    texts = ["check the logs", "rotate keys", "money in cents"]
    sync = np.array(emb.get_text_embedding_batch(texts))
    async_ = np.array(await emb.aget_text_embedding_batch(texts))
    assert sync.shape == (3, 384) and np.allclose(sync, async_, atol=1e-5)
    assert np.allclose(np.linalg.norm(sync, axis=1), 1.0, atol=1e-5)
    q = np.array(await emb.aget_query_embedding("rotate keys"))
    assert np.allclose(q, emb.get_query_embedding("rotate keys"), atol=1e-5)


def test_prompts_are_applied():
    plain, prompted = FineTunedEmbedding(), FineTunedEmbedding(query_prompt="search_query: ")
    assert not np.allclose(plain.get_query_embedding("x y z"), prompted.get_query_embedding("x y z"))


def test_real_openai_compatible_server(embedding_server):
    client = OpenAICompatibleEmbedding(base_url=embedding_server, model_name="minilm")
    vecs = np.array(client.get_text_embedding_batch(["rotate keys", "money in cents"]))
    local = np.array(FineTunedEmbedding().get_text_embedding_batch(["rotate keys", "money in cents"]))
    assert vecs.shape == (2, 384)
    cos = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True) * local).sum(axis=1)
    assert np.all(cos > 0.99)  # the server runs the same bundled model


def test_fallback_to_real_server_when_model_cannot_load(embedding_server, caplog):
    baseline = OpenAICompatibleEmbedding(base_url=embedding_server, model_name="minilm")
    emb = FineTunedEmbedding("/no/such/model", fallback=baseline)
    with caplog.at_level("WARNING"):
        vec, served_by = emb.embed_query_with_space("how do I roll back")
        emb.embed_query_with_space("again")
    assert served_by == "minilm" and len(vec) == 384 and emb.serving == "minilm"
    assert sum("falling back" in r.message for r in caplog.records) == 1  # logged once
    # A caller that does not know about spaces (a stock vector store) never gets the fallback's vector silently.
    with pytest.raises(EmbeddingError, match="another vector space"):
        emb.get_query_embedding("again")
    opted_in = FineTunedEmbedding("/no/such/model", fallback=baseline, allow_space_switch=True)
    assert len(opted_in.get_query_embedding("again")) == 384


async def test_async_fallback_to_real_server(embedding_server):
    emb = FineTunedEmbedding("/no/such/model", fallback=OpenAICompatibleEmbedding(base_url=embedding_server, model_name="minilm"))
    vec, served_by = await emb.aembed_query_with_space("roll back")
    assert served_by == "minilm" and len(vec) == 384


def test_no_fallback_raises_clear_error():
    with pytest.raises(EmbeddingError, match="cannot load sentence-transformers model '/no/such/model'"):
        FineTunedEmbedding("/no/such/model").get_query_embedding("x")


# ---- faults that cannot be provoked on a healthy server: a local fake ----------------------------------------
class Fake:
    """Serves a scripted sequence of (status, body, delay) and counts requests."""

    def __init__(self, script):
        self.script, self.calls = list(script), 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                texts = json.loads(self.rfile.read(length))["input"]
                status, body, delay = fake.script[min(fake.calls, len(fake.script) - 1)]
                fake.calls += 1
                time.sleep(delay)
                if body == "OK":
                    body = json.dumps({"data": [{"index": i, "embedding": [1.0, float(i)]} for i in range(len(texts))]})
                self.send_response(status)
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()


@pytest.fixture
def fake():
    servers = []

    def start(*script):
        servers.append(Fake(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def client(url, **kw):
    return OpenAICompatibleEmbedding(base_url=url, timeout=0.5, max_retries=2, backoff=0.01, **kw)


def test_retries_5xx_then_succeeds(fake):
    f = fake((500, "busy", 0), (503, "busy", 0), (200, "OK", 0))
    assert client(f.url).get_text_embedding_batch(["a", "b"]) == [[1.0, 0.0], [1.0, 1.0]]
    assert f.calls == 3


async def test_async_path_retries_the_same_way(fake):
    f = fake((502, "busy", 0), (200, "OK", 0))
    assert await client(f.url).aget_query_embedding("a") == [1.0, 0.0]
    f = fake((500, "down", 0))
    with pytest.raises(EmbeddingError, match=r"HTTP 500.*after 3 attempts"):
        await client(f.url).aget_query_embedding("a")
    assert f.calls == 3


def test_gives_up_after_bounded_retries(fake):
    f = fake((500, "down", 0))
    with pytest.raises(EmbeddingError, match=r"HTTP 500.*after 3 attempts"):
        client(f.url).get_query_embedding("a")
    assert f.calls == 3


def test_timeout_is_short_and_clear(fake):
    """The server answers correctly but after 2 s; with timeout=0.5 every attempt must give up, not wait."""
    f = fake((200, "OK", 2.0))
    with pytest.raises(EmbeddingError, match=r"Timeout.*after 3 attempts"):
        client(f.url).get_query_embedding("a")
    assert f.calls == 3


def test_client_errors_are_not_retried(fake):
    f = fake((400, '{"error": "unknown model"}', 0))
    with pytest.raises(EmbeddingError, match="HTTP 400.*unknown model"):
        client(f.url).get_query_embedding("a")
    assert f.calls == 1


@pytest.mark.parametrize("body", ["not json", '{"data": [{"vector": [1]}]}', '{"data": []}'])
async def test_malformed_responses(fake, body):
    f = fake((200, body, 0))
    with pytest.raises(EmbeddingError, match="malformed|asked for"):
        client(f.url).get_query_embedding("a")
    with pytest.raises(EmbeddingError, match="malformed|asked for"):
        await client(f.url).aget_query_embedding("a")


def test_fallback_when_encoding_fails_then_recovers(fake, caplog):
    f = fake((200, "OK", 0))
    emb = FineTunedEmbedding(fallback=client(f.url, model_name="fake"))
    emb.get_query_embedding("warm up")  # model loaded
    real_model = emb._model

    class Broken:
        def encode_query(self, *a, **k):
            raise RuntimeError("CUDA out of memory")

        encode_document = encode_query

    emb._model = Broken()
    vec, served = emb.embed_query_with_space("q")
    assert served == "fake" and vec == [1.0, 0.0]
    emb._model = real_model
    vec, served = emb.embed_query_with_space("q")
    assert served == emb.model_name and len(vec) == 384
