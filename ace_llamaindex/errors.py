"""Errors that name the file, the record and what was expected, instead of a deep library trace."""

from __future__ import annotations

from pathlib import Path


class AceError(Exception):
    """Base class for every error ace-llamaindex raises on purpose."""


class DatasetError(AceError):
    """A dataset file is malformed: says which file, which record or field, and what was expected."""

    def __init__(self, source: str | Path, where: str, problem: str) -> None:
        self.source, self.where, self.problem = str(source), where, problem
        super().__init__(f"{source}: {where}: {problem}")


class OptionError(AceError, ValueError):
    """An option has a value that cannot work; the message names the option and the allowed values."""


class PluginError(AceError):
    """A plugin failed to load or a named component is not registered."""


class EmbeddingError(AceError):
    """An embedding model or endpoint could not produce vectors."""


class AceDeprecationWarning(DeprecationWarning):
    """A name of ours that still works and will go (``ace_llamaindex.hookspecs``, the ``sentence-transformers``
    trainer, ``--trainer``); the message says what replaces it. The ``ace`` command shows these; Python hides
    DeprecationWarnings by default elsewhere."""
