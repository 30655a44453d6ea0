"""The dataset every stage speaks: LlamaIndex's ``EmbeddingQAFinetuneDataset`` plus optional per-query metadata.

A file written by :meth:`QADataset.save` is a valid ``EmbeddingQAFinetuneDataset`` JSON (``queries``, ``corpus``,
``relevant_docs``, ``mode``); the extra ``query_meta`` key (difficulty, category) is ignored by LlamaIndex.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..errors import DatasetError

DIFFICULTIES = ("easy", "medium", "hard")
log = logging.getLogger(__name__)


@dataclass
class QADataset:
    """Queries, a corpus, which corpus ids answer each query, and optional per-query metadata."""

    queries: dict[str, str]
    corpus: dict[str, str]
    relevant_docs: dict[str, list[str]]
    query_meta: dict[str, dict[str, str]] = field(default_factory=dict)
    mode: str = "text"
    source: str = "<memory>"
    # What real-data hygiene removed: {"empty documents": [ids], "qrels to empty documents": ["qid -> doc"],
    # "empty queries": [ids], "queries left without a relevant document": [ids]}
    dropped: dict[str, list[str]] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        drop_blemishes(self)
        validate(self)

    def hygiene_summary(self) -> str | None:
        """One line saying what was dropped, or None when nothing was."""
        if not self.dropped:
            return None
        return f"{self.source}: dropped " + ", ".join(f"{len(v)} {k}" for k, v in self.dropped.items())

    # ---- views -------------------------------------------------------------------------------------------
    def difficulty(self, qid: str) -> str | None:
        return self.query_meta.get(qid, {}).get("difficulty")

    def category(self, qid: str) -> str | None:
        return self.query_meta.get(qid, {}).get("category")

    def subset(self, qids: list[str] | set[str]) -> QADataset:
        """The same corpus with only the given queries."""
        keep = [q for q in self.queries if q in set(qids)]
        return QADataset(
            queries={q: self.queries[q] for q in keep},
            corpus=self.corpus,
            relevant_docs={q: self.relevant_docs[q] for q in keep},
            query_meta={q: self.query_meta[q] for q in keep if q in self.query_meta},
            mode=self.mode,
            source=self.source,
        )

    def split(self, test_fraction: float, seed: int = 42, by: str = "query") -> tuple[QADataset, QADataset]:
        """Split into (train, test); the corpus is shared, as a memory bank is. ``by="query"``: random queries;
        ``by="document"``: whole groups of queries that share relevant documents, so no test query asks about a
        document a training query has (what a team meets on memories written after training)."""
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
        if by not in ("query", "document"):
            raise ValueError(f"split by 'query' or 'document', got {by!r}")
        rng = random.Random(seed)
        if by == "query":
            qids = sorted(self.queries)
            rng.shuffle(qids)
            n_test = max(1, round(len(qids) * test_fraction))
            return self.subset(qids[n_test:]), self.subset(qids[:n_test])
        from .groups import query_components

        groups = query_components({q: self.relevant_docs.get(q, []) for q in self.queries})
        rng.shuffle(groups)
        wanted, test = round(len(self.queries) * test_fraction), []
        for group in groups:
            if len(test) + len(group) <= max(wanted, 1) or not test:
                test.extend(group)
        if len(test) == len(self.queries):
            raise ValueError("every query shares documents with every other: a document-disjoint split is impossible")
        held = set(test)
        return self.subset([q for q in self.queries if q not in held]), self.subset([q for q in self.queries if q in held])

    def fingerprint(self) -> str:
        """A short content hash, recorded in training cards so a model can be traced to its data."""
        blob = json.dumps([self.queries, self.corpus, self.relevant_docs], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # ---- LlamaIndex format -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "queries": self.queries,
            "corpus": self.corpus,
            "relevant_docs": self.relevant_docs,
            "mode": self.mode,
        }
        if self.query_meta:
            data["query_meta"] = self.query_meta
        return data

    def save(self, path: str | Path) -> Path:
        """Write ``EmbeddingQAFinetuneDataset`` JSON atomically."""
        return write_json(path, self.to_dict())

    @classmethod
    def from_llamaindex(cls, obj: Any) -> QADataset:
        """Accept an ``EmbeddingQAFinetuneDataset`` object (duck-typed: ``queries``, ``corpus``, ``relevant_docs``)."""
        return cls(
            queries=dict(obj.queries),
            corpus=dict(obj.corpus),
            relevant_docs={k: list(v) for k, v in obj.relevant_docs.items()},
            mode=getattr(obj, "mode", "text"),
            source=type(obj).__name__,
        )


def read_json(path: str | Path) -> Any:
    """Parse JSON, rejecting duplicate keys, with errors that name the file, line and column."""
    path = Path(path)

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise DatasetError(path, f"key {key!r}", "appears twice; ids must be unique")
            seen[key] = value
        return seen

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(path, "file", "does not exist") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(path, f"byte {exc.start}", "is not UTF-8 text") from None
    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise DatasetError(path, f"line {exc.lineno}, column {exc.colno}", f"invalid JSON ({exc.msg})") from None


def load_llamaindex_json(path: str | Path) -> QADataset:
    """Load an ``EmbeddingQAFinetuneDataset`` JSON file (or our superset with ``query_meta``)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DatasetError(path, "top level", f"expected an object with queries/corpus/relevant_docs, got {type(data).__name__}")
    for key in ("queries", "corpus", "relevant_docs"):
        if key not in data:
            raise DatasetError(path, f"field {key!r}", "is missing (EmbeddingQAFinetuneDataset needs queries, corpus, relevant_docs)")
        if not isinstance(data[key], dict):
            raise DatasetError(path, f"field {key!r}", f"expected an object of id -> value, got {type(data[key]).__name__}")
    relevant = {}
    for qid, docs in data["relevant_docs"].items():
        if isinstance(docs, str):
            docs = [docs]
        if not isinstance(docs, list):
            raise DatasetError(path, f"relevant_docs[{qid!r}]", f"expected a list of corpus ids, got {type(docs).__name__}")
        relevant[qid] = [str(d) for d in docs]
    return QADataset(
        queries=data["queries"],
        corpus=data["corpus"],
        relevant_docs=relevant,
        query_meta=data.get("query_meta") or {},
        mode=data.get("mode", "text"),
        source=str(path),
    )


