"""Where a :class:`~ace_llamaindex.index.store.CorpusIndex` lives: engines registered by name through the plugin hook
``register_engines`` (built-ins: ``local``, qdrant-client's embedded mode or a server by URL; ``edge``, Qdrant Edge
in-process). Callers open an index here and never name an engine's module, so the engines do not import each
other and a third party can add one (``pip install``) without touching this package.

``engine="auto"`` (the default everywhere) picks, in order: the engine that serves URLs when a ``url`` is given;
the engine that already holds this collection in the ``path`` folder; else the embedded engine whose cost grows
gently with the corpus (Edge), and qdrant-client's local mode only when Edge is not installed, said in one line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OptionError

log = logging.getLogger(__name__)
AUTO_ORDER = ("edge", "local")  # embedded preference: the engine that scales first (benchmarks/bench_scale.py)


@dataclass
class Engine:
    """An engine: ``open(collection, path=, url=, api_key=, **index_kwargs) -> CorpusIndex``; ``available()``
    whether its package is installed; ``holds(path, collection)`` whether ``path`` already has that collection in
    this engine's layout; ``serves_url`` whether it talks to a Qdrant server by URL."""

    open: Callable[..., Any]
    available: Callable[[], bool] = lambda: True
    holds: Callable[[Path, str], bool] = lambda path, collection: False
    serves_url: bool = False


def engines() -> dict[str, Engine]:
    from ..plugins.manager import components

    return {name: c.obj for name, c in components("engines").items()}


_warned: set[str] = set()


def resolve_engine(engine: str, collection: str, path: str | Path | None = None, url: str | None = None) -> str:
    """The registered engine name ``engine`` means here (``auto`` resolved as the module doc says)."""
    known = engines()
    if engine != "auto":
        if engine not in known:
            raise OptionError(f"engine must be 'auto' or one of {sorted(known)}, got {engine!r}")
        if url and not known[engine].serves_url:
            raise OptionError(f"engine {engine!r} is in-process; use engine 'local' (or 'auto') with url= for a Qdrant server")
        return engine
    if url:
        return next(name for name, e in known.items() if e.serves_url)
    if path:
        for name, e in known.items():
            if e.holds(Path(path), collection):
                return name
    order = [*AUTO_ORDER, *(n for n in known if n not in AUTO_ORDER)]
    chosen = next(n for n in order if n in known and known[n].available())
    if chosen != order[0] and order[0] not in _warned:
        _warned.add(order[0])
        log.warning("Qdrant Edge is not installed: using qdrant-client's local mode, which searches by brute force in "
                    "Python (slow beyond ~10k documents); pip install 'ace-llamaindex[edge]'")
    return chosen


def open_index(collection: str, *, path: str | Path | None = None, url: str | None = None, api_key: str | None = None,
               engine: str = "auto", **kwargs: Any) -> Any:
    """A :class:`~ace_llamaindex.index.store.CorpusIndex` for ``collection`` on the chosen engine; ``path``: an embedded
    folder (None: in memory / a temporary folder), ``url``: a Qdrant server or cluster."""
    from .store import check_collection_name

    check_collection_name(collection)  # before any engine creates a folder of that name
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise OptionError(f"{path}: is a file; the index folder must be a directory (pass another path)")
    name = resolve_engine(engine, collection, path, url)
    return engines()[name].open(collection, path=None if path is None else str(path), url=url, api_key=api_key, **kwargs)
