"""The plugin manager: built-ins first, then every ``ace_llamaindex`` entry point, each isolated from the others.

``ACE_LOAD_PLUGINS`` picks which installed plugins load: unset loads all, an empty string loads none (built-ins
still load), ``a,b`` loads only the entry points named a and b. A plugin that fails to import, or whose hook raises,
is recorded in :func:`plugin_failures` and logged with its name; the rest keep working.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy

from ..errors import PluginError
from . import hookspecs

log = logging.getLogger(__name__)
GROUP = "ace_llamaindex"
KINDS = ("loaders", "miners", "trainers", "metrics", "reporters", "engines")
DEFAULT_PLUGINS = (
    "ace_llamaindex.plugins.builtin.loaders",
    "ace_llamaindex.plugins.builtin.miners",
    "ace_llamaindex.plugins.builtin.trainers",
    "ace_llamaindex.plugins.builtin.metrics",
    "ace_llamaindex.plugins.builtin.reporters",
    "ace_llamaindex.plugins.builtin.engines",
)


@dataclass
class Loader:
    """A dataset format: ``sniff`` says whether a path looks like it, ``load`` reads it."""

    sniff: Callable[[Path], bool]
    load: Callable[..., Any]


@dataclass
class Component:
    name: str
    kind: str
    obj: Any
    plugin: str
    description: str = ""


@dataclass
class PluginState:
    manager: pluggy.PluginManager
    sources: dict[str, str] = field(default_factory=dict)       # plugin name -> "builtin" | "dist==version"
    failures: dict[str, str] = field(default_factory=dict)      # plugin name -> error message
    components: dict[str, dict[str, Component]] = field(default_factory=dict)


def _selected(name: str) -> bool:
    wanted = os.environ.get("ACE_LOAD_PLUGINS")
    if wanted is None:
        return True
    return name in {w.strip() for w in wanted.split(",") if w.strip()}


@lru_cache(maxsize=1)
def plugin_state() -> PluginState:
    """Load plugins once per process and collect every registered component."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    state = PluginState(pm)
    for module_name in DEFAULT_PLUGINS:
        module = importlib.import_module(module_name)
        pm.register(module, name=module_name.rsplit(".", 1)[-1])
        state.sources[pm.get_name(module)] = "builtin"
    for ep in entry_points(group=GROUP):
        if not _selected(ep.name):
            continue
        try:
            plugin = ep.load()
            if pm.is_registered(plugin):
                continue
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the CLI down
            state.failures[ep.name] = f"failed to load ({type(exc).__name__}: {exc})"
            log.warning("ace plugin %r failed to load: %s", ep.name, exc)
            continue
        dist = getattr(ep, "dist", None)
        state.sources[ep.name] = f"{dist.name}=={dist.version}" if dist else "entry point"
    for kind in KINDS:
        state.components[kind] = {}
        for impl in getattr(pm.hook, f"register_{kind}").get_hookimpls():
            def register(name: str, obj: Any, description: str = "", _kind=kind, _plugin=impl.plugin_name) -> None:
                state.components[_kind][name] = Component(name, _kind, obj, _plugin, description or (obj.__doc__ or "").strip().split("\n")[0])
            try:
                impl.function(register)
            except Exception as exc:  # noqa: BLE001
                state.failures[impl.plugin_name] = f"register_{kind} raised {type(exc).__name__}: {exc}"
                log.warning("ace plugin %r: register_%s raised %s", impl.plugin_name, kind, exc)
    return state


def components(kind: str) -> dict[str, Component]:
    """All registered components of a kind (``loaders``, ``miners``, ``trainers``, ``metrics``, ``reporters``)."""
    if kind not in KINDS:
        raise PluginError(f"unknown component kind {kind!r}; kinds are {KINDS}")
    return plugin_state().components[kind]


def get(kind: str, name: str) -> Any:
    """The component registered under ``name``, or an error that lists what is available."""
    table = components(kind)
    if name not in table:
        raise PluginError(f"no {kind[:-1]} named {name!r}; installed: {', '.join(sorted(table)) or 'none'}")
    return table[name].obj


def add_commands(cli: Any) -> None:
    """Let plugins add subcommands to the ``ace`` CLI."""
    state = plugin_state()
    for impl in state.manager.hook.register_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as exc:  # noqa: BLE001
            state.failures[impl.plugin_name] = f"register_commands raised {type(exc).__name__}: {exc}"
