"""Miners over a real embedded Qdrant with the bundled model: guards, options, output."""

from __future__ import annotations

import json

import pytest

from ace_llamaindex.data.dataset import QADataset
from ace_llamaindex.errors import OptionError
from ace_llamaindex.mine.mining import (
    HardNegativeMiner,
    MiningOptions,
    excluded_documents,
    load_training_data,
    save_training_data,
)
from ace_llamaindex.plugins.manager import get


@pytest.mark.parametrize("miner", ["dense", "bm25", "hybrid"])
def test_each_miner_returns_wrong_top_results(small, base_encoder, miner):
    examples = get("miners", miner)(encoder=base_encoder, options=MiningOptions(num_negatives=3, fill_random=False),
                                    show_progress=False).mine(small)
    assert len(examples) == len(small.queries)
    mined = [e for e in examples if e.negatives]
    assert len(mined) >= 0.85 * len(examples)  # BM25 finds nothing for a few no-overlap paraphrases
    for e in examples:
        meta = e.metadata
        assert meta["positive_id"] not in meta["negative_ids"]
        assert e.positive not in e.negatives
        assert meta["negative_ranks"] == sorted(meta["negative_ranks"])  # top strategy keeps rank order
        assert all(r is not None for r in meta["negative_ranks"])
    if miner == "dense":  # negatives are the highest-scoring wrong documents under the model
        e = examples[0]
        others = [d for d in small.corpus if d not in small.relevant_docs[e.metadata["query_id"]]]
        sims = base_encoder.encode_documents([small.corpus[d] for d in others]) @ base_encoder.encode_queries([e.query])[0]
        top3 = [others[i] for i in sims.argsort()[::-1][:3]]
        assert e.metadata["negative_ids"] == top3


def duplicated():
    """m2 has the same text as m1 (a duplicated memory); q2's positive m3 is co-relevant with q1 via m1."""
    corpus = {
        "m1": "Roll back by re-running the release workflow with the previous tag.",
        "m2": "Roll back by re-running the release workflow with the previous tag.",
        "m3": "Never revert commits on main to undo a release.",
        "m4": "Deploy freezes run from Friday to Monday.",
        "m5": "Canary releases send five percent of traffic to the new version.",
        "m6": "The release workflow builds and promotes the image.",
    }
    return QADataset(queries={"q1": "how do I roll back a release", "q2": "undo a bad release"}, corpus=corpus,
                     relevant_docs={"q1": ["m1"], "q2": ["m1", "m3"]})


@pytest.mark.parametrize("miner", ["dense", "bm25", "hybrid"])
def test_guards_exclude_duplicates_and_co_relevant_docs(base_encoder, miner):
    ds = duplicated()
    assert excluded_documents(ds)["q1"] == {"m1", "m2", "m3"}
    examples = get("miners", miner)(encoder=base_encoder, options=MiningOptions(num_negatives=3), show_progress=False).mine(ds)
    for e in examples:
        assert not {"m1", "m2", "m3"} & set(e.metadata["negative_ids"])
        assert all(n not in (ds.corpus["m1"], ds.corpus["m3"]) for n in e.negatives)


def test_margins_and_ranges(small, base_encoder):
    opts = MiningOptions(num_negatives=3, relative_margin=0.1, max_score=0.6, range_min=2, fill_random=False)
    examples = HardNegativeMiner("dense", base_encoder, options=opts, show_progress=False).mine(small)
    plain = HardNegativeMiner("dense", base_encoder, options=MiningOptions(num_negatives=3, fill_random=False),
                              show_progress=False).mine(small)
    for e, p in zip(examples, plain, strict=True):
        pos = e.metadata["positive_score"]
        for s in e.metadata["negative_scores"]:
            assert s <= pos * 0.9 + 1e-6 and s <= 0.6 + 1e-6
        assert not set(p.metadata["negative_ids"][:2]) & set(e.metadata["negative_ids"])  # top 2 skipped


