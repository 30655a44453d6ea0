"""Built-in engines: qdrant-client (embedded local mode, or a server by URL) and Qdrant Edge (in-process)."""

from __future__ import annotations

from ...index.edge_store import edge_available, edge_holds, open_edge
from ...index.engines import Engine
from ...index.store import local_holds, open_local
from ..hookspecs import hookimpl


@hookimpl
def register_engines(register):
    register("local", Engine(open=open_local, holds=local_holds, serves_url=True),
             "qdrant-client: embedded local mode (brute force in Python) or a Qdrant server/cluster by url")
    register("edge", Engine(open=open_edge, available=edge_available, holds=edge_holds),
             "Qdrant Edge: Qdrant's own engine in-process (pip install 'ace-llamaindex[edge]')")
