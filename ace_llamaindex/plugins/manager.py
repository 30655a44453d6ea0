"""The plugin manager: built-ins first, then every ``ace_llamaindex`` entry point, each isolated from the others.

``ACE_LOAD_PLUGINS`` picks which installed plugins load: unset loads all, an empty string loads none (built-ins
still load), ``a,b`` loads only the entry points named a and b. A plugin that fails to import, or whose hook raises,
is recorded in ``plugin_state().failures`` (plugin name -> message; ``ace plugins`` lists them) and logged with its
name; the rest keep working.

The built-ins are not entry points: they are the modules in :data:`DEFAULT_PLUGINS`, loaded by name through the
same hooks. Each is imported the first time a component of its kind is asked for (:data:`BUILTIN_KINDS`), so
serving, which asks for engines only, never imports the trainers, miners or metrics (training, mining and
evaluation code). Entry points load on the first request of any kind (their hooks are only known once imported).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
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
# The kinds each built-in registers: it is imported when the first component of one of them is asked for (the
# trainers import training code, the miners mining code: serving needs neither). A module in DEFAULT_PLUGINS that
# is not listed here loads with the entry points, before any component is collected.
BUILTIN_KINDS = {
    "ace_llamaindex.plugins.builtin.loaders": ("loaders",),
    "ace_llamaindex.plugins.builtin.miners": ("miners",),
    "ace_llamaindex.plugins.builtin.trainers": ("trainers",),
    "ace_llamaindex.plugins.builtin.metrics": ("metrics",),
    "ace_llamaindex.plugins.builtin.reporters": ("reporters",),
    "ace_llamaindex.plugins.builtin.engines": ("engines",),
}


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


_lock = threading.RLock()  # lazy loading may be asked for from several threads (a retriever serving requests)


def _plugin_name(module_name: str) -> str:
    return module_name.rsplit(".", 1)[-1]


def _register_builtin(state: PluginState, module_name: str) -> None:
    name = _plugin_name(module_name)
    if state.sources.get(name) == "builtin":
        return
    state.manager.register(importlib.import_module(module_name), name=name)
    state.sources[name] = "builtin"


@lru_cache(maxsize=1)
def _loaded() -> PluginState:
    """The manager with every entry point (and any built-in of no known kind) registered; components not collected."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    state = PluginState(pm)
    for module_name in DEFAULT_PLUGINS:
        if module_name not in BUILTIN_KINDS:
            _register_builtin(state, module_name)
    builtin_names = {_plugin_name(m) for m in DEFAULT_PLUGINS}
    for ep in entry_points(group=GROUP):
        if not _selected(ep.name):
            continue
        if ep.name in builtin_names:  # a built-in not imported yet keeps its name
            state.failures[ep.name] = f"failed to load (the name {ep.name!r} is a built-in's)"
            log.warning("ace plugin %r failed to load: the name is a built-in's", ep.name)
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
    return state


def _hookimpls(state: PluginState, hook: str) -> list:
    """A hook's implementations, built-ins first (in DEFAULT_PLUGINS order), then the others as registered. A name
    registered twice keeps the later one, so a plugin replaces a built-in, whenever the built-in was imported."""
    order = {_plugin_name(m): i for i, m in enumerate(DEFAULT_PLUGINS)}

    def rank(impl) -> int:
        return order[impl.plugin_name] if state.sources.get(impl.plugin_name) == "builtin" else len(order)

    return sorted(getattr(state.manager.hook, hook).get_hookimpls(), key=rank)


def _collect(state: PluginState, kind: str) -> dict[str, Component]:
    """The components of ``kind``, importing the built-ins that register it on the first call."""
    with _lock:
        if kind in state.components:
            return state.components[kind]
        for module_name in DEFAULT_PLUGINS:
            if kind in BUILTIN_KINDS.get(module_name, ()):
                _register_builtin(state, module_name)
        table: dict[str, Component] = {}
        for impl in _hookimpls(state, f"register_{kind}"):
            def register(name: str, obj: Any, description: str = "", _kind=kind, _plugin=impl.plugin_name) -> None:
                table[name] = Component(name, _kind, obj, _plugin, description or (obj.__doc__ or "").strip().split("\n")[0])
            try:
                impl.function(register)
            except Exception as exc:  # noqa: BLE001
                state.failures[impl.plugin_name] = f"register_{kind} raised {type(exc).__name__}: {exc}"
                log.warning("ace plugin %r: register_%s raised %s", impl.plugin_name, kind, exc)
        state.components[kind] = table
        return table


def plugin_state() -> PluginState:
    """Load every plugin once per process (built-ins and entry points) and collect every registered component; its
    ``failures`` name each plugin that failed. ``plugin_state.cache_clear()`` loads them again on the next call."""
    with _lock:
        state = _loaded()
        for kind in KINDS:
            _collect(state, kind)
        return state


plugin_state.cache_clear = _loaded.cache_clear  # type: ignore[attr-defined] - as when plugin_state was an lru_cache


def components(kind: str) -> dict[str, Component]:
    """All registered components of a kind (``loaders``, ``miners``, ``trainers``, ``metrics``, ``reporters``)."""
    if kind not in KINDS:
        raise PluginError(f"unknown component kind {kind!r}; kinds are {KINDS}")
    with _lock:
        return _collect(_loaded(), kind)


def get(kind: str, name: str) -> Any:
    """The component registered under ``name``, or an error that lists what is available."""
    table = components(kind)
    if name not in table:
        raise PluginError(f"no {kind[:-1]} named {name!r}; installed: {', '.join(sorted(table)) or 'none'}")
    return table[name].obj


def add_commands(cli: Any) -> None:
    """Let plugins add subcommands to the ``ace`` CLI (no built-in adds one: none is imported)."""
    with _lock:
        state = _loaded()
    for impl in _hookimpls(state, "register_commands"):
        try:
            impl.function(cli=cli)
        except Exception as exc:  # noqa: BLE001
            state.failures[impl.plugin_name] = f"register_commands raised {type(exc).__name__}: {exc}"
