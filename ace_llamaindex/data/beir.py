"""Read a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``) into a :class:`QADataset`."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DatasetError
from .dataset import QADataset


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise DatasetError(path, "file", "does not exist (a BEIR folder needs corpus.jsonl, queries.jsonl, qrels/)")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(path, f"line {lineno}", f"invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or "_id" not in row:
                raise DatasetError(path, f"line {lineno}", "expected an object with an '_id' field")
            rows.append(row)
    return rows


def _unique(rows: list[dict], path: Path) -> dict[str, dict]:
    table: dict[str, dict] = {}
    for lineno, row in enumerate(rows, 1):
        key = str(row["_id"])
        if key in table:
            raise DatasetError(path, f"record {lineno} (_id {key!r})", "duplicate id")
        table[key] = row
    return table


def read_qrels(path: Path) -> dict[str, list[str]]:
    """Read a BEIR qrels TSV (``query-id  corpus-id  score``); rows with score > 0 are relevant."""
    if not path.exists():
        raise DatasetError(path, "file", "does not exist; pick a split that the qrels/ folder has")
    relevant: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            parts = line.rstrip("\n").split("\t")
            if lineno == 1 and parts[0] == "query-id":
                continue
            if len(parts) != 3:
                raise DatasetError(path, f"line {lineno}", "expected 3 tab-separated columns: query-id, corpus-id, score")
            qid, doc_id, score = parts
            try:
                if float(score) > 0:
                    relevant.setdefault(qid, []).append(doc_id)
            except ValueError:
                raise DatasetError(path, f"line {lineno}", f"score {score!r} is not a number") from None
    return relevant


def load_beir(folder: str | Path, split: str = "test") -> QADataset:
    """Load one split of a BEIR dataset. Document text is ``title + " " + text`` as BEIR's own evaluation does."""
    folder = Path(folder)
    corpus_rows = _unique(_read_jsonl(folder / "corpus.jsonl"), folder / "corpus.jsonl")
    query_rows = _unique(_read_jsonl(folder / "queries.jsonl"), folder / "queries.jsonl")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    relevant = read_qrels(qrels_path)
    for qid, docs in relevant.items():
        if qid not in query_rows:
            raise DatasetError(qrels_path, f"query-id {qid!r}", "is not in queries.jsonl")
        for doc_id in docs:
            if doc_id not in corpus_rows:
                raise DatasetError(qrels_path, f"corpus-id {doc_id!r}", "is not in corpus.jsonl")
    corpus = {k: " ".join(p for p in (r.get("title", "").strip(), r.get("text", "").strip()) if p) for k, r in corpus_rows.items()}
    queries = {qid: str(query_rows[qid].get("text", "")) for qid in relevant}
    meta = {}
    for qid in relevant:
        m = query_rows[qid].get("metadata") or {}
        picked = {k: str(m[k]) for k in ("difficulty", "category") if k in m}
        if picked:
            meta[qid] = picked
    return QADataset(queries=queries, corpus=corpus, relevant_docs=relevant, query_meta=meta, source=f"{folder} [{split}]")
