"""Continual learning where it matters (issue #38): the champion was trained on topic A, then A's log rotated away
and only topic B's remains. From the base on B alone forgets what the champion knew of A, and today's loop (judged
against the base) would roll it out; the champion gate refuses it; continuing the champion with A's data replayed
(its card names that data) keeps A and learns B.

Real parts: the shipped team memories (topics: their categories), the bundled model, query adapters trained for real,
judged by the real gate (:func:`~ace_llamaindex.train.promotion.select`) and the rollout's own decision
(:func:`~ace_llamaindex.deploy.evidence.promotion_evidence`). Scored on test memories no training query asks about.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ace_llamaindex.data.loading import DEMO_DATASET, load_dataset
from ace_llamaindex.deploy.evidence import promotion_evidence
from ace_llamaindex.evaluate.evaluate import System, evaluate
from ace_llamaindex.mine.mining import HardNegativeMiner, MiningOptions, save_training_data
from ace_llamaindex.serve.served_model import read_serving, serving_encoder
from ace_llamaindex.train.adapter import adapter_trainer
from ace_llamaindex.train.champion import champion_from_folder
from ace_llamaindex.train.training import TrainConfig

TOPIC_A = {"data", "latency", "auth", "security"}  # the other four categories are topic B
OPTIONS = {"epochs": 30}  # the adapter's own defaults otherwise; fewer epochs keep the module cheap


@pytest.fixture(scope="module")
def rotated(tmp_path_factory, base_encoder):
    root = tmp_path_factory.mktemp("rotated")
    category = {m["id"]: m["category"] for m in json.loads(DEMO_DATASET.read_text())["memories"]}
    memories = load_dataset(DEMO_DATASET)
    train_set, test_set = memories.split(0.25, seed=0, by="document")

    def topic(dataset, a: bool, every: int = 1):
        qids = sorted(q for q, docs in dataset.relevant_docs.items() if (category[docs[0]] in TOPIC_A) == a)
        return dataset.subset(qids[::every])

    miner = HardNegativeMiner("dense", base_encoder, options=MiningOptions(), show_progress=False)
    examples_a, examples_b = miner.mine(topic(train_set, True, 2)), miner.mine(topic(train_set, False, 2))
    data_a = save_training_data(examples_a, root / "topic-a.json", source="topic A's log")
    data_b = save_training_data(examples_b, root / "topic-b.json", source="topic B's log (A's rotated away)")
    first = adapter_trainer(examples_a, root / "champion", TrainConfig(**OPTIONS), base_encoder=base_encoder,
                            training_data=data_a)
    assert first.gate.verdict == "better", "the champion must have been rolled out over the base"
    champion = champion_from_folder(root / "champion")

    def round2(name: str, continual: bool):
        return adapter_trainer(examples_b, root / name, TrainConfig(continual=continual, **OPTIONS),
                               base_encoder=base_encoder, training_data=data_b, champion=champion)

    return {"root": root, "test_a": topic(test_set, True), "test_b": topic(test_set, False), "champion": champion,
            "from_base": round2("from-base", continual=False), "continual": round2("continual", continual=True)}


def _ndcg(folder, dataset, base_encoder) -> float:
    encoder = serving_encoder(read_serving(folder), base_encoder)
    per_query = evaluate(dataset, [System("m", "dense", encoder)], comparisons=[], show_progress=False,
                         engine="local").data["per_query"]
    return float(np.mean([per_query[q]["m"]["ndcg@10"] for q in dataset.queries]))


def test_from_the_base_on_b_forgets_a_and_the_champion_gate_refuses_what_todays_loop_would_roll_out(rotated, base_encoder):
    root, from_base = rotated["root"], rotated["from_base"]
    champion_on_a = _ndcg(root / "champion", rotated["test_a"], base_encoder)
    assert _ndcg(root / "from-base", rotated["test_a"], base_encoder) < champion_on_a - 0.05  # A's queries lost
    # today's loop judges against the base only, and there the model trained on B alone is better: it would roll out
    assert from_base.card.gate["verdict"] == "better", from_base.card.gate
    # the champion gate (the champion's own validation queries, about A, join the gate) does not call it better ...
    assert from_base.card.champion["gate"]["verdict"] != "better", from_base.card.champion["gate"]
    assert from_base.card.data_checks["champion validation queries added"] > 0
    # ... and the rollout refuses it while the champion serves
    evidence = promotion_evidence(root / "from-base", read_serving(root / "from-base"), rotated["champion"].serving, "docs")
    assert evidence.source == "the training card's champion comparison" and not evidence.allowed, evidence.reason


def test_continual_with_replay_keeps_a_learns_b_and_rolls_out(rotated, base_encoder):
    root, continual = rotated["root"], rotated["continual"]
    card = continual.card
    assert card.chosen == "adapter (continued)", card.choice
    assert "replaying" in card.champion["history"] and card.champion["gate"]["verdict"] == "better"
    # A's examples were trained on again (replayed), and the card names A's data so that the next round replays it too
    assert set(rotated["champion"].card.training_queries) <= set(card.training_queries)
    assert str((root / "topic-a.json").resolve()) in {ref["path"] for ref in card.training_data}
    champion_on_a = _ndcg(root / "champion", rotated["test_a"], base_encoder)
    assert _ndcg(root / "continual", rotated["test_a"], base_encoder) >= champion_on_a - 0.02  # A kept
    assert _ndcg(root / "continual", rotated["test_b"], base_encoder) > _ndcg(root / "champion", rotated["test_b"],
                                                                               base_encoder) + 0.05  # B learnt
    evidence = promotion_evidence(root / "continual", read_serving(root / "continual"), rotated["champion"].serving, "docs")
    assert evidence.allowed, evidence.reason
