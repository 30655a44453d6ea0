"""Deprecated: where plugins written for 0.1 imported ``hookimpl`` from. Importing it warns (DeprecationWarning);
import ``hookimpl`` from :mod:`ace_llamaindex.plugins` (or :mod:`ace_llamaindex`) instead. The specifications live in
:mod:`ace_llamaindex.plugins.hookspecs`."""

import warnings

from .errors import AceDeprecationWarning
from .plugins.hookspecs import hookimpl, hookspec

warnings.warn("ace_llamaindex.hookspecs is deprecated: import hookimpl from ace_llamaindex.plugins (or ace_llamaindex)",
              AceDeprecationWarning, stacklevel=2)

__all__ = ["hookimpl", "hookspec"]
