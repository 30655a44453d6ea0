"""The plugin system: built-ins register through the hooks, an installed plugin arrives by entry point,
a broken plugin is reported by name and does not take the CLI down."""

from __future__ import annotations

import importlib.metadata as md
import json

import pytest
from click.testing import CliRunner

from ace_llamaindex.cli import cli
from ace_llamaindex.errors import PluginError
from ace_llamaindex.plugins import manager as plugins


@pytest.fixture
def fresh(monkeypatch):
    """Reload plugins for this test, and again afterwards."""
    plugins.plugin_state.cache_clear()
    yield monkeypatch
    plugins.plugin_state.cache_clear()


def test_builtins_are_registered_through_the_hooks(fresh):
    state = plugins.plugin_state()
    assert set(state.components["miners"]) >= {"dense", "bm25", "hybrid"}
    assert set(state.components["metrics"]) >= {"recall@1", "recall@5", "mrr@10", "ndcg@10"}
    assert set(state.components["reporters"]) >= {"json", "md", "png"}
    assert set(state.components["loaders"]) >= {"llamaindex", "beir", "test-suite"}
    assert state.components["trainers"]["sentence-transformers"].plugin == "trainers"
    assert state.sources["miners"] == "builtin"


def test_plugin_package_from_plugins_dir_is_found_by_entry_point(fresh):
    """plugins/ace-extra-metrics is pip-installed by the set-up (make test); it registers by entry point."""
    names = {ep.name for ep in md.entry_points(group="ace_llamaindex")}
    assert "extra_metrics" in names, "pip install ./plugins/ace-extra-metrics (the set-up does)"
    state = plugins.plugin_state()
    assert state.components["metrics"]["map@10"].plugin == "extra_metrics"
    assert state.sources["extra_metrics"].startswith("ace-extra-metrics==")
    map10 = plugins.get("metrics", "map@10")
    assert map10(["a", "x", "b"], {"a", "b"}) == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_env_var_selects_plugins(fresh):
    fresh.setenv("ACE_LOAD_PLUGINS", "")
    assert "map@10" not in plugins.components("metrics")
    assert "dense" in plugins.components("miners")  # built-ins always load


def test_broken_plugin_is_reported_by_name(fresh):
    broken = md.EntryPoint(name="broken_thing", value="ace_no_such_module.plugin", group="ace_llamaindex")
    real = md.entry_points

    def with_broken(**kw):
        found = list(real(**kw))
        return found + [broken] if kw.get("group") == "ace_llamaindex" else found

    fresh.setattr(plugins, "entry_points", with_broken)
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert "broken_thing" in data["failures"] and "ace_no_such_module" in data["failures"]["broken_thing"]
    assert any(c["name"] == "dense" for c in data["components"])


def test_hook_that_raises_is_isolated(fresh):
    import sys
    import types

    from ace_llamaindex.plugins.hookspecs import hookimpl

    faulty = types.ModuleType("ace_faulty_plugin")

    @hookimpl
    def register_metrics(register):
        raise RuntimeError("boom")

    faulty.register_metrics = register_metrics
    fresh.setitem(sys.modules, "ace_faulty_plugin", faulty)
    fresh.setattr(plugins, "DEFAULT_PLUGINS", plugins.DEFAULT_PLUGINS + ("ace_faulty_plugin",))
    state = plugins.plugin_state()
    assert "boom" in state.failures["ace_faulty_plugin"]
    assert "recall@1" in state.components["metrics"]


def test_unknown_component_lists_the_installed_ones():
    with pytest.raises(PluginError, match="no miner named 'nope'; installed: .*bm25.*dense"):
        plugins.get("miners", "nope")


def test_ace_plugins_table():
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0 and "hybrid" in result.output and "builtin" in result.output


def _third_party(calls: dict):
    """A plugin module with a miner and a trainer that record what they were given."""
    import types

    from ace_llamaindex.mine.mining import TrainingExample
    from ace_llamaindex.plugins import hookimpl
    from ace_llamaindex.train.training import TrainResult

    module = types.ModuleType("ace_recording_plugin")

    class Recorder:
        def __init__(self, **kwargs):
            calls["miner"] = kwargs

        def mine(self, dataset):
            return [TrainingExample(dataset.queries[q], dataset.corpus[dataset.relevant_docs[q][0]], []) for q in sorted(dataset.queries)]

    def trainer(examples, output_dir, config, **kwargs):
        calls["trainer"] = {"examples": len(examples), **kwargs}
        return TrainResult(output_dir, {"method": "recorder"}, promoted=False, serving=None)

    @hookimpl
    def register_miners(register):
        register("recorder", Recorder)

    @hookimpl
    def register_trainers(register):
        register("recorder", trainer)

    module.register_miners, module.register_trainers = register_miners, register_trainers
    return module


def test_a_third_party_miner_and_trainer_get_what_the_built_ins_get(fresh, tmp_path):
    """No caller branches on a plugin's name: the encoder, engine and an endpoint base reach any miner and trainer."""
    import sys

    from ace_llamaindex.data.loading import SMALL_DATASET

    calls: dict = {}
    fresh.setitem(sys.modules, "ace_recording_plugin", _third_party(calls))
    fresh.setattr(plugins, "DEFAULT_PLUGINS", plugins.DEFAULT_PLUGINS + ("ace_recording_plugin",))
    data = tmp_path / "train.json"
    mined = CliRunner().invoke(cli, ["mine", str(SMALL_DATASET), "--miner", "recorder", "--output", str(data), "--engine", "local"])
    assert mined.exit_code == 0, mined.output
    assert calls["miner"]["encoder"].label == "all-MiniLM-L6-v2" and calls["miner"]["engine"] == "local"
    trained = CliRunner().invoke(cli, ["train", str(data), "-o", str(tmp_path / "model"), "--method", "recorder",
                                       "--base-url", "http://127.0.0.1:9/v1", "--base-model-name", "remote-model"])
    assert trained.exit_code == 0, trained.output
    assert calls["trainer"]["base_encoder"].label.endswith("#remote-model") and calls["trainer"]["examples"] > 0
    # the built-in fine-tune is handed the same endpoint, and refuses it in one line (no weights to fine-tune)
    full = CliRunner().invoke(cli, ["train", str(data), "-o", str(tmp_path / "full"), "--method", "full",
                                    "--base-url", "http://127.0.0.1:9/v1"])
    assert full.exit_code == 2 and "no weights to fine-tune" in full.output and "--method adapter" in full.output
    assert not (tmp_path / "full").exists()
