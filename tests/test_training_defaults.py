"""Training that pays off from the defaults: the budget rule, ragged negatives, the promotion gate, honest eval."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from ace_llamaindex.cli import cli
from ace_llamaindex.data.loading import SMALL_DATASET

SMALL = str(SMALL_DATASET)
from ace_llamaindex.errors import OptionError
from ace_llamaindex.mine.mining import HardNegativeMiner, MiningOptions, TrainingExample
from ace_llamaindex.records.card import CARD_NAME
from ace_llamaindex.train import training as training_module
from ace_llamaindex.train.promotion import seen_document_share
from ace_llamaindex.train.training import TrainConfig, auto_epochs, choose_precision, train, training_datasets, validation_count


@pytest.mark.parametrize(("n_train", "batch", "epochs"), [
    (100, 32, 7),      # 4 steps an epoch: enough epochs for >= 25 steps
    (800, 32, 1),      # 25 steps: one pass
    (20_000, 32, 1),   # large data: never more than it needs
    (10, 32, 10),      # tiny: capped
])
def test_auto_epochs(n_train, batch, epochs):
    assert auto_epochs(n_train, batch) == epochs


@pytest.mark.parametrize(("n_queries", "fraction", "expected"), [
    (2000, None, 200),   # 10%
    (800, None, 100),    # at least 100 for the gate's power
    (138, None, 34),     # ...or a quarter of a small set
    (3, None, 0),        # too few to hold any out
    (800, 0.05, 40),     # an explicit fraction is kept
    (800, 0.0, 0),
])
def test_validation_count(n_queries, fraction, expected):
    assert validation_count(n_queries, fraction) == expected


@pytest.mark.parametrize(("requested", "device", "native_bf16", "expected"), [
    ("auto", "cpu", True, "bf16"),     # AVX512-BF16 / AMX: bf16 mixed precision
    ("auto", "cpu", False, "fp32"),    # emulated bf16 would be slower
    ("auto", "mps", True, "fp32"),
    ("fp32", "cpu", True, "fp32"),     # asked for: kept
    ("bf16", "cpu", False, "bf16"),
])
def test_precision_rule(monkeypatch, requested, device, native_bf16, expected):
    monkeypatch.setattr(training_module, "cpu_has_native_bf16", lambda: native_bf16)
    assert choose_precision(requested, device) == expected


@pytest.mark.parametrize("config", [TrainConfig(precision="fp16"), TrainConfig(exports=["tensorrt"])])
def test_bad_training_options_are_clear_errors(config):
    with pytest.raises(OptionError):
        config.validate()


def _rows(*pairs):
    return [TrainingExample(q, d, []) for q, d in pairs]


@pytest.mark.parametrize(("train", "val", "share"), [
    (_rows(("q1", "d1")), _rows(("q2", "d1"), ("q3", "d2")), 0.5),             # q2's document was trained towards
    (_rows(("q1", "d1")), _rows(("q2", "d2")), 0.0),                           # a new document
    (_rows(("q1", "d1")), _rows(("q2", "d2"), ("q2", "d1")), 1.0),             # one of q2's documents is known
    (_rows(("q1", "d1")), [], None),                                           # nothing held out
])
def test_seen_document_share(train, val, share):
    assert seen_document_share(train, val) == share


def test_ragged_negatives_do_not_strip_everyone():
    rows = [TrainingExample("q1", "p1", ["a", "b", "c"]), TrainingExample("q2", "p2", ["d"]), TrainingExample("q3", "p3", [])]
    data, info = training_datasets(rows)
    assert info == {"negatives_per_example": 3, "padded": 1, "in_batch_only": 1}
    hard = data["hard_negatives"]
    assert hard.column_names == ["anchor", "positive", "negative_1", "negative_2", "negative_3"]
    assert hard[1]["negative_3"] == "d"  # its own negative repeated
    assert data["in_batch_only"].column_names == ["anchor", "positive"]
    alone, info = training_datasets(rows[:2], num_negatives=2)
    assert alone.column_names[-1] == "negative_2" and info["in_batch_only"] == 0


@pytest.fixture(scope="module")
def examples(small, base_encoder):
    return HardNegativeMiner("dense", base_encoder, options=MiningOptions(num_negatives=2), show_progress=False).mine(small)


def test_gate_keeps_the_existing_model(tmp_path, examples, tuned_model_dir):
    target = tmp_path / "model"
    shutil.copytree(tuned_model_dir, target)
    before = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
    # A learning rate this small changes nothing: the gate finds no gain (on this small set it can't tell: too few
    # queries about documents no training query had), so the old model stays.
    result = train(examples, target, TrainConfig(epochs=1, batch_size=8, learning_rate=1e-12))
    assert result.gate.verdict in ("no clear difference", "can't tell") and not result.promoted
    assert {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()} == before
    forced = train(examples, target, TrainConfig(epochs=1, batch_size=8, learning_rate=1e-12, force=True))
    assert forced.promoted
    card = json.loads((target / CARD_NAME).read_text())
    assert card["gate"]["verdict"] == result.gate.verdict and card["gate"]["n_queries"] == result.gate.n_queries > 0
    assert (target / "fusion.json").exists() and card["fusion"]["mode"] in ("dense", "bm25", "hybrid")


def test_eval_warns_on_training_queries(tuned_model_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["eval", SMALL, "--finetuned", str(tuned_model_dir), "--out-dir", str(tmp_path / "r"), "--report", "json"])
    assert result.exit_code == 0, result.output
    assert "were in" in result.output and "training or validation" in result.output
    total = json.loads((tmp_path / "r" / "eval.json").read_text())["n_queries"]
    result = runner.invoke(cli, ["eval", SMALL, "--finetuned", str(tuned_model_dir), "--exclude-training-queries",
                                 "--out-dir", str(tmp_path / "r2"), "--report", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r2" / "eval.json").read_text())["n_queries"] < total


@pytest.mark.parametrize("words,negatives,config,budget_gb,cached", [
    (8, 5, {}, 6, False),                          # short memories: the plain loss fits
    (300, 5, {}, 6, True),                         # SciFact-like abstracts, 224 sequences of 256 tokens: cached
    (300, 5, {"cached_loss": False}, 6, False),    # an explicit choice wins
    (300, 1, {"batch_size": 8}, 6, False),         # a small step fits
    (8, 5, {}, 0.01, True),                        # a tiny budget caches even short texts
])
def test_the_loss_is_chosen_to_fit_the_memory_budget(monkeypatch, words, negatives, config, budget_gb, cached):
    from ace_llamaindex.embeddings.models import open_model
    from ace_llamaindex.mine.mining import TrainingExample
    from ace_llamaindex.train.training import full_defaults, plan_memory

    monkeypatch.setenv("ACE_TRAIN_MEMORY_GB", str(budget_gb))
    model = open_model(None, device="cpu")
    rows = [TrainingExample(f"query {i}", " ".join(["word"] * words), []) for i in range(40)]
    plan = plan_memory(model, rows, full_defaults(TrainConfig(**config)), negatives, "cpu")
    assert plan["cached"] is cached
    if cached:
        assert 1 <= plan["mini_batch_size"] <= full_defaults(TrainConfig(**config)).batch_size
        assert plan["estimated_step_gb"] <= budget_gb or plan["mini_batch_size"] == 1
