"""Evaluate retrieval systems (dense / BM25 / hybrid, per embedding model) on the same queries in one Qdrant index.

Every system runs through the same code path production uses (:class:`~ace_llamaindex.index.store.CorpusIndex`),
so an evaluated hybrid is the hybrid users get. Results are per query, so any breakdown and the paired
bootstrap come from the same numbers.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.dataset import QADataset
from ..embeddings.encoding import Encoder
from ..embeddings.models import vector_name
from ..errors import OptionError
from ..index.engines import open_index
from ..index.store import HybridParams
from .metrics import BUILTIN_METRICS, Metric
from .stats import paired_bootstrap


@dataclass
class System:
    """A retrieval system to evaluate: a mode and (except for BM25) an encoder."""

    name: str
    mode: str
    encoder: Encoder | None = None
    hybrid: HybridParams = field(default_factory=HybridParams)


@dataclass
class EvalReport:
    """Per-query metrics for every system plus everything derived from them."""

    data: dict[str, Any]

    def overall(self, system: str, metric: str) -> float:
        return self.data["overall"][system][metric]


def standard_systems(baseline: Encoder, finetuned: Encoder | None = None, bm25: bool = True,
                     hybrid: HybridParams | None = None, tuned_name: str = "finetuned") -> list[System]:
    """base dense, base hybrid (and the same for the fine-tuned model, named ``tuned_name``), plus BM25 alone."""
    hybrid = hybrid or HybridParams()
    systems = [System("bm25", "bm25")] if bm25 else []
    systems += [System("base", "dense", baseline), System("base+hybrid", "hybrid", baseline, hybrid)]
    if finetuned is not None:
        systems += [System(tuned_name, "dense", finetuned), System(f"{tuned_name}+hybrid", "hybrid", finetuned, hybrid)]
    return systems


def default_comparisons(names: Sequence[str]) -> list[tuple[str, str]]:
    """(baseline, candidate) pairs worth a verdict, among the systems present."""
    wanted = [("base", "finetuned"), ("base+hybrid", "finetuned+hybrid"), ("base", "base+hybrid"),
              ("finetuned", "finetuned+hybrid"), ("bm25", "finetuned+hybrid"), ("base", "adapter"),
              ("base+hybrid", "adapter+hybrid"), ("finetuned", "adapter")]
    return [(a, b) for a, b in wanted if a in names and b in names]


FUSED = "finetuned+fusion"  # the fine-tuned model with the fusion chosen on validation (what serving uses)


def compared_systems(baseline: Encoder, finetuned: Encoder | None = None, *, hybrid: HybridParams | None = None,
                     fusion: Any = None, adapted: Encoder | None = None) -> tuple[list[System], list[tuple[str, str]]]:
    """The systems ``ace pipeline`` and ``ace eval`` compare, and the pairs that get a verdict: BM25, the base and
    the fine-tuned model, each dense and hybrid; a query adapter's two rows (``adapted``); and, given the
    :class:`~ace_llamaindex.FusionChoice` saved with the model, ``finetuned+fusion``, which is what serving uses."""
    hybrid = hybrid or HybridParams()
    systems = standard_systems(baseline, finetuned, hybrid=hybrid)
    if adapted is not None:
        systems += [System("adapter", "dense", adapted), System("adapter+hybrid", "hybrid", adapted, hybrid)]
    comparisons = default_comparisons([s.name for s in systems])
    if fusion is not None:
        systems.append(System(FUSED, fusion.mode, None if fusion.mode == "bm25" else finetuned, fusion.params))
        comparisons += [("finetuned", FUSED), ("finetuned+hybrid", FUSED)]
    return systems, comparisons


def sample_queries(qids: list[str], max_queries: int | None, seed: int = 42) -> list[str]:
    """At most ``max_queries`` of ``qids``, drawn at random with ``seed``, in their original order."""
    if max_queries is None or max_queries >= len(qids):
        return qids
    if max_queries < 1:
        raise OptionError(f"max_queries must be at least 1, got {max_queries}")
    chosen = set(random.Random(seed).sample(qids, max_queries))
    return [q for q in qids if q in chosen]


def evaluate(
    dataset: QADataset,
    systems: Sequence[System],
    *,
    metrics: Mapping[str, Metric] | None = None,
    comparisons: Sequence[tuple[str, str]] | None = None,
    max_queries: int | None = None,
    depth: int = 100,
    qdrant_path: str | None = None,
    qdrant_url: str | None = None,
    engine: str = "auto",
    show_progress: bool = True,
    resamples: int = 5000,
    seed: int = 42,
) -> EvalReport:
    """Run every system on the dataset's queries and return metrics overall, per difficulty, per category,
    with paired-bootstrap intervals on the differences named in ``comparisons``.

    ``max_queries``: evaluate on a seeded random sample of this many queries (not the first ones: files are
    often sorted by category)."""
    metrics = dict(metrics or BUILTIN_METRICS)
    qids = sample_queries(list(dataset.queries), max_queries, seed)
    query_texts = [dataset.queries[q] for q in qids]
    doc_ids = list(dataset.corpus)
    doc_texts = [dataset.corpus[d] for d in doc_ids]
    timings: dict[str, float] = {}

    # One collection, one named vector per distinct model.
    encoders = {s.encoder.label: s.encoder for s in systems if s.encoder is not None}
    dense, doc_vectors = {}, {}
    for label, enc in encoders.items():
        started = time.perf_counter()
        doc_vectors[label] = enc.encode_documents(doc_texts)
        dense[vector_name(label)] = doc_vectors[label]
        timings[f"encode corpus: {label}"] = time.perf_counter() - started
    index = open_index("ace_eval", path=qdrant_path, url=qdrant_url, engine=engine)
    index.delete()
    index.upsert(doc_ids, doc_texts, dense, show_progress=show_progress)
    position = {d: i for i, d in enumerate(doc_ids)}

    per_query: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    query_vectors = {}
    for system in systems:
        started = time.perf_counter()
        vectors = None
        if system.encoder is not None:
            label = system.encoder.label
            if label not in query_vectors:
                query_vectors[label] = system.encoder.encode_queries(query_texts)
            vectors = query_vectors[label]
        hits = index.search(system.mode, vectors=vectors, texts=query_texts,
                            using=vector_name(system.encoder.label) if system.encoder else None,
                            limit=depth, hybrid=system.hybrid, show_progress=show_progress)
        timings[f"search: {system.name}"] = time.perf_counter() - started
        for i, qid in enumerate(qids):
            ranked = [h.doc_id for h in hits[i]]
            relevant = set(dataset.relevant_docs[qid])
            row = {name: float(fn(ranked, relevant)) for name, fn in metrics.items()}
            if vectors is not None:
                rel_vecs = doc_vectors[system.encoder.label][[position[d] for d in relevant]]
                row["cosine"] = float((rel_vecs @ vectors[i]).mean())
            per_query[qid][system.name] = row

    names = [s.name for s in systems]
    groups = {"overall": {"all": qids}, "by_difficulty": defaultdict(list), "by_category": defaultdict(list)}
    for qid in qids:
        groups["by_difficulty"][dataset.difficulty(qid) or "unlabelled"].append(qid)
        groups["by_category"][dataset.category(qid) or "unlabelled"].append(qid)

    def mean_table(ids: list[str]) -> dict[str, dict[str, float]]:
        return {n: {m: float(np.mean([per_query[q][n][m] for q in ids])) for m in per_query[ids[0]][n]} for n in names}

    comparisons = list(comparisons) if comparisons is not None else default_comparisons(names)
    verdicts = []
    for a, b in comparisons:
        for m in metrics:
            d = paired_bootstrap(np.array([per_query[q][a][m] for q in qids]), np.array([per_query[q][b][m] for q in qids]),
                                 resamples=resamples)
            verdicts.append({"baseline": a, "candidate": b, "metric": m, "delta": d.delta, "ci95": [d.ci_low, d.ci_high],
                             "p_value": d.p_value, "verdict": d.verdict})
    data = {
        "dataset": dataset.source,
        "n_queries": len(qids),
        "n_documents": len(doc_ids),
        "metrics": list(metrics) + ["cosine"],
        "systems": {s.name: {"mode": s.mode, "model": s.encoder.label if s.encoder else None,
                             **({"rrf_k": s.hybrid.rrf_k, "weights": [s.hybrid.dense_weight, s.hybrid.sparse_weight]} if s.mode == "hybrid" else {})}
                    for s in systems},
        "overall": mean_table(qids),
        "by_difficulty": {g: {"n": len(ids), **mean_table(ids)} for g, ids in sorted(groups["by_difficulty"].items())},
        "by_category": {g: {"n": len(ids), **mean_table(ids)} for g, ids in sorted(groups["by_category"].items())},
        "comparisons": verdicts,
        "timings_seconds": {k: round(v, 2) for k, v in timings.items()},
        "per_query": per_query,
    }
    return EvalReport(data)
