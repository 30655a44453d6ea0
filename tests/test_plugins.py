"""The plugin system: built-ins register through the hooks, an installed plugin arrives by entry point,
a broken plugin is reported by name and does not take the CLI down."""

from __future__ import annotations

import importlib.metadata as md
import json

import pytest
from click.testing import CliRunner

from ace_llamaindex.plugins import manager as plugins
from ace_llamaindex.cli import cli
from ace_llamaindex.errors import PluginError


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
