"""The promotion gate: is the fine-tuned model better than its base on queries it did not train on?

Both models retrieve over the same corpus for the held-out validation queries; a paired bootstrap on nDCG@10
says better / no clear difference / worse. The same evaluation code serves users (``evaluate``), so the gate
measures what they will get. The validation queries also chose the best epoch, which favours the fine-tuned
model slightly; ``ace pipeline``'s test split is the unbiased number.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .dataset import QADataset
from .evaluate import Encoder, System, evaluate
from .mining import TrainingExample

GATE_METRIC = "ndcg@10"


def text_hash(text: str) -> str:
    """A short, stable hash of a query's text, kept in training cards to detect train/eval overlap."""
    return hashlib.sha1(" ".join(text.split()).lower().encode("utf-8")).hexdigest()[:16]


def validation_dataset(val: Sequence[TrainingExample], everything: Iterable[TrainingExample],
                       corpus: Mapping[str, str] | None = None) -> QADataset:
    """Validation queries over a corpus: ``corpus`` when given (the real one), else every text the training data
    mentions (positives and mined negatives of all examples: hard distractors, as the current system saw them)."""
    texts: dict[str, str] = {}  # text -> id; duplicated texts collapse to one document

    def doc(text: str) -> str:
        return texts.setdefault(text, f"d{len(texts)}")

    for text in (corpus or {}).values():
        if text.strip():
            doc(text)
    for e in everything:
        doc(e.positive)
        for n in e.negatives:
            doc(n)
    queries: dict[str, str] = {}
    relevant: dict[str, list[str]] = {}
    qid_of: dict[str, str] = {}
    for e in val:
        qid = qid_of.setdefault(e.query, f"q{len(qid_of)}")
        queries[qid] = e.query
        pos = doc(e.positive)
        if pos not in relevant.setdefault(qid, []):
            relevant[qid].append(pos)
    return QADataset(queries, {i: t for t, i in texts.items()}, relevant, source="validation queries")


@dataclass
class GateResult:
    """Fine-tuned vs base on the validation queries."""

    verdict: str  # better | no clear difference | worse | not measured
    metric: str
    base: float | None = None
    finetuned: float | None = None
    delta: float | None = None
    ci95: tuple[float, float] | None = None
    n_queries: int = 0
    seen_documents: float | None = None  # share of validation queries whose document a training query also had

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "metric": self.metric, "base": self.base, "finetuned": self.finetuned,
                "delta": self.delta, "ci95": list(self.ci95) if self.ci95 else None, "n_queries": self.n_queries,
                "seen_documents": self.seen_documents}

    def sentence(self) -> str:
        if self.delta is None:
            return f"promotion gate: {self.verdict} (no validation queries)"
        return (f"promotion gate on {self.n_queries} validation queries: {self.metric} {self.base:.3f} -> {self.finetuned:.3f}, "
                f"{self.delta:+.3f} [{self.ci95[0]:+.3f}, {self.ci95[1]:+.3f}]: {self.verdict}")


def seen_document_share(train: Sequence[TrainingExample], val: Sequence[TrainingExample]) -> float | None:
    """The share of validation queries whose relevant document is also a training query's: the gate measures
    queries about documents the model was trained towards at that rate. Future queries about documents no
    training query touched may gain less (a query adapter, which only moves queries, most of all)."""
    trained = {e.positive for e in train}
    by_query: dict[str, bool] = {}
    for e in val:
        by_query[e.query] = by_query.get(e.query, False) or e.positive in trained
    return round(sum(by_query.values()) / len(by_query), 3) if by_query else None


def gate(val: QADataset, base: Encoder, finetuned: Encoder, engine: str = "auto", metric: str = GATE_METRIC) -> GateResult:
    """Compare ``finetuned`` with ``base`` (dense retrieval) on ``val``'s queries with a paired bootstrap."""
    systems = [System("base", "dense", base), System("finetuned", "dense", finetuned)]
    report = evaluate(val, systems, comparisons=[("base", "finetuned")], show_progress=False, engine=engine)
    c = next(c for c in report.data["comparisons"] if c["metric"] == metric)
    return GateResult(c["verdict"], metric, round(report.overall("base", metric), 4), round(report.overall("finetuned", metric), 4),
                      round(c["delta"], 4), (round(c["ci95"][0], 4), round(c["ci95"][1], 4)), len(val.queries))