def test_random_sampling_is_seeded(small, base_encoder):
    def run(seed):
        opts = MiningOptions(num_negatives=2, sampling_strategy="random", seed=seed)
        return [e.metadata["negative_ids"] for e in HardNegativeMiner("dense", base_encoder, options=opts, show_progress=False).mine(small)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_difficulty_and_category_filters(small, base_encoder):
    opts = MiningOptions(num_negatives=1, min_difficulty="medium", skip_categories=["debugging"])
    examples = HardNegativeMiner("bm25", options=opts, show_progress=False).mine(small)
    assert examples and all(e.metadata["difficulty"] in ("medium", "hard") for e in examples)
    assert all(e.metadata["category"] != "debugging" for e in examples)
    with pytest.raises(OptionError, match="no query passes"):
        HardNegativeMiner("bm25", options=MiningOptions(skip_categories=[small.category(q) for q in small.queries]),
                          show_progress=False).mine(small)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_negatives": 0}, "num_negatives"),
        ({"range_min": 10, "range_max": 5}, "range_min < range_max"),
        ({"relative_margin": 1.5}, "relative_margin"),
        ({"absolute_margin": -0.1}, "absolute_margin"),
        ({"sampling_strategy": "best"}, "sampling_strategy"),
        ({"min_difficulty": "impossible"}, "min_difficulty"),
    ],
)
def test_bad_options_fail_clearly(kwargs, message):
    with pytest.raises(OptionError, match=message):
        MiningOptions(**kwargs).validate()
    with pytest.raises(OptionError, match="miner mode"):
        HardNegativeMiner("sparse")


def test_training_data_file_roundtrip_and_trainer_ready(tmp_path, small, base_encoder):
    from ace_llamaindex.train.training import to_hf_dataset

    examples = HardNegativeMiner("hybrid", base_encoder, options=MiningOptions(num_negatives=2), show_progress=False).mine(small)
    path = save_training_data(examples, tmp_path / "training_data.json", source="demo")
    raw = json.loads(path.read_text())
    assert raw["metadata"]["total_examples"] == len(examples) and raw["metadata"]["source"] == "demo"
    assert "generated_at" in raw["metadata"] and raw["examples"][0]["metadata"]["negative_scores"]
    again = load_training_data(path)
    assert [e.negatives for e in again] == [e.negatives for e in examples]
    hf = to_hf_dataset(again)
    assert hf.column_names == ["anchor", "positive", "negative_1", "negative_2"] and len(hf) == len(examples)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left nothing behind


def test_dense_mining_over_a_users_existing_collection(small, base_encoder):
    """The collection the current system already serves: its own vector name and payload keys."""
    from qdrant_client import QdrantClient, models

    from ace_llamaindex.index.store import CorpusIndex, point_id

    client = QdrantClient(":memory:")
    client.create_collection("theirs", vectors_config={"embedding": models.VectorParams(size=384, distance=models.Distance.COSINE)})
    ids = list(small.corpus)
    vecs = base_encoder.encode_documents([small.corpus[d] for d in ids])
    client.upsert("theirs", [models.PointStruct(id=point_id(d), vector={"embedding": v.tolist()},
                                                payload={"memory_id": d, "content": small.corpus[d]}) for d, v in zip(ids, vecs, strict=True)])
    index = CorpusIndex(client, "theirs", text_field="content", id_field="memory_id")
    theirs = HardNegativeMiner("dense", base_encoder, index=index, using="embedding",
                               options=MiningOptions(num_negatives=3, fill_random=False), show_progress=False).mine(small)
    ours = HardNegativeMiner("dense", base_encoder, options=MiningOptions(num_negatives=3, fill_random=False),
                             show_progress=False).mine(small)
    assert [e.metadata["negative_ids"] for e in theirs] == [e.metadata["negative_ids"] for e in ours]


def test_miners_on_the_edge_engine_match_local_mode(small, base_encoder):
    pytest.importorskip("qdrant_edge")
    opts = MiningOptions(num_negatives=3, fill_random=False)
    for mode in ("dense", "bm25"):
        local = HardNegativeMiner(mode, base_encoder, options=opts, show_progress=False, engine="local").mine(small)
        edge = HardNegativeMiner(mode, base_encoder, options=opts, show_progress=False, engine="edge").mine(small)
        for a, b in zip(local, edge, strict=True):  # same scores (to float precision across engines)
            assert b.metadata["positive_score"] == pytest.approx(a.metadata["positive_score"], rel=1e-5)
            assert b.metadata["negative_scores"] == pytest.approx(a.metadata["negative_scores"], rel=1e-5)
