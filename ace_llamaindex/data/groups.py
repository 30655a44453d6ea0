"""Connected components of the query-document graph: queries joined through the relevant documents they share."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def query_components(relevant: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Queries grouped so that no two groups share a relevant document (union-find), each group sorted, in the
    order of their first query. Holding out whole groups holds out documents, not only queries."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for query, docs in relevant.items():
        for doc in docs:
            parent[find("q:" + query)] = find("d:" + doc)
    groups: dict[str, list[str]] = {}
    for query in sorted(relevant):
        groups.setdefault(find("q:" + query), []).append(query)
    return list(groups.values())
