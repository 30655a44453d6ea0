"""The gate that measures generalisation, and ``--method auto``'s choice among methods."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ace_llamaindex.data.loading import DEMO_DATASET, load_dataset
from ace_llamaindex.embeddings.query_adapter import ADAPTER_CARD
from ace_llamaindex.errors import OptionError
from ace_llamaindex.mine.mining import HardNegativeMiner, MiningOptions, TrainingExample
from ace_llamaindex.records.card import CARD_NAME
from ace_llamaindex.serve.served_model import read_serving, resolve_serving, serving_encoder
from ace_llamaindex.train.adapter import adapter_trainer
from ace_llamaindex.train.method_selection import select_method
from ace_llamaindex.train.promotion import MIN_UNSEEN, choose, gate, judge, unseen_query_ids, validation_dataset
from ace_llamaindex.train.training import TrainConfig, plan_validation
from ace_llamaindex.train.validation_split import split_for_validation


def rows(scores: dict[str, list[float]]) -> dict[str, dict[str, dict[str, float]]]:
    """evaluate()-style per-query rows from a list of nDCG@10 values per system."""
    n = len(next(iter(scores.values())))
    return {f"q{i}": {name: {"ndcg@10": values[i]} for name, values in scores.items()} for i in range(n)}


N = 40
UNSEEN = {f"q{i}" for i in range(30)}  # 30 unseen-document queries, 10 seen
ramp = list(np.linspace(0.3, 0.7, N))


def plus(gain_unseen: float, gain_seen: float) -> list[float]:
    """The base's scores with one gain on the unseen-document queries and another on the seen ones."""
    return [v + (gain_unseen if i < 30 else gain_seen) for i, v in enumerate(ramp)]


@pytest.mark.parametrize("candidates,expected", [
    # name: (gain on unseen, gain on seen) over the base, cheapest first
    ({"adapter": (0.10, 0.10), "full": (0.02, 0.30)}, "adapter"),      # the adapter wins where it matters
    ({"adapter": (0.00, 0.20), "full": (0.12, 0.12)}, "full"),         # adapter only helps seen documents
    ({"adapter": (0.10, 0.10), "full": (0.10, 0.10)}, "adapter"),      # a tie goes to the cheaper
    ({"adapter": (0.05, 0.05), "full": (0.25, 0.25)}, "full"),         # costlier, but better than the adapter too
    ({"adapter": (0.00, 0.30), "full": (-0.01, 0.40)}, None),          # memorising: the base stays
    ({"adapter": (0.10, -0.30), "full": (0.00, 0.00)}, None),          # better on unseen but worse on seen
])
def test_auto_picks_the_method_that_wins_on_unseen_documents(candidates, expected):
    scores = {"base": ramp, **{name: plus(*gains) for name, gains in candidates.items()}}
    choice = choose(rows(scores), list(rows(scores)), UNSEEN, list(candidates))
    assert choice.name == expected, choice.steps


@pytest.mark.parametrize("unseen,gains,verdict,decided_by", [
    (UNSEEN, (0.1, 0.1), "better", "unseen documents"),
    (UNSEEN, (0.0, 0.3), "no clear difference", "unseen documents"),
    (UNSEEN, (-0.1, 0.3), "worse", "unseen documents"),
    ({f"q{i}" for i in range(MIN_UNSEEN - 1)}, (0.1, 0.1), "can't tell", "too few unseen-document queries"),
    (None, (0.0, 0.3), "better", "all validation queries"),  # a caller that does not know the split: all queries
])
def test_the_gate_decides_on_unseen_documents(unseen, gains, verdict, decided_by):
    per_query = rows({"base": ramp, "tuned": plus(*gains)})
    result = judge(per_query, list(per_query), "base", "tuned", unseen)
    assert result.verdict == verdict and result.decided_by.startswith(decided_by)
    if unseen is not None:
        assert set(result.subsets) == {"unseen documents", "seen documents"}
        assert result.subsets["unseen documents"]["n"] == len(unseen)


@pytest.mark.parametrize("seen_weight,gains,verdict,decided_by", [
    (0.65, (0.01, 0.3), "better", "documents seen 65% / unseen 35%"),     # mostly seen documents ahead, no loss on new
    (0.65, (-0.01, 0.3), "no clear difference", "documents seen 65% / unseen 35%: better, but a loss"),
    (0.65, (0.0, 0.0), "no clear difference", "documents seen 65% / unseen 35%"),
    (0.0, (0.01, 0.3), "better", "unseen documents"),
])
def test_the_gate_weighs_subsets_as_the_queries_ahead(seen_weight, gains, verdict, decided_by):
    per_query = rows({"base": ramp, "tuned": plus(*gains)})
    result = judge(per_query, list(per_query), "base", "tuned", UNSEEN, seen_weight=seen_weight)
    assert result.verdict == verdict and result.decided_by.startswith(decided_by)
    assert {"unseen documents", "seen documents"} <= set(result.subsets)


