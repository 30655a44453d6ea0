"""Plugins: the hook specifications (the plugin author's manual), the manager that loads built-ins and entry points,
and the built-in components. A plugin imports ``hookimpl`` from here."""

from .hookspecs import hookimpl, hookspec
from .manager import Component, Loader, add_commands, components, get, plugin_state

__all__ = ["Component", "Loader", "add_commands", "components", "get", "hookimpl", "hookspec",
           "plugin_state"]
