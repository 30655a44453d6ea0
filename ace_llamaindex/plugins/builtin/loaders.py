"""Built-in dataset loaders: LlamaIndex finetuning JSON, BEIR folders, test-suite JSON."""

from __future__ import annotations

from pathlib import Path

from ...data.beir import load_beir
from ...data.dataset import load_llamaindex_json
from ...data.test_suite import load_test_suite
from ..hookspecs import hookimpl
from ..manager import Loader


def _json_head(path: Path) -> str:
    try:
        with path.open(encoding="utf-8") as handle:
            return handle.read(4096)
    except (OSError, UnicodeDecodeError):
        return ""


def _is_llamaindex(path: Path) -> bool:
    head = _json_head(path) if path.is_file() else ""
    return '"queries"' in head or '"relevant_docs"' in head or '"corpus"' in head


def _is_test_suite(path: Path) -> bool:
    head = _json_head(path).lstrip() if path.is_file() else ""
    return head.startswith("[") or '"tests"' in head or '"memories"' in head


@hookimpl
def register_loaders(register):
    # Order matters for auto-detection: the first loader whose sniff() accepts a path reads it.
    register("beir", Loader(sniff=lambda p: p.is_dir() and (p / "corpus.jsonl").exists(), load=load_beir),
             "BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    register("test-suite", Loader(sniff=_is_test_suite, load=lambda path, **_: load_test_suite(path)),
             "test-suite JSON: {memories, tests: [{query, expected_memory|expected_memory_id, difficulty, category}]}")
    register("llamaindex", Loader(sniff=_is_llamaindex, load=lambda path, **_: load_llamaindex_json(path)),
             "EmbeddingQAFinetuneDataset JSON (queries, corpus, relevant_docs)")
