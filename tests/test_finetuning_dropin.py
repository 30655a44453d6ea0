"""ace_llamaindex.finetuning: llama-index-finetuning's engines, same script, one import changed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from llama_index.core.base.embeddings.base import BaseEmbedding

from ace_llamaindex.errors import OptionError
from ace_llamaindex.finetuning import EmbeddingAdapterFinetuneEngine, SentenceTransformersFinetuneEngine
from ace_llamaindex.serve.embedding import FineTunedEmbedding


@pytest.fixture(scope="module")
def li_files(tmp_path_factory, demo):
    """Train and validation sets as EmbeddingQAFinetuneDataset JSON (what generate_qa_embedding_pairs saves)."""
    where = tmp_path_factory.mktemp("li")
    train, val = demo.split(0.25, seed=1, by="document")
    train.save(where / "train_dataset.json")
    val.save(where / "val_dataset.json")
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


def test_the_guides_script_runs_with_one_import_changed(li_files):
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT)], cwd=li_files, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    name, dim = done.stdout.split()[-2:]
    assert name in ("FineTunedEmbedding", "AdapterEmbedding") and dim == "384"


def test_the_adapter_engine_gives_a_base_embedding(li_files, tmp_path):
    from ace_llamaindex.finetuning import EmbeddingQAFinetuneDataset

    base = FineTunedEmbedding()
    engine = EmbeddingAdapterFinetuneEngine(EmbeddingQAFinetuneDataset.from_json(li_files / "train_dataset.json"), base,
                                            model_output_path=str(tmp_path / "adapter"), epochs=3, dim=384)
    engine.finetune()
    model = engine.get_finetuned_model()
    assert isinstance(model, BaseEmbedding) and len(model.get_query_embedding("celery tasks never run")) == 384
    assert engine.card["method"] == "adapter" and "subsets" in engine.card["gate"]


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
