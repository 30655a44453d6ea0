"""A Griffe extension (mkdocs.yml loads it into mkdocstrings): the API pages list the options of a dataclass that
``ace_llamaindex.options.documented`` decorates, as ``help()`` does.

Griffe reads docstrings from the source, where the list is not: ``documented`` writes it into the class's
``__doc__`` when the class is made, from each field's declaration. So for such a class the docstring shown is the
runtime one (imported), and the list is written once, by the code that also makes the ``ace`` options from it.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

try:
    from griffe import Docstring, Extension
except ImportError:  # importable without the [docs] extra
    Docstring, Extension = None, object  # type: ignore[assignment,misc]


def _decorated(cls: Any) -> bool:
    return any(str(d.value).split(".")[-1] == "documented" for d in getattr(cls, "decorators", []))


def runtime_doc(path: str) -> str | None:
    """The docstring of the class at ``path`` (``package.module.Class``) as Python has it after import."""
    module, _, name = path.rpartition(".")
    try:
        return inspect.cleandoc(getattr(importlib.import_module(module), name).__doc__ or "")
    except (ImportError, AttributeError):
        return None


class DocumentedOptions(Extension):
    """Give each ``@documented`` dataclass its runtime docstring (the option list included)."""

    def on_class_members(self, *, cls: Any, **kwargs: Any) -> None:
        if not _decorated(cls):
            return
        doc = runtime_doc(cls.path)
        if doc:
            if cls.docstring is None:
                cls.docstring = Docstring(doc, parent=cls)
            else:
                cls.docstring.value = doc
