"""The shipped demo: reproducible from its generator, and a test split that asks about unseen memories."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ace_llamaindex.data.loading import DEMO_DATASET, load_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_team_dataset.py"


def test_the_generator_reproduces_the_shipped_file():
    spec = importlib.util.spec_from_file_location("make_team_dataset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = module.build()
    assert module.render(data) == DEMO_DATASET.read_text(encoding="utf-8")
    assert 300 <= len(data["memories"]) <= 500 and 4 <= len(data["tests"]) / len(data["memories"]) <= 8
    assert {t["difficulty"] for t in data["tests"]} == {"easy", "medium", "hard"}


def test_the_demo_split_is_document_disjoint():
    ds = load_dataset()
    train, test = ds.split(0.25, seed=42, by="document")
    trained = {d for q in train.queries for d in ds.relevant_docs[q]}
    tested = {d for q in test.queries for d in ds.relevant_docs[q]}
    assert train.queries and test.queries and not trained & tested
    assert abs(len(test.queries) / len(ds.queries) - 0.25) < 0.02
    by_query_train, by_query_test = ds.split(0.25, seed=42, by="query")  # the other split does share memories
    assert {d for q in by_query_train.queries for d in ds.relevant_docs[q]} & \
        {d for q in by_query_test.queries for d in ds.relevant_docs[q]}
