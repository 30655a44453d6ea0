"""The promotion gate: is the fine-tuned model better than its base on queries it did not train on?

Both models retrieve over the same corpus for the held-out validation queries; a paired bootstrap on nDCG@10
says better / no clear difference / worse. The same evaluation code serves users (``evaluate``), so the gate
measures what they will get. The validation queries also chose the best epoch, which favours the fine-tuned
model slightly; ``ace pipeline``'s test split is the unbiased number.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.dataset import QADataset
from ..data.examples import TrainingExample
from ..embeddings.encoding import Encoder
from ..evaluate.evaluate import System, evaluate
from ..evaluate.stats import paired_bootstrap, weighted_paired_bootstrap
from ..records.card import TrainingCard
from ..records.gate import GATE_METRIC, GateResult
from ..records.verdict import Verdict


def validation_dataset(val: Sequence[TrainingExample], everything: Iterable[TrainingExample],
                       corpus: Mapping[str, str] | None = None) -> QADataset:
    """Validation queries over a corpus: ``corpus`` when given (the real one), else every text the training data
    mentions (positives and mined negatives of all examples: hard distractors, as the current system saw them).

    Documents keep the corpus ids mining recorded (``positive_id``, ``negative_ids``), so two documents with the same
    text stay two documents and a query is scored against its own, as the qrels score it; a text without an id
    joins the document of that text, or becomes one."""
    docs: dict[str, str] = {}     # id -> text
    by_text: dict[str, str] = {}  # text -> the first id holding it

    def doc(text: str, doc_id: Any = None) -> str:
        if doc_id is not None:
            key = f"id:{doc_id}"
            if docs.setdefault(key, text) == text:
                by_text.setdefault(text, key)
                return key
        if text not in by_text:
            by_text[text] = f"text:{len(docs)}"
            docs[by_text[text]] = text
        return by_text[text]

    for doc_id, text in (corpus or {}).items():
        if text.strip():
            doc(text, doc_id)
    for e in everything:
        doc(e.positive, e.metadata.get("positive_id"))
        negative_ids = e.metadata.get("negative_ids") or []
        for i, n in enumerate(e.negatives):
            doc(n, negative_ids[i] if i < len(negative_ids) and negative_ids[i] is not None else None)
    queries: dict[str, str] = {}
    relevant: dict[str, list[str]] = {}
    qid_of: dict[str, str] = {}
    for e in val:
        qid = qid_of.setdefault(e.query, f"q{len(qid_of)}")
        queries[qid] = e.query
        pos = doc(e.positive, e.metadata.get("positive_id"))
        if pos not in relevant.setdefault(qid, []):
            relevant[qid].append(pos)
    return QADataset(queries, docs, relevant, source="validation queries")


MIN_UNSEEN = 20  # unseen-document validation queries needed for a verdict; fewer: "can't tell"
UNSEEN, SEEN = "unseen documents", "seen documents"


def seen_document_share(train: Sequence[TrainingExample], val: Sequence[TrainingExample]) -> float | None:
    """The share of validation queries whose relevant document is also a training query's: the gate measures
    queries about documents the model was trained towards at that rate. Future queries about documents no
    training query touched may gain less (a query adapter, which only moves queries, most of all)."""
    from .validation_split import unseen_queries

    queries = {e.query for e in val}
    return round(1 - len(unseen_queries(list(train), list(val))) / len(queries), 3) if queries else None


def _scores(per_query: Mapping[str, Mapping[str, Mapping[str, float]]], qids: Sequence[str], system: str,
            metric: str) -> np.ndarray:
    return np.array([per_query[q][system][metric] for q in qids])


def compare(per_query: Mapping[str, Mapping[str, Mapping[str, float]]], qids: Sequence[str], baseline: str,
            candidate: str, metric: str = GATE_METRIC) -> dict[str, Any]:
    """Paired bootstrap of ``candidate`` vs ``baseline`` on ``qids`` (rows from ``evaluate``'s ``per_query``)."""
    if not qids:
        return {"n": 0, "delta": None, "verdict": Verdict.NOT_MEASURED}
    a, b = _scores(per_query, qids, baseline, metric), _scores(per_query, qids, candidate, metric)
    d = paired_bootstrap(a, b)
    return {"n": len(qids), "base": round(float(a.mean()), 4), "finetuned": round(float(b.mean()), 4),
            "delta": round(d.delta, 4), "ci95": [round(d.ci_low, 4), round(d.ci_high, 4)], "verdict": d.verdict}


def judge(per_query: Mapping[str, Mapping[str, Mapping[str, float]]], qids: Sequence[str], baseline: str, candidate: str,
          unseen: set[str] | None = None, metric: str = GATE_METRIC, seen_weight: float = 0.0) -> GateResult:
    """The gate's rule. With ``unseen`` (validation query ids about documents no training query had):

    - fewer than ``MIN_UNSEEN`` such queries: "can't tell";
    - ``seen_weight`` 0 (the default: future queries ask about new documents): the unseen-document subset decides,
      so memorised documents cannot carry the verdict;
    - ``seen_weight`` w > 0 (the share of future queries expected to ask about documents training queries had, e.g.
      the test's): the verdict is that of the mix ``w * seen + (1 - w) * unseen`` (a stratified bootstrap), and
      "better" also needs no loss on unseen documents (their mean delta >= 0, and not "worse").

    Either way "better" needs neither subset to be "worse". Without ``unseen``: all queries decide."""
    overall = compare(per_query, qids, baseline, candidate, metric)
    result = GateResult.from_comparison(overall, metric, len(qids))
    if unseen is None:
        return result
    unseen_ids = [q for q in qids if q in unseen]
    seen_ids = [q for q in qids if q not in unseen]
    result.subsets = {UNSEEN: compare(per_query, unseen_ids, baseline, candidate, metric),
                      SEEN: compare(per_query, seen_ids, baseline, candidate, metric)}
    result.seen_documents = round(len(seen_ids) / len(qids), 3) if qids else None
    if len(unseen_ids) < MIN_UNSEEN:
        result.verdict = Verdict.CANT_TELL
        result.decided_by = f"too few unseen-document queries ({len(unseen_ids)} < {MIN_UNSEEN})"
        return result
    if seen_weight > 0 and seen_ids:
        strata = [(w, _scores(per_query, ids, baseline, metric), _scores(per_query, ids, candidate, metric))
                  for w, ids in ((seen_weight, seen_ids), (1 - seen_weight, unseen_ids))]
        d = weighted_paired_bootstrap(strata)
        mix = f"documents seen {seen_weight:.0%} / unseen {1 - seen_weight:.0%}"
        result.subsets[mix] = {"n": len(qids), "delta": round(d.delta, 4), "ci95": [round(d.ci_low, 4), round(d.ci_high, 4)],
                               "verdict": d.verdict, "weights": {SEEN: round(seen_weight, 3), UNSEEN: round(1 - seen_weight, 3)}}
        result.verdict, result.decided_by = d.verdict, mix
        if d.verdict == Verdict.BETTER and result.subset_delta(UNSEEN) < 0:
            result.verdict, result.decided_by = Verdict.NO_CLEAR_DIFFERENCE, f"{mix}: better, but a loss on {UNSEEN}"
    else:
        result.verdict, result.decided_by = result.subset_verdict(UNSEEN), UNSEEN
    if result.verdict == Verdict.BETTER and Verdict.WORSE in (result.subset_verdict(SEEN), result.subset_verdict(UNSEEN)):
        result.verdict, result.decided_by = Verdict.NO_CLEAR_DIFFERENCE, f"{result.decided_by}; one subset is worse"
    return result


def gate(val: QADataset, base: Encoder, finetuned: Encoder, engine: str = "auto", metric: str = GATE_METRIC,
         unseen: set[str] | None = None, seen_weight: float = 0.0) -> GateResult:
    """Compare ``finetuned`` with ``base`` (dense retrieval) on ``val``'s queries with a paired bootstrap;
    ``unseen``: the query ids about unseen documents (see :func:`judge`)."""
    systems = [System("base", "dense", base), System("finetuned", "dense", finetuned)]
    report = evaluate(val, systems, comparisons=[], show_progress=False, engine=engine)
    return judge(report.data["per_query"], list(val.queries), "base", "finetuned", unseen, metric, seen_weight)


def unseen_query_ids(val: QADataset, unseen_texts: set[str]) -> set[str]:
    """The ids, in a validation dataset, of the queries whose texts are in ``unseen_texts``."""
    return {qid for qid, text in val.queries.items() if text in unseen_texts}


@dataclass
class Choice:
    """The chosen candidate (None: the baseline stays), each candidate's gate against the baseline, and the steps taken."""

    name: str | None
    verdicts: dict[str, GateResult]
    steps: list[str]


def choose(per_query, qids: list[str], unseen: set[str] | None, names: list[str], baseline: str = "base",
           seen_weight: float = 0.0) -> Choice:
    """The rule of ``--method auto`` over ``evaluate``'s per-query rows; ``names`` cheapest first. The first
    candidate the gate calls better than ``baseline`` is taken; a later one replaces it only when it is better than it
    too, by the same gate (so a tie goes to the cheaper)."""
    verdicts = {name: judge(per_query, qids, baseline, name, unseen, seen_weight=seen_weight) for name in names}
    chosen, steps = None, []
    for name in names:
        if verdicts[name].verdict != Verdict.BETTER:
            continue
        if chosen is None:
            chosen = name
            steps.append(f"{name}: better than the {baseline}")
            continue
        versus = judge(per_query, qids, chosen, name, unseen, seen_weight=seen_weight)
        steps.append(f"{name} vs {chosen}: {versus.verdict}")
        if versus.verdict == Verdict.BETTER:
            chosen = name
    return Choice(chosen, verdicts, steps)


CHAMPION = "champion"


@dataclass
class Selection:
    """Every candidate judged against the base and, when there is one, against the champion (the model serving
    now), on the same validation queries; ``chosen`` passed the deciding comparison (the champion's, else the base's)."""

    chosen: str | None
    against_base: dict[str, GateResult]
    against_champion: dict[str, GateResult] | None
    steps: list[str]

    def deciding(self, name: str) -> GateResult:
        return (self.against_champion or self.against_base)[name]


def select(val: QADataset, unseen: set[str] | None, base: Encoder, candidates: Mapping[str, Encoder],
           champion: Encoder | None = None, engine: str = "auto", seen_weight: float = 0.0) -> Selection:
    """Evaluate the base, the champion and ``candidates`` (cheapest first) once on ``val``, and pick by
    :func:`choose` against the champion (without one: against the base)."""
    systems = [System("base", "dense", base)] + ([System(CHAMPION, "dense", champion)] if champion is not None else [])
    systems += [System(name, "dense", encoder) for name, encoder in candidates.items()]
    per_query = evaluate(val, systems, comparisons=[], show_progress=False, engine=engine).data["per_query"]
    qids, names = list(val.queries), list(candidates)
    choice = choose(per_query, qids, unseen, names, CHAMPION if champion is not None else "base", seen_weight)
    if champion is None:
        return Selection(choice.name, choice.verdicts, None, choice.steps)
    against_base = {n: judge(per_query, qids, "base", n, unseen, seen_weight=seen_weight) for n in names}
    return Selection(choice.name, against_base, choice.verdicts, choice.steps)


def deciding_gate(card: TrainingCard) -> GateResult | None:
    """The comparison a card's promotion was decided by: against the champion when it had one, else its base."""
    return GateResult.from_dict(card.deciding_gate)
