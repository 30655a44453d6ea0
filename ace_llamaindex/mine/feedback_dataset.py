"""Training data from a feedback log (:mod:`~ace_llamaindex.serve.feedback`): positives are the documents users accepted,
hard negatives the documents shown above an accepted one and rejected — the seed's "top-K wrong results of the
current system", with real labels — topped up by the miner as for any dataset (its false-negative guards apply
to what it adds; a user's rejection is a label and is kept).

Queries without an accepted document are dropped and counted; the same query text asked again is one query (its
judgements merged, the latest judgement of a document winning). Queries keep their time order, so the most
recent share can be held out: future traffic is what the model will meet.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..data.dataset import QADataset
from ..data.examples import TrainingExample
from ..errors import DatasetError
from ..serve.feedback import judgements, read_log


def _key(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


@dataclass
class FeedbackData:
    """What a log holds: a dataset of accepted documents (queries oldest first, ``query_meta["served_at"]``), the
    rejected documents shown above an accepted one for each query (best-ranked first), and counts."""

    dataset: QADataset
    rejected: dict[str, list[str]]
    counts: dict[str, int] = field(default_factory=dict)

    def recent_split(self, fraction: float) -> tuple[QADataset, QADataset | None]:
        """(older queries, the most recent ``fraction`` of them); ``fraction`` 0: everything, no test set."""
        qids = list(self.dataset.queries)  # oldest first
        if fraction <= 0:
            return self.dataset, None
        n_test = max(1, round(len(qids) * fraction))
        if n_test >= len(qids):
            raise DatasetError(self.dataset.source, "queries", f"{len(qids)} judged queries is too few to hold out "
                               f"{fraction:.0%} of them; collect more feedback or pass a smaller test fraction")
        return self.dataset.subset(qids[:-n_test]), self.dataset.subset(qids[-n_test:])


    def seen_share(self, fraction: float) -> tuple[float, str]:
        """The share of the most recent ``fraction`` of judged queries whose accepted documents earlier queries had
        accepted too: how often traffic comes back to known documents (the gate's seen/unseen weight), and a
        sentence saying where the number came from."""
        qids = list(self.dataset.queries)  # oldest first
        n_recent = min(len(qids) - 1, max(1, round(len(qids) * fraction))) if len(qids) > 1 else 0
        if n_recent == 0:
            return 0.0, f"{self.dataset.source}: too few judged queries to measure; new documents decide"
        earlier = {d for q in qids[:-n_recent] for d in self.dataset.relevant_docs[q]}
        seen = sum(any(d in earlier for d in self.dataset.relevant_docs[q]) for q in qids[-n_recent:])
        return round(seen / n_recent, 3), (f"measured in {self.dataset.source}: {seen} of the {n_recent} most recent judged "
                                           "queries accepted a document an earlier query had accepted")


def load_feedback(path: str | Path, corpus: Mapping[str, str]) -> FeedbackData:
    """Read a feedback log into a dataset over ``corpus`` (id -> text: the collection the log's results came
    from). Results whose document is no longer in the corpus are left out and counted."""
    served, judged = judgements(read_log(path))
    counts = {"served queries": len(served), "judgements": sum(len(j) for j in judged.values()),
              "queries without an accepted document": 0, "repeated queries merged": 0,
              "judged documents no longer in the corpus": 0, "judgements of unserved queries": 0}
    merged: dict[str, dict] = {}  # query text key -> {"qid", "text", "ts", "accepted", "rejected"}
    for qid, judged_docs in judged.items():
        record = served.get(qid)
        if record is None:
            counts["judgements of unserved queries"] += len(judged_docs)
            continue
        known = {d: r for d, r in judged_docs.items() if d in corpus}
        counts["judged documents no longer in the corpus"] += len(judged_docs) - len(known)
        ranks = {r["doc_id"]: r["rank"] for r in record["results"]}
        accepted = [d for d, ok in known.items() if ok]
        # an accepted document that was not shown (the user found it elsewhere) ranks below everything shown
        lowest = max((ranks.get(d, len(record["results"]) + 1) for d in accepted), default=0)
        rejected = sorted((d for d, ok in known.items() if not ok and d in ranks and ranks[d] < lowest), key=ranks.get)
        entry = merged.get(_key(record["query"]))
        if entry is None:
            merged[_key(record["query"])] = {"qid": qid, "text": record["query"], "ts": record["ts"],
                                             "verdicts": dict(known), "order": rejected}
            continue
        counts["repeated queries merged"] += 1
        entry["ts"] = max(entry["ts"], record["ts"])
        entry["verdicts"].update(known)  # read in log order: the latest judgement wins
        entry["order"] += [d for d in rejected if d not in entry["order"]]
    queries, relevant, meta, rejected_by_query = {}, {}, {}, {}
    for entry in sorted(merged.values(), key=lambda e: e["ts"]):
        accepted = [d for d, ok in entry["verdicts"].items() if ok]
        if not accepted:
            counts["queries without an accepted document"] += 1
            continue
        qid = entry["qid"]
        queries[qid], relevant[qid] = entry["text"], accepted
        meta[qid] = {"served_at": datetime.fromtimestamp(entry["ts"], timezone.utc).isoformat(timespec="seconds")}
        rejected_by_query[qid] = [d for d in entry["order"] if entry["verdicts"].get(d) is False]
    if not queries:
        raise DatasetError(path, "judgements", "no served query has an accepted document; record judgements with "
                           "record_feedback(query_id, doc_id, relevant=True) or FeedbackHandler first")
    dataset = QADataset(queries, dict(corpus), relevant, query_meta=meta, source=str(path))
    return FeedbackData(dataset, rejected_by_query, counts)


def with_rejected_negatives(examples: Sequence[TrainingExample], data: FeedbackData, corpus: Mapping[str, str],
                            num_negatives: int) -> list[TrainingExample]:
    """The miner's examples with each query's rejected documents first among its negatives (up to
    ``num_negatives`` in all; the miner's picks fill the rest)."""
    out = []
    for ex in examples:
        qid = ex.metadata.get("query_id")
        users = [d for d in data.rejected.get(qid, []) if corpus[d].strip() != ex.positive.strip()][:num_negatives]
        mined = [(d, t) for d, t in zip(ex.metadata.get("negative_ids", []), ex.negatives, strict=False) if d not in users]
        chosen = [(d, corpus[d], "feedback") for d in users] + [(d, t, "miner") for d, t in mined]
        chosen = chosen[:num_negatives]
        out.append(TrainingExample(ex.query, ex.positive, [t for _, t, _ in chosen], {
            **ex.metadata, "negative_ids": [d for d, _, _ in chosen], "negative_sources": [s for _, _, s in chosen],
            "served_at": data.dataset.query_meta.get(qid, {}).get("served_at")}))
    return out
