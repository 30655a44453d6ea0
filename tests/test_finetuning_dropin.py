"""ace_llamaindex.finetuning: llama-index-finetuning's engines, same script, one import changed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ace_llamaindex.data.loading import DEMO_DATASET, load_dataset
from ace_llamaindex.errors import OptionError
from ace_llamaindex.finetuning import EmbeddingAdapterFinetuneEngine, SentenceTransformersFinetuneEngine
from ace_llamaindex.serve.adapter_embedding import AdapterEmbedding
from ace_llamaindex.serve.embedding import FineTunedEmbedding


@pytest.fixture(scope="module")
def li_files(tmp_path_factory):
    """Train and validation sets as EmbeddingQAFinetuneDataset JSON (what generate_qa_embedding_pairs saves), from the
    team memories (vocabulary the base never saw: a fine-tune is promoted there). The validation queries ask about
    memories no training query has; a third of each side keeps the guide's script to a few minutes on a CPU."""
    where = tmp_path_factory.mktemp("li")
    train, val = load_dataset(DEMO_DATASET).split(0.25, seed=1, by="document")
    train.subset(sorted(train.queries)[::3]).save(where / "train_dataset.json")
    val.subset(sorted(val.queries)[::3]).save(where / "val_dataset.json")
    return where


# Written as LlamaIndex's fine-tuning guide writes it; only the import line differs.
SCRIPT = """
from ace_llamaindex.finetuning import EmbeddingQAFinetuneDataset, SentenceTransformersFinetuneEngine

train_dataset = EmbeddingQAFinetuneDataset.from_json("train_dataset.json")
val_dataset = EmbeddingQAFinetuneDataset.from_json("val_dataset.json")

finetune_engine = SentenceTransformersFinetuneEngine(
    train_dataset,
    model_id="sentence-transformers/all-MiniLM-L6-v2",
    model_output_path="test_model",
    val_dataset=val_dataset,
    epochs=1,
)
finetune_engine.finetune()
embed_model = finetune_engine.get_finetuned_model()
print(type(embed_model).__name__, len(embed_model.get_query_embedding("how do I roll back a deploy?")))
"""


# Not in the guide: what the script's embedding is, next to the base model's.
CHECKS = """
import numpy as np
from ace_llamaindex import FineTunedEmbedding

query = "kraken is 503ing again"
base = FineTunedEmbedding()
print("chosen", finetune_engine.card.chosen, finetune_engine.card.promoted)
print("differs", not np.allclose(embed_model.get_query_embedding(query), base.get_query_embedding(query), atol=1e-4))
"""


def test_the_guides_script_runs_with_one_import_changed_and_returns_the_fine_tuned_model(li_files):
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT) + textwrap.dedent(CHECKS)], cwd=li_files,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.split("\n")
    name, dim = next(line for line in lines if line.endswith(" 384")).split()
    _, chosen, promoted = next(line for line in lines if line.startswith("chosen ")).rsplit(" ", 2)
    assert promoted == "True" and chosen != "base", done.stdout  # promoted: not the base model
    assert name == ("AdapterEmbedding" if chosen.endswith("adapter") else "FineTunedEmbedding") and dim == "384"
    assert "differs True" in lines, done.stdout  # its query vectors are not the base's


def test_the_adapter_engine_gives_the_trained_adapter(li_files, tmp_path):
    from ace_llamaindex.finetuning import EmbeddingQAFinetuneDataset

    base = FineTunedEmbedding()
    engine = EmbeddingAdapterFinetuneEngine(EmbeddingQAFinetuneDataset.from_json(li_files / "train_dataset.json"), base,
                                            model_output_path=str(tmp_path / "adapter"), dim=384)
    engine.finetune()
    assert engine.card.method == "adapter" and "subsets" in engine.card.gate
    assert engine.result.promoted and engine.card.gate["verdict"] == "better", engine.card.gate
    model = engine.get_finetuned_model()
    assert isinstance(model, AdapterEmbedding) and model is not base
    query, text = "kraken is 503ing again", "rotate the signing key"
    assert len(model.get_query_embedding(query)) == 384
    assert not np.allclose(model.get_query_embedding(query), base.get_query_embedding(query), atol=1e-4)  # queries move
    assert np.allclose(model.get_text_embedding(text), base.get_text_embedding(text), atol=1e-6)  # documents do not


@pytest.mark.parametrize("engine,kwargs,expected", [
    ("st", {"evaluation_steps": 10}, "evaluation_steps: ace validates once per epoch"),
    ("st", {"checkpoint_save_steps": 100}, "checkpoint_save_steps: ace checkpoints once per epoch"),
    ("st", {"checkpoint_save_total_limit": 3}, "checkpoint_save_total_limit"),
    ("st", {"loss": object()}, "loss: object is not what ace trains with"),
    ("st", {"warmup_steps": 10}, "unknown argument(s) ['warmup_steps']"),
    ("st", {"batch_size": 1}, "batch_size must be at least 2"),
    ("adapter", {"adapter_model": object()}, "adapter_model: ace trains its own linear adapter"),
    ("adapter", {"model_checkpoint_path": "ckpt"}, "model_checkpoint_path"),
    ("adapter", {"device": "cuda"}, "device: the adapter trains on the CPU"),
    ("adapter", {"lr": 0.1}, "unknown ['lr']"),
])
def test_parameters_that_cannot_mean_the_same_are_refused(demo, engine, kwargs, expected):
    with pytest.raises(OptionError, match=None) as err:
        if engine == "st":
            SentenceTransformersFinetuneEngine(demo, **kwargs)
        else:
            EmbeddingAdapterFinetuneEngine(demo, FineTunedEmbedding(), **kwargs)
    assert expected in str(err.value)


def test_a_dataset_of_the_wrong_kind_is_refused():
    with pytest.raises(OptionError, match="dataset must be an EmbeddingQAFinetuneDataset"):
        SentenceTransformersFinetuneEngine({"queries": {}})
