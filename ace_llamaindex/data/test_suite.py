"""Read a test-suite JSON: queries with the memory that should answer them, a difficulty and a category.

Schema (either form)::

    {"memories": [{"id": "m1", "text": "..."}],          # optional: the memory bank (corpus)
     "tests": [{"query": "...", "expected_memory_id": "m1",  # or "expected_memory": "<memory text>"
                "difficulty": "easy|medium|hard", "category": "..."}]}

    [{"query": "...", "expected_memory": "...", "difficulty": "...", "category": "..."}]   # tests only

Without ``memories`` the corpus is the distinct expected texts. An ``expected_memory`` text that is not in
``memories`` joins the corpus.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import DatasetError
from .dataset import DIFFICULTIES, QADataset, read_json


def _text_id(text: str) -> str:
    return "mem-" + hashlib.sha1(text.encode()).hexdigest()[:12]


def load_test_suite(path: str | Path) -> QADataset:
    """Convert a test-suite JSON file into a :class:`QADataset` (query ids are ``q0001``...)."""
    data = read_json(path)
    memories, tests = ([], data) if isinstance(data, list) else (data.get("memories", []), data.get("tests"))
    if not isinstance(tests, list):
        raise DatasetError(path, "field 'tests'", "expected a list of {query, expected_memory | expected_memory_id, difficulty, category}")
    corpus: dict[str, str] = {}
    by_text: dict[str, str] = {}
    for i, mem in enumerate(memories):
        if not isinstance(mem, dict) or not isinstance(mem.get("text"), str):
            raise DatasetError(path, f"memories[{i}]", "expected an object with a 'text' string")
        mem_id = str(mem.get("id") or _text_id(mem["text"]))
        if mem_id in corpus:
            raise DatasetError(path, f"memories[{i}] (id {mem_id!r})", "duplicate memory id")
        corpus[mem_id] = mem["text"]
        by_text.setdefault(mem["text"].strip(), mem_id)
    queries: dict[str, str] = {}
    relevant: dict[str, list[str]] = {}
    meta: dict[str, dict[str, str]] = {}
    for i, test in enumerate(tests):
        where = f"tests[{i}]"
        if not isinstance(test, dict) or not isinstance(test.get("query"), str):
            raise DatasetError(path, where, "expected an object with a 'query' string")
        if "expected_memory_id" in test:
            mem_id = str(test["expected_memory_id"])
            if mem_id not in corpus:
                raise DatasetError(path, f"{where}.expected_memory_id", f"{mem_id!r} is not the id of any entry in 'memories'")
        elif isinstance(test.get("expected_memory"), str) and test["expected_memory"].strip():
            text = test["expected_memory"]
            mem_id = by_text.get(text.strip())
            if mem_id is None:
                mem_id = by_text[text.strip()] = _text_id(text)
                corpus[mem_id] = text
        else:
            raise DatasetError(path, where, "needs 'expected_memory' (the memory text) or 'expected_memory_id'")
        qid = str(test.get("id") or f"q{i + 1:04d}")
        if qid in queries:
            raise DatasetError(path, f"{where} (id {qid!r})", "duplicate query id")
        difficulty = test.get("difficulty")
        if difficulty is not None and difficulty not in DIFFICULTIES:
            raise DatasetError(path, f"{where}.difficulty", f"expected one of {DIFFICULTIES}, got {difficulty!r}")
        queries[qid] = test["query"]
        relevant[qid] = [mem_id]
        meta[qid] = {k: str(test[k]) for k in ("difficulty", "category") if test.get(k) is not None}
    return QADataset(queries=queries, corpus=corpus, relevant_docs=relevant, query_meta={k: v for k, v in meta.items() if v}, source=str(path))
