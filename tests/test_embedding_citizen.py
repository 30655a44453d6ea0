"""FineTunedEmbedding as strict and familiar as HuggingFaceEmbedding; files that other users can read."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from llama_index.core.schema import TextNode

from ace_llamaindex import FineTunedEmbedding, HybridQdrantRetriever, OpenAICompatibleEmbedding
from ace_llamaindex.errors import EmbeddingError, OptionError
from ace_llamaindex.serve import embedding as embedding_module


def test_model_name_serves_that_model(tuned_model_dir):
    by_name = np.array(FineTunedEmbedding(model_name=str(tuned_model_dir)).get_query_embedding("roll back a deploy"))
    by_path = np.array(FineTunedEmbedding(str(tuned_model_dir)).get_query_embedding("roll back a deploy"))
    base = np.array(FineTunedEmbedding().get_query_embedding("roll back a deploy"))
    assert np.allclose(by_name, by_path, atol=1e-6) and not np.allclose(by_name, base, atol=1e-4)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"modelname": "x"}, "unknown argument(s) ['modelname']"),
    ({"query_instructions": "q: "}, "unknown argument(s) ['query_instructions']"),
    ({"model_path": "a", "model_name": "b"}, "disagree"),
    ({"max_length": 8, "max_seq_length": 16}, "not both"),
    ({"device": "cuda:7"} if not __import__("torch").cuda.is_available() else {"device": "nope"}, "device"),
])
def test_bad_arguments_are_errors(kwargs, message):
    with pytest.raises((OptionError, Exception), match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        FineTunedEmbedding(**kwargs)


def test_hf_names_are_honoured():
    emb = FineTunedEmbedding(max_length=16, query_instruction="query: ", text_instruction="passage: ")
    assert (emb.max_seq_length, emb.query_prompt, emb.document_prompt) == (16, "query: ", "passage: ")


def test_instances_do_not_share_settings():
    text = "a long sentence about rolling back deploys " * 8
    full = np.array(FineTunedEmbedding().get_text_embedding(text))
    short = np.array(FineTunedEmbedding(max_seq_length=8).get_text_embedding(text))
    again = np.array(FineTunedEmbedding().get_text_embedding(text))
    assert np.allclose(full, again, atol=1e-6) and float(full @ short) < 0.99


def test_reopened_with_the_path_spelled_differently(tmp_path, tuned_model_dir, monkeypatch):
    model = tmp_path / "run" / "model"
    shutil.copytree(tuned_model_dir, model)
    nodes = [TextNode(id_="a", text="rotate the signing key every quarter"), TextNode(id_="b", text="money is stored in cents")]
    first = HybridQdrantRetriever(FineTunedEmbedding(str(model.resolve())), path=str(tmp_path / "q"), collection="c", mode="dense")
    first.add_nodes(nodes, show_progress=False)
    before = [n.node.node_id for n in first.retrieve("key rotation")]
    first.index.close()
    monkeypatch.chdir(tmp_path)
    again = HybridQdrantRetriever(FineTunedEmbedding("run/model"), path="q", collection="c", mode="dense")
    assert [n.node.node_id for n in again.retrieve("key rotation")] == before == ["a", "b"]
    again.index.close()
    named = HybridQdrantRetriever(FineTunedEmbedding("run/model", vector_name="mine"), path="q", collection="c", mode="dense")
    with pytest.raises(OptionError, match="no dense vector 'mine'"):
        named.retrieve("key rotation")


def test_to_dict_keeps_the_fallback_but_not_its_secret():
    fb = OpenAICompatibleEmbedding(base_url="http://127.0.0.1:9/v1", model_name="nomic", api_key="sk-secret",
                                   query_prefix="search_query: ")
    data = FineTunedEmbedding(max_seq_length=64, fallback=fb).to_dict()
    assert "sk-secret" not in str(data)
    back = FineTunedEmbedding.from_dict(data)
    assert back.max_seq_length == 64 and back.fallback.model_name == "nomic" and back.fallback.query_prefix == "search_query: "


def test_a_failed_model_is_retried_after_a_back_off(tmp_path, tuned_model_dir, monkeypatch):
    monkeypatch.setattr(embedding_module, "RETRY_FIRST", 0.0)
    path = tmp_path / "late-model"
    emb = FineTunedEmbedding(str(path))
    with pytest.raises(EmbeddingError):
        emb.encode_primary(["x"], "query")
    shutil.copytree(tuned_model_dir, path)  # the model arrives (a volume mounted late, a deploy finishing)
    assert len(emb.encode_primary(["x"], "query")[0]) == 384


def test_files_written_by_training_honour_the_umask(tmp_path, small, base_encoder):
    from ace_llamaindex.atomic import write_json
    from ace_llamaindex.mine.mining import HardNegativeMiner, MiningOptions
    from ace_llamaindex.records.card import CARD_NAME
    from ace_llamaindex.train.training import TrainConfig, train

    old = os.umask(0o022)
    try:
        examples = HardNegativeMiner("dense", base_encoder, options=MiningOptions(num_negatives=1), show_progress=False).mine(small)
        train(examples[:16], tmp_path / "m", TrainConfig(epochs=1, batch_size=8, val_fraction=0.0))
        written = write_json(tmp_path / "report.json", {"a": 1})
    finally:
        os.umask(old)
    for path in (tmp_path / "m", tmp_path / "m" / CARD_NAME, tmp_path / "m" / "model.safetensors", written):
        assert path.stat().st_mode & 0o044 == 0o044, path  # group and others may read
    assert (tmp_path / "m").stat().st_mode & 0o011 == 0o011  # and enter the folder