def test_validation_holds_out_whole_documents():
    examples = [TrainingExample(f"q{i}", f"doc{i % 40}", ["x"]) for i in range(160)]  # 4 queries per document
    split = split_for_validation(examples, 40, seed=3)
    trained = {e.positive for e in split.train}
    val_queries = {e.query for e in split.val}
    assert len(val_queries) == 40 and not val_queries & {e.query for e in split.train}
    assert split.n_unseen >= 28 and split.n_seen >= 1  # three quarters whole documents, the rest one query of a document
    for e in split.val:
        assert (e.positive in trained) == (e.query not in split.unseen)


class Memoriser:
    """A model that memorised its training queries: each query is pulled towards the document of the most similar
    training query. It helps queries about documents training queries had, and misleads all others."""

    label = "memoriser"

    def __init__(self, base, train_rows):
        self.base = base
        self.train_q = base.encode_queries([e.query for e in train_rows])
        self.train_d = base.encode_documents([e.positive for e in train_rows])

    def encode_queries(self, texts):
        q = self.base.encode_queries(texts)
        pulled = q + 2.0 * self.train_d[np.argmax(q @ self.train_q.T, axis=1)]
        return pulled / np.linalg.norm(pulled, axis=1, keepdims=True)

    def encode_documents(self, texts):
        return self.base.encode_documents(texts)


def test_a_memorising_model_is_not_called_better(demo, base_encoder):
    # Queries that name a memory by a ticket code its text lacks: only memorising the training queries answers them.
    corpus = dict(sorted(demo.corpus.items())[:60])
    examples = [TrainingExample(f"{template} ticket {code * 37 % 1000:03d}", text, [])
                for code, text in enumerate(corpus.values())
                for template in ("what came of", "status update on", "who handled")]
    split = plan_validation(examples, 0.3, seed=42)
    val = validation_dataset(split.val, examples, corpus)
    result = gate(val, base_encoder, Memoriser(base_encoder, split.train), unseen=unseen_query_ids(val, split.unseen))
    assert result.subsets["seen documents"]["verdict"] == "better"  # it did learn what it saw
    assert result.subsets["unseen documents"]["verdict"] != "better"
    assert result.verdict != "better" and result.decided_by == "unseen documents"


@pytest.fixture(scope="module")
def examples(small, base_encoder):
    return HardNegativeMiner("dense", base_encoder, options=MiningOptions(num_negatives=2), show_progress=False).mine(small)


def test_auto_on_too_few_validation_queries_keeps_the_base_and_writes_nothing(tmp_path, examples, base_encoder, small):
    """The small fixture leaves fewer than MIN_UNSEEN unseen-document validation queries: the gate cannot tell, so
    every candidate is trained and judged, and the base stays (the evidence beside the output, nothing in it)."""
    out = tmp_path / "auto"
    result = select_method(examples, out, TrainConfig(epochs=1, batch_size=8, max_seq_length=64), corpus=small.corpus,
                           base_encoder=base_encoder)
    card = result.card
    assert list(card.candidates) == ["adapter", "interpolate(0.5)", "interpolate(0.75)", "full", "full+adapter"]
    for c in card.candidates.values():
        assert set(c["gate"]["subsets"]) == {"unseen documents", "seen documents"}
        assert c["gate"]["verdict"] == "can't tell" and c["gate"]["subsets"]["unseen documents"]["n"] < MIN_UNSEEN
    assert card.peak_memory["rss_gb"] > 0 and card.memory_plan["loss"]
    assert result.serving is None and not result.promoted and card.serving is None and card.chosen == "base"
    assert not out.exists() and json.loads((tmp_path / "auto.not-promoted.json").read_text())["chosen"] == "base"


@pytest.fixture(scope="module")
def team_split():
    """The team memories (the demo dataset), a quarter of the memories held out with all their queries."""
    return load_dataset(DEMO_DATASET).split(0.25, seed=0, by="document")


@pytest.fixture(scope="module")
def promoted(tmp_path_factory, base_encoder, team_split):
    """One real ``--method auto`` run on half the team memories' training queries (one short fine-tune epoch: a few
    minutes on 2 CPU cores), where it promotes."""
    train, _ = team_split
    train = train.subset(sorted(train.queries)[::2])
    examples = HardNegativeMiner("dense", base_encoder, options=MiningOptions(num_negatives=2), show_progress=False).mine(train)
    out = tmp_path_factory.mktemp("auto-team") / "model"
    return out, select_method(examples, out, TrainConfig(epochs=1, max_seq_length=64), corpus=train.corpus,
                              base_encoder=base_encoder)


