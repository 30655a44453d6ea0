"""The loop's public Python API (``ace_llamaindex.loop``, exported from ``ace_llamaindex``): the functions ``ace mine``
and ``ace train`` run, called directly. Fast rows: a recording miner and trainer stand in for the real ones (the
production-loop example in test_rollout.py runs the real ones end to end)."""

from __future__ import annotations

import sys
import types

import pytest

from ace_llamaindex.plugins import manager as plugins


@pytest.fixture
def recorder(monkeypatch):
    """A plugin whose miner and trainer record what they were given."""
    from ace_llamaindex.mine.mining import TrainingExample
    from ace_llamaindex.plugins import hookimpl
    from ace_llamaindex.train.training import TrainResult

    calls: dict = {}
    module = types.ModuleType("ace_loop_recorder")

    class Miner:
        def __init__(self, **kwargs):
            calls["miner"] = kwargs

        def mine(self, dataset):
            return [TrainingExample(dataset.queries[q], dataset.corpus[dataset.relevant_docs[q][0]], ["a wrong one"])
                    for q in sorted(dataset.queries)]

    def trainer(examples, output_dir, config, **kwargs):
        calls["trainer"] = {"examples": len(examples), "config": config, **kwargs}
        return TrainResult(output_dir, {"method": "recorder"}, promoted=False, serving=None)

    @hookimpl
    def register_miners(register):
        register("recorder", Miner)

    @hookimpl
    def register_trainers(register):
        register("recorder", trainer)

    module.register_miners, module.register_trainers = register_miners, register_trainers
    plugins.plugin_state.cache_clear()
    monkeypatch.setitem(sys.modules, "ace_loop_recorder", module)
    monkeypatch.setattr(plugins, "DEFAULT_PLUGINS", plugins.DEFAULT_PLUGINS + ("ace_loop_recorder",))
    yield calls
    plugins.plugin_state.cache_clear()


def test_mine_then_train_as_the_commands_do(recorder, tmp_path):
    """mine_training_data writes what ace mine writes and hands the miner what ace mine hands it; train_model reads
    the file back and hands the trainer the examples, a copy of the config and the data's path."""
    from ace_llamaindex import TrainConfig, load_training_data, mine_training_data, train_model
    from ace_llamaindex.data.loading import SMALL_DATASET

    notes: list[str] = []
    mined = mine_training_data(SMALL_DATASET, tmp_path / "data.json", miner="recorder", engine="local", notify=notes.append)
    assert mined.path == tmp_path / "data.json" and len(load_training_data(mined.path)) == len(mined.examples) > 0
    assert recorder["miner"]["engine"] == "local" and recorder["miner"]["encoder"].label == "all-MiniLM-L6-v2"
    config = TrainConfig(seed=7)
    result = train_model(mined.path, tmp_path / "model", method="recorder", config=config)
    assert result.promoted is False and recorder["trainer"]["examples"] == len(mined.examples)
    given = recorder["trainer"]
    assert given["training_data"] == mined.path and given["config"].seed == 7 and given["config"] is not config
    assert "champion" not in given and "corpus" not in given  # no champion asked for


def test_train_model_weighs_the_gate_by_the_measured_seen_share_unless_given(recorder, tmp_path):
    from ace_llamaindex import TrainConfig, train_model
    from ace_llamaindex.mine.mining import TrainingExample, save_training_data

    data = save_training_data([TrainingExample("q", "p", ["n"])], tmp_path / "data.json", source="log",
                              seen_share={"value": 0.4, "source": "measured in log"})
    notes: list[str] = []
    train_model(data, tmp_path / "m1", method="recorder", notify=notes.append)
    assert recorder["trainer"]["config"].seen_share == 0.4 and notes == ["seen share 40%: measured in log"]
    given = TrainConfig(seen_share=0.0)
    train_model(data, tmp_path / "m2", method="recorder", config=given)
    assert recorder["trainer"]["config"].seen_share == 0.0 and given.seen_share_source is None  # the caller's is untouched


