"""Hold out validation queries that measure generalisation, not memorised documents.

A corpus shared by all queries (a memory bank) lets a model "win" validation by memorising the documents its
training queries asked about. So validation is drawn mostly from *unseen documents*: whole connected components of
the query-document graph (a query and its relevant documents, joined through shared documents) are held out, so no
training query has their documents. A smaller share of *seen-document* queries (one query of a document whose other
queries stay in training) is held out beside them, so the gate can report both (see :mod:`~ace_llamaindex.train.promotion`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..data.examples import TrainingExample
from ..data.groups import query_components

SEEN_SHARE = 0.25  # of the validation queries, at most this share are about documents training queries also have


@dataclass
class ValidationSplit:
    """Training rows, validation rows, and which validation queries (texts) ask about unseen documents."""

    train: list[TrainingExample]
    val: list[TrainingExample]
    unseen: set[str] = field(default_factory=set)
    checks: dict[str, int] = field(default_factory=dict)  # what the data checks dropped, by kind

    @property
    def n_unseen(self) -> int:
        return len(self.unseen)

    @property
    def n_seen(self) -> int:
        return len({e.query for e in self.val} - self.unseen)


def split_for_validation(examples: list[TrainingExample], n_val: int, seed: int,
                         seen_share: float = SEEN_SHARE) -> ValidationSplit:
    """Hold out ``n_val`` queries: whole components first (unseen documents), then up to ``seen_share`` of them as
    single queries of documents that keep other training queries. Where the data has no small components (every
    query linked to every other), fewer unseen-document queries exist and the report says so."""
    if n_val == 0:
        return ValidationSplit(list(examples), [])
    positives: dict[str, set[str]] = {}
    for e in examples:
        positives.setdefault(e.query, set()).add(document_key(e))
    rng = random.Random(seed)
    components = query_components(positives)
    rng.shuffle(components)
    n_seen_wanted = int(n_val * seen_share)
    unseen: list[str] = []
    for comp in components:  # whole components, never one larger than what is left to fill
        if len(unseen) + len(comp) <= n_val - n_seen_wanted:
            unseen.extend(comp)
    taken = set(unseen)
    seen: list[str] = []
    shared = [c for c in components if len(c) > 1 and not taken & set(c)]
    while len(unseen) + len(seen) < n_val and shared:  # one query per component and round, one always stays
        for comp in list(shared):
            left = [q for q in comp if q not in taken]
            if len(left) < 2 or len(unseen) + len(seen) >= n_val:
                shared.remove(comp)
                continue
            pick = rng.choice(left)
            seen.append(pick)
            taken.add(pick)
    for comp in components:  # not enough shared documents for the seen share: top up with unseen components
        if len(unseen) + len(seen) + len(comp) <= n_val and not taken & set(comp):
            unseen.extend(comp)
            taken.update(comp)
    held = set(unseen) | set(seen)
    train, val = [e for e in examples if e.query not in held], [e for e in examples if e.query in held]
    return ValidationSplit(train, val, unseen_queries(train, val))


def document_key(example: TrainingExample) -> str:
    """Which document an example's positive is: its corpus id when mining recorded one (two documents with the same
    text are two documents, as the qrels count them), else its text."""
    doc_id = example.metadata.get("positive_id")
    return f"id:{doc_id}" if doc_id is not None else f"text:{example.positive}"


def unseen_queries(train: list[TrainingExample], val: list[TrainingExample]) -> set[str]:
    """The validation queries none of whose relevant documents is a training example's positive."""
    trained = {document_key(e) for e in train}
    seen = {e.query for e in val if document_key(e) in trained}
    return {e.query for e in val} - seen
