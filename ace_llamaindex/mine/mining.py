"""Mine hard negatives: the wrong documents the current retrieval system ranks highest for each query.

Option names follow sentence-transformers' ``util.mine_hard_negatives`` so a user of one knows the other.
False-negative guards: a candidate is never a negative when it is a labelled positive of the query, a positive
of any query that shares a positive with it (co-relevant documents), or a document whose text equals one of
those (duplicated memories). Margins against the positive's score and ``max_score`` catch unlabelled positives.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import models
from tqdm.auto import tqdm

from ..atomic import write_json
from ..data.dataset import DIFFICULTIES, QADataset, read_json
from ..data.examples import TrainingExample  # noqa: F401 - defined in the data layer, imported from here too
from ..embeddings.encoding import CachedEncoder
from ..embeddings.models import vector_name
from ..errors import DatasetError, OptionError
from ..index.engines import open_index
from ..index.store import MODES, CorpusIndex, HybridParams, point_id
from ..options import check, documented, option


@documented
@dataclass
class MiningOptions:
    """Knobs of the miner (names as in sentence-transformers' ``mine_hard_negatives``), each declared once here: its
    help, its ``ace mine`` flag and its range (the command's options and :meth:`validate` are made from them)."""

    num_negatives: int = field(default=5, metadata=option("Hard negatives kept per query.", minimum=1))
    # skip this many top-ranked non-positive candidates (likely unlabelled positives)
    range_min: int = field(default=0, metadata=option("Skip this many top wrong results.", minimum=0))
    range_max: int = field(default=50, metadata=option("Look this deep into the ranking.", minimum=1))
    absolute_margin: float | None = field(default=None, metadata=option(
        "Negative score <= positive score - margin.", minimum=0))
    relative_margin: float | None = field(default=None, metadata=option(
        "Negative score <= positive score * (1 - margin).", minimum=0, maximum=1, max_open=True))
    # drop candidates scoring above max_score (too close to be wrong), below min_score (too easy to teach anything)
    max_score: float | None = field(default=None, metadata=option("Drop candidates scoring above this."))
    min_score: float | None = field(default=None, metadata=option("Drop candidates scoring below this."))
    # "top": the highest-ranked survivors; "random": a random sample of them
    sampling_strategy: str = field(default="top", metadata=option(choices=("top", "random")))
    min_difficulty: str | None = field(default=None, metadata=option(
        "Only queries at least this hard.", choices=DIFFICULTIES))  # easy < medium < hard
    skip_categories: list[str] = field(default_factory=list, metadata=option(
        "Skip queries of this category (repeatable).", flag="--skip-category"))
    fill_random: bool = field(default=True, metadata=option(
        "Top up short lists with random non-positive documents.", no_flag="Python API only"))
    seed: int = field(default=42, metadata=option(no_flag="--seed is the command's own (`ace pipeline`'s seeds the "
                                                          "training too)"))
    hybrid: HybridParams = field(default_factory=HybridParams, metadata=option(
        "The hybrid miner's fusion of dense and sparse scores.", no_flag="Python API only"))

    def validate(self) -> None:
        """Each option within its declared range (one line naming it), then what the options ask of each other."""
        check(self)
        if self.range_max <= self.range_min:
            raise OptionError(f"need 0 <= range_min < range_max, got range_min={self.range_min}, range_max={self.range_max}")
        if self.range_max - self.range_min < self.num_negatives:
            raise OptionError(f"range_max - range_min ({self.range_max - self.range_min}) must be at least num_negatives ({self.num_negatives})")
        if self.min_score is not None and self.max_score is not None and self.min_score >= self.max_score:
            raise OptionError(f"min_score ({self.min_score}) must be below max_score ({self.max_score})")


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def excluded_documents(dataset: QADataset) -> dict[str, set[str]]:
    """For each query, the documents that must never be its negatives (see module docstring)."""
    queries_of_doc: dict[str, set[str]] = defaultdict(set)
    for qid, docs in dataset.relevant_docs.items():
        for d in docs:
            queries_of_doc[d].add(qid)
    ids_of_text: dict[str, set[str]] = defaultdict(set)
    for doc_id, text in dataset.corpus.items():
        ids_of_text[_normalise(text)].add(doc_id)
    excluded = {}
    for qid, docs in dataset.relevant_docs.items():
        siblings = {s for d in docs for s in queries_of_doc[d]}
        positives = {d for s in siblings for d in dataset.relevant_docs[s]}
        excluded[qid] = {same for d in positives for same in ids_of_text[_normalise(dataset.corpus[d])]}
    return excluded


def select_queries(dataset: QADataset, options: MiningOptions) -> list[str]:
    """Query ids that pass the difficulty filter and category skip list."""
    floor = DIFFICULTIES.index(options.min_difficulty) if options.min_difficulty else None
    skip = set(options.skip_categories)
    chosen = []
    for qid in dataset.queries:
        if dataset.category(qid) in skip:
            continue
        if floor is not None:
            level = dataset.difficulty(qid)
            if level is None or DIFFICULTIES.index(level) < floor:
                continue
        chosen.append(qid)
    return chosen


def build_index(dataset: QADataset, encoder: CachedEncoder | None, *, path: str | None = None, url: str | None = None,
                collection: str = "ace_mining", engine: str = "auto", sparse: bool = True,
                show_progress: bool = True) -> CorpusIndex:
    """Index the corpus (dense vectors of ``encoder`` if given, BM25 unless ``sparse=False``) into Qdrant."""
    index = open_index(collection, path=path, url=url, engine=engine)
    index.delete()
    ids = list(dataset.corpus)
    texts = [dataset.corpus[i] for i in ids]
    dense = {vector_name(encoder.label): encoder.encode_documents(texts)} if encoder else {}
    index.upsert(ids, texts, dense, show_progress=show_progress, sparse=sparse)
    return index


class HardNegativeMiner:
    """Mine with one retrieval mode (``dense``, ``bm25`` or ``hybrid``) over a real Qdrant collection."""

    def __init__(self, mode: str = "dense", encoder: CachedEncoder | None = None, index: CorpusIndex | None = None,
                 options: MiningOptions | None = None, show_progress: bool = True, using: str | None = None,
                 engine: str = "auto") -> None:
        """``index``: mine over this collection instead of indexing the dataset's corpus (e.g. the collection your
        current system already serves; its payload's document ids must match the dataset's corpus ids).
        ``using``: the named dense vector to search there (default: the one ace writes for ``encoder``).
        ``engine``: where the corpus is indexed when no ``index`` is given (``local``, ``edge``, or ``auto``: edge if installed)."""
        if mode not in MODES:
            raise OptionError(f"miner mode must be one of {MODES}, got {mode!r}")
        if mode != "bm25" and encoder is None:
            encoder = CachedEncoder(show_progress=show_progress)
        self.mode, self.encoder, self.index, self.using, self.engine = mode, encoder, index, using, engine
        self.options = options or MiningOptions()
        self.show_progress = show_progress

    def mine(self, dataset: QADataset) -> list[TrainingExample]:
        """One example per (query, positive) pair, with up to ``num_negatives`` hard negatives."""
        opts = self.options
        opts.validate()
        rng = random.Random(opts.seed)
        index = self.index or build_index(dataset, self.encoder if self.mode != "bm25" else None, engine=self.engine,
                                          sparse=self.mode != "dense", show_progress=self.show_progress)
        qids = select_queries(dataset, opts)
        if not qids:
            raise OptionError("no query passes the difficulty/category filters; loosen --min-difficulty or --skip-category")
        texts = [dataset.queries[q] for q in qids]
        using = (self.using or vector_name(self.encoder.label)) if self.encoder and self.mode != "bm25" else None
        qvecs = self.encoder.encode_queries(texts) if using else None
        excluded = excluded_documents(dataset)
        depth = opts.range_max + max(len(excluded[q]) for q in qids)  # room for the excluded positives
        ranked = index.search(self.mode, vectors=qvecs, texts=texts, using=using, limit=depth,
                              hybrid=opts.hybrid, show_progress=self.show_progress)
        all_docs = list(dataset.corpus)
        examples = []
        for i, qid in enumerate(tqdm(qids, desc=f"mining ({self.mode})", disable=not self.show_progress)):
            candidates = [(rank, h) for rank, h in enumerate(ranked[i], 1) if h.doc_id not in excluded[qid]]
            candidates = candidates[opts.range_min:opts.range_max]
            qvec = qvecs[i] if qvecs is not None else None
            cand_scores = self._candidate_scores(qvec, [h for _, h in candidates])
            for pos_id in dataset.relevant_docs[qid]:
                pos_score = self._positive_score(qvec, texts[i], pos_id, dataset.corpus[pos_id], index)
                keep = [(rank, h, s) for (rank, h), s in zip(candidates, cand_scores, strict=True) if self._passes(s, pos_score)]
                if opts.sampling_strategy == "random":
                    keep = sorted(rng.sample(keep, min(opts.num_negatives, len(keep))), key=lambda x: x[0])
                keep = keep[:opts.num_negatives]
                chosen = [(h.doc_id, rank, s) for rank, h, s in keep]
                if opts.fill_random and len(chosen) < opts.num_negatives:
                    taken = excluded[qid] | {c[0] for c in chosen}
                    pool = [d for d in all_docs if d not in taken]
                    chosen += [(d, None, None) for d in rng.sample(pool, min(len(pool), opts.num_negatives - len(chosen)))]
                examples.append(TrainingExample(
                    query=dataset.queries[qid],
                    positive=dataset.corpus[pos_id],
                    negatives=[dataset.corpus[d] for d, _, _ in chosen],
                    metadata={
                        "query_id": qid, "positive_id": pos_id, "positive_score": _round(pos_score),
                        "negative_ids": [d for d, _, _ in chosen], "negative_ranks": [r for _, r, _ in chosen],
                        "negative_scores": [_round(s) for _, _, s in chosen],
                        "difficulty": dataset.difficulty(qid), "category": dataset.category(qid), "miner": self.mode,
                    },
                ))
        return examples

    def _passes(self, score: float, positive_score: float) -> bool:
        o = self.options
        if o.max_score is not None and score > o.max_score:
            return False
        if o.min_score is not None and score < o.min_score:
            return False
        if o.absolute_margin is not None and score > positive_score - o.absolute_margin:
            return False
        if o.relative_margin is not None and score > positive_score * (1 - o.relative_margin):
            return False
        return True

    def _candidate_scores(self, qvec: np.ndarray | None, hits: list) -> list[float]:
        """Scores used by margins: dense cosine for dense/hybrid miners (RRF scores are not comparable to a
        positive's), the BM25 score for the bm25 miner."""
        if self.mode == "bm25" or not hits:
            return [h.score for h in hits]
        return (self.encoder.encode_documents([h.text for h in hits]) @ qvec).astype(float).tolist()

    def _positive_score(self, qvec: np.ndarray | None, query: str, pos_id: str, pos_text: str, index: CorpusIndex) -> float:
        if self.mode != "bm25":
            return float(self.encoder.encode_documents([pos_text])[0] @ qvec)
        # The positive's BM25 score: the same query, restricted to that one point.
        restrict = models.Filter(must=[models.HasIdCondition(has_id=[point_id(pos_id)])])
        hits = index.search("bm25", texts=[query], limit=1, query_filter=restrict)[0]
        return hits[0].score if hits else 0.0


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


# ---- training_data.json ------------------------------------------------------------------------------------
def save_training_data(examples: list[TrainingExample], path: str | Path, source: str, options: MiningOptions | None = None,
                       **metadata: Any) -> Path:
    """Write ``training_data.json`` (``metadata`` + ``examples``) atomically; ``metadata``: more facts for training
    (e.g. ``seen_share``, measured in a feedback log)."""
    opts = asdict(options) if options else {}
    counts: dict[str, int] = defaultdict(int)
    for ex in examples:
        counts[ex.metadata.get("difficulty") or "unlabelled"] += 1
    data = {
        "metadata": {
            "total_examples": len(examples),
            "total_negatives": sum(len(e.negatives) for e in examples),
            "by_difficulty": dict(counts),
            "source": source,
            "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "options": opts,
            **metadata,
        },
        "examples": [asdict(e) for e in examples],
    }
    return write_json(path, data)


def drop_positive_negatives(examples: list[TrainingExample]) -> tuple[list[TrainingExample], int]:
    """Examples without hard negatives that are their own positive (up to whitespace): training would push the
    query away from its answer. Returns the cleaned examples and how many negatives were dropped."""
    cleaned, dropped = [], 0
    for e in examples:
        positive = " ".join(e.positive.split())
        keep = [n for n in e.negatives if " ".join(n.split()) != positive]
        dropped += len(e.negatives) - len(keep)
        cleaned.append(e if len(keep) == len(e.negatives) else TrainingExample(e.query, e.positive, keep, e.metadata))
    return cleaned, dropped


def training_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata`` of a ``training_data.json`` (empty for a bare list of examples)."""
    data = read_json(path)
    return data.get("metadata") or {} if isinstance(data, dict) else {}


def load_training_data(path: str | Path) -> list[TrainingExample]:
    """Read ``training_data.json``; each example needs query, positive (strings) and negatives (list of strings)."""
    data = read_json(path)
    rows = data.get("examples") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise DatasetError(path, "field 'examples'", "expected a list of {query, positive, negatives}")
    examples = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DatasetError(path, f"examples[{i}]", "expected an object")
        for key in ("query", "positive"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise DatasetError(path, f"examples[{i}].{key}", "expected a non-empty string")
        negatives = row.get("negatives", [])
        if not isinstance(negatives, list) or not all(isinstance(n, str) for n in negatives):
            raise DatasetError(path, f"examples[{i}].negatives", "expected a list of strings")
        examples.append(TrainingExample(row["query"], row["positive"], negatives, row.get("metadata") or {}))
    if not examples:
        raise DatasetError(path, "examples", "is empty; nothing to train on")
    return examples