@pytest.mark.parametrize("function, args, kwargs, message", [
    ("mine_feedback", ["log.jsonl"], {"collection": None}, "needs --collection"),
    ("mine_training_data", [None, "d.json"], {"index": object()}, "name the collection"),
    ("mine_feedback", ["log.jsonl", "d.json"], {"collection": "c"}, "say where it is"),
    ("train_model", ["d.json", "m"], {"champion": ".", "collection": "c"}, "not both"),
    ("train_model", ["d.json", "m"], {"method": "nope"}, "no trainer named 'nope'"),
])
def test_loop_refusals_are_one_line_before_any_work(function, args, kwargs, message, tmp_path, monkeypatch):
    import ace_llamaindex
    from ace_llamaindex.errors import AceError
    from ace_llamaindex.mine.mining import TrainingExample, save_training_data

    monkeypatch.chdir(tmp_path)
    save_training_data([TrainingExample("q", "p", ["n"])], tmp_path / "d.json", source="x")
    (tmp_path / "log.jsonl").write_text("")
    with pytest.raises(AceError, match=message):
        getattr(ace_llamaindex, function)(*args, **kwargs)
    assert not (tmp_path / "m").exists()


def test_rollout_and_rollback_are_the_deploy_functions():
    import ace_llamaindex
    from ace_llamaindex import loop
    from ace_llamaindex.deploy import rollout as deploy

    assert loop.rollout is deploy.rollout is ace_llamaindex.rollout
    assert loop.rollback is deploy.rollback is ace_llamaindex.rollback


@pytest.mark.parametrize("dense,expect_vector", [
    pytest.param(True, True, id="a dense miner gets the vector the collection serves"),
    pytest.param(False, False, id="a sparse-only miner (dense = False) gets none"),
])
def test_a_miner_declares_whether_it_searches_dense_vectors(recorder, tmp_path, monkeypatch, dense, expect_vector):
    """What a miner is handed over a collection follows what it declares, not its name (the built-in bm25 declares
    ``dense = False``): no branch on a plugin's name."""
    from click.testing import CliRunner

    from ace_llamaindex import mine_training_data
    from ace_llamaindex.cli import cli
    from ace_llamaindex.data.loading import SMALL_DATASET
    from ace_llamaindex.plugins.manager import get

    where = ["--qdrant-path", str(tmp_path / "q"), "--collection", "mem"]
    assert CliRunner().invoke(cli, ["index", str(SMALL_DATASET), *where]).exit_code == 0
    if not dense:
        monkeypatch.setattr(get("miners", "recorder"), "dense", False, raising=False)
    mine_training_data(SMALL_DATASET, tmp_path / "data.json", miner="recorder", collection="mem",
                       qdrant_path=tmp_path / "q", show_progress=False)
    assert (recorder["miner"]["using"] is not None) == expect_vector, recorder["miner"]["using"]
    assert getattr(get("miners", "bm25"), "dense", True) is False  # the built-in sparse miner says so itself


def test_the_collection_mined_over_is_one_record_or_its_keywords(tmp_path, monkeypatch):
    """Issue #39: ``mine_training_data`` takes the collection as one :class:`MiningCollection` (``source=``); each field
    may still be a keyword, which replaces it; any other keyword is a TypeError, as for any function."""
    from ace_llamaindex import mine_training_data
    from ace_llamaindex.errors import AceError
    from ace_llamaindex.loop import MiningCollection

    assert MiningCollection.given(None, {}) == MiningCollection()
    assert MiningCollection.given(None, {"collection": "c", "qdrant_path": "q"}) == MiningCollection("c", "q")
    record = MiningCollection("a", qdrant_url="http://h:6333", text_field="body", id_field="key", vector_name="v")
    assert MiningCollection.given(record, {"collection": "b"}) == MiningCollection("b", None, "http://h:6333", "v", "body", "key")
    with pytest.raises(TypeError, match="'colection'"):
        MiningCollection.given(record, {"colection": "b"})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match="unexpected keyword argument 'colection'"):
        mine_training_data(None, "d.json", colection="c")
    # the record and its keyword reach the same checks
    for given in ({"source": MiningCollection("c")}, {"collection": "c"}):
        with pytest.raises(AceError, match="say where it is"):
            mine_training_data(None, "d.json", **given)
