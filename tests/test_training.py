"""Training on the shipped dataset with the real model: output, atomic save, resume."""

from __future__ import annotations

import pytest
from sentence_transformers import SentenceTransformer
from transformers import TrainerCallback

from ace_llamaindex.errors import OptionError
from ace_llamaindex.mine.mining import HardNegativeMiner, MiningOptions
from ace_llamaindex.records.card import CARD_NAME, read_card
from ace_llamaindex.train.training import TrainConfig, split_by_query, train


@pytest.fixture(scope="module")
def examples(small, base_encoder):
    return HardNegativeMiner("dense", base_encoder, options=MiningOptions(num_negatives=2), show_progress=False).mine(small)


def test_tuned_model_is_a_full_sentence_transformers_model(tuned_model_dir, base_encoder):
    model = SentenceTransformer(str(tuned_model_dir))
    vec = model.encode(["roll back a deploy"], normalize_embeddings=True)
    assert vec.shape == (1, 384)
    base = base_encoder.encode_queries(["roll back a deploy"])
    assert abs(float(vec[0] @ base[0])) < 0.99999  # the weights moved
    card = read_card(tuned_model_dir)
    assert card.base_model == "bundled:all-MiniLM-L6-v2" and card.train_examples > 0


def test_validation_each_epoch_and_best_kept(tmp_path, examples):
    result = train(examples, tmp_path / "m", TrainConfig(epochs=2, batch_size=8, val_fraction=0.2))
    card = result.card
    assert [round(h["epoch"]) for h in card.details["validation_per_epoch"]] == [1, 2]
    best = max(h["cosine_ndcg@10"] for h in card.details["validation_per_epoch"])
    assert card.details["best_metric"] == pytest.approx(best)
    assert "cosine_ndcg@10" in card.details["validation_before"]
    assert (tmp_path / "m" / CARD_NAME).exists()


def test_validation_queries_never_train():
    from ace_llamaindex.mine.mining import TrainingExample

    rows = [TrainingExample(f"q{i % 10}", f"p{i}", ["n"]) for i in range(30)]
    train_rows, val_rows = split_by_query(rows, 0.2, seed=0)
    assert val_rows and not {e.query for e in train_rows} & {e.query for e in val_rows}


class Interrupt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise KeyboardInterrupt("simulated Ctrl-C")


def test_interrupted_training_leaves_previous_model_intact(tmp_path, examples, tuned_model_dir, monkeypatch):
    import shutil

    target = tmp_path / "model"
    shutil.copytree(tuned_model_dir, target)
    before = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
    import sentence_transformers

    original = sentence_transformers.SentenceTransformerTrainer

    class InterruptingTrainer(original):
        def __init__(self, *args, callbacks=None, **kwargs):
            super().__init__(*args, callbacks=[*(callbacks or []), Interrupt()], **kwargs)

    monkeypatch.setattr(sentence_transformers, "SentenceTransformerTrainer", InterruptingTrainer)
    with pytest.raises(KeyboardInterrupt):
        train(examples, target, TrainConfig(epochs=1, batch_size=4, val_fraction=0.0))
    after = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
    assert after == before
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_resume_from_checkpoint(tmp_path, examples):
    out = tmp_path / "r"
    first = train(examples, out, TrainConfig(epochs=1, batch_size=8, val_fraction=0.0, keep_checkpoints=True))
    assert not first.card.resumed_from_checkpoint
    assert list((tmp_path / "r.checkpoints").glob("checkpoint-*"))
    second = train(examples, out, TrainConfig(epochs=2, batch_size=8, val_fraction=0.0, resume=True, keep_checkpoints=True))
    assert "checkpoint-" in second.card.resumed_from_checkpoint  # says which checkpoint (and so which step)
    SentenceTransformer(str(out))
    # Checkpoints of another run (other data) are refused, not revived.
    with pytest.raises(OptionError, match="belong to another run"):
        train(examples[:-3], out, TrainConfig(epochs=2, batch_size=8, val_fraction=0.0, resume=True))
    # A finished run removes its checkpoints unless asked to keep them.
    train(examples, tmp_path / "s", TrainConfig(epochs=1, batch_size=8, val_fraction=0.0))
    assert not (tmp_path / "s.checkpoints").exists()


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"batch_size": 1}, {"learning_rate": 5.0}, {"val_fraction": 1.0},
                                    {"early_stopping_patience": 1, "val_fraction": 0.0}])
def test_bad_training_options(kwargs, examples, tmp_path):
    with pytest.raises(OptionError):
        train(examples, tmp_path / "x", TrainConfig(**kwargs))