def test_auto_promotes_and_writes_what_serving_needs(promoted):
    out, result = promoted
    card = result.card
    assert result.promoted and card.promoted and card.chosen in card.candidates, card.choice
    assert card.gate["verdict"] == "better" and card.gate["decided_by"] == "unseen documents", card.gate
    assert card.gate["subsets"]["unseen documents"]["n"] >= MIN_UNSEEN
    assert card.candidates[card.chosen]["gate"]["verdict"] == "better"
    chosen_reindexes = card.candidates[card.chosen]["reindex"]
    adapter = card.chosen in ("adapter", "full+adapter")
    assert card.serving == {"model": "." if chosen_reindexes else card.base_model, "adapter": "." if adapter else None,
                               "reindex": chosen_reindexes}
    plan = read_serving(out)  # what `ace eval/index/search --model OUT` and a rollout serve
    assert plan == result.serving == resolve_serving(card.serving, out)
    assert (out / ADAPTER_CARD).exists() == adapter and (out / CARD_NAME).exists() == chosen_reindexes
    assert not out.with_name(out.name + ".not-promoted.json").exists()


def test_the_written_folder_serves_the_gain_on_memories_it_never_saw(promoted, team_split, base_encoder):
    out, _ = promoted
    _, future = team_split  # memories no training or validation query asked about
    served = serving_encoder(read_serving(out), base_encoder)
    result = gate(future, base_encoder, served)
    assert result.verdict == "better" and result.ci95[0] > 0, result.sentence()


@pytest.mark.parametrize("options,flag", [
    ({"warmup_ratio": 0.2}, "--warmup-ratio"),
    ({"cached_loss": True}, "--cached-loss"),
    ({"mini_batch_size": 4}, "--mini-batch-size"),
    ({"exports": ["onnx"]}, "--export"),
    ({"resume": True}, "--resume"),
    ({"keep_checkpoints": True}, "--keep-checkpoints"),
    ({"precision": "bf16"}, "--precision"),
    ({"device": "cuda"}, "--device"),
])
def test_the_adapter_refuses_options_it_cannot_use(options, flag, examples, tmp_path):
    with pytest.raises(OptionError, match=f"--method adapter cannot use {flag}"):
        adapter_trainer(examples, tmp_path / "a", TrainConfig(**options))
    assert not (tmp_path / "a").exists()


def test_the_adapter_honours_the_options_it_can_use(examples, tmp_path, base_encoder):
    result = adapter_trainer(examples, tmp_path / "a", TrainConfig(epochs=3, batch_size=16, learning_rate=3e-4,
                                                                    early_stopping_patience=1, num_negatives=1),
                             base_encoder=base_encoder)
    config = result.card.config
    assert (config["epochs"], config["batch_size"], config["learning_rate"], config["patience"], config["num_negatives"]) \
        == (3, 16, 3e-4, 1, 1)
    assert len(result.card.details["validation_per_epoch"]) <= 4


def test_documents_with_the_same_text_are_told_apart_by_id_in_the_split_and_the_gate():
    """Ten different documents share one generic text (as many answers in a QA collection do). A validation query
    about one of them is *seen* only when a training query had that very document, and it is scored against it."""
    from ace_llamaindex.train.validation_split import document_key

    examples = [TrainingExample(f"question about topic {i}", f"notes on topic {i}", [], {"positive_id": f"m{i}"})
                for i in range(60)]
    examples += [TrainingExample(f"where is the runbook for case {i}", "See the runbook.", [], {"positive_id": f"dup{i}"})
                 for i in range(20)]
    corpus = {e.metadata["positive_id"]: e.positive for e in examples}
    split = split_for_validation(examples, 30, seed=1)
    trained = {document_key(e) for e in split.train}
    generic = [e for e in split.val if e.positive == "See the runbook."]
    assert generic, "the split must hold out some queries about the generic documents"
    for e in split.val:
        assert (document_key(e) in trained) == (e.query not in split.unseen)
    val = validation_dataset(split.val, examples, corpus)
    assert list(val.corpus.values()).count("See the runbook.") == 20  # twenty documents, not one
    for e in generic:
        qid = next(q for q, t in val.queries.items() if t == e.query)
        assert val.relevant_docs[qid] == [f"id:{e.metadata['positive_id']}"]


def test_the_base_finds_seen_documents_about_as_well_as_others(base_encoder):
    """On the team memories (four queries per memory, ids recorded by mining), the gate's seen-document subset is
    made of shared documents: the base model scores it like the unseen-document subset, not near zero."""
    memories = load_dataset(DEMO_DATASET)
    examples = HardNegativeMiner("dense", base_encoder, options=MiningOptions(num_negatives=2), show_progress=False).mine(memories)
    split = plan_validation(examples, None, seed=42, seen_share=0.5)
    val = validation_dataset(split.val, examples, memories.corpus)
    result = gate(val, base_encoder, base_encoder, unseen=unseen_query_ids(val, split.unseen))
    seen, unseen = result.subsets["seen documents"], result.subsets["unseen documents"]
    assert seen["n"] >= 20 and unseen["n"] >= 20
    assert seen["base"] > 0.2 and abs(seen["base"] - unseen["base"]) < 0.2, (seen, unseen)
