"""Where plugins written for 0.1 import ``hookimpl`` from; the specifications live in :mod:`ace_llamaindex.plugins.hookspecs`."""

from .plugins.hookspecs import hookimpl, hookspec

__all__ = ["hookimpl", "hookspec"]