def drop_blemishes(ds: QADataset) -> None:
    """Real collections have blemishes: drop empty documents, the qrels that point at them, empty queries, and
    queries left with no relevant document; count each in ``ds.dropped`` (``load_dataset(strict=True)`` refuses)."""
    dropped: dict[str, list[str]] = {}
    empty_docs = [d for d, t in ds.corpus.items() if isinstance(t, str) and not t.strip()]
    if empty_docs:
        dropped["empty documents"] = empty_docs
        gone = set(empty_docs)
        ds.corpus = {d: t for d, t in ds.corpus.items() if d not in gone}
        dangling = [f"{q} -> {d}" for q, docs in ds.relevant_docs.items() for d in docs if d in gone]
        if dangling:
            dropped["qrels to empty documents"] = dangling
            ds.relevant_docs = {q: [d for d in docs if d not in gone] for q, docs in ds.relevant_docs.items()}
    empty_queries = [q for q, t in ds.queries.items() if isinstance(t, str) and not t.strip()]
    if empty_queries:
        dropped["empty queries"] = empty_queries
    orphans = [q for q in ds.queries if q not in empty_queries and q in ds.relevant_docs and not ds.relevant_docs[q]
               and "qrels to empty documents" in dropped]
    if orphans:
        dropped["queries left without a relevant document"] = orphans
    if empty_queries or orphans:
        gone = set(empty_queries) | set(orphans)
        ds.queries = {q: t for q, t in ds.queries.items() if q not in gone}
        ds.relevant_docs = {q: d for q, d in ds.relevant_docs.items() if q not in gone}
        ds.query_meta = {q: m for q, m in ds.query_meta.items() if q not in gone}
    if dropped:
        ds.dropped = {**ds.dropped, **dropped}
        log.warning("%s", ds.hygiene_summary())


def refuse_blemishes(ds: QADataset) -> None:
    """``--strict``: a dataset that needed :func:`drop_blemishes` is an error naming the first record."""
    for kind, items in ds.dropped.items():
        raise DatasetError(ds.source, items[0], f"{kind} ({len(items)} in all); without --strict they are dropped and counted")


def validate(ds: QADataset) -> None:
    """Check ids, texts and references; raise :class:`DatasetError` naming the first bad record."""
    src = ds.source
    for kind, table in (("queries", ds.queries), ("corpus", ds.corpus)):
        for key, text in table.items():
            if not isinstance(text, str):
                raise DatasetError(src, f"{kind}[{key!r}]", f"expected text, got {type(text).__name__}")
            if not text.strip():
                raise DatasetError(src, f"{kind}[{key!r}]", "is empty; every text must be non-empty")
    if not ds.queries:
        raise DatasetError(src, "queries", "is empty; at least one query is needed")
    for qid in ds.queries:
        if not ds.relevant_docs.get(qid):
            raise DatasetError(src, f"relevant_docs[{qid!r}]", "is missing or empty; every query needs at least one relevant corpus id")
    for qid, docs in ds.relevant_docs.items():
        if qid not in ds.queries:
            raise DatasetError(src, f"relevant_docs[{qid!r}]", "names a query id that is not in queries")
        for doc_id in docs:
            if doc_id not in ds.corpus:
                raise DatasetError(src, f"relevant_docs[{qid!r}]", f"corpus id {doc_id!r} is not in corpus")
    for qid, meta in ds.query_meta.items():
        if qid not in ds.queries:
            raise DatasetError(src, f"query_meta[{qid!r}]", "names a query id that is not in queries")
        level = meta.get("difficulty")
        if level is not None and level not in DIFFICULTIES:
            raise DatasetError(src, f"query_meta[{qid!r}].difficulty", f"expected one of {DIFFICULTIES}, got {level!r}")
