"""Engines are registered components; ``engine="auto"`` resolves the way the README says."""

from __future__ import annotations

import logging

import pytest

from ace_llamaindex.errors import OptionError
from ace_llamaindex.index import engines as engines_module
from ace_llamaindex.index.engines import Engine, engines, open_index, resolve_engine


def _folder(tmp_path, engine):
    """A folder already holding collection "c" on ``engine`` (None: an empty folder)."""
    if engine:
        index = open_index("c", path=str(tmp_path), engine=engine)
        index.ensure({"d": 4})
        index.close()
    return str(tmp_path)


@pytest.mark.parametrize(("engine", "url", "holder", "expected"), [
    ("auto", "http://localhost:6333", None, "local"),   # a server: the engine that serves URLs
    ("auto", None, "local", "local"),                    # an existing local-mode folder stays local
    ("auto", None, "edge", "edge"),                      # an existing Edge folder stays Edge
    ("auto", None, None, "edge"),                        # a new folder: the engine that scales
    ("local", None, None, "local"),
])
def test_auto_resolution(tmp_path, engine, url, holder, expected):
    pytest.importorskip("qdrant_edge")
    assert resolve_engine(engine, "c", path=_folder(tmp_path, holder), url=url) == expected


@pytest.mark.parametrize(("engine", "url", "message"), [
    ("edge", "http://localhost:6333", "in-process"),
    ("elastic", None, "engine must be 'auto' or one of"),
])
def test_bad_engines_are_clear_errors(engine, url, message):
    with pytest.raises(OptionError, match=message):
        resolve_engine(engine, "c", url=url)


def test_without_edge_auto_falls_back_to_local_and_says_so(monkeypatch, caplog):
    known = dict(engines())
    known["edge"] = Engine(open=known["edge"].open, available=lambda: False)
    monkeypatch.setattr(engines_module, "engines", lambda: known)
    monkeypatch.setattr(engines_module, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="ace_llamaindex.index.engines"):
        assert resolve_engine("auto", "c") == "local"
        assert resolve_engine("auto", "c") == "local"
    assert [r.message for r in caplog.records if "Edge is not installed" in r.message] and len(caplog.records) == 1


def test_a_registered_engine_is_used_by_name(monkeypatch):
    opened = []
    known = {**engines(), "mine": Engine(open=lambda collection, **kw: opened.append((collection, kw)) or "index")}
    monkeypatch.setattr(engines_module, "engines", lambda: known)
    assert open_index("c", engine="mine") == "index" and opened[0][0] == "c"
