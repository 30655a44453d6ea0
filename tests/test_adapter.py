"""The query adapter: identity at the start, trained on frozen vectors, gated, served in the base's vector space."""

from __future__ import annotations

import numpy as np
import pytest
from llama_index.core.schema import TextNode

from ace_llamaindex import FineTunedEmbedding, HybridQdrantRetriever, OpenAICompatibleEmbedding
from ace_llamaindex.data.loading import DEMO_DATASET, load_dataset
from ace_llamaindex.embeddings.encoding import LlamaIndexEncoder
from ace_llamaindex.embeddings.query_adapter import ADAPTER_CARD, AdaptedEncoder, QueryAdapter
from ace_llamaindex.errors import OptionError
from ace_llamaindex.mine.mining import HardNegativeMiner, MiningOptions
from ace_llamaindex.serve.adapter_embedding import AdapterEmbedding
from ace_llamaindex.train.adapter import AdapterConfig, adapter_trainer, contrastive_loss, train_adapter
from ace_llamaindex.train.promotion import gate
from ace_llamaindex.train.training import TrainConfig


@pytest.fixture(scope="module")
def examples(demo, base_encoder):
    return HardNegativeMiner("dense", base_encoder, options=MiningOptions(num_negatives=3), show_progress=False).mine(demo)


def test_identity_adapter_is_the_base(base_encoder):
    dim = 384
    adapter = QueryAdapter({"W": np.eye(dim), "b": np.zeros(dim)})
    q = base_encoder.encode_queries(["roll back a deploy", "rotate keys"])
    assert np.allclose(adapter(q), q, atol=1e-6)


@pytest.mark.parametrize(("kwargs", "message"), [({"kind": "deep"}, "adapter kind"), ({"epochs": 0}, "epochs must be")])
def test_bad_adapter_options(kwargs, message, examples, base_encoder, tmp_path):
    with pytest.raises(OptionError, match=message):
        train_adapter(examples, base_encoder, tmp_path / "a", AdapterConfig(**kwargs))


def test_a_shared_document_is_not_a_negative_of_its_other_query():
    import torch

    docs = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    queries = docs[[0, 0, 1]]  # rows 0 and 1 ask for document 0, row 2 for document 1; each sits on its document
    shared = contrastive_loss(queries, docs, torch.tensor([0, 0, 1]), torch.tensor([2]), 0.05)
    alone = contrastive_loss(queries[[0, 2]], docs, torch.tensor([0, 1]), torch.tensor([2]), 0.05)
    # unmasked, rows 0 and 1 would each give half their probability to the other's copy: loss >= log 2 each
    assert shared.item() < 0.05 and abs(shared.item() - alone.item()) < 0.05


@pytest.fixture(scope="module")
def team_split():
    """The team memories (the demo dataset: vocabulary the base never saw), a quarter of the memories held out."""
    return load_dataset(DEMO_DATASET).split(0.25, seed=0, by="document")


def test_adapter_learns_without_touching_documents(team_split, base_encoder, tmp_path):
    train, future = team_split
    examples = HardNegativeMiner("dense", base_encoder, options=MiningOptions(num_negatives=3), show_progress=False).mine(train)
    base_encoder.encode_documents(list(train.corpus.values()))  # as in a live index: every memory embedded once
    before = base_encoder.encoded["document"]
    result = adapter_trainer(examples, tmp_path / "adapter", TrainConfig(), base_encoder=base_encoder, corpus=train.corpus)
    assert base_encoder.encoded["document"] == before  # no document re-encoded
    card = result.card
    assert (tmp_path / "adapter" / ADAPTER_CARD).exists() and card.gate["n_queries"] > 0
    history = card.details["validation_per_epoch"]
    assert history[0]["epoch"] == 0  # the identity (the base) is measured first
    assert max(h["ndcg@10"] for h in history[1:]) > history[0]["ndcg@10"] + 0.05, history  # training moved it
    assert result.promoted and card.gate["verdict"] == "better", card.gate
    # the adapter it kept beats the identity on memories no training or validation query asked about
    adapter, _ = QueryAdapter.load(tmp_path / "adapter")
    held_out = gate(future, base_encoder, AdaptedEncoder(base_encoder, adapter))
    assert held_out.verdict == "better" and held_out.ci95[0] > 0, held_out.sentence()


def test_adapter_embedding_searches_the_base_vector(examples, base_encoder, tmp_path, demo):
    adapter_trainer(examples, tmp_path / "adapter", TrainConfig(), base_encoder=base_encoder)
    base = FineTunedEmbedding()
    retriever = HybridQdrantRetriever(base, collection="mem", mode="dense")
    retriever.add_nodes([TextNode(id_=k, text=v) for k, v in demo.corpus.items()], show_progress=False)
    adapted = HybridQdrantRetriever(AdapterEmbedding(base, str(tmp_path / "adapter")), collection="mem", mode="dense")
    adapted.index = retriever.index  # the same collection: no re-indexing
    hits = adapted.retrieve(demo.queries[sorted(demo.queries)[0]])
    assert hits and hits[0].node.metadata["ace_served_by"] == base.model_name  # the base's named vector
    emb = AdapterEmbedding(base, str(tmp_path / "adapter"))
    text = "rotate the signing key"
    assert np.allclose(emb.get_text_embedding(text), base.get_text_embedding(text), atol=1e-6)  # documents untouched
    expected = QueryAdapter.load(tmp_path / "adapter")[0](np.array([base.get_query_embedding(text)]))[0]
    assert np.allclose(emb.get_query_embedding(text), expected, atol=1e-5)


def test_adapter_over_a_real_endpoint(embedding_server, examples, tmp_path, demo):
    """Trained on an OpenAI-compatible server's vectors, served through AdapterEmbedding over that server,
    retrieving from the endpoint's existing named vector."""
    endpoint = OpenAICompatibleEmbedding(base_url=embedding_server, model_name="minilm")
    subset = examples[:80]
    result = adapter_trainer(subset, tmp_path / "adapter", TrainConfig(), base_encoder=LlamaIndexEncoder(endpoint, label="minilm"))
    assert result.card.base["label"] == "minilm"
    indexed = HybridQdrantRetriever(endpoint, collection="ep", mode="dense")
    corpus = sorted(demo.corpus)[:30]
    indexed.add_nodes([TextNode(id_=k, text=demo.corpus[k]) for k in corpus], show_progress=False)
    served = HybridQdrantRetriever(AdapterEmbedding(endpoint, str(tmp_path / "adapter")), collection="ep", mode="dense")
    served.index = indexed.index
    qid = next(q for q in sorted(demo.queries) if demo.relevant_docs[q][0] in corpus)
    hits = served.retrieve(demo.queries[qid])
    assert hits and hits[0].node.metadata["ace_served_by"] == "minilm"


def test_adapted_encoder_keeps_base_documents(base_encoder):
    adapter = QueryAdapter({"W": np.eye(384) * 2, "b": np.zeros(384)})
    enc = AdaptedEncoder(base_encoder, adapter)
    assert np.allclose(enc.encode_documents(["x"]), base_encoder.encode_documents(["x"]))
    assert enc.label != base_encoder.label
